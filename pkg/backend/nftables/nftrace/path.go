package nftrace

import (
	"fmt"
	"net"
	"slices"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// The hooks a packet meets, per path (docs/nftables.md, "Layout"). This
// kernel has no nf_conntrack_bridge: br_netfilter runs the inet hooks
// for bridged packets from the bridge's own hooks, prerouting after the
// bridge prerouting chains and forward (or input) after the bridge
// forward (or input) chains, with the bridge as the IP interface. A
// routed or host-sent packet into a bridge meets the inet forward or
// output chains, then the bridge postrouting chains of the port it
// leaves through. The mark carries what each table decided to the next.

// stage is one hook on a packet's way.
type stage struct {
	family layout.Family
	hook   string
	// The interfaces as the hook sees them, and the frame's source MAC
	// (nil: the bridge's).
	iif, oif, iifKind, oifKind string
	srcMAC                     net.HardwareAddr
}

// Names the walk gives interfaces that are no VM's port.
const (
	theBridge = "(bridge)"
	uplink    = "(uplink)"
	routedIf  = "(routed)"
)

// stages returns the hooks q meets, in order.
func stages(q backend.Packet) []stage {
	in, out := q.InPort, q.OutPort
	br := func(hook, iif, oif string) stage {
		return stage{family: layout.Bridge, hook: hook, iif: iif, oif: oif, srcMAC: q.SrcMAC}
	}
	inet := func(hook, iif, oif, iifKind, oifKind string) stage {
		return stage{family: layout.Inet, hook: hook, iif: iif, oif: oif, iifKind: iifKind, oifKind: oifKind}
	}
	or := func(port, other string) string {
		if port != "" {
			return port
		}
		return other
	}
	switch q.Path {
	case backend.PathBridged:
		in, out = or(in, uplink), or(out, uplink)
		return []stage{
			br("prerouting", in, ""),
			inet("prerouting", theBridge, "", "bridge", ""),
			br("forward", in, out),
			inet("forward", theBridge, theBridge, "bridge", "bridge"),
			br("postrouting", in, out),
		}
	case backend.PathToHypervisor:
		in = or(in, uplink)
		return []stage{
			br("prerouting", in, ""),
			inet("prerouting", theBridge, "", "bridge", ""),
			br("input", in, ""),
			inet("input", theBridge, "", "bridge", ""),
		}
	case backend.PathFromHypervisor:
		post := br("postrouting", "", or(out, uplink))
		post.srcMAC = nil
		return []stage{inet("output", "", theBridge, "", "bridge"), post}
	}
	// Routed: received on a bridge port (a VM) or on an interface of
	// its own, sent into a bridge port (a VM) or out of another.
	var s []stage
	iif, iifKind := routedIf, ""
	if in != "" {
		iif, iifKind = theBridge, "bridge"
		s = append(s, br("prerouting", in, ""), inet("prerouting", theBridge, "", "bridge", ""), br("input", in, ""))
	} else {
		s = append(s, inet("prerouting", routedIf, "", "", ""))
	}
	oif, oifKind := routedIf, ""
	if out != "" {
		oif, oifKind = theBridge, "bridge"
	}
	s = append(s, inet("forward", iif, oif, iifKind, oifKind))
	if out != "" {
		post := br("postrouting", "", out)
		post.srcMAC = nil
		s = append(s, post)
	}
	return s
}

// baseChains returns the base chains of t on hook, by priority.
func baseChains(t *table, hook string) []*chain {
	var out []*chain
	for _, c := range t.chains {
		if c.hook != nil && c.hook.Hook == hook {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b *chain) int {
		if a.hook.Priority != b.hook.Priority {
			return a.hook.Priority - b.hook.Priority
		}
		if a.name < b.name {
			return -1
		}
		return 1
	})
	return out
}

// result is one walk's answer.
type result struct {
	verdict   string
	decidedBy string
	note      string
	objects   []string
	hits      []backend.RuleHit
	entered   []string
	setsUsed  map[string]bool
	err       error
	// mark is the packet's mark as one hook hands it to the next.
	mark uint32
}

func (r *result) public() backend.Walk {
	return backend.Walk{Verdict: r.verdict, DecidedBy: r.decidedBy, Note: r.note, Objects: r.objects, Rules: r.hits, Err: r.err}
}

// postroutingNote is what a walk says when the receiver's in rules met
// a routed or host-sent packet at bridge postrouting, where this backend
// differs from the configuration's answer by design.
const postroutingNote = "routed and host-sent packets meet the receiving interface's in rules at bridge postrouting, by the port they leave through: a reject there is a drop, the in rules apply whatever addresses the interface lists, and source_mac rules see the bridge's MAC (docs/nftables.md, \"Differences from the iptables backend\")"

// walk runs q through ts's base chains along its path.
func (t *flow) walk(ts tables, q backend.Packet) *result {
	res := &result{setsUsed: map[string]bool{}}
	var marked *backend.RuleHit // the rule that set the reject bit
	// decisive is the last rule of the configuration's that let the
	// packet through (accepted it, or set the accept bit), -1 for none.
	decisive := -1
	for _, s := range stages(q) {
		tbl := ts.of(s.family)
		if tbl == nil {
			continue
		}
		// The frame goes to the receiving VM's MAC on every path: the
		// sender, or the host routing it, resolved the VM's address.
		p := newPacket(q, s.srcMAC, backend.DestinationMAC(q.OutPort, t.policies))
		p.mark = res.mark
		nfproto := byte(nfprotoBridge)
		if s.family == layout.Inet {
			nfproto = nfprotoIPv4
			if q.Family == ruleset.IPv6 {
				nfproto = nfprotoIPv6
			}
		}
		p.at(nfproto, s.iif, s.oif, s.iifKind, s.oifKind)
		for _, c := range baseChains(tbl, s.hook) {
			m := &machine{t: tbl, setsUsed: map[string]bool{}}
			o, h, err := m.run(c.name, p)
			res.objects = append(res.objects, m.entered...)
			res.entered = append(res.entered, m.entered...)
			for name := range m.setsUsed {
				res.setsUsed[string(s.family)+"/"+name] = true
			}
			for i, mh := range m.hits {
				rh := t.ruleHit(s.family, mh, q)
				res.hits = append(res.hits, rh)
				if mh.setBits&t.k.Marks.Rej != 0 && marked == nil {
					cp := rh
					marked = &cp
				}
				if !mh.origin.IsZero() && (mh.setBits&t.k.Marks.Acc != 0 || (o == accepted && i == len(m.hits)-1)) {
					decisive = len(res.hits) - 1
				}
			}
			if err != nil {
				res.err = err
				return res
			}
			res.mark = p.mark
			atPost := s.family == layout.Bridge && s.hook == "postrouting" && (q.Path == backend.PathRouted || q.Path == backend.PathFromHypervisor)
			switch o {
			case dropped:
				by := t.describe(s.family, h, q)
				if marked != nil && p.mark&t.k.Marks.Rej != 0 {
					// The reject guard: a reject decided where none can
					// be sent.
					by = fmt.Sprintf("%s, decided by %s", by, t.describeHit(*marked))
					res.hits = append(res.hits, *marked)
				}
				if atPost {
					res.note = postroutingNote
				}
				return res.decide("drop", by)
			case rejected:
				by := t.describe(s.family, h, q)
				if marked != nil {
					by = fmt.Sprintf("%s, marked by %s", by, t.describeHit(*marked))
					// The reject sent is the marking rule's decision.
					res.hits = append(res.hits, *marked)
				}
				return res.decide("reject", by)
			case accepted:
				if atPost {
					res.note = postroutingNote
				}
			}
		}
	}
	res.verdict = "accept"
	switch {
	case decisive >= 0:
		// What comes after the rule that let the packet through is
		// vmfw's bookkeeping; the last rule listed is the one that
		// decided.
		res.hits = res.hits[:decisive+1]
		res.decidedBy = "accepted by " + t.describeHit(res.hits[decisive])
	case q.Path == backend.PathToHypervisor:
		res.decidedBy = "no vmfw rule decided: the host's own input rules decide"
	default:
		res.decidedBy = "no vmfw rule decided: the host's own forward and output rules decide"
	}
	return res
}

func (r *result) decide(v, by string) *result {
	r.verdict, r.decidedBy = v, by
	return r
}

// ruleHit is h as the seam reports it, the origin of a policy's rule
// completed with the interface the packet's port names.
func (t *flow) ruleHit(f layout.Family, h hit, q backend.Packet) backend.RuleHit {
	return backend.RuleHit{Table: string(f), Object: h.chain, Index: h.index, Text: h.rule.text, Origin: withTap(h.origin, q)}
}

// withTap fills in the interface of a policy's origin: the policy rules
// are shared, the interface is the port the packet comes from (out) or
// goes to (in).
func withTap(o ruleset.Origin, q backend.Packet) ruleset.Origin {
	if o.IsZero() || o.Group != "" || o.Tap != "" {
		return o
	}
	if o.Dir == config.Out {
		o.Tap = q.InPort
	} else {
		o.Tap = q.OutPort
	}
	return o
}

// describe names the rule h by table, chain and position, and the
// configuration it implements.
func (t *flow) describe(f layout.Family, h *hit, q backend.Packet) string {
	if h == nil {
		return "a base chain's policy"
	}
	return t.describeHit(t.ruleHit(f, *h, q))
}

func (t *flow) describeHit(h backend.RuleHit) string {
	s := fmt.Sprintf("%s/%s rule %d", h.Table, h.Object, h.Index)
	if !h.Origin.IsZero() {
		if name := t.name(h.Origin); name != "" {
			s += " (" + name + ")"
		}
	}
	return s
}
