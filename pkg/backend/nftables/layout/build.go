// Package layout lays a policy out as the nftables backend's two tables
// (docs/nftables.md): table bridge vmfw, which dispatches on bridge ports
// with static chains and per-interface set elements and holds the group
// chains, and table inet vmfw, which passes connection tracking state to
// it in mark bits and rejects what the bridge chains marked. The layout
// depends on the interfaces only through set elements, so attaching or
// detaching one never adds a rule or a jump. It is pure: no netlink, no
// files; golden files (testdata) hold its nft text.
package layout

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Ruleset is the desired content of vmfw's two tables.
type Ruleset struct {
	Bridge *Table
	Inet   *Table
}

// Tables returns both tables, bridge first.
func (rs *Ruleset) Tables() []*Table { return []*Table{rs.Bridge, rs.Inet} }

// Priorities of vmfw's base chains (docs/nftables.md, "Hooks").
const (
	// bridgePriority runs the bridge chains before br_netfilter hands a
	// packet to the IP hooks (priority 0, forward -1), so the inet
	// chains that reject run after them.
	bridgePriority = -200
	// guardPriority runs the reject guard after every filter.
	guardPriority = 200
	// statePriority runs after connection tracking (-200).
	statePriority = -150
	// inetPriority runs the inet forward, input and output chains before
	// the iptables filter table (0), whose hook rule reads the mark.
	inetPriority = -10
)

// ICMPv6 types of neighbour discovery.
const (
	ndRouterSolicit = 133
	ndRouterAdvert  = 134
	ndNeighSolicit  = 135
	ndNeighAdvert   = 136
	ndRedirect      = 137
	mldReport       = 143
)

// Build lays out p with the mark bits of m.
func Build(p *ruleset.Policy, m Marks) *Ruleset {
	b := &builder{p: p, m: m}
	return &Ruleset{Bridge: b.bridge(), Inet: b.inet()}
}

// Static lays out what of p does not depend on its interfaces' elements
// or its groups: the chains and sets of a policy with p's host settings
// and no interface, but with the policy log rules of the levels p's
// interfaces log at (loglevels.go), which the policy chains hold. A
// scoped plan (the nftables backend's) checks the tables against it.
func Static(p *ruleset.Policy, m Marks) *Ruleset {
	levels := map[config.Direction][]config.LogLevel{}
	for _, d := range []config.Direction{config.In, config.Out} {
		levels[d] = extraLevels(p, d)
	}
	empty := &ruleset.Policy{Host: p.Host, Groups: map[string]*ruleset.Group{}, Members: map[string]*ruleset.Members{}, Sets: map[string]*ruleset.Set{}}
	b := &builder{p: empty, m: m, levels: levels}
	return &Ruleset{Bridge: b.bridge(), Inet: b.inet()}
}

type builder struct {
	p *ruleset.Policy
	m Marks
	// levels, when not nil, are the log levels the policy chains log at
	// other than the default, by direction, instead of those of p's
	// interfaces (Static).
	levels map[config.Direction][]config.LogLevel
	// placed caches every interface's elements for both tables.
	placed [][]Placed
}

// interfaceElements returns every interface's elements, laid out once
// for both tables.
func (b *builder) interfaceElements() [][]Placed {
	if b.placed == nil {
		b.placed = make([][]Placed, len(b.p.Interfaces))
		for i, n := range b.p.Interfaces {
			b.placed[i] = InterfaceElements(b.p, n)
		}
	}
	return b.placed
}

// rule builds a rule from expressions.
func rule(e ...Expr) Rule { return Rule{Exprs: e} }

func verdict(k VerdictKind) *Verdict  { return &Verdict{Kind: k} }
func jump(chain string) *Verdict      { return &Verdict{Kind: Jump, Chain: chain} }
func goTo(chain string) *Verdict      { return &Verdict{Kind: Goto, Chain: chain} }
func in(f Field, set string) *Lookup  { return &Lookup{Fields: []Field{f}, Set: set} }
func notIn(f Field, s string) *Lookup { return &Lookup{Fields: []Field{f}, Set: s, Neg: true} }
func eq(f Field, v Value) *Cmp        { return &Cmp{Field: f, Value: v} }

func (b *builder) setMark(bits uint32) *SetMark { return &SetMark{Set: bits} }

// marked matches packets carrying bit.
func marked(bit uint32) *Cmp {
	return &Cmp{Field: FMark, Mask: Mark(bit).Bytes, Value: Mark(bit)}
}

var (
	isIPv4 = eq(FProtocol, EtherType(0x0800))
	isIPv6 = eq(FProtocol, EtherType(0x86dd))
	isARP  = eq(FProtocol, EtherType(0x0806))
)

// isIP matches IPv4 and IPv6.
func isIP() *Anon {
	return &Anon{Field: FProtocol, Elems: []Interval{single(EtherType(0x0800)), single(EtherType(0x86dd))}}
}

// nonIP matches frames that are neither IPv4 nor IPv6. nft has no
// negated anonymous set that the kernel evaluates in one step, so the
// two comparisons stand side by side.
func nonIP() []Expr {
	return []Expr{
		&Cmp{Field: FProtocol, Neg: true, Value: EtherType(0x0800)},
		&Cmp{Field: FProtocol, Neg: true, Value: EtherType(0x86dd)},
	}
}

func single(v Value) Interval { return Interval{v, v} }

func proto(n uint8) *Cmp { return eq(FL4Proto, Proto(n)) }

// portField returns the source or destination port field of a protocol,
// named as nft names it.
func portField(protoName string, dport bool) Field {
	f := FSport
	dir := "sport"
	if dport {
		f, dir = FDport, "dport"
	}
	switch protoName {
	case "tcp", "udp", "sctp":
		f.Name = protoName + " " + dir
	}
	return f
}

// udpPorts matches UDP from sport to dport (0: any), the DHCP rules.
func udpPorts(sport, dport uint16) []Expr {
	e := []Expr{proto(17), eq(portField("udp", false), Port(sport))}
	if dport != 0 {
		e = append(e, eq(portField("udp", true), Port(dport)))
	}
	return e
}

// icmp6Types matches ICMPv6 of the types listed.
func icmp6Types(types ...uint8) []Expr {
	e := []Expr{isIPv6, proto(58)}
	if len(types) == 1 {
		return append(e, eq(FICMP6Type, Byte(TypeICMPv6, types[0])))
	}
	a := &Anon{Field: FICMP6Type}
	for _, t := range types {
		a.Elems = append(a.Elems, single(Byte(TypeICMPv6, t)))
	}
	return append(e, a)
}

func with(e []Expr, more ...Expr) []Expr { return append(slices.Clone(e), more...) }

// bridge lays out table bridge vmfw.
func (b *builder) bridge() *Table {
	t := &Table{Family: Bridge}
	t.Sets = b.tableSets(Bridge)
	t.Chains = append(t.Chains, b.baseChains()...)
	t.Chains = append(t.Chains, b.l2Chain(), b.outChain(), b.spoofChain(), b.inChain())
	t.Chains = append(t.Chains, b.dropChains()...)
	t.Chains = append(t.Chains, b.policyChains()...)
	for _, g := range slices.Sorted(maps.Keys(b.p.Groups)) {
		for _, d := range []config.Direction{config.In, config.Out} {
			t.Chains = append(t.Chains, b.groupChain(b.p.Groups[g], d))
		}
	}
	for _, l := range Lists(b.p) {
		t.Chains = append(t.Chains, b.listChains(l)...)
	}
	return t
}

// failClosed returns the drops of IP packets from (or to) a managed
// interface vmfw did not attach: fail-closed (docs/design.md).
func (b *builder) failClosed(f Field) []Rule {
	var out []Rule
	for _, pat := range b.p.Host.Managed {
		out = append(out, Rule{Exprs: []Expr{isIP(), ifnamePattern(f, pat), notIn(f, SetPorts), verdict(Drop)}, Comment: "fail-closed"})
	}
	return out
}

// ifnamePattern matches an interface name or, with a trailing "+", every
// name starting with what precedes it (nft writes "tap*").
func ifnamePattern(f Field, pattern string) *Cmp {
	if stem, wild := strings.CutSuffix(pattern, "+"); wild {
		return &Cmp{Field: f, Value: Value{TypeIfname, []byte(stem)}}
	}
	return eq(f, Ifname(pattern))
}

// baseChains are the bridge table's base chains.
func (b *builder) baseChains() []*Chain {
	m := b.m
	pre := &Chain{Name: ChainPrerouting, Hook: &Hook{"prerouting", bridgePriority}, Rules: []Rule{
		rule(&SetMark{Clear: m.Mask}),
		rule(in(FIifname, SetAntispoof), jump(ChainL2)),
		rule(in(FIifname, SetAntispoofMAC), jump(ChainL2)),
	}}
	fwd := &Chain{Name: ChainForward, Hook: &Hook{"forward", bridgePriority}}
	fwd.Rules = append(fwd.Rules, b.failClosed(FIifname)...)
	fwd.Rules = append(fwd.Rules, b.failClosed(FOifname)...)
	fwd.Rules = append(fwd.Rules,
		rule(in(FIifname, SetPorts), jump(ChainOut)),
		rule(in(FOifname, SetPorts), jump(ChainIn)))
	input := &Chain{Name: ChainInput, Hook: &Hook{"input", bridgePriority}}
	input.Rules = append(input.Rules, b.failClosed(FIifname)...)
	input.Rules = append(input.Rules, rule(in(FIifname, SetPorts), jump(ChainOut)))
	post := &Chain{Name: ChainPostrouting, Hook: &Hook{"postrouting", bridgePriority}, Rules: []Rule{
		rule(marked(m.Seen), verdict(Return)),
		rule(append(nonIP(), verdict(Return))...),
		{Exprs: []Expr{&Cmp{Field: FEtherDst, Mask: []byte{1, 0, 0, 0, 0, 0}, Value: Value{TypeEther, []byte{1, 0, 0, 0, 0, 0}}}, verdict(Return)}, Comment: "multicast"},
		{Exprs: with(icmp6Types(ndRouterSolicit, ndRouterAdvert, ndNeighSolicit, ndNeighAdvert, ndRedirect),
			&Cmp{Field: FIP6Dst, Mask: prefixMask(10, 16), Value: Addr(netip.MustParseAddr("fe80::"))},
			verdict(Return)), Comment: "link-local neighbour discovery"},
		rule(in(FOifname, SetPorts), jump(ChainIn)),
	}}
	post.Rules = append(post.Rules, b.failClosed(FOifname)...)
	guard := &Chain{Name: ChainRejectGuard, Hook: &Hook{"postrouting", guardPriority}, Rules: []Rule{
		{Exprs: []Expr{marked(m.Rej), verdict(Drop)}, Comment: "reject not executed"},
	}}
	return []*Chain{pre, fwd, input, post, guard}
}

// prefixMask returns the mask of a prefix of ones bits in n bytes.
func prefixMask(ones, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < ones; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return b
}

// l2Chain checks what an interface with anti-spoofing sends at layer 2,
// as the iptables backend's ebtables chains do: its MAC as source, ARP
// only for its IPv4 addresses (and probes from 0.0.0.0), and besides
// IPv4, IPv6 and ARP only the ethertypes in l2_protocols.
func (b *builder) l2Chain() *Chain {
	arp := []Expr{isARP}
	return &Chain{Name: ChainL2, Rules: []Rule{
		{Exprs: []Expr{in(FIifname, SetHasMAC), &Lookup{Fields: []Field{FIifname, FEtherSrc}, Set: SetMACs, Neg: true}, goTo(ChainDropOut)}, Comment: "antispoof mac"},
		rule(with(arp, in(FIifname, SetHasMAC), &Lookup{Fields: []Field{FIifname, FARPSha}, Set: SetMACs, Neg: true}, goTo(ChainDropOut))...),
		{Exprs: []Expr{in(FIifname, SetAntispoofMAC), verdict(Return)}, Comment: "antispoof mac only"},
		rule(with(arp, eq(FARPPtype, EtherType(0x0800)), eq(FARPHlen, Byte(TypeInteger, 6)), eq(FARPPlen, Byte(TypeInteger, 4)),
			&Lookup{Fields: []Field{FIifname, FARPSpa}, Set: SetSrc4}, verdict(Return))...),
		rule(with(arp, eq(FARPPtype, EtherType(0x0800)), eq(FARPHlen, Byte(TypeInteger, 6)), eq(FARPPlen, Byte(TypeInteger, 4)),
			eq(FARPSpa, Addr(netip.IPv4Unspecified())), verdict(Return))...),
		{Exprs: with(arp, goTo(ChainDropOut)), Comment: "antispoof arp"},
		rule(isIP(), verdict(Return)),
		rule(&Lookup{Fields: []Field{FIifname, FProtocol}, Set: SetL2Proto}, verdict(Return)),
		{Exprs: []Expr{goTo(ChainDropOut)}, Comment: "antispoof ethertype"},
	}}
}

// outChain is what the iptables backend's TAP-out does, for every
// interface at once: per-interface settings are set elements.
func (b *builder) outChain() *Chain {
	m := b.m
	acc := b.setMark(m.Acc)
	c := &Chain{Name: ChainOut, Rules: []Rule{
		{Exprs: []Expr{in(FIifname, SetDropInvalid), marked(m.Inv), verdict(Drop)}, Comment: "vm disabled, drop_invalid"},
		{Exprs: []Expr{in(FIifname, SetDisabled), acc, verdict(Return)}, Comment: "vm disabled"},
		rule(append(nonIP(), verdict(Return))...),
		rule(in(FIifname, SetAntispoof), jump(ChainSpoof)),
		rule(marked(m.Acc), verdict(Return)),
		{Exprs: []Expr{marked(m.Inv), goTo(ChainDropOut)}, Comment: "invalid"},
		rule(marked(m.Est), acc, verdict(Return)),
		rule(with(icmp6Types(ndRouterSolicit, ndNeighSolicit, ndNeighAdvert), notIn(FIifname, SetNoNDP), acc, verdict(Return))...),
		{Exprs: with(with([]Expr{isIPv6, in(FIifname, SetDHCP)}, udpPorts(546, 547)...), acc, verdict(Return)), Comment: "dhcpv6 client"},
		{Exprs: with(with([]Expr{isIPv4, in(FIifname, SetDHCP)}, udpPorts(68, 67)...), acc, verdict(Return)), Comment: "dhcp client"},
	}}
	c.Rules = append(c.Rules, b.dispatch(config.Out)...)
	// The policy's rules carry the direction as their origin, so that a
	// trace names the interface's policy (its tap is the packet's port).
	o := ruleset.Origin{Dir: config.Out}
	c.Rules = append(c.Rules,
		Rule{Exprs: []Expr{in(FIifname, SetOutAccept), acc, verdict(Return)}, Origin: o},
		Rule{Exprs: []Expr{in(FIifname, SetOutReject), goTo(ChainPolRejOut)}, Origin: o},
		Rule{Exprs: []Expr{goTo(ChainPolicyOut)}, Origin: o})
	return c
}

// spoofChain is the IP part of anti-spoofing: no DHCP or DHCPv6 server,
// router advertisement or redirect from the VM, DHCP discovery before it
// has an address, neighbour advertisements only for its own (or
// link-local) targets, and every other packet from one of its addresses
// (IPv6 also from link-local, and the unspecified address for duplicate
// address detection and MLD reports).
func (b *builder) spoofChain() *Chain {
	acc := b.setMark(b.m.Acc)
	drop := goTo(ChainDropOut)
	fe80 := &Cmp{Field: FIP6Src, Mask: prefixMask(10, 16), Value: Addr(netip.MustParseAddr("fe80::"))}
	unspec6 := eq(FIP6Src, Addr(netip.IPv6Unspecified()))
	return &Chain{Name: ChainSpoof, Rules: []Rule{
		{Exprs: with(with([]Expr{isIPv4}, udpPorts(67, 0)...), drop), Comment: "no dhcp server"},
		{Exprs: with(with([]Expr{isIPv4, in(FIifname, SetDHCP), eq(FIPSrc, Addr(netip.IPv4Unspecified())), eq(FIPDst, Addr(netip.MustParseAddr("255.255.255.255")))}, udpPorts(68, 67)...), acc, verdict(Return)), Comment: "dhcp discover"},
		{Exprs: with(icmp6Types(ndRouterAdvert), drop), Comment: "no router advertisement"},
		{Exprs: with(icmp6Types(ndRedirect), drop), Comment: "no redirect"},
		{Exprs: with(with([]Expr{isIPv6}, udpPorts(547, 0)...), drop), Comment: "no dhcpv6 server"},
		{Exprs: with(icmp6Types(ndNeighAdvert), &Cmp{Field: FNDTarget, Mask: prefixMask(10, 16), Value: Addr(netip.MustParseAddr("fe80::"))}, verdict(Return)), Comment: "link-local target"},
		rule(with(icmp6Types(ndNeighAdvert), &Lookup{Fields: []Field{FIifname, FNDTarget}, Set: SetSrc6}, verdict(Return))...),
		{Exprs: with(icmp6Types(ndNeighAdvert), drop), Comment: "antispoof nd target"},
		rule(isIPv4, &Lookup{Fields: []Field{FIifname, FIPSrc}, Set: SetSrc4}, verdict(Return)),
		{Exprs: []Expr{isIPv6, fe80, verdict(Return)}, Comment: "link-local"},
		{Exprs: with(icmp6Types(ndNeighSolicit), unspec6, verdict(Return)), Comment: "dad"},
		{Exprs: with(icmp6Types(mldReport), unspec6, verdict(Return)), Comment: "mld report"},
		rule(isIPv6, &Lookup{Fields: []Field{FIifname, FIP6Src}, Set: SetSrc6}, verdict(Return)),
		{Exprs: []Expr{drop}, Comment: "antispoof ip"},
	}}
}

// inChain is what the iptables backend's TAP-in does, for every
// interface: entered on the bridge's forward path for bridged packets
// and at postrouting for routed and host-sent ones. Its first rule drops
// a unicast frame to the port of a VM with a MAC and anti-spoofing that is
// not addressed to that MAC, as the iptables backend's TAP-l2d chains do:
// the bridge floods unicast it has not learnt the destination of to every
// port, and each copy would otherwise meet the in rules of the VM behind
// that port, whose reject (a reset, an unreachable) would answer another
// VM's traffic in its name. The guest's NIC would ignore the frame, so
// nothing is lost; it is no drop of the VM's rules and is not counted as
// one. Running at bridgePriority, before br_netfilter hands the packet to
// the inet chains that execute rejects, the drop also stops the reject.
// Its second rule marks the packet as seen by an in chain (and allowed so
// far).
func (b *builder) inChain() *Chain {
	m := b.m
	unicast := &Cmp{Field: FEtherDst, Mask: []byte{1, 0, 0, 0, 0, 0}, Value: Value{TypeEther, []byte{0, 0, 0, 0, 0, 0}}}
	c := &Chain{Name: ChainIn, Rules: []Rule{
		{Exprs: []Expr{in(FOifname, SetHasMAC), unicast, &Lookup{Fields: []Field{FOifname, FEtherDst}, Set: SetMACs, Neg: true}, verdict(Drop)}, Comment: "not to its mac"},
		rule(b.setMark(m.Acc | m.Seen)),
		{Exprs: []Expr{in(FOifname, SetDropInvalid), marked(m.Inv), verdict(Drop)}, Comment: "vm disabled, drop_invalid"},
		{Exprs: []Expr{in(FOifname, SetDisabled), verdict(Accept)}, Comment: "vm disabled"},
		rule(append(nonIP(), verdict(Accept))...),
		{Exprs: []Expr{marked(m.Inv), goTo(ChainDropIn)}, Comment: "invalid"},
		rule(marked(m.Est), verdict(Accept)),
		rule(with(icmp6Types(ndRouterSolicit, ndRouterAdvert, ndNeighSolicit, ndNeighAdvert), notIn(FOifname, SetNoNDP), verdict(Accept))...),
		{Exprs: with(with([]Expr{isIPv6, in(FOifname, SetDHCP)}, udpPorts(547, 546)...), verdict(Accept)), Comment: "dhcpv6 reply"},
		{Exprs: with(with([]Expr{isIPv4, in(FOifname, SetDHCP)}, udpPorts(67, 68)...), verdict(Accept)), Comment: "dhcp reply"},
	}}
	c.Rules = append(c.Rules, b.dispatch(config.In)...)
	o := ruleset.Origin{Dir: config.In}
	c.Rules = append(c.Rules,
		Rule{Exprs: []Expr{in(FOifname, SetInAccept), verdict(Accept)}, Origin: o},
		Rule{Exprs: []Expr{in(FOifname, SetInReject), goTo(ChainPolRejIn)}, Origin: o},
		Rule{Exprs: []Expr{goTo(ChainPolicyIn)}, Origin: o})
	return c
}

// dispatch takes a packet to the groups of its interface, in the
// interface's order, with one lookup whatever the number of groups and
// interfaces (docs/nftables.md, "Ordered groups"): the interface's
// element of gl-out (gl-in) jumps to the chain of its group list, which
// jumps to each group's chain in turn. An interface that lists no group
// has no element and goes on to its policy. Out chains return when a
// group allowed the packet; in chains decide for good.
func (b *builder) dispatch(d config.Direction) []Rule {
	if d == config.Out {
		return []Rule{
			rule(&VMap{Field: FIifname, Map: MapListsOut}),
			rule(marked(b.m.Acc), verdict(Return)),
		}
	}
	return []Rule{rule(&VMap{Field: FOifname, Map: MapListsIn})}
}

// Lists returns the distinct group lists of p's enabled interfaces, in the
// order of their chains' names: one pair of list chains each.
func Lists(p *ruleset.Policy) [][]string {
	seen := map[string]bool{}
	byKey := map[string][]string{}
	for _, n := range p.Interfaces {
		if n.Enabled && len(n.Groups) > 0 {
			if k := strings.Join(n.Groups, "\x00"); !seen[k] {
				seen[k] = true
				byKey[ListKey(n.Groups)] = n.Groups
			}
		}
	}
	out := make([][]string, 0, len(byKey))
	for _, k := range slices.Sorted(maps.Keys(byKey)) {
		out = append(out, byKey[k])
	}
	return out
}

// ListChains lays out the two chains of a group list (in, then out).
func ListChains(groups []string, m Marks) []*Chain {
	b := &builder{m: m}
	return b.listChains(groups)
}

// listChains jumps to each group's chain in the list's order; in the out
// direction a group that allowed the packet (ACC) ends the list, as in
// the iptables backend's TAP-out, where the first group that accepts
// decides.
func (b *builder) listChains(groups []string) []*Chain {
	var out []*Chain
	for _, d := range []config.Direction{config.In, config.Out} {
		c := &Chain{Name: ListChain(groups, d)}
		for i, g := range groups {
			c.Rules = append(c.Rules, Rule{Exprs: []Expr{jump(GroupChain(g, d))}})
			if d == config.Out && i < len(groups)-1 {
				c.Rules = append(c.Rules, rule(marked(b.m.Acc), verdict(Return)))
			}
		}
		out = append(out, c)
	}
	return out
}

// dropChains count what an interface's own rules drop or reject in its
// element of drops-out or drops-in, then drop or mark for reject.
func (b *builder) dropChains() []*Chain {
	rej := b.setMark(b.m.Rej)
	return []*Chain{
		{Name: ChainDropOut, Rules: []Rule{rule(in(FIifname, SetDropsOut), verdict(Drop)), rule(verdict(Drop))}},
		{Name: ChainDropIn, Rules: []Rule{rule(in(FOifname, SetDropsIn), verdict(Drop)), rule(verdict(Drop))}},
		{Name: ChainRejectOut, Rules: []Rule{rule(in(FIifname, SetDropsOut), rej, verdict(Accept)), rule(rej, verdict(Accept))}},
		{Name: ChainRejectIn, Rules: []Rule{rule(in(FOifname, SetDropsIn), rej, verdict(Accept)), rule(rej, verdict(Accept))}},
	}
}

// policyChains decide what no rule matched, drop or reject, logged for
// interfaces in log-out or log-in. The iptables backend names the tap in
// the log prefix; these chains are shared, so the prefix names the
// direction and the log line the interfaces (docs/nftables.md, "Logging").
func (b *builder) policyChains() []*Chain {
	mk := func(name string, f Field, set string, d config.Direction, a config.Action, then string) *Chain {
		c := &Chain{Name: name, Rules: []Rule{
			{Exprs: []Expr{in(f, set), b.limit(), b.log(ruleset.Origin{Dir: d}, a)}, Origin: ruleset.Origin{Dir: d}},
		}}
		c.Rules = append(c.Rules, b.levelLogRules(f, d, a)...)
		c.Rules = append(c.Rules, Rule{Exprs: []Expr{goTo(then)}, Origin: ruleset.Origin{Dir: d}})
		return c
	}
	return []*Chain{
		mk(ChainPolicyOut, FIifname, SetLogOut, config.Out, config.Drop, ChainDropOut),
		mk(ChainPolRejOut, FIifname, SetLogOut, config.Out, config.Reject, ChainRejectOut),
		mk(ChainPolicyIn, FOifname, SetLogIn, config.In, config.Drop, ChainDropIn),
		mk(ChainPolRejIn, FOifname, SetLogIn, config.In, config.Reject, ChainRejectIn),
	}
}

// limit is the rate limit of a log rule (log_limit, log_burst).
func (b *builder) limit() *Limit {
	rate, unit, _ := strings.Cut(b.p.Host.LogLimit, "/")
	n, _ := strconv.ParseUint(rate, 10, 64)
	return &Limit{Rate: n, Unit: unit, Burst: uint32(b.p.Host.LogBurst)}
}

// log returns the log statement for origin o and verdict a: NFLOG with
// the prefix vmfw log parses (ruleset.NFLOGPrefix; a policy's names no
// tap, which vmfw log takes from the packet), or the kernel log.
func (b *builder) log(o ruleset.Origin, a config.Action) *Log {
	if b.p.Host.LogGroup > 0 {
		return &Log{Prefix: ruleset.NFLOGPrefix(o, a), Group: b.p.Host.LogGroup}
	}
	object := "policy"
	if o.Group != "" {
		object = "sg-" + o.Group
	}
	prefix := "vmfw " + object + "-" + string(o.Dir) + " " + strings.ToUpper(string(a)) + " "
	return &Log{Prefix: prefix}
}

// GroupChains lays out the two chains of group g of policy p (in, then
// out).
func GroupChains(g *ruleset.Group, p *ruleset.Policy, m Marks) []*Chain {
	b := &builder{p: p, m: m}
	return []*Chain{b.groupChain(g, config.In), b.groupChain(g, config.Out)}
}

// groupChain compiles one direction of a group, as the iptables backend
// does: in chains decide for good, out chains mark what they allow and
// return so that the receiver's in rules still apply. A reject marks the
// packet and accepts it on the bridge; the inet table rejects it.
func (b *builder) groupChain(g *ruleset.Group, d config.Direction) *Chain {
	name := GroupChain(g.Name, d)
	c := &Chain{Name: name}
	for _, r := range g.Rules(d) {
		for _, match := range b.ruleMatches(r) {
			if r.Log {
				l := b.log(r.Origin, r.Action)
				if r.LogLevel != config.DefaultLogLevel && r.LogLevel != config.LogOff {
					l.Level = string(r.LogLevel)
				}
				c.Rules = append(c.Rules, Rule{Exprs: with(match, b.limit(), l), Origin: r.Origin})
			}
			var action []Expr
			switch {
			case r.Action == config.Drop:
				action = []Expr{verdict(Drop)}
			case r.Action == config.Reject:
				action = []Expr{b.setMark(b.m.Rej), verdict(Accept)}
			case d == config.In:
				action = []Expr{verdict(Accept)}
			default:
				action = []Expr{b.setMark(b.m.Acc), verdict(Return)}
			}
			c.Rules = append(c.Rules, Rule{Exprs: with(match, action...), Comment: r.Comment, Origin: r.Origin})
		}
	}
	return c
}

// ruleMatches returns the matches one policy rule becomes: one per
// family it applies to when it names addresses, a group or an ICMP type
// (which exist in one family), else one for both.
func (b *builder) ruleMatches(r ruleset.Rule) [][]Expr {
	m := r.Match
	familySpecific := len(m.Source) > 0 || len(m.Dest) > 0 || m.SourceGroup != "" || m.DestGroup != "" || m.SourceSet != "" || m.DestSet != "" || m.Proto.Family() != 0
	if !familySpecific {
		return [][]Expr{b.protoMatch(m)}
	}
	var out [][]Expr
	for _, f := range ruleset.Families {
		if pf := m.Proto.Family(); pf != 0 && pf != f {
			continue
		}
		e := []Expr{isIPv4}
		src, dst := FIPSrc, FIPDst
		if f == ruleset.IPv6 {
			e = []Expr{isIPv6}
			src, dst = FIP6Src, FIP6Dst
		}
		e = append(e, b.protoMatch(m)...)
		var ok bool
		if e, ok = addrMatch(e, src, f, m.Source); !ok {
			continue
		}
		if e, ok = addrMatch(e, dst, f, m.Dest); !ok {
			continue
		}
		if m.SourceGroup != "" {
			e = append(e, in(src, MemberSet(m.SourceGroup, f)))
		}
		if m.DestGroup != "" {
			e = append(e, in(dst, MemberSet(m.DestGroup, f)))
		}
		e = addressSetMatch(e, src, m.SourceSet, f)
		e = addressSetMatch(e, dst, m.DestSet, f)
		out = append(out, e)
	}
	return out
}

// protoMatch matches the protocol, ICMP type, ports and source MAC.
func (b *builder) protoMatch(m ruleset.Match) []Expr {
	var e []Expr
	if !m.Proto.IsAny() {
		e = append(e, proto(m.Proto.Number))
	}
	if !m.ICMP.IsAny() {
		tf, cf, tt := FICMPType, FICMPCode, TypeICMP
		if m.Proto.Name == "icmpv6" {
			tf, cf, tt = FICMP6Type, FICMP6Code, TypeICMPv6
		}
		e = append(e, eq(tf, Byte(tt, m.ICMP.Type)))
		if m.ICMP.Code >= 0 {
			e = append(e, eq(cf, Byte(TypeInteger, uint8(m.ICMP.Code))))
		}
	}
	e = append(e, portMatch(portField(m.Proto.Name, false), m.SPorts)...)
	e = append(e, portMatch(portField(m.Proto.Name, true), m.DPorts)...)
	if m.SourceMAC != nil {
		e = append(e, eq(FEtherSrc, Ether(m.SourceMAC)))
	}
	return e
}

func portMatch(f Field, ports []config.PortRange) []Expr {
	switch {
	case len(ports) == 0:
		return nil
	case len(ports) == 1 && ports[0].Lo == ports[0].Hi:
		return []Expr{eq(f, Port(ports[0].Lo))}
	}
	a := &Anon{Field: f}
	for _, p := range ports {
		a.Elems = append(a.Elems, Interval{Port(p.Lo), Port(p.Hi)})
	}
	sortIntervals(a.Elems)
	return []Expr{a}
}

// addrMatch restricts e to the prefixes of family f; ok is false when
// prefixes are given but none is of f (the rule does not apply to f).
func addrMatch(e []Expr, field Field, f ruleset.Family, prefixes []netip.Prefix) ([]Expr, bool) {
	if len(prefixes) == 0 {
		return e, true
	}
	var mine []netip.Prefix
	for _, p := range prefixes {
		if ruleset.FamilyOf(p.Addr()) == f {
			mine = append(mine, p.Masked())
		}
	}
	switch len(mine) {
	case 0:
		return e, false
	case 1:
		p := mine[0]
		if p.Bits() == p.Addr().BitLen() {
			return append(e, eq(field, Addr(p.Addr()))), true
		}
		return append(e, &Cmp{Field: field, Mask: prefixMask(p.Bits(), p.Addr().BitLen()/8), Value: Addr(p.Addr())}), true
	}
	a := &Anon{Field: field}
	for _, p := range mine {
		a.Elems = append(a.Elems, PrefixInterval(p))
	}
	sortIntervals(a.Elems)
	a.Elems = mergeIntervals(a.Elems)
	return append(e, a), true
}

// sortIntervals orders intervals by their start.
func sortIntervals(l []Interval) {
	sort.SliceStable(l, func(i, j int) bool { return string(l[i].Lo.Bytes) < string(l[j].Lo.Bytes) })
}

// mergeIntervals joins overlapping sorted intervals: the kernel refuses
// overlapping elements in an interval set.
func mergeIntervals(l []Interval) []Interval {
	var out []Interval
	for _, iv := range l {
		if n := len(out); n > 0 && string(iv.Lo.Bytes) <= string(out[n-1].Hi.Bytes) {
			if string(iv.Hi.Bytes) > string(out[n-1].Hi.Bytes) {
				out[n-1].Hi = iv.Hi
			}
			continue
		}
		out = append(out, iv)
	}
	return out
}

// Placed is an element and the set or map of vmfw's tables it is in.
type Placed struct {
	Family  Family
	Set     string
	Element Element
}

// SetDefs returns the sets and maps of both tables a layout of p has,
// without their elements, by family and name.
func SetDefs(p *ruleset.Policy) map[Family]map[string]*Set {
	bridge := map[string]*Set{}
	def := func(name string, counter bool, key ...Type) {
		bridge[name] = &Set{Name: name, Key: key, Counter: counter}
	}
	for _, name := range []string{SetPorts, SetDisabled, SetDropInvalid, SetAntispoof, SetHasMAC, SetDHCP, SetNoNDP, SetOutAccept, SetOutReject, SetInAccept, SetInReject, SetLogOut, SetLogIn} {
		def(name, false, TypeIfname)
	}
	for _, d := range []config.Direction{config.In, config.Out} {
		for _, level := range extraLevels(p, d) {
			def(LogSet(d, level), false, TypeIfname)
		}
	}
	def(SetAntispoofMAC, false, TypeIfname)
	def(SetDropsOut, true, TypeIfname)
	def(SetDropsIn, true, TypeIfname)
	def(SetMACs, false, TypeIfname, TypeEther)
	def(SetSrc4, false, TypeIfname, TypeIPv4)
	def(SetSrc6, false, TypeIfname, TypeIPv6)
	def(SetL2Proto, false, TypeIfname, TypeEtherType)
	for _, name := range []string{MapListsOut, MapListsIn} {
		bridge[name] = &Set{Name: name, Key: []Type{TypeIfname}, Data: TypeVerdict}
	}
	for g := range p.Members {
		for _, f := range ruleset.Families {
			bridge[MemberSet(g, f)] = MemberSetDef(g, f)
		}
	}
	inet := map[string]*Set{
		SetVM4: {Name: SetVM4, Key: []Type{TypeIPv4}},
		SetVM6: {Name: SetVM6, Key: []Type{TypeIPv6}},
	}
	return map[Family]map[string]*Set{Bridge: bridge, Inet: inet}
}

// MemberSetDef is the (empty) set of group's members' addresses of
// family f.
func MemberSetDef(group string, f ruleset.Family) *Set {
	t := TypeIPv4
	if f == ruleset.IPv6 {
		t = TypeIPv6
	}
	return &Set{Name: MemberSet(group, f), Key: []Type{t}}
}

// InterfaceElements returns the elements interface n of p puts into
// vmfw's sets and maps: those keyed by its name in the bridge table, and
// its addresses in the inet table's vm4 and vm6, which another interface
// may list too. Its addresses in its groups' member sets are not among
// them: the members come from p.Members, with the remote ones. Its
// element of the ports set carries the fingerprint of the others and of
// its groups (SettingsComment).
func InterfaceElements(p *ruleset.Policy, n *ruleset.Interface) []Placed {
	out := interfaceElements(p, n)
	for i := range out {
		if out[i].Set == SetPorts {
			out[i].Element.Comment = SettingsComment(out, n.Groups)
		}
	}
	return out
}

// SettingsComment is the comment of an interface's element of the ports
// set: a fingerprint of its other elements and of the groups whose member
// sets hold its addresses (a disabled interface's groups are in no
// element, and its addresses are members all the same). A plan from a
// hint, which does not read the other elements or the member sets,
// compares it with the fingerprint of the interface as the hint says it
// is installed: an interface whose settings were edited since (a VM file
// changed and not applied) does not match, and the plan is made in full
// (docs/nftables.md "Plans from a hint").
func SettingsComment(elements []Placed, groups []string) string {
	b := make([]byte, 0, 64*len(elements))
	for _, g := range groups {
		b = append(b, g...)
		b = append(b, 0)
	}
	b = append(b, '\n')
	for _, pl := range elements {
		if pl.Set == SetPorts {
			continue
		}
		b = append(b, pl.Family...)
		b = append(b, '/')
		b = append(b, pl.Set...)
		key := pl.Element.KeyBytes()
		b = append(b, 0, byte(len(key)))
		b = append(b, key...)
		b = append(b, pl.Element.DataText()...)
		b = append(b, '\n')
	}
	sum := sha256.Sum256(b)
	return "vmfw:settings " + hex.EncodeToString(sum[:8])
}

// interfaceElements is InterfaceElements without the fingerprint.
func interfaceElements(p *ruleset.Policy, n *ruleset.Interface) []Placed {
	var out []Placed
	add := func(set string, key ...Value) {
		out = append(out, Placed{Family: Bridge, Set: set, Element: Element{Key: key}})
	}
	for _, ip := range n.IPs {
		set := SetVM4
		if !ip.Is4() {
			set = SetVM6
		}
		out = append(out, Placed{Family: Inet, Set: set, Element: Element{Key: []Value{Addr(ip)}}})
	}
	name := Ifname(n.Name)
	add(SetPorts, name)
	if !n.Enabled {
		add(SetDisabled, name)
		if n.DropInvalid {
			add(SetDropInvalid, name)
		}
		return out
	}
	add(SetDropsOut, name)
	add(SetDropsIn, name)
	if n.AntispoofMACOnly {
		// The frame's source MAC and ARP's sender hardware address
		// alone (l2Chain); the out chain then treats the interface as
		// one without anti-spoofing, as the iptables backend does.
		add(SetAntispoofMAC, name)
		if n.MAC != nil {
			add(SetHasMAC, name)
			add(SetMACs, name, Ether(n.MAC))
		}
	} else if n.Antispoof {
		add(SetAntispoof, name)
		if n.MAC != nil {
			add(SetHasMAC, name)
			add(SetMACs, name, Ether(n.MAC))
		}
		for _, ip := range n.IPs {
			if ip.Is4() {
				add(SetSrc4, name, Addr(ip))
			} else {
				add(SetSrc6, name, Addr(ip))
			}
		}
		for _, p := range n.L2Protocols {
			if num, ok := config.EtherTypeNumber(p); ok {
				add(SetL2Proto, name, EtherType(num))
			}
		}
	}
	if n.DHCP {
		add(SetDHCP, name)
	}
	if n.NoNDP {
		add(SetNoNDP, name)
	}
	policy := func(a config.Action, acceptSet, rejectSet string, d config.Direction) {
		switch a {
		case config.Accept:
			add(acceptSet, name)
		case config.Reject:
			add(rejectSet, name)
		}
		if level := policyLevel(p, n, d); level != config.LogOff {
			add(LogSet(d, level), name)
		}
	}
	policy(n.PolicyOut, SetOutAccept, SetOutReject, config.Out)
	policy(n.PolicyIn, SetInAccept, SetInReject, config.In)
	if len(n.Groups) > 0 {
		for _, d := range []config.Direction{config.Out, config.In} {
			m := MapListsOut
			if d == config.In {
				m = MapListsIn
			}
			out = append(out, Placed{Family: Bridge, Set: m, Element: Element{Key: []Value{name}, Verdict: jump(ListChain(n.Groups, d))}})
		}
	}
	return out
}

// MemberElements returns the elements of the set of group's members of
// family f in a layout of p (none when no rule refers to the group).
func MemberElements(p *ruleset.Policy, group string, f ruleset.Family) []Element {
	mem := p.Members[group]
	if mem == nil {
		return nil
	}
	out := make([]Element, 0, len(mem.Addrs[f]))
	for _, a := range mem.Addrs[f] {
		out = append(out, Element{Key: []Value{Addr(a)}})
	}
	return out
}

// tableSets lays out every set and map of table f with its elements.
func (b *builder) tableSets(f Family) []*Set {
	sets := SetDefs(b.p)[f]
	if f == Bridge {
		for g := range b.p.Members {
			for _, fam := range ruleset.Families {
				s := sets[MemberSet(g, fam)]
				s.Elements = MemberElements(b.p, g, fam)
			}
		}
	}
	for _, placed := range b.interfaceElements() {
		for _, pl := range placed {
			if pl.Family == f {
				s := sets[pl.Set]
				s.Elements = append(s.Elements, pl.Element)
			}
		}
	}
	for _, s := range sets {
		sortElements(s.Elements)
		s.Elements = compactElements(s.Elements)
	}
	// Address sets' prefixes come sorted and disjoint (config.Set.Effective),
	// and there can be 100,000 of them: they are not sorted again.
	if f == Bridge {
		for _, s := range b.addressSets() {
			sets[s.Name] = s
		}
	}
	out := make([]*Set, 0, len(sets))
	for _, name := range slices.Sorted(maps.Keys(sets)) {
		out = append(out, sets[name])
	}
	return out
}

func sortElements(l []Element) {
	sort.Slice(l, func(i, j int) bool { return string(l[i].KeyBytes()) < string(l[j].KeyBytes()) })
}

// compactElements drops repeated elements of a sorted list (two
// interfaces listing one address: the configuration forbids it, an
// attachment record may race an edit).
func compactElements(l []Element) []Element {
	return slices.CompactFunc(l, func(a, b Element) bool { return string(a.KeyBytes()) == string(b.KeyBytes()) })
}

// inet lays out table inet vmfw.
func (b *builder) inet() *Table {
	m := b.m
	t := &Table{Family: Inet}
	t.Sets = b.tableSets(Inet)
	bridgeKind := Value{TypeString, []byte("bridge\x00")}
	t.Chains = []*Chain{
		{Name: ChainPrerouting, Hook: &Hook{"prerouting", statePriority}, Rules: []Rule{
			{Exprs: []Expr{eq(FIifkind, bridgeKind), jump(ChainState)}, Comment: "from a bridge"},
		}},
		{Name: ChainForward, Hook: &Hook{"forward", inetPriority}, Rules: []Rule{
			rule(marked(m.Rej), goTo(ChainReject)),
			{Exprs: []Expr{&Cmp{Field: FIifkind, Neg: true, Value: bridgeKind}, eq(FOifkind, bridgeKind), jump(ChainRouted)}, Comment: "routed into a bridge"},
		}},
		{Name: ChainInput, Hook: &Hook{"input", inetPriority}, Rules: []Rule{
			rule(marked(m.Rej), goTo(ChainReject)),
		}},
		{Name: ChainOutput, Hook: &Hook{"output", inetPriority}, Rules: []Rule{
			{Exprs: []Expr{eq(FOifkind, bridgeKind), jump(ChainRouted)}, Comment: "sent into a bridge"},
		}},
		{Name: ChainState, Rules: []Rule{
			rule(&SetMark{Clear: m.Mask}),
			rule(&CtState{States: []string{"established", "related"}}, b.setMark(m.Est)),
			rule(&CtState{States: []string{"invalid"}}, b.setMark(m.Inv)),
			{Exprs: []Expr{&CtState{States: []string{"new"}}, proto(6),
				&Cmp{Field: FTCPFlags, Mask: []byte{0x17}, Neg: true, Value: Value{TypeInteger, []byte{0x02}}}, b.setMark(m.Inv)}, Comment: "new tcp without syn"},
		}},
		{Name: ChainRouted, Rules: []Rule{
			rule(jump(ChainState)),
			rule(eq(FNFProto, Byte(TypeInteger, 2)), in(FIPDst, SetVM4), b.setMark(m.Acc)),
			rule(eq(FNFProto, Byte(TypeInteger, 10)), in(FIP6Dst, SetVM6), b.setMark(m.Acc)),
		}},
		{Name: ChainReject, Rules: []Rule{
			rule(proto(6), &Reject{TCP: true}),
			rule(&Reject{}),
		}},
	}
	return t
}

// CtState matches connection tracking states (inet table only).
type CtState struct{ States []string }

// Text renders the match.
func (c *CtState) Text() string { return "ct state " + strings.Join(c.States, ",") }

// Bits returns the ct state bit mask of the states.
func (c *CtState) Bits() uint32 {
	var m uint32
	for _, s := range c.States {
		switch s {
		case "invalid":
			m |= 1
		case "established":
			m |= 1 << 1
		case "related":
			m |= 1 << 2
		case "new":
			m |= 1 << 3
		case "untracked":
			m |= 1 << 6
		}
	}
	return m
}

// Describe summarises rs for messages.
func (rs *Ruleset) Describe() string {
	n := 0
	for _, t := range rs.Tables() {
		for _, c := range t.Chains {
			n += len(c.Rules)
		}
	}
	return fmt.Sprintf("%d rules", n)
}
