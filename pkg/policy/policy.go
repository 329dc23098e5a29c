// Package policy decides from the configuration alone whether vmfw's
// ruleset lets a connection through. It mirrors the chains pkg/ruleset
// compiles — the sender's out chain, then the receiver's in chain, groups in
// the order the interface lists them, rules in file order, the first match
// deciding and the VM's policy deciding what none matched — without
// compiling or running them, so that a tracked connection can be checked
// against the rules an apply just installed.
//
// The engine uses it to cut established connections an edit no longer
// allows: their packets pass the "established" rules, which never look at
// the groups again, so only deleting their conntrack entries stops them.
// Like pkg/ruleset it is pure: no exec, no netlink, no files.
package policy

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Verdict is what the ruleset does with the first packet of a flow.
type Verdict int

// The verdicts. Unknown is never guessed into Allow or Deny: callers that
// act on a verdict (delete a connection) act only on Deny.
const (
	// Unknown means the answer depends on something the flow does not
	// tell, such as a port netlink does not report for the protocol, or the
	// MAC address of a host that is not a configured interface.
	Unknown Verdict = iota
	// Allow means every chain the packet passes lets it through.
	Allow
	// Deny means a chain drops or rejects it.
	Deny
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return "unknown"
}

// and combines the verdicts of two chains a packet must both pass.
func (v Verdict) and(w Verdict) Verdict {
	switch {
	case v == Deny || w == Deny:
		return Deny
	case v == Allow && w == Allow:
		return Allow
	}
	return Unknown
}

// Flow is a connection as the filter rules see its first packet: the
// source as the sender sent it and the destination it is delivered to.
type Flow struct {
	// Proto is the IP protocol number (6 tcp, 17 udp, 1 icmp, ...).
	Proto uint8
	// Src and Dst are the packet's addresses.
	Src, Dst netip.Addr
	// SPort and DPort are the ports of a tcp, udp or sctp flow.
	SPort, DPort uint16
	// PortsUnknown says that SPort and DPort are not known, e.g. for sctp,
	// whose ports the kernel's conntrack netlink dump is not parsed for:
	// rules with ports then neither match nor fail to match for sure.
	PortsUnknown bool
	// ICMPType and ICMPCode are the type and code of an icmp or icmpv6
	// packet when ICMPKnown. Tracked flows leave them unknown (see
	// icmpQueries); vmfw trace knows them, and then the evaluator also
	// walks the rules only some types meet: neighbour discovery, the
	// INVALID state of ICMP errors.
	ICMPType, ICMPCode uint8
	ICMPKnown          bool
}

// An ICMP or ICMPv6 flow carries no type: the only ICMP messages
// connection tracking keeps entries for are queries (echo, timestamp,
// information, address mask, node information), never errors or neighbour
// discovery, so a rule for one of those types cannot match a tracked flow
// and a rule for a query type may.
var (
	icmpQueries   = map[string]bool{"echo-request": true, "timestamp-request": true, "address-mask-request": true, "8": true, "13": true, "15": true, "17": true}
	icmpv6Queries = map[string]bool{"echo-request": true, "128": true, "139": true}
)

// Evaluator answers for one configuration and set of attached interfaces:
// the same inputs ruleset.Compile takes.
type Evaluator struct {
	local func(netip.Addr) bool
	// nics maps every address of an attached interface to it.
	nics map[netip.Addr]*config.NIC
	// shared holds addresses two attached interfaces list; whose chain a
	// packet from one passes cannot be told.
	shared map[netip.Addr]bool
	// members maps a group to its members' addresses: the contents of its
	// ipsets.
	members map[string]map[netip.Addr]bool
	// macs maps a MAC address to the interface configured with it.
	macs   map[string]*config.NIC
	groups map[string]*config.Group
	// sets are the address sets rules refer to, matched with the
	// meaning every backend gives them (config.Set.Match).
	sets map[string]*config.Set
}

// New returns an evaluator for model m with the interfaces attached (their
// chains installed, their addresses in their groups' sets). local reports
// whether an address is the hypervisor's own; it may be nil.
func New(m *config.Model, attached []*config.NIC, local func(netip.Addr) bool) *Evaluator {
	if local == nil {
		local = func(netip.Addr) bool { return false }
	}
	e := &Evaluator{
		local:   local,
		nics:    map[netip.Addr]*config.NIC{},
		shared:  map[netip.Addr]bool{},
		members: map[string]map[netip.Addr]bool{},
		macs:    map[string]*config.NIC{},
		groups:  m.Groups,
		sets:    m.Sets,
	}
	for _, vm := range m.VMs {
		for _, n := range vm.NICs {
			if n.MAC != nil {
				e.macs[string(n.MAC)] = n
			}
		}
	}
	for _, n := range attached {
		if n.MAC != nil {
			e.macs[string(n.MAC)] = n
		}
		for _, ip := range n.IPs {
			if other, ok := e.nics[ip]; ok && other != n {
				e.shared[ip] = true
			}
			e.nics[ip] = n
		}
		for _, g := range n.Groups {
			if e.members[g] == nil {
				e.members[g] = map[netip.Addr]bool{}
			}
			for _, ip := range n.IPs {
				e.members[g][ip] = true
			}
		}
	}
	// Members attached on other hosts are in the sets too (cluster mode).
	for g, ips := range m.RemoteMembers {
		if e.members[g] == nil {
			e.members[g] = map[netip.Addr]bool{}
		}
		for _, ip := range ips {
			e.members[g][ip] = true
		}
	}
	return e
}

// Check decides a flow: the sender's out chain when the source is an
// attached interface's address, then the receiver's in chain when the
// destination is, whether the flow is bridged, routed or NATed (the
// compiled ruleset attributes routed packets by destination address, see
// docs/routing.md). The hypervisor's own traffic to a VM passes only the
// receiver's in chain, and traffic to the hypervisor only the sender's
// out chain (the host's INPUT rules, not vmfw, decide the rest).
func (e *Evaluator) Check(f Flow) Verdict {
	f.Src, f.Dst = f.Src.Unmap(), f.Dst.Unmap()
	if e.shared[f.Src] || e.shared[f.Dst] {
		return Unknown
	}
	sender, receiver := e.nics[f.Src], e.nics[f.Dst]
	if e.local(f.Src) {
		sender = nil
	}
	if e.local(f.Dst) {
		receiver = nil
	}
	v := Allow
	if sender != nil {
		v = v.and(e.Out(sender, f))
	}
	if receiver != nil {
		v = v.and(e.In(receiver, sender, f))
	}
	return v
}

// Out decides the flow in the out chain of n, the sending interface:
// anti-spoofing (the source is n's, as Check chose n by it), the DHCP
// client exceptions, n's groups' out rules, policy_out.
func (e *Evaluator) Out(n *config.NIC, f Flow) Verdict {
	var w walk
	e.out(&w, n, f)
	return w.verdict()
}

// In decides the flow in the in chain of n, the receiving interface:
// the DHCP reply exceptions, n's groups' in rules, policy_in. sender is
// the sending interface, nil for a host that is not an attached interface.
func (e *Evaluator) In(n *config.NIC, sender *config.NIC, f Flow) Verdict {
	var w walk
	e.in(&w, n, sender, f, false)
	return w.verdict()
}

func (e *Evaluator) out(w *walk, n *config.NIC, f Flow) {
	chain := ruleset.TapObject(n.Tap, "out")
	if !n.VM.Enable {
		e.disabled(w, n, chain, f)
		return
	}
	v6 := f.Src.Is6()
	if n.Antispoof && !n.AntispoofMACOnly {
		// antispoof = "mac" checks the source MAC alone, which the flow
		// carries: the interface sends with its own (Check found it by
		// address; Explain's path gives its MAC). Nothing else of
		// anti-spoofing applies (layout's tapChains).
		e.antispoof(w, n, f)
	}
	e.state(w, chain, f)
	if v6 && f.ICMPKnown && f.Proto == config.ProtoICMPv6 && !n.NoNDP {
		switch f.ICMPType {
		case icmp6RouterSolicit, icmp6NeighSolicit, icmp6NeighAdvert:
			w.step(yes, config.Accept, Step{Chain: chain, What: "ndp", Note: "neighbour discovery from the VM is allowed"})
		}
	}
	if n.DHCP {
		if v6 {
			w.step(e.protoPorts(f, config.ProtoUDP, 546, 547), config.Accept, Step{Chain: chain, What: "dhcp", Note: "DHCPv6 client request (dhcp = true)"})
		} else {
			w.step(e.protoPorts(f, config.ProtoUDP, 68, 67), config.Accept, Step{Chain: chain, What: "dhcp", Note: "DHCP client request (dhcp = true)"})
		}
	}
	for _, g := range n.Groups {
		for i, r := range e.rules(g, config.Out) {
			w.step(e.matchRule(r, f, nil), r.Action, e.setStep(e.ruleStep(g, config.Out, i, r), r, f))
		}
	}
	w.step(yes, n.VM.PolicyOut, Step{Chain: chain, What: "policy", File: n.VM.File, Note: "policy_out = " + string(n.VM.PolicyOut) + ": no rule matched"})
}

// antispoof walks the anti-spoofing rules that come first in an out
// chain. Only flows known to be of a type the rules single out can match
// them; the source address is the interface's when Check chose it by it.
func (e *Evaluator) antispoof(w *walk, n *config.NIC, f Flow) {
	chain := ruleset.TapObject(n.Tap, "out")
	step := func(m match, what, note string) {
		w.step(m, config.Drop, Step{Chain: chain, What: what, File: n.VM.File, Line: n.Line, Note: note})
	}
	// DHCP-server traffic from a VM is dropped before anything else.
	if f.Src.Is6() {
		if f.ICMPKnown && f.Proto == config.ProtoICMPv6 {
			step(is(f.ICMPType == icmp6RouterAdvert), "antispoof", "router advertisements from a VM are dropped (antispoof)")
			step(is(f.ICMPType == icmp6Redirect), "antispoof", "redirects from a VM are dropped (antispoof)")
		}
		step(e.protoPorts(f, config.ProtoUDP, 547, 0), "antispoof", "DHCPv6 server traffic from a VM is dropped (antispoof)")
	} else {
		step(e.protoPorts(f, config.ProtoUDP, 67, 0), "antispoof", "DHCP server traffic from a VM is dropped (antispoof)")
	}
	if f.Src.IsUnspecified() {
		return // DHCP discovery, DAD: not flows anyone traces or tracks
	}
	if slices.Contains(n.IPs, f.Src) || f.Src.Is6() && f.Src.IsLinkLocalUnicast() {
		if w.record {
			w.steps = append(w.steps, Step{Chain: n.Tap + "-src", What: "antispoof", File: n.VM.File, Line: n.Line, Match: "no", Note: "source " + f.Src.String() + " is the interface's own (ips)"})
		}
		return
	}
	step(yes, "antispoof", "source "+f.Src.String()+" is not one of the interface's ips: spoofed, dropped")
}

// disabled walks the chain of an interface of a VM with enable = false:
// with drop_invalid the connection-state rules, then everything passes.
func (e *Evaluator) disabled(w *walk, n *config.NIC, chain string, f Flow) {
	if n.VM.DropInvalid {
		e.state(w, chain, f)
	}
	w.step(yes, config.Accept, Step{Chain: chain, What: "disabled", File: n.VM.File, Note: "VM disabled (enable = false): its interfaces pass unfiltered"})
}

// state walks the connection-tracking rules that follow anti-spoofing:
// INVALID packets are dropped. A flow's first packet is NEW, except an
// ICMP message that opens no connection: errors and replies without a
// connection they belong to are INVALID, and neighbour discovery and
// multicast listener messages are not tracked at all (UNTRACKED passes).
func (e *Evaluator) state(w *walk, chain string, f Flow) {
	if !f.ICMPKnown || (f.Proto != config.ProtoICMP && f.Proto != config.ProtoICMPv6) {
		if w.record {
			w.steps = append(w.steps, Step{Chain: chain, What: "state", Match: "no", Note: "first packet of a new connection (NEW): established and related rules do not apply"})
		}
		return
	}
	switch ctState(f) {
	case "INVALID":
		w.step(yes, config.Drop, Step{Chain: chain, What: "state", Note: fmt.Sprintf("ICMP type %d opens no connection and belongs to none: conntrack state INVALID, dropped", f.ICMPType)})
	case "UNTRACKED":
		if w.record {
			w.steps = append(w.steps, Step{Chain: chain, What: "state", Match: "no", Note: "neighbour discovery and multicast listener messages are not tracked (UNTRACKED)"})
		}
	default:
		if w.record {
			w.steps = append(w.steps, Step{Chain: chain, What: "state", Match: "no", Note: "first packet of a new connection (NEW)"})
		}
	}
}

// ctState is the conntrack state of a flow's first packet: NEW, INVALID or
// UNTRACKED (see state).
func ctState(f Flow) string {
	switch {
	case !f.ICMPKnown:
		return "NEW"
	case f.Proto == config.ProtoICMP:
		switch f.ICMPType {
		case 8, 13, 15, 17: // echo, timestamp, information, address mask requests
			return "NEW"
		}
		return "INVALID"
	case f.Proto == config.ProtoICMPv6:
		switch f.ICMPType {
		case 128, 139: // echo request, node information query
			return "NEW"
		case 130, 131, 132, 133, 134, 135, 136, 137, 143:
			return "UNTRACKED"
		}
		return "INVALID"
	}
	return "NEW"
}

// in walks the in chain of n. local says the hypervisor sends the packet:
// it then meets TAP-lin, whose groups' chains leave out the rules that
// match a source MAC (docs/routing.md).
func (e *Evaluator) in(w *walk, n *config.NIC, sender *config.NIC, f Flow, local bool) {
	chain := ruleset.TapObject(n.Tap, "in")
	if local && e.needsLocalIn(n) {
		chain = n.Tap + "-lin"
	}
	if !n.VM.Enable {
		e.disabled(w, n, chain, f)
		return
	}
	e.state(w, chain, f)
	if f.Dst.Is6() && f.ICMPKnown && f.Proto == config.ProtoICMPv6 && !n.NoNDP {
		switch f.ICMPType {
		case icmp6RouterSolicit, icmp6RouterAdvert, icmp6NeighSolicit, icmp6NeighAdvert:
			w.step(yes, config.Accept, Step{Chain: chain, What: "ndp", Note: "neighbour and router discovery to the VM is allowed"})
		}
	}
	if n.DHCP {
		if f.Dst.Is6() {
			w.step(e.protoPorts(f, config.ProtoUDP, 547, 546), config.Accept, Step{Chain: chain, What: "dhcp", Note: "DHCPv6 reply (dhcp = true)"})
		} else {
			w.step(e.protoPorts(f, config.ProtoUDP, 67, 68), config.Accept, Step{Chain: chain, What: "dhcp", Note: "DHCP reply (dhcp = true)"})
		}
	}
	for _, g := range n.Groups {
		lin := local && e.groupMatchesMAC(g)
		for i, r := range e.rules(g, config.In) {
			s := e.ruleStep(g, config.In, i, r)
			if lin {
				s.Chain = ruleset.GroupObject(g, "lin")
			}
			if lin && r.SourceMAC != nil {
				if w.record {
					s.Match, s.Note = "no", "not in the chain for packets the hypervisor sends: they have no source MAC"
					w.steps = append(w.steps, s)
				}
				continue
			}
			w.step(e.matchRule(r, f, sender), r.Action, e.setStep(s, r, f))
		}
	}
	w.step(yes, n.VM.PolicyIn, Step{Chain: chain, What: "policy", File: n.VM.File, Note: "policy_in = " + string(n.VM.PolicyIn) + ": no rule matched"})
}

// needsLocalIn reports whether n has TAP-lin: one of its groups has an in
// rule matching a source MAC.
func (e *Evaluator) needsLocalIn(n *config.NIC) bool {
	return slices.ContainsFunc(n.Groups, e.groupMatchesMAC)
}

// groupMatchesMAC reports whether group g has an in rule matching a
// source MAC, and so a chain sg-g-lin without them.
func (e *Evaluator) groupMatchesMAC(g string) bool {
	return slices.ContainsFunc(e.rules(g, config.In), func(r config.Rule) bool { return r.SourceMAC != nil })
}

// ruleStep describes rule i of group g's direction d.
func (e *Evaluator) ruleStep(g string, d config.Direction, i int, r config.Rule) Step {
	s := Step{Chain: ruleset.GroupObject(g, string(d)), What: "rule", Group: g, Rule: i + 1, Line: r.Line, Note: r.Comment}
	if grp := e.groups[g]; grp != nil {
		s.File = grp.File
	}
	return s
}

// setStep adds to step s of rule r the address set r looks f's address
// up in and the prefix that decided, for vmfw trace: "the source is in
// blocked, by 198.51.100.0/24 at line 4". It is only computed when a walk
// records steps.
func (e *Evaluator) setStep(s Step, r config.Rule, f Flow) Step {
	name, a := r.SourceSet, f.Src
	if name == "" {
		name, a = r.DestSet, f.Dst
	}
	set := e.sets[name]
	if set == nil {
		return s
	}
	s.Set, s.SetFile = name, set.File
	if entry, matched := set.Match(a); entry.Prefix.IsValid() {
		s.SetEntry, s.SetLine = entry.Prefix.String(), entry.Line
		if !matched {
			s.SetEntry = "except " + s.SetEntry
		}
	}
	return s
}

func (e *Evaluator) rules(group string, d config.Direction) []config.Rule {
	g := e.groups[group]
	if g == nil {
		return nil
	}
	return g.Rules(d)
}

// match is a three-valued match result.
type match int

const (
	no match = iota
	maybe
	yes
)

func (m match) String() string {
	switch m {
	case yes:
		return "yes"
	case maybe:
		return "maybe"
	}
	return "no"
}

func is(b bool) match {
	if b {
		return yes
	}
	return no
}

// both is the result of two conditions a rule needs at once.
func both(a, b match) match { return min(a, b) }

// walk follows a chain rule by rule, keeping every verdict the packet may
// get: a rule that surely matches ends the walk, one that may match adds
// its verdict and lets the walk go on. With record it also keeps the
// steps, for Explain; Check leaves it off, as it runs for every tracked
// connection after an edit.
type walk struct {
	allow, deny, done bool
	// action is what the rule that surely matched does.
	action config.Action
	record bool
	steps  []Step
}

func (w *walk) step(m match, a config.Action, s Step) {
	if w.done || m == no {
		return
	}
	if a == config.Accept {
		w.allow = true
	} else {
		w.deny = true
	}
	w.done = m == yes
	if w.done {
		w.action = a
	}
	if w.record {
		s.Match, s.Action = m.String(), a
		w.steps = append(w.steps, s)
	}
}

func (w *walk) verdict() Verdict {
	switch {
	case w.allow && !w.deny:
		return Allow
	case w.deny && !w.allow:
		return Deny
	}
	return Unknown
}

// protoPorts matches a built-in exception of the tap chains: protocol
// proto with source port sport and, when not 0, destination port dport.
func (e *Evaluator) protoPorts(f Flow, proto uint8, sport, dport uint16) match {
	if f.Proto != proto {
		return no
	}
	if f.PortsUnknown {
		return maybe
	}
	return is(f.SPort == sport && (dport == 0 || f.DPort == dport))
}

// matchRule matches one group rule. sender is the sending interface for
// in rules (for source_mac), nil if unknown or not an interface.
func (e *Evaluator) matchRule(r config.Rule, f Flow, sender *config.NIC) match {
	m := e.matchProto(r, f)
	if m == no {
		return no
	}
	m = both(m, matchPorts(r.SPort, f.SPort, f.PortsUnknown))
	m = both(m, matchPorts(r.DPort, f.DPort, f.PortsUnknown))
	if len(r.Source) > 0 {
		m = both(m, is(containedIn(r.Source, f.Src)))
	}
	if len(r.Dest) > 0 {
		m = both(m, is(containedIn(r.Dest, f.Dst)))
	}
	if r.SourceGroup != "" {
		m = both(m, is(e.members[r.SourceGroup][f.Src]))
	}
	if r.DestGroup != "" {
		m = both(m, is(e.members[r.DestGroup][f.Dst]))
	}
	if r.SourceSet != "" {
		m = both(m, is(e.inSet(r.SourceSet, f.Src)))
	}
	if r.DestSet != "" {
		m = both(m, is(e.inSet(r.DestSet, f.Dst)))
	}
	if r.SourceMAC != nil {
		m = both(m, e.matchMAC(r.SourceMAC, sender))
	}
	return m
}

// matchProto matches proto and icmp_type. A rule for icmp exists only in
// the IPv4 table and one for icmpv6 only in the IPv6 table; "-p 0" means
// every protocol to iptables.
func (e *Evaluator) matchProto(r config.Rule, f Flow) match {
	switch r.Proto {
	case "", "0":
		return yes
	case "icmp":
		if !f.Src.Is4() || f.Proto != config.ProtoICMP {
			return no
		}
		return matchICMPType(r, f, icmpQueries)
	case "icmpv6":
		if !f.Src.Is6() || f.Proto != config.ProtoICMPv6 {
			return no
		}
		return matchICMPType(r, f, icmpv6Queries)
	case "tcp":
		return is(f.Proto == config.ProtoTCP)
	case "udp":
		return is(f.Proto == config.ProtoUDP)
	case "sctp":
		return is(f.Proto == config.ProtoSCTP)
	}
	n, err := strconv.Atoi(r.Proto)
	return is(err == nil && n == int(f.Proto))
}

// matchICMPType matches the icmp_type of a rule for r.Proto (icmp or
// icmpv6) on a flow of that protocol. A flow whose type is not known (a
// tracked one) may match only a rule for a query type, one of queries (see
// icmpQueries).
func matchICMPType(r config.Rule, f Flow, queries map[string]bool) match {
	if r.ICMPType == "" {
		return yes
	}
	if f.ICMPKnown {
		return is(icmpMatches(r.Proto, r.ICMPType, f.ICMPType, f.ICMPCode))
	}
	return min(maybe, is(queries[r.ICMPType]))
}

func matchPorts(ranges []config.PortRange, port uint16, unknown bool) match {
	if len(ranges) == 0 {
		return yes
	}
	if unknown {
		return maybe
	}
	for _, p := range ranges {
		if port >= p.Lo && port <= p.Hi {
			return yes
		}
	}
	return no
}

// inSet reports whether a matches address set name: its most specific
// prefix containing a is an entry, not an except. An unknown set (which
// validation refuses) matches nothing.
func (e *Evaluator) inSet(name string, a netip.Addr) bool {
	s := e.sets[name]
	if s == nil {
		return false
	}
	_, matched := s.Match(a)
	return matched
}

func containedIn(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// matchMAC matches source_mac. A sending interface configured with a MAC
// sends with it. Otherwise the frame's source MAC is not known, but a MAC
// configured for an interface is that interface's: a frame carrying it
// comes from there, and the address Check identified the sender by says it
// did not — unless that interface may send from any address (antispoof
// off, or "mac") while it is attached.
func (e *Evaluator) matchMAC(mac net.HardwareAddr, sender *config.NIC) match {
	if sender != nil && sender.MAC != nil {
		return is(string(sender.MAC) == string(mac))
	}
	owner := e.macs[string(mac)]
	if owner == nil || owner == sender {
		return maybe
	}
	if (!owner.Antispoof || owner.AntispoofMACOnly) && e.isAttached(owner) {
		return maybe
	}
	return no
}

func (e *Evaluator) isAttached(n *config.NIC) bool {
	for _, ip := range n.IPs {
		if e.nics[ip] == n {
			return true
		}
	}
	// An interface without addresses cannot be found by address; treat it
	// as attached, which only ever makes the answer less certain.
	return len(n.IPs) == 0
}
