package interp

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// result is one walk's answer.
type result struct {
	verdict   string
	decidedBy string
	hits      []backend.RuleHit
	chains    []string
	entered   map[string][]layout.Chain // per table
	// lost is the IP chain the walk could not enter because it does not
	// exist, "" when there is none.
	lost     layout.Chain
	setsUsed map[string]bool
	err      error
}

// public is the walk as the seam reports it.
func (res *result) public() backend.Walk {
	return backend.Walk{Verdict: res.verdict, DecidedBy: res.decidedBy, Objects: res.chains, Rules: res.hits, Err: res.err}
}

// newPacket is p as the rules see it: a walk changes the packet (its
// mark, the bridge ports the hooks give it), so each walk takes its own.
func newPacket(p backend.Packet) *packet {
	return &packet{proto: p.Proto, src: p.Src, dst: p.Dst, sport: p.SPort, dport: p.DPort,
		icmpType: p.ICMPType, icmpCode: p.ICMPCode, srcMAC: p.SrcMAC, state: p.State, ndTarget: p.NDTarget}
}

func compiledMachine(rs *layout.Ruleset, f ruleset.Family) *machine {
	tbl := rs.Tables[f]
	lines := map[layout.Chain][]string{}
	hashes := map[layout.Chain][]string{}
	for _, c := range tbl.Chains {
		for _, r := range c.Rules {
			lines[c.Name] = append(lines[c.Name], r.Spec)
		}
		hashes[c.Name] = c.Hashes()
	}
	sets, nets := Sets(rs.Sets)
	return newMachine(lines, hashes, sets, nets)
}

func compiledL2(rs *layout.Ruleset) *l2machine {
	if rs.Bridge == nil {
		return nil
	}
	specs := map[layout.Chain][]string{}
	for _, c := range rs.Bridge.Chains {
		specs[c.Name] = rs.Bridge.Fingerprints(c)
	}
	return newL2Machine(specs)
}

// hooked reports whether the kernel jumps from built-in chain from to to;
// the compiled ruleset (k nil) always does.
func hooked(k *Kernel, table string, from, to layout.Chain, f ruleset.Family) bool {
	if k == nil {
		return true
	}
	h := layout.Hook{From: from, To: to}
	if table == "bridge" {
		return k.Bridge == nil || k.Bridge.Hooks[h] > 0
	}
	return k.Tables[f].Hooks[h] > 0
}

// walk runs the packet along its path: the layer-2 chains of a sending
// VM's port, the IP hook of the path, and for packets the hypervisor
// routes or sends, the layer-2 check of the receiving port. k is the
// kernel the machines hold the rules of, nil for compiled rules.
func (t *flow) walk(ipm *machine, l2m *l2machine, k *Kernel, q backend.Packet) *result {
	res := &result{entered: map[string][]layout.Chain{}, setsUsed: map[string]bool{}}
	table := q.Family.String()
	p := newPacket(q)
	hook, entry := enter(q.Path, p, q.InPort, q.OutPort)

	// Layer 2 first: ebtables' FORWARD and INPUT hooks come before
	// iptables' (br_netfilter).
	if l2m != nil && q.Path != backend.PathFromHypervisor && t.l2in(res, l2m, k, p, q) {
		return res
	}

	if !hooked(k, table, hook, entry, q.Family) {
		res.chains = append(res.chains, string(hook))
		if q.Path == backend.PathFromHypervisor {
			return t.l2out(res, l2m, k, p, q, fmt.Sprintf("the jump from %s to %s is missing: no vmfw rule sees the packet", hook, entry))
		}
		return res.decide("accept", fmt.Sprintf("the jump from %s to %s is missing: no vmfw rule sees the packet; %s's own rules and policy decide", hook, entry, hook))
	}
	o, by, err := ipm.run(entry, p)
	t.addIP(res, ipm, hook, q.Family)
	if err != nil {
		res.err = err
		return res
	}
	allowed := t.allowed(ipm.hits, q.Family)
	switch o {
	case accepted:
		why := t.describe(by, q.Family)
		if layout.IsBaseChain(by.chain) && allowed != "" {
			// vmfw-accept: allowed out to a port or address no VM has.
			why = allowed + "accepted by " + why
		}
		if q.Path == backend.PathRouted {
			return t.l2out(res, l2m, k, p, q, why)
		}
		return res.decide("accept", why)
	case dropped:
		return res.decide("drop", t.describe(by, q.Family))
	case rejected:
		return res.decide("reject", t.describe(by, q.Family))
	}
	switch q.Path {
	case backend.PathToHypervisor:
		return res.decide("accept", allowed+"the host's own INPUT rules decide the rest")
	case backend.PathFromHypervisor:
		return t.l2out(res, l2m, k, p, q, "no in chain decided the packet")
	case backend.PathRouted:
		return t.l2out(res, l2m, k, p, q, allowed+"FORWARD's own rules and policy decide the rest")
	}
	return res.decide("accept", allowed+"FORWARD's own rules and policy decide the rest")
}

// enter returns the built-in chain a packet on path meets and vmfw's
// chain it jumps to, and sets the bridge ports p carries on that path:
// the VMs' ports, or for a bridged packet from or to a host that is no
// VM, the bridge's uplink.
func enter(path backend.Path, p *packet, senderPort, receiverPort string) (hook, entry layout.Chain) {
	uplink := "(uplink)"
	switch path {
	case backend.PathBridged:
		hook, entry = layout.Forward, layout.ChainForward
		p.physIn, p.physOut, p.bridged = cmp(senderPort, uplink), cmp(receiverPort, uplink), true
	case backend.PathRouted:
		hook, entry = layout.Forward, layout.ChainForward
		p.physIn = senderPort
	case backend.PathToHypervisor:
		hook, entry = layout.Input, layout.ChainInput
		p.physIn = senderPort
	case backend.PathFromHypervisor:
		hook, entry = layout.Output, layout.ChainOutput
	}
	return hook, entry
}

// l2in runs the frame through the layer-2 chains of the sender's port
// and, for a bridged frame to a VM, of the receiver's port; it reports
// whether the walk ends there (res says why). A frame the hypervisor
// routes onward was received by the bridge's own interface (INPUT).
// Both chains only drop or return, so the order FORWARD lists them in
// changes no verdict.
func (t *flow) l2in(res *result, l2m *l2machine, k *Kernel, p *packet, q backend.Packet) bool {
	l2hook := layout.Input
	f := &frame{pkt: p, in: q.InPort}
	if q.Path == backend.PathBridged {
		l2hook = layout.Forward
		f.out = p.physOut
		// The sender addressed the frame to the receiving VM's MAC.
		f.dstMAC = backend.DestinationMAC(q.OutPort, t.policies)
	}
	var roots []layout.Chain
	if q.InPort != "" && hooked(k, "bridge", l2hook, layout.ChainL2, q.Family) {
		roots = append(roots, layout.ChainL2)
	}
	if q.Path == backend.PathBridged && q.OutPort != "" && hooked(k, "bridge", l2hook, layout.ChainL2Dest, q.Family) {
		roots = append(roots, layout.ChainL2Dest)
	}
	for _, root := range roots {
		drop, by, err := l2m.run(root, f)
		res.addL2(l2m)
		if err != nil {
			res.err = err
			return true
		}
		if drop {
			res.decide("drop", fmt.Sprintf("bridge %s rule %d: %s", by.chain, by.index, by.text))
			return true
		}
	}
	return false
}

// addIP records in res what the IP walk from hook saw.
func (t *flow) addIP(res *result, ipm *machine, hook layout.Chain, f ruleset.Family) {
	table := f.String()
	res.chains = append(res.chains, string(hook))
	for _, c := range ipm.entered {
		res.chains = append(res.chains, string(c))
	}
	res.entered[table] = ipm.entered
	res.lost = ipm.lost
	for s := range ipm.sets.used {
		res.setsUsed[s] = true
	}
	for _, h := range ipm.hits {
		res.hits = append(res.hits, backend.RuleHit{Table: table, Object: string(h.chain), Index: h.index, Text: stripComment(h.text), Origin: t.origin(h, f)})
	}
}

// addL2 records in res what an ebtables walk saw.
func (res *result) addL2(m *l2machine) {
	for _, r := range m.hits {
		res.hits = append(res.hits, backend.RuleHit{Table: "bridge", Object: string(r.chain), Index: r.index, Text: r.text})
	}
	for _, c := range m.entered {
		res.chains = append(res.chains, "bridge/"+string(c))
	}
	res.entered["bridge"] = append(res.entered["bridge"], m.entered...)
}

// decide ends the walk with verdict v, by saying what decided.
func (res *result) decide(v, by string) *result {
	res.verdict, res.decidedBy = v, by
	return res
}

// describe names an IP rule by its place and the configuration it
// implements.
func (t *flow) describe(r *irule, f ruleset.Family) string {
	s := fmt.Sprintf("%s rule %d", r.chain, r.index)
	if o := t.origin(r, f); !o.IsZero() {
		if name := t.name(o); name != "" {
			s += " (" + name + ")"
		}
	}
	return s
}

// allowed says which rule let the packet out, "" when none did: the
// sender's out chain marks what it allows, and the last rule that did
// says why a packet no in chain decided got through.
func (t *flow) allowed(hits []*irule, f ruleset.Family) string {
	for i := len(hits) - 1; i >= 0; i-- {
		if r := hits[i]; r.target == "MARK" && r.markValue != 0 && !layout.IsBaseChain(r.chain) {
			return "allowed by " + t.describe(r, f) + "; "
		}
	}
	return ""
}

// l2out finishes the path of a packet the hypervisor puts on a bridge
// port: vmfw-l2out drops IP frames to managed ports that carry no mark.
func (t *flow) l2out(res *result, l2m *l2machine, k *Kernel, p *packet, q backend.Packet, ipDecision string) *result {
	if q.OutPort == "" || l2m == nil || !hooked(k, "bridge", layout.Output, layout.ChainL2Out, q.Family) {
		return res.decide("accept", ipDecision)
	}
	drop, by, err := l2m.run(layout.ChainL2Out, &frame{pkt: p, out: q.OutPort})
	res.addL2(l2m)
	if err != nil {
		res.err = err
		return res
	}
	if drop {
		return res.decide("drop", fmt.Sprintf("bridge %s rule %d (%s): no in chain accepted the packet (%s)", by.chain, by.index, by.text, ipDecision))
	}
	return res.decide("accept", ipDecision)
}

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// stripComment drops vmfw's comment from a rule's text: the fingerprint
// says nothing to a reader, the origin says more.
func stripComment(text string) string {
	words, err := layout.SplitWords(text)
	if err != nil {
		return text
	}
	var out []string
	for i := 0; i < len(words); i++ {
		if words[i] == "-m" && i+3 < len(words) && words[i+1] == "comment" && words[i+2] == "--comment" {
			i += 3
			continue
		}
		w := words[i]
		if strings.ContainsAny(w, " \t") || w == "" {
			w = strconv.Quote(w)
		}
		out = append(out, w)
	}
	return strings.Join(out, " ")
}

// origin is the configuration a rule implements, found by its
// fingerprint among the compiled rules of its chain.
func (t *flow) origin(r *irule, f ruleset.Family) ruleset.Origin {
	if r.hash == "" {
		return ruleset.Origin{}
	}
	for _, rs := range []*layout.Ruleset{t.actual, t.compiled} {
		if c := rs.Tables[f].Chain(r.chain); c != nil {
			for _, cr := range c.Rules {
				if cr.Hash(c.Name) == r.hash {
					return cr.Origin
				}
			}
		}
	}
	return ruleset.Origin{}
}
