// Package ruleset compiles a validated configuration and the interfaces
// attached on this host into a typed model of the policy: which interfaces
// are filtered and with which settings, the groups they list as ordered
// rules of typed match terms with a typed action and their origin, the
// members of every group a rule refers to, and which interface owns each
// address. It says nothing about how a backend lays the policy out in the
// kernel (docs/design.md, "The backend seam"): the iptables backend turns
// it into per-tap chains and dispatch trees, the nftables backend into
// sets and maps. It is pure: no exec, no netlink, no files.
package ruleset

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"

	"github.com/vmfw/vmfw/pkg/config"
)

// Policy is what vmfw wants enforced on this host: the compiled form of
// the configuration for the interfaces attached.
type Policy struct {
	// Host holds the host-wide settings a backend needs.
	Host Host
	// Interfaces are the attached interfaces, sorted by name.
	Interfaces []*Interface
	// Groups holds every group an enabled attached interface lists.
	Groups map[string]*Group
	// Members holds, for every group a rule of Groups refers to
	// (source_group, dest_group), the addresses of its members: the
	// attached interfaces listing it and, in cluster mode, the members
	// attached on other hosts.
	Members map[string]*Members
	// Sets holds every address set a rule of Groups refers to
	// (source_set, dest_set), by name: what a backend loads into its
	// kernel sets. An address set no such rule names is not here, so a
	// backend holds only the sets its rules use.
	Sets map[string]*Set
}

// Host holds the host-wide settings (vmfw.toml) that shape the ruleset.
type Host struct {
	// Managed lists interface patterns (a trailing "+" is a wildcard)
	// that get no traffic through unless vmfw installed their filtering.
	Managed []string
	// Mark holds the packet mark bits vmfw may use.
	Mark uint32
	// LogLimit and LogBurst rate-limit logged packets ("10/second", 20).
	LogLimit string
	LogBurst int
	// LogGroup is the NFLOG group logged packets go to; 0 logs with the
	// kernel's LOG target.
	LogGroup int
}

// Interface is one attached interface and how it is filtered.
type Interface struct {
	// Name is the host-side interface name (tap110i0, a CNI veth).
	Name string
	// Enabled false lets the interface pass unfiltered (explicitly).
	Enabled bool
	// DropInvalid, only with Enabled false, drops packets conntrack
	// finds INVALID and new TCP without SYN all the same.
	DropInvalid bool
	// MAC is the VM's address on the interface, nil if unknown.
	MAC net.HardwareAddr
	// IPs are the addresses the VM may send from, and which traffic
	// routed or sent by the host is attributed to the interface by.
	IPs []netip.Addr
	// Antispoof binds the VM's source MAC and addresses to MAC and IPs
	// or, with AntispoofMACOnly, its source MAC alone.
	Antispoof bool
	// AntispoofMACOnly narrows Antispoof to the source MAC of frames and
	// the sender hardware address of ARP (antispoof = "mac"): the
	// addresses are not bound, so the VM may send from any, and nothing
	// else of anti-spoofing applies (no ARP address, neighbour
	// advertisement or ethertype check, no DHCP-server or
	// router-advertisement guard). Antispoof is true whenever it is.
	AntispoofMACOnly bool
	// DHCP allows DHCP and DHCPv6 client traffic.
	DHCP bool
	// NoNDP drops vmfw's neighbour discovery exception (ndp = false):
	// neighbour and router solicitations and advertisements meet the
	// groups and the policy like any other packet.
	NoNDP bool
	// L2Protocols are the ethertypes besides IPv4, IPv6 and ARP the VM
	// may send with anti-spoofing on.
	L2Protocols []string
	// PolicyIn and PolicyOut decide what no rule matched.
	PolicyIn, PolicyOut config.Action
	// LogIn and LogOut are the syslog levels packets dropped or
	// rejected by PolicyIn and PolicyOut are logged at; config.LogOff
	// logs none.
	LogIn, LogOut config.LogLevel
	// Groups are the interface's groups, evaluated in this order.
	Groups []string
	// Config is the configuration the interface was compiled from (a VM
	// file's [netN], or the settings of an attachment record), for
	// messages and status: backends use the fields above.
	Config *config.NIC
}

// Group is a security group as backends compile it.
type Group struct {
	// Name is the group's name.
	Name string
	// File is the file the group was loaded from, for messages.
	File string
	// In filters traffic to the VM, Out traffic from it; first match wins.
	In, Out []Rule
}

// Rules returns the group's rules for direction d.
func (g *Group) Rules(d config.Direction) []Rule {
	if d == config.In {
		return g.In
	}
	return g.Out
}

// MatchesSourceMAC reports whether an in rule of the group matches a
// source MAC address: packets the host sends have none, which some
// backends must lay out separately (docs/routing.md).
func (g *Group) MatchesSourceMAC() bool {
	return slices.ContainsFunc(g.In, func(r Rule) bool { return r.Match.SourceMAC != nil })
}

// Rule is one rule of a group.
type Rule struct {
	// Origin names the group, direction and position.
	Origin Origin
	// Line is the line of the rule in the group's file.
	Line int
	// Match says which packets the rule decides.
	Match Match
	// Action is what happens to them.
	Action config.Action
	// Log logs them, rate limited, before the action, at LogLevel.
	Log bool
	// LogLevel is the syslog level they are logged at
	// (config.DefaultLogLevel for log = true); config.LogOff when Log is
	// false.
	LogLevel config.LogLevel
	// Comment is the operator's comment, printable ASCII without quotes.
	Comment string
}

// Match is a rule's conditions; a packet must meet every one that is set.
type Match struct {
	// Proto is the IP protocol; the zero Proto matches any.
	Proto Proto
	// ICMP restricts an icmp or icmpv6 rule to one type (and code); the
	// zero ICMP matches any.
	ICMP ICMP
	// SPorts and DPorts are the source and destination port ranges (tcp,
	// udp, sctp); empty matches any.
	SPorts, DPorts []config.PortRange
	// Source and Dest are alternatives of address prefixes; empty matches
	// any. A prefix of the other family never matches.
	Source, Dest []netip.Prefix
	// SourceGroup and DestGroup match the members of a group (Policy.Members).
	SourceGroup, DestGroup string
	// SourceSet and DestSet match the addresses of an address set
	// (Policy.Sets): those whose most specific containing prefix of the
	// set is an entry, not an except. Like every other term they combine
	// with the rest: a rule with Source and SourceSet matches a source
	// that is in both.
	SourceSet, DestSet string
	// SourceMAC matches the Ethernet source address.
	SourceMAC net.HardwareAddr
}

// Proto is an IP protocol as the configuration names it.
type Proto struct {
	// Name is the protocol's name (tcp, udp, sctp, icmp, icmpv6) or, for
	// any other, its decimal number; "" for any protocol.
	Name string
	// Number is the protocol number.
	Number uint8
}

// IsAny reports whether p matches every protocol.
func (p Proto) IsAny() bool { return p.Name == "" }

// Family returns the only family p exists in (icmp in IPv4, icmpv6 in
// IPv6), or 0 for a protocol of both.
func (p Proto) Family() Family {
	switch p.Name {
	case "icmp":
		return IPv4
	case "icmpv6":
		return IPv6
	}
	return 0
}

// ICMP is an ICMP or ICMPv6 type, and maybe code, a rule matches.
type ICMP struct {
	// Name is the type as the configuration keeps it: a name iptables
	// knows or a decimal number; "" for any type.
	Name string
	// Type is the type number; Code the code, or -1 for every code.
	Type uint8
	Code int
}

// IsAny reports whether i matches every type.
func (i ICMP) IsAny() bool { return i.Name == "" }

// Members are the addresses of a group's members, per family, sorted.
type Members struct {
	Group string
	Addrs map[Family][]netip.Addr
}

// Set is an address set as backends load it: the networks of a
// configuration set (sets/NAME.toml), IPv4 and IPv6 mixed, with the
// meaning of ipset's nomatch — the most specific prefix of Entries and
// Except that contains an address decides whether it matches.
type Set struct {
	// Name is the set's name.
	Name string
	// File is the file the set was loaded from, for messages.
	File string
	// Entries are the networks the set matches and Except the networks
	// carved out of them, each in file order with its line; they share
	// their storage with Config (a set can list 100,000 networks).
	Entries, Except []config.SetEntry
	// Config is the set as the configuration defines it: Config.Match
	// says which entry or except decides an address, Config.Effective
	// gives the matching addresses as disjoint prefixes, for a kernel set
	// type without nomatch.
	Config *config.Set
}

// Interface returns the attached interface called name, or nil. It
// searches Interfaces, which are sorted by name: a change asks for a few
// names, and a map of them all cost an ifup without the agent more to
// build than every search it makes (docs/performance.md, "Policies
// without indexes, and a smaller index").
func (p *Policy) Interface(name string) *Interface {
	i := sort.Search(len(p.Interfaces), func(i int) bool { return p.Interfaces[i].Name >= name })
	if i == len(p.Interfaces) || p.Interfaces[i].Name != name {
		return nil
	}
	return p.Interfaces[i]
}

// Owner returns the attached interface that lists a among its ips, the
// one first by name if several do (the configuration forbids it; an
// attachment record can race an edit), or nil. It walks Interfaces, as a
// change asks of a few addresses (Interface says why).
func (p *Policy) Owner(a netip.Addr) *Interface {
	for _, n := range p.Interfaces {
		if slices.Contains(n.IPs, a) {
			return n
		}
	}
	return nil
}

// Compile builds the policy of m for the attached interfaces, which are
// also the members of the groups they list, so a stopped VM's addresses
// match no source_group. It fails for an interface attached twice or
// listing an unknown group.
func Compile(m *config.Model, attached []*config.NIC) (*Policy, error) {
	p := &Policy{
		Host: Host{
			Managed:  m.Host.Managed,
			Mark:     m.Host.Mark,
			LogLimit: m.Host.LogLimit,
			LogBurst: m.Host.LogBurst,
			LogGroup: m.Host.LogGroup,
		},
		Groups:  map[string]*Group{},
		Members: map[string]*Members{},
		Sets:    map[string]*Set{},
	}
	sorted := slices.Clone(attached)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Tap < sorted[j].Tap })
	// One allocation for them all: an ifup without the agent compiles
	// every installed interface (docs/performance.md).
	ifaces := make([]Interface, len(sorted))
	if len(sorted) > 0 {
		p.Interfaces = make([]*Interface, 0, len(sorted))
	}
	// Each group is looked up once, into the state every listing of it
	// shares: whether it was compiled, and its place among the groups
	// rules refer to, which membersOf reads through listed (a lookup in
	// m, one in p.Groups and one in membersOf per listing were two
	// fifths of a compile of 5000, docs/performance.md, "Policies
	// without indexes, and a smaller index").
	groups := map[string]*listing{}
	total := 0
	for _, n := range sorted {
		total += len(n.Groups)
	}
	listed := make([]*listing, 0, total)
	for i, n := range sorted {
		if i > 0 && n.Tap == sorted[i-1].Tap {
			return nil, fmt.Errorf("interface %s attached twice", n.Tap)
		}
		iface := &ifaces[i]
		*iface = *compileInterface(n)
		p.Interfaces = append(p.Interfaces, iface)
		for _, g := range n.Groups {
			l := groups[g]
			if l == nil {
				if m.Groups[g] == nil {
					return nil, fmt.Errorf("%s: unknown group %q", n.Tap, g)
				}
				l = &listing{ref: -1}
				groups[g] = l
			}
			listed = append(listed, l)
			if !l.compiled && iface.Enabled {
				p.Groups[g] = compileGroup(m.Groups[g])
				l.compiled = true
			}
		}
	}
	refs := map[string]bool{}
	for _, g := range p.Groups {
		for _, d := range []config.Direction{config.In, config.Out} {
			for _, r := range g.Rules(d) {
				for _, ref := range []string{r.Match.SourceGroup, r.Match.DestGroup} {
					if ref != "" {
						refs[ref] = true
					}
				}
				for _, ref := range []string{r.Match.SourceSet, r.Match.DestSet} {
					if ref == "" || p.Sets[ref] != nil {
						continue
					}
					s := m.Sets[ref]
					if s == nil {
						return nil, fmt.Errorf("group %s: unknown address set %q", g.Name, ref)
					}
					p.Sets[ref] = &Set{Name: s.Name, File: s.File, Entries: s.Entries, Except: s.Except, Config: s}
				}
			}
		}
	}
	p.Members = membersOf(refs, groups, listed, p.Interfaces, m.RemoteMembers)
	return p, nil
}

func compileInterface(n *config.NIC) *Interface {
	return &Interface{
		Name:             n.Tap,
		Enabled:          n.VM.Enable,
		DropInvalid:      !n.VM.Enable && n.VM.DropInvalid,
		MAC:              n.MAC,
		IPs:              n.IPs,
		Antispoof:        n.Antispoof,
		AntispoofMACOnly: n.Antispoof && n.AntispoofMACOnly,
		DHCP:             n.DHCP,
		NoNDP:            n.NoNDP,
		L2Protocols:      n.L2Protocols,
		PolicyIn:         n.VM.PolicyIn,
		PolicyOut:        n.VM.PolicyOut,
		LogIn:            n.VM.LogIn,
		LogOut:           n.VM.LogOut,
		Groups:           n.Groups,
		Config:           n,
	}
}

func compileGroup(g *config.Group) *Group {
	out := &Group{Name: g.Name, File: g.File}
	for _, d := range []config.Direction{config.In, config.Out} {
		var rules []Rule
		for i, r := range g.Rules(d) {
			rules = append(rules, Rule{
				Origin:   Origin{Group: g.Name, Dir: d, Index: i},
				Line:     r.Line,
				Match:    compileMatch(r),
				Action:   r.Action,
				Log:      r.Log,
				LogLevel: r.LogLevel,
				Comment:  r.Comment,
			})
		}
		if d == config.In {
			out.In = rules
		} else {
			out.Out = rules
		}
	}
	return out
}

// compileMatch turns a rule's conditions, validated by config, into typed
// terms: protocol and ICMP names resolve to numbers here, once.
func compileMatch(r config.Rule) Match {
	m := Match{
		SPorts:      r.SPort,
		DPorts:      r.DPort,
		Source:      r.Source,
		Dest:        r.Dest,
		SourceGroup: r.SourceGroup,
		DestGroup:   r.DestGroup,
		SourceSet:   r.SourceSet,
		DestSet:     r.DestSet,
		SourceMAC:   r.SourceMAC,
	}
	if r.Proto != "" {
		m.Proto = Proto{Name: r.Proto, Number: protoNumber(r.Proto)}
	}
	if r.ICMPType != "" {
		typ, code, _ := ParseICMPType(r.Proto, r.ICMPType)
		m.ICMP = ICMP{Name: r.ICMPType, Type: uint8(typ), Code: code}
	}
	return m
}

// protoNumber returns the number of a protocol as config keeps it: a name
// of config's, or a decimal number.
func protoNumber(name string) uint8 {
	switch name {
	case "icmp":
		return config.ProtoICMP
	case "tcp":
		return config.ProtoTCP
	case "udp":
		return config.ProtoUDP
	case "icmpv6":
		return config.ProtoICMPv6
	case "sctp":
		return config.ProtoSCTP
	}
	n, _ := strconv.Atoi(name)
	return uint8(n)
}

// membersOf is members of every group of refs, in two passes over the
// interfaces whatever the number of groups (a count, then a fill): one
// pass per group cost 2.5 of the 4.5 ms of a compile of 5000 interfaces
// listing 3 of 20 groups (BenchmarkCompile5000), which an ifup without
// the agent makes (docs/performance.md).
//
// listed holds the state of each group an interface lists, interface by
// interface in the order of ifaces, as Compile resolved them (byName by
// the group's name): membersOf numbers the groups of refs in them, counts
// the addresses, and fills one array with every list. The sort brings
// duplicates together (an interface listing a group twice, an address
// listed twice), and Compact drops them. Lists grown by append allocated
// twice what they hold, which a process that does not collect garbage
// pays for in page faults (docs/performance.md, "Policies without
// indexes, and a smaller index").
func membersOf(refs map[string]bool, byName map[string]*listing, listed []*listing, ifaces []*Interface, remote map[string][]netip.Addr) map[string]*Members {
	out := make(map[string]*Members, len(refs))
	if len(refs) == 0 {
		return out
	}
	groups := make([]string, 0, len(refs))
	for g := range refs {
		if l := byName[g]; l != nil {
			l.ref = int32(len(groups))
		}
		groups = append(groups, g)
	}
	counts := make([][2]int, len(groups))
	k := 0
	for _, n := range ifaces {
		for range n.Groups {
			if id := listed[k].ref; id >= 0 {
				for _, ip := range n.IPs {
					counts[id][slot(ip)]++
				}
			}
			k++
		}
	}
	total := 0
	for id, g := range groups {
		for _, ip := range remote[g] {
			counts[id][slot(ip)]++
		}
		total += counts[id][0] + counts[id][1]
	}
	all := make([]netip.Addr, 0, total)
	lists := make([][2][]netip.Addr, len(groups))
	for id := range groups {
		for f, c := range counts[id] {
			lists[id][f] = all[len(all) : len(all) : len(all)+c]
			all = all[:len(all)+c]
		}
	}
	add := func(id int32, ip netip.Addr) {
		f := slot(ip)
		lists[id][f] = append(lists[id][f], ip)
	}
	k = 0
	for _, n := range ifaces {
		for range n.Groups {
			if id := listed[k].ref; id >= 0 {
				for _, ip := range n.IPs {
					add(id, ip)
				}
			}
			k++
		}
	}
	for id, g := range groups {
		for _, ip := range remote[g] {
			add(int32(id), ip)
		}
		mem := &Members{Group: g, Addrs: map[Family][]netip.Addr{}}
		for f, addrs := range lists[id] {
			if len(addrs) > 0 {
				slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
				mem.Addrs[Families[f]] = slices.Compact(addrs)
			}
		}
		out[g] = mem
	}
	return out
}

// listing is what Compile resolves of a group an interface lists.
type listing struct {
	// compiled says the group is in the policy's Groups.
	compiled bool
	// ref is the group's place among those rules refer to (membersOf),
	// -1 when no rule does.
	ref int32
}

// slot is a's family as an index of Families.
func slot(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// members collects the addresses of group's members: the attached
// interfaces listing it and the remote members. An address listed twice
// (an attachment record racing an edit, a migrating VM) is kept once.
func members(group string, ifaces []*Interface, remote []netip.Addr) *Members {
	out := &Members{Group: group, Addrs: map[Family][]netip.Addr{}}
	add := func(a netip.Addr) {
		f := FamilyOf(a)
		out.Addrs[f] = append(out.Addrs[f], a)
	}
	for _, n := range ifaces {
		if slices.Contains(n.Groups, group) {
			for _, ip := range n.IPs {
				add(ip)
			}
		}
	}
	for _, ip := range remote {
		add(ip)
	}
	for f, addrs := range out.Addrs {
		slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
		out.Addrs[f] = slices.Compact(addrs)
	}
	return out
}
