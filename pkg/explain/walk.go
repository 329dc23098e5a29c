package explain

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// result is one walk's answer.
type result struct {
	verdict   string
	decidedBy string
	// decider is the IP rule that decided, nil when an ebtables rule or
	// no rule did.
	decider  *irule
	hits     []RuleHit
	chains   []string
	entered  map[string][]layout.Chain // per table
	setsUsed map[string]bool
	err      error
}

// packet builds the first packet of candidate c as the rules see it.
func (t *tracer) packet(c candidate) *packet {
	p := &packet{proto: t.proto, src: t.from.Address, dst: t.to.Address, sport: c.sport, dport: c.dport,
		icmpType: uint8(t.icmpType), icmpCode: uint8(t.icmpCode), state: "NEW"}
	if t.path != PathFromHypervisor {
		p.srcMAC = c.mac
	}
	if t.proto == protoICMP || t.proto == protoICMPv6 {
		p.state = policyState(t.proto, uint8(t.icmpType))
	}
	if t.proto == protoICMPv6 && (t.icmpType == 135 || t.icmpType == 136) {
		// A solicitation asks for the destination, an advertisement
		// announces the sender's own address.
		p.ndTarget = t.to.Address
		if t.icmpType == 136 {
			p.ndTarget = t.from.Address
		}
	}
	return p
}

// policyState is the conntrack state of a flow's first ICMP packet
// (see package policy).
func policyState(proto uint8, typ uint8) string {
	if proto == protoICMP {
		switch typ {
		case 8, 13, 15, 17:
			return "NEW"
		}
		return "INVALID"
	}
	switch typ {
	case 128, 139:
		return "NEW"
	case 130, 131, 132, 133, 134, 135, 136, 137, 143:
		return "UNTRACKED"
	}
	return "INVALID"
}

func (t *tracer) compiledMachine(rs *layout.Ruleset) *machine {
	tbl := rs.Tables[t.family]
	lines := map[layout.Chain][]string{}
	hashes := map[layout.Chain][]string{}
	for _, c := range tbl.Chains {
		for _, r := range c.Rules {
			lines[c.Name] = append(lines[c.Name], r.Spec)
		}
		hashes[c.Name] = c.Hashes()
	}
	return newMachine(lines, hashes, compiledSets(rs))
}

func compiledSets(rs *layout.Ruleset) map[string]map[netip.Addr]bool {
	sets := map[string]map[netip.Addr]bool{}
	for _, s := range rs.Sets {
		m := map[netip.Addr]bool{}
		for _, a := range s.Members {
			if ip, err := netip.ParseAddr(a); err == nil {
				m[ip] = true
			}
		}
		sets[s.Name] = m
	}
	return sets
}

func (t *tracer) compiledL2(rs *layout.Ruleset) *l2machine {
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
// routes or sends, the layer-2 check of the receiving port.
func (t *tracer) walk(ipm *machine, l2m *l2machine, k *Kernel, p *packet) *result {
	res := &result{entered: map[string][]layout.Chain{}, setsUsed: map[string]bool{}}
	table := t.family.String()
	senderPort, receiverPort := "", ""
	if t.from.nic != nil {
		senderPort = t.from.nic.Tap
	}
	if t.to.nic != nil {
		receiverPort = t.to.nic.Tap
	}
	hook, entry := t.hook(p, senderPort, receiverPort)

	// Layer 2 first: ebtables' FORWARD and INPUT hooks come before
	// iptables' (br_netfilter).
	if l2m != nil && senderPort != "" && t.path != PathFromHypervisor && t.l2in(res, l2m, k, p, senderPort) {
		return res
	}

	if !hooked(k, table, hook, entry, t.family) {
		res.chains = append(res.chains, string(hook))
		if t.path == PathFromHypervisor {
			return t.l2out(res, l2m, k, p, receiverPort, fmt.Sprintf("the jump from %s to %s is missing: no vmfw rule sees the packet", hook, entry))
		}
		return res.decide("accept", fmt.Sprintf("the jump from %s to %s is missing: no vmfw rule sees the packet; %s's own rules and policy decide", hook, entry, hook))
	}
	o, by, err := ipm.run(entry, p)
	t.addIP(res, ipm, hook)
	if err != nil {
		res.err = err
		return res
	}
	res.decider = by
	allowed := t.allowed(ipm.hits)
	switch o {
	case accepted:
		why := t.describe(by)
		if layout.IsBaseChain(by.chain) && allowed != "" {
			// vmfw-accept: allowed out to a port or address no VM has.
			why = allowed + "accepted by " + why
		}
		if t.path == PathRouted {
			return t.l2out(res, l2m, k, p, receiverPort, why)
		}
		return res.decide("accept", why)
	case dropped:
		return res.decide("drop", t.describe(by))
	case rejected:
		return res.decide("reject", t.describe(by))
	}
	switch t.path {
	case PathToHypervisor:
		return res.decide("accept", allowed+"the host's own INPUT rules decide the rest")
	case PathFromHypervisor:
		return t.l2out(res, l2m, k, p, receiverPort, "no in chain decided the packet")
	case PathRouted:
		return t.l2out(res, l2m, k, p, receiverPort, allowed+"FORWARD's own rules and policy decide the rest")
	}
	return res.decide("accept", allowed+"FORWARD's own rules and policy decide the rest")
}

// hook returns the built-in chain the path's packet meets and vmfw's
// chain it jumps to, and sets the bridge ports the packet carries on that
// path.
func (t *tracer) hook(p *packet, senderPort, receiverPort string) (hook, entry layout.Chain) {
	uplink := "(uplink)"
	switch t.path {
	case PathBridged:
		hook, entry = layout.Forward, layout.ChainForward
		p.physIn, p.physOut, p.bridged = cmp(senderPort, uplink), cmp(receiverPort, uplink), true
	case PathRouted:
		hook, entry = layout.Forward, layout.ChainForward
		p.physIn = senderPort
	case PathToHypervisor:
		hook, entry = layout.Input, layout.ChainInput
		p.physIn = senderPort
	case PathFromHypervisor:
		hook, entry = layout.Output, layout.ChainOutput
	}
	return hook, entry
}

// l2in runs the frame through the layer-2 chains of the sender's port,
// port; it reports whether the walk ends there (res says why). A frame
// the hypervisor routes onward was received by the bridge's own
// interface (INPUT).
func (t *tracer) l2in(res *result, l2m *l2machine, k *Kernel, p *packet, port string) bool {
	l2hook := layout.Input
	if t.path == PathBridged {
		l2hook = layout.Forward
	}
	if !hooked(k, "bridge", l2hook, layout.ChainL2, t.family) {
		return false
	}
	f := &frame{pkt: p, in: port}
	if t.path == PathBridged {
		f.out = p.physOut
	}
	drop, by, err := l2m.run(layout.ChainL2, f)
	res.addL2(l2m)
	if err != nil {
		res.err = err
		return true
	}
	if drop {
		res.decide("drop", fmt.Sprintf("bridge %s rule %d: %s", by.chain, by.index, by.text))
		return true
	}
	return false
}

// addIP records in res what the IP walk from hook saw.
func (t *tracer) addIP(res *result, ipm *machine, hook layout.Chain) {
	table := t.family.String()
	res.chains = append(res.chains, string(hook))
	for _, c := range ipm.entered {
		res.chains = append(res.chains, string(c))
	}
	res.entered[table] = ipm.entered
	for s := range ipm.sets.used {
		res.setsUsed[s] = true
	}
	for _, h := range ipm.hits {
		res.hits = append(res.hits, RuleHit{Table: table, Chain: string(h.chain), Index: h.index, Rule: stripComment(h.text), Origin: t.origin(h)})
	}
}

// addL2 records in res what an ebtables walk saw.
func (res *result) addL2(m *l2machine) {
	for _, r := range m.hits {
		res.hits = append(res.hits, RuleHit{Table: "bridge", Chain: string(r.chain), Index: r.index, Rule: r.text})
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
func (t *tracer) describe(r *irule) string {
	s := fmt.Sprintf("%s rule %d", r.chain, r.index)
	if o := t.origin(r); o != "" {
		s += " (" + o + ")"
	}
	return s
}

// allowed says which rule let the packet out, "" when none did: the
// sender's out chain marks what it allows, and the last rule that did
// says why a packet no in chain decided got through.
func (t *tracer) allowed(hits []*irule) string {
	for i := len(hits) - 1; i >= 0; i-- {
		if r := hits[i]; r.target == "MARK" && r.markValue != 0 && !layout.IsBaseChain(r.chain) {
			return "allowed by " + t.describe(r) + "; "
		}
	}
	return ""
}

// l2out finishes the path of a packet the hypervisor puts on a bridge
// port: vmfw-l2out drops IP frames to managed ports that carry no mark.
func (t *tracer) l2out(res *result, l2m *l2machine, k *Kernel, p *packet, port string, ipDecision string) *result {
	if port == "" || l2m == nil || !hooked(k, "bridge", layout.Output, layout.ChainL2Out, t.family) {
		return res.decide("accept", ipDecision)
	}
	drop, by, err := l2m.run(layout.ChainL2Out, &frame{pkt: p, out: port})
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

// origin names the configuration a rule implements, found by its
// fingerprint among the compiled rules of its chain.
func (t *tracer) origin(r *irule) string {
	if r.hash == "" {
		return ""
	}
	for _, rs := range []*layout.Ruleset{t.actual, t.compiled} {
		if c := rs.Tables[t.family].Chain(r.chain); c != nil {
			for _, cr := range c.Rules {
				if cr.Hash(c.Name) == r.hash {
					return t.describeOrigin(cr.Origin)
				}
			}
		}
	}
	return ""
}

func (t *tracer) describeOrigin(o ruleset.Origin) string {
	if o.IsZero() {
		return ""
	}
	if o.Group != "" {
		g := t.in.Model.Groups[o.Group]
		if g == nil || o.Index >= len(g.Rules(o.Dir)) {
			return ""
		}
		return fmt.Sprintf("%s:%d", g.File, g.Rules(o.Dir)[o.Index].Line)
	}
	if n := t.resolve(o.Tap); n != nil && n.VM.File != "" {
		return fmt.Sprintf("%s: policy_%s", n.VM.File, o.Dir)
	}
	return "policy_" + string(o.Dir)
}
