package ruleset

import "github.com/vmfw/vmfw/pkg/config"

// dispatch builds the chains that send a packet to its tap's chain. They use
// goto, so a tap chain that returns returns past the dispatch chain and the
// fail-closed rules after the list are reached only by unknown ports.
func (b *builder) dispatch(nics []*config.NIC) []*ChainRules {
	out := &ChainRules{Name: ChainOut, Rules: []Rule{{Spec: b.clearMark()}}}
	in := &ChainRules{Name: ChainIn}
	for _, n := range nics {
		out.Rules = append(out.Rules, Rule{Spec: "-m physdev --physdev-in " + n.Tap + " -g " + string(TapChain(n.Tap, "out"))})
		in.Rules = append(in.Rules, Rule{Spec: "-m physdev --physdev-out " + n.Tap + " -g " + string(TapChain(n.Tap, "in"))})
	}
	for _, p := range b.model.Host.Managed {
		out.Rules = append(out.Rules, Rule{Spec: "-m physdev --physdev-in " + p + " -j DROP", Comment: "fail-closed"})
		in.Rules = append(in.Rules, Rule{Spec: "-m physdev --physdev-out " + p + " -j DROP", Comment: "fail-closed"})
	}
	return []*ChainRules{out, in}
}
