package layout

import (
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

// Build lays out the policy as iptables chains, ebtables chains and
// ipsets: the desired ruleset of the iptables backend.
func Build(p *ruleset.Policy) *Ruleset {
	b := newBuilder(p)
	rs := &Ruleset{Tables: map[ruleset.Family]*Table{}}
	for _, f := range ruleset.Families {
		rs.Tables[f] = b.table(f, p.Interfaces)
	}
	rs.Bridge = b.bridgeTable(p.Interfaces)
	rs.Sets = b.sets()
	return rs
}

type builder struct {
	policy *ruleset.Policy
	mark   string
}

func newBuilder(p *ruleset.Policy) *builder {
	return &builder{policy: p, mark: fmt.Sprintf("0x%x", p.Host.Mark)}
}

func (b *builder) setMark() string   { return "-j MARK --set-xmark " + b.mark + "/" + b.mark }
func (b *builder) clearMark() string { return "-j MARK --set-xmark 0x0/" + b.mark }
func (b *builder) isMarked() string  { return "-m mark --mark " + b.mark + "/" + b.mark }

func (b *builder) table(f ruleset.Family, nics []*ruleset.Interface) *Table {
	t := &Table{Family: f}
	// Group chains shared by every tap that lists the group.
	var groups []string
	seen := map[string]bool{}
	for _, n := range nics {
		if !n.Enabled {
			continue
		}
		for _, g := range n.Groups {
			if !seen[g] {
				seen[g] = true
				groups = append(groups, g)
			}
		}
	}
	sort.Strings(groups)
	for _, g := range groups {
		t.Chains = append(t.Chains,
			b.groupChain(f, b.policy.Groups[g], config.In),
			b.groupChain(f, b.policy.Groups[g], config.Out))
		if b.macGroup(g) {
			t.Chains = append(t.Chains, b.localGroupChain(f, b.policy.Groups[g]))
		}
	}
	for _, n := range nics {
		t.Chains = append(t.Chains, b.tapChains(f, n)...)
	}
	t.Chains = append(t.Chains, b.dispatch(nics)...)
	t.Chains = append(t.Chains, b.routes(f, nics)...)
	t.Chains = append(t.Chains, b.entryChains()...)
	t.Hooks = filterHooks()
	return t
}

// filterHooks are the jumps from the built-in chains of the filter table
// into vmfw's entry chains.
func filterHooks() []Hook {
	return []Hook{{From: Forward, To: ChainForward}, {From: Input, To: ChainInput}, {From: Output, To: ChainOutput}}
}

// entryChains are the chains the hooks enter. A packet from a bridge port
// first passes the sending tap's out chain, which sets the mark bit when it
// allows the packet; then, when bridged to a tap, that tap's in chain
// decides, and when routed, the in chain of the VM owning the destination
// address (vmfw-route, route.go). A packet allowed out of a tap towards a
// port or address vmfw does not manage is accepted here, so VMs work when
// FORWARD's policy is DROP. Packets the hypervisor sends meet the in chain
// of the VM owning their destination (vmfw-local).
func (b *builder) entryChains() []*ChainRules {
	fromPort := "-m physdev --physdev-is-in"
	return []*ChainRules{
		{Name: ChainAccept, Rules: []Rule{{Spec: b.clearMark()}, {Spec: "-j ACCEPT"}}},
		{Name: ChainForward, Rules: []Rule{
			{Spec: fromPort + " -j " + string(ChainOut)},
			{Spec: "-m physdev --physdev-is-out --physdev-is-bridged -j " + string(ChainIn)},
			{Spec: "-m physdev ! --physdev-is-bridged -j " + string(ChainRoute)},
			{Spec: fromPort + " " + b.isMarked() + " -j " + string(ChainAccept)},
		}},
		{Name: ChainInput, Rules: []Rule{
			{Spec: fromPort + " -j " + string(ChainOut)},
			{Spec: fromPort + " " + b.isMarked() + " " + b.clearMark()},
		}},
		{Name: ChainOutput, Rules: []Rule{
			{Spec: "-j " + string(ChainLocal)},
		}},
	}
}

// tapChains builds TAP-src (when anti-spoofing), TAP-out and TAP-in.
func (b *builder) tapChains(f ruleset.Family, n *ruleset.Interface) []*ChainRules {
	outName, inName := TapChain(n.Name, "out"), TapChain(n.Name, "in")
	if !n.Enabled {
		out := &ChainRules{Name: outName}
		in := &ChainRules{Name: inName, Rules: []Rule{{Spec: b.setMark()}}}
		if n.DropInvalid {
			// drop_invalid: the connection-state checks every filtered
			// chain starts with, and nothing else.
			states := []Rule{{Spec: "-m conntrack --ctstate INVALID -j DROP"}, midStreamDrop}
			out.Rules = append(out.Rules, states...)
			in.Rules = append(in.Rules, states...)
		}
		out.Rules = append(out.Rules, Rule{Spec: b.setMark(), Comment: "vm disabled"})
		in.Rules = append(in.Rules, Rule{Spec: "-j ACCEPT", Comment: "vm disabled"})
		return []*ChainRules{out, in}
	}
	var chains []*ChainRules
	out := &ChainRules{Name: outName}
	switch {
	case n.Antispoof && n.AntispoofMACOnly:
		// antispoof = "mac": the source MAC alone, as Proxmox's
		// macfilter without ipfilter. Everything else anti-spoofing adds
		// (address binding, the DHCP-server and router-advertisement
		// guards) stays off, as with antispoof = false: an operator who
		// chose "mac" asked for MAC spoofing to stop and nothing else to
		// change, and an import from Proxmox, whose macfilter has no such
		// guards, writes its own rules for them (README, "antispoof").
		out.Rules = append(out.Rules, macCheck(n)...)
	case n.Antispoof:
		src := b.sourceChain(f, n)
		chains = append(chains, src)
		if f == ruleset.IPv6 {
			chains = append(chains, ndTargetChain(n))
		}
		out.Rules = append(out.Rules, b.antispoof(f, n, src.Name)...)
	}
	out.Rules = append(out.Rules,
		Rule{Spec: "-m conntrack --ctstate INVALID -j DROP"},
		Rule{Spec: "-m conntrack --ctstate RELATED,ESTABLISHED " + b.setMark()},
		Rule{Spec: b.isMarked() + " -j RETURN"},
		midStreamDrop)
	switch {
	case f == ruleset.IPv6:
		// NDP from the VM's own (or link-local) address, unless ndp =
		// false leaves it to the groups.
		if !n.NoNDP {
			for _, t := range []string{"router-solicitation", "neighbour-solicitation", "neighbour-advertisement"} {
				out.Rules = append(out.Rules, Rule{Spec: "-p ipv6-icmp --icmpv6-type " + t + " " + b.setMark()})
			}
		}
		if n.DHCP {
			out.Rules = append(out.Rules, Rule{Spec: udpPorts(546, 547) + " " + b.setMark(), Comment: "dhcpv6 client"})
		}
		if !n.NoNDP || n.DHCP {
			out.Rules = append(out.Rules, Rule{Spec: b.isMarked() + " -j RETURN"})
		}
	case n.DHCP:
		out.Rules = append(out.Rules, b.outAccept(udpPorts(68, 67), "dhcp client")...)
	}
	for _, g := range n.Groups {
		out.Rules = append(out.Rules,
			Rule{Spec: "-j " + string(GroupChain(g, "out"))},
			Rule{Spec: b.isMarked() + " -j RETURN"})
	}
	out.Rules = append(out.Rules, b.policyRules(f, n, config.Out, n.PolicyOut)...)
	chains = append(chains, out)
	if b.localIn(n) {
		chains = append(chains, b.inChain(f, n, true))
	}
	return append(chains, b.inChain(f, n, false))
}

// inChain builds TAP-in, or with local TAP-lin: the same rules jumping to
// the groups' sg-NAME-lin where a group has one (route.go). Its first rule
// sets the mark bit whatever came before: the sender's verdict, which the
// bit carried this far, has been read, and from here on the bit says that
// an in chain saw the packet, which vmfw-l2out requires of every packet
// the hypervisor routes or sends to a VM (docs/routing.md).
func (b *builder) inChain(f ruleset.Family, n *ruleset.Interface, local bool) *ChainRules {
	name := TapChain(n.Name, "in")
	if local {
		name = TapChain(n.Name, "lin")
	}
	in := &ChainRules{Name: name, Rules: []Rule{
		{Spec: b.setMark()},
		{Spec: "-m conntrack --ctstate INVALID -j DROP"},
		{Spec: "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"},
		midStreamDrop,
	}}
	if f == ruleset.IPv6 {
		if !n.NoNDP {
			for _, t := range []string{"router-solicitation", "router-advertisement", "neighbour-solicitation", "neighbour-advertisement"} {
				in.Rules = append(in.Rules, Rule{Spec: "-p ipv6-icmp --icmpv6-type " + t + " -j ACCEPT"})
			}
		}
		if n.DHCP {
			in.Rules = append(in.Rules, Rule{Spec: udpPorts(547, 546) + " -j ACCEPT", Comment: "dhcpv6 reply"})
		}
	} else if n.DHCP {
		in.Rules = append(in.Rules, Rule{Spec: udpPorts(67, 68) + " -j ACCEPT", Comment: "dhcp reply"})
	}
	for _, g := range n.Groups {
		dir := "in"
		if local && b.macGroup(g) {
			dir = "lin"
		}
		in.Rules = append(in.Rules, Rule{Spec: "-j " + string(GroupChain(g, dir))})
	}
	in.Rules = append(in.Rules, b.policyRules(f, n, config.In, n.PolicyIn)...)
	return in
}

// udpPorts matches UDP from source port sport and, unless dport is 0, to
// destination port dport: the DHCP rules every tap's chains carry.
//
// They are written with the multiport match, not udp's --sport/--dport,
// for the cost of loading them: iptables 1.8's udp match resolves each
// port through getaddrinfo, which (AI_ADDRCONFIG) dumps every address of
// every interface of the namespace over netlink, so at 5000 taps the
// seven DHCP ports per tap made a full iptables-restore spend half a
// minute in those dumps; multiport parses numbers itself. The match is
// the same: both take only UDP, only the first fragment, and drop a
// truncated header.
func udpPorts(sport, dport int) string {
	s := "-p udp -m multiport --sports " + strconv.Itoa(sport)
	if dport != 0 {
		s += " -m multiport --dports " + strconv.Itoa(dport)
	}
	return s
}

// midStreamDrop refuses TCP segments that conntrack sees as a new
// connection but that do not open one. The kernel picks up connections in
// mid-stream (nf_conntrack_tcp_loose), so without it a connection whose
// tracking entry vmfw deleted after an edit revived with the next
// retransmission of whichever end may still open connections.
var midStreamDrop = Rule{Spec: "-p tcp -m conntrack --ctstate NEW -m tcp ! --syn -j DROP", Comment: "new tcp without syn"}

// macCheck drops packets that do not carry the VM's MAC as their source;
// none when the interface has no MAC.
func macCheck(n *ruleset.Interface) []Rule {
	if n.MAC == nil {
		return nil
	}
	return []Rule{{Spec: "-m mac ! --mac-source " + n.MAC.String() + " -j DROP", Comment: "antispoof mac"}}
}

// antispoof returns the first rules of TAP-out: every packet must carry the
// VM's MAC, DHCP-server and router-advertisement traffic is dropped, DHCP
// discovery is allowed before the VM has an address, and everything else
// must come from one of the VM's addresses (checked in TAP-src).
func (b *builder) antispoof(f ruleset.Family, n *ruleset.Interface, src Chain) []Rule {
	r := macCheck(n)
	if f == ruleset.IPv4 {
		r = append(r, Rule{Spec: udpPorts(67, 0) + " -j DROP", Comment: "no dhcp server"})
		if n.DHCP {
			r = append(r, b.outAccept("-s 0.0.0.0/32 -d 255.255.255.255/32 "+udpPorts(68, 67), "dhcp discover")...)
		}
	} else {
		r = append(r,
			Rule{Spec: "-p ipv6-icmp --icmpv6-type router-advertisement -j DROP", Comment: "no router advertisement"},
			Rule{Spec: "-p ipv6-icmp --icmpv6-type redirect -j DROP", Comment: "no redirect"},
			Rule{Spec: udpPorts(547, 0) + " -j DROP", Comment: "no dhcpv6 server"},
			Rule{Spec: "-p ipv6-icmp --icmpv6-type neighbour-advertisement -j " + string(TapChain(n.Name, "nd"))})
	}
	return append(r, Rule{Spec: "-j " + string(src)})
}

// sourceChain returns TAP-src: RETURN for the VM's own addresses, DROP for
// any other source. IPv6 also allows link-local sources and the unspecified
// address that duplicate address detection and MLD use.
func (b *builder) sourceChain(f ruleset.Family, n *ruleset.Interface) *ChainRules {
	c := &ChainRules{Name: TapChain(n.Name, "src")}
	if f == ruleset.IPv6 {
		c.Rules = append(c.Rules,
			Rule{Spec: "-s fe80::/10 -j RETURN", Comment: "link-local"},
			Rule{Spec: "-s ::/128 -p ipv6-icmp --icmpv6-type neighbour-solicitation -j RETURN", Comment: "dad"},
			Rule{Spec: "-s ::/128 -p ipv6-icmp --icmpv6-type 143 -j RETURN", Comment: "mld report"})
	}
	for _, ip := range n.IPs {
		if ruleset.FamilyOf(ip) == f {
			c.Rules = append(c.Rules, Rule{Spec: "-s " + netip.PrefixFrom(ip, ip.BitLen()).String() + " -j RETURN"})
		}
	}
	c.Rules = append(c.Rules, Rule{Spec: "-j DROP", Comment: "antispoof ip"})
	return c
}

// ndTargetChain returns TAP-nd, which every neighbour advertisement the VM
// sends passes: the IPv6 counterpart of ARP anti-spoofing. An advertisement
// updates its receivers' neighbour caches for its target address, whatever
// its source, so the target must be one of the VM's addresses. Link-local
// targets stay allowed: a VM picks its own link-local addresses (EUI-64,
// stable privacy), which the configuration does not list.
func ndTargetChain(n *ruleset.Interface) *ChainRules {
	c := &ChainRules{Name: TapChain(n.Name, "nd"), Rules: []Rule{
		{Spec: "-m u32 --u32 " + ndTargetLinkLocal + " -j RETURN", Comment: "link-local target"},
	}}
	for _, ip := range n.IPs {
		if ruleset.FamilyOf(ip) == ruleset.IPv6 {
			c.Rules = append(c.Rules, Rule{Spec: "-m u32 --u32 " + ndTargetIs(ip) + " -j RETURN"})
		}
	}
	c.Rules = append(c.Rules, Rule{Spec: "-j DROP", Comment: "antispoof nd target"})
	return c
}

// ndTargetOffset is where a neighbour advertisement's target address
// starts, counted from the IPv6 header: 40 bytes of header, then the
// ICMPv6 type, code, checksum and flags (8 bytes). Neighbour discovery is
// sent without extension headers; one that has them misses every match
// below and is dropped.
const ndTargetOffset = 48

// ndTargetLinkLocal is the u32 test for a target in fe80::/10.
var ndTargetLinkLocal = fmt.Sprintf(`"%d&0xffc00000=0xfe800000"`, ndTargetOffset)

// ndTargetIs returns the u32 test for a target equal to ip, as four 32-bit
// words.
func ndTargetIs(ip netip.Addr) string {
	a := ip.As16()
	var words []string
	for i := 0; i < 16; i += 4 {
		w := uint32(a[i])<<24 | uint32(a[i+1])<<16 | uint32(a[i+2])<<8 | uint32(a[i+3])
		words = append(words, fmt.Sprintf("%d=0x%x", ndTargetOffset+i, w))
	}
	return `"` + strings.Join(words, "&&") + `"`
}

// outAccept returns the rules that let match through an out chain: set the
// mark and return at once, so later rules of the chain cannot overrule it.
func (b *builder) outAccept(match, comment string) []Rule {
	return []Rule{
		{Spec: match + " " + b.setMark(), Comment: comment},
		{Spec: b.isMarked() + " -j RETURN"},
	}
}

// policy returns the rules deciding what no rule matched.
func (b *builder) policyRules(f ruleset.Family, n *ruleset.Interface, dir config.Direction, a config.Action) []Rule {
	var r []Rule
	o := ruleset.Origin{Dir: dir, Tap: n.Name}
	level := n.LogIn
	if dir == config.Out {
		level = n.LogOut
	}
	if level != config.LogOff && a != config.Accept {
		r = append(r, b.logRule("", o, a, level))
	}
	switch {
	case a == config.Accept && dir == config.Out:
		r = append(r, Rule{Spec: b.setMark(), Comment: "policy accept"})
	case a == config.Accept:
		r = append(r, Rule{Spec: "-j ACCEPT", Comment: "policy accept"})
	case a == config.Reject:
		r = append(r, rejectRules(f, "", "policy reject")...)
	default:
		r = append(r, Rule{Spec: "-j DROP", Comment: "policy drop"})
	}
	return withOrigin(r, o)
}

// withOrigin sets the origin of rules that have none.
func withOrigin(rules []Rule, o ruleset.Origin) []Rule {
	for i := range rules {
		if rules[i].Origin.IsZero() {
			rules[i].Origin = o
		}
	}
	return rules
}

// rejectRules rejects TCP with a reset and everything else with an ICMP
// port unreachable, so clients fail fast either way.
func rejectRules(f ruleset.Family, match, comment string) []Rule {
	icmp := "icmp-port-unreachable"
	if f == ruleset.IPv6 {
		icmp = "icmp6-port-unreachable"
	}
	m := match
	if m != "" {
		m += " "
	}
	if strings.Contains(match, "-p ") {
		if strings.Contains(match, "-p tcp") {
			return []Rule{{Spec: m + "-j REJECT --reject-with tcp-reset", Comment: comment}}
		}
		return []Rule{{Spec: m + "-j REJECT --reject-with " + icmp, Comment: comment}}
	}
	return []Rule{
		{Spec: m + "-p tcp -j REJECT --reject-with tcp-reset", Comment: comment},
		{Spec: m + "-j REJECT --reject-with " + icmp, Comment: comment},
	}
}

// logRule returns a rate-limited LOG rule at the syslog level, or with
// log_group an NFLOG rule. The LOG prefix names the object (a tap or
// sg-GROUP), the direction and the verdict: "vmfw tap110i0-in DROP ". The
// kernel keeps 28 characters, so long names lose the "vmfw " and then
// their tail rather than the verdict.
//
// The level is written only when it is not warning, the LOG target's own
// default and the level of log = true, so a rule that logged before levels
// existed keeps its text and its fingerprint. NFLOG has no level: packets
// go to a listener (vmfw log), not to the kernel log, and the level is
// not written (README, "log").
func (b *builder) logRule(match string, o ruleset.Origin, a config.Action, level config.LogLevel) Rule {
	m := match
	if m != "" {
		m += " "
	}
	limit := fmt.Sprintf("-m limit --limit %s --limit-burst %d", b.policy.Host.LogLimit, b.policy.Host.LogBurst)
	if b.policy.Host.LogGroup > 0 {
		return Rule{Spec: fmt.Sprintf("%s%s -j NFLOG --nflog-group %d --nflog-prefix %q",
			m, limit, b.policy.Host.LogGroup, ruleset.NFLOGPrefix(o, a)), Origin: o}
	}
	object := o.Tap
	if o.Group != "" {
		object = "sg-" + o.Group
	}
	verdict := strings.ToUpper(string(a))
	tail := "-" + string(o.Dir) + " " + verdict + " "
	prefix := "vmfw " + object + tail
	if len(prefix) > 28 {
		prefix = object + tail
	}
	if len(prefix) > 28 {
		prefix = object[:28-len(tail)] + tail
	}
	spec := fmt.Sprintf("%s%s -j LOG --log-prefix %q", m, limit, prefix)
	if level != config.LogOff && level != config.DefaultLogLevel {
		spec += " --log-level " + string(level)
	}
	return Rule{Spec: spec, Origin: o}
}

// groupChain compiles one direction of a group. In chains decide for good
// (the receiver is the last to look at a packet); out chains only mark an
// accepted packet and return, so the receiver's in rules still apply.
func (b *builder) groupChain(f ruleset.Family, g *ruleset.Group, dir config.Direction) *ChainRules {
	return b.compileGroup(f, g, dir, GroupChain(g.Name, string(dir)), false)
}

// localGroupChain compiles sg-NAME-lin: the group's in rules without those
// matching a source MAC, which no packet the hypervisor sends can match
// and OUTPUT may not reach (route.go).
func (b *builder) localGroupChain(f ruleset.Family, g *ruleset.Group) *ChainRules {
	return b.compileGroup(f, g, config.In, GroupChain(g.Name, "lin"), true)
}

func (b *builder) compileGroup(f ruleset.Family, g *ruleset.Group, dir config.Direction, name Chain, skipMAC bool) *ChainRules {
	c := &ChainRules{Name: name}
	for _, rule := range g.Rules(dir) {
		if skipMAC && rule.Match.SourceMAC != nil {
			continue
		}
		matches := b.ruleMatches(f, rule)
		if len(matches) == 0 {
			continue
		}
		o := rule.Origin
		first := len(c.Rules)
		for _, m := range matches {
			if rule.Log {
				c.Rules = append(c.Rules, b.logRule(m, o, rule.Action, rule.LogLevel))
			}
			switch {
			case rule.Action == config.Drop:
				c.Rules = append(c.Rules, Rule{Spec: join(m, "-j DROP"), Comment: rule.Comment})
			case rule.Action == config.Reject:
				c.Rules = append(c.Rules, rejectRules(f, m, rule.Comment)...)
			case dir == config.In:
				c.Rules = append(c.Rules, Rule{Spec: join(m, "-j ACCEPT"), Comment: rule.Comment})
			default:
				c.Rules = append(c.Rules, Rule{Spec: join(m, b.setMark()), Comment: rule.Comment})
			}
		}
		if rule.Action == config.Accept && dir == config.Out {
			c.Rules = append(c.Rules, Rule{Spec: b.isMarked() + " -j RETURN"})
		}
		withOrigin(c.Rules[first:], o)
	}
	return c
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + " " + b
}

// ruleMatches returns the match arguments of every iptables rule one
// policy rule becomes in family f: one per address alternative, none when
// the rule cannot apply to f (an icmp rule in IPv6, only IPv4 addresses).
func (b *builder) ruleMatches(f ruleset.Family, r ruleset.Rule) []string {
	m := r.Match
	if pf := m.Proto.Family(); pf != 0 && pf != f {
		return nil
	}
	var proto []string
	switch m.Proto.Name {
	case "":
	case "icmp":
		proto = append(proto, "-p icmp")
		if !m.ICMP.IsAny() {
			proto = append(proto, "--icmp-type "+m.ICMP.Name)
		}
	case "icmpv6":
		proto = append(proto, "-p ipv6-icmp")
		if !m.ICMP.IsAny() {
			proto = append(proto, "--icmpv6-type "+m.ICMP.Name)
		}
	default:
		proto = append(proto, "-p "+m.Proto.Name)
	}
	proto = append(proto, portMatch(m.SPorts, "sport")...)
	proto = append(proto, portMatch(m.DPorts, "dport")...)
	if m.SourceMAC != nil {
		proto = append(proto, "-m mac --mac-source "+m.SourceMAC.String())
	}
	base := strings.Join(proto, " ")

	variants := []string{base}
	variants = b.addresses(f, variants, m.Source, "-s")
	variants = b.addresses(f, variants, m.Dest, "-d")
	variants = groupSets(f, variants, m.SourceGroup, "src")
	variants = groupSets(f, variants, m.DestGroup, "dst")
	variants = addressSets(f, variants, m.SourceSet, "src")
	variants = addressSets(f, variants, m.DestSet, "dst")
	return variants
}

func (b *builder) addresses(f ruleset.Family, variants []string, prefixes []netip.Prefix, flag string) []string {
	if len(prefixes) == 0 {
		return variants
	}
	var out []string
	for _, v := range variants {
		for _, p := range prefixes {
			if ruleset.FamilyOf(p.Addr()) == f {
				out = append(out, join(v, flag+" "+p.String()))
			}
		}
	}
	return out
}

// groupSets restricts the variants to members' addresses of family f.
// Members are matched by address only: the hash:mac set type is not in
// every kernel (CONFIG_IP_SET_HASH_MAC), and anti-spoofing already binds a
// member's MAC to its addresses.
func groupSets(f ruleset.Family, variants []string, group, dir string) []string {
	if group == "" {
		return variants
	}
	return matchSet(variants, SetName(group, f), dir)
}

// addressSets restricts the variants to the addresses of an address set
// in family f: a rule with source_set is in both families' tables
// whatever families the set's entries are of, so that an edit of the set
// (an IPv6 entry added to an IPv4-only set) changes members only, never a
// rule (docs/design.md, "Address sets").
func addressSets(f ruleset.Family, variants []string, set, dir string) []string {
	if set == "" {
		return variants
	}
	return matchSet(variants, AddressSetName(set, f), dir)
}

// matchSet restricts each variant to the addresses in ipset name, looked
// up by the packet's source or destination (dir: src, dst).
func matchSet(variants []string, name, dir string) []string {
	out := make([]string, len(variants))
	for i, v := range variants {
		out[i] = join(v, "-m set --match-set "+name+" "+dir)
	}
	return out
}

// AddressSetName returns the ipset holding address set's networks of
// family f.
func AddressSetName(set string, f ruleset.Family) string {
	if f == ruleset.IPv6 {
		return addressSetPrefix + set + "-v6"
	}
	return addressSetPrefix + set + "-v4"
}

// SetName returns the ipset holding group members' addresses of family f.
func SetName(group string, f ruleset.Family) string {
	if f == ruleset.IPv6 {
		return groupPrefix + group + "-v6"
	}
	return groupPrefix + group + "-v4"
}

func portMatch(ports []config.PortRange, dir string) []string {
	if len(ports) == 0 {
		return nil
	}
	parts := make([]string, len(ports))
	for i, p := range ports {
		parts[i] = strconv.Itoa(int(p.Lo))
		if p.Hi != p.Lo {
			parts[i] += ":" + strconv.Itoa(int(p.Hi))
		}
	}
	if len(ports) == 1 {
		return []string{"--" + dir + " " + parts[0]}
	}
	return []string{"-m multiport --" + dir + "s " + strings.Join(parts, ",")}
}

// sets returns the ipsets of every address set a compiled rule refers to
// (addressSetMembers), sorted by name, then those of every group a
// compiled rule refers to, holding its members' addresses (the policy's
// Members, remote members included) sorted as text as ipset restore
// scripts list them.
func (b *builder) sets() []Set {
	var out []Set
	for _, name := range slices.Sorted(maps.Keys(b.policy.Sets)) {
		for _, f := range ruleset.Families {
			out = append(out, Set{Name: AddressSetName(name, f), Type: HashNet, Family: f, Members: addressSetMembers(b.policy.Sets[name], f)})
		}
	}
	names := slices.Sorted(maps.Keys(b.policy.Members))
	for _, g := range names {
		for _, f := range ruleset.Families {
			s := Set{Name: SetName(g, f), Type: HashIP, Family: f}
			for _, a := range b.policy.Members[g].Addrs[f] {
				s.Members = append(s.Members, a.String())
			}
			slices.Sort(s.Members)
			out = append(out, s)
		}
	}
	return out
}

// FromConfig compiles the policy of m for the attached interfaces and
// lays it out: Build for callers that start from the configuration (the
// bench, tests).
func FromConfig(m *config.Model, attached []*config.NIC) (*Ruleset, error) {
	p, err := ruleset.Compile(m, attached)
	if err != nil {
		return nil, err
	}
	return Build(p), nil
}

// Sets returns the ipsets Build would lay out for p, without laying out
// any chain: what a change of group members alone needs.
func Sets(p *ruleset.Policy) []Set { return newBuilder(p).sets() }

// addressSetMembers returns the members of address set s's ipset of
// family f (type hash:net), as ipset save prints them: its entries, then
// its excepts with the nomatch flag, each in file order. In a hash:net
// set the kernel looks an address up from the most specific prefix
// length to the least and the first prefix found decides, a nomatch one
// by not matching: the set's own meaning (config.Set), so entries and
// excepts go in as written, and an edit of one entry is one member added
// or removed.
//
// hash:net takes no prefix of length 0, so an entry 0.0.0.0/0 (::/0)
// becomes its two halves, each unless the set lists it itself: a listed
// half, entry or except, is more specific than the /0 and decides its
// addresses anyway.
func addressSetMembers(s *ruleset.Set, f ruleset.Family) []string {
	var out []string
	var halves []netip.Prefix
	for _, list := range []struct {
		entries []config.SetEntry
		flag    string
	}{{s.Entries, ""}, {s.Except, NoMatch}} {
		for _, e := range list.entries {
			p := e.Prefix
			if ruleset.FamilyOf(p.Addr()) != f {
				continue
			}
			if p.Bits() == 0 {
				halves = append(halves, halvesOf(p)...)
				continue
			}
			out = append(out, SetMember(p)+list.flag)
		}
	}
	for _, h := range halves {
		if !listedPrefix(s, h) {
			out = append(out, SetMember(h))
		}
	}
	return out
}

// halvesOf returns the two prefixes of length 1 that make up p, of length
// 0.
func halvesOf(p netip.Prefix) []netip.Prefix {
	lo := netip.PrefixFrom(p.Addr(), 1)
	b := p.Addr().AsSlice()
	b[0] |= 0x80
	hi, _ := netip.AddrFromSlice(b)
	return []netip.Prefix{lo, netip.PrefixFrom(hi, 1)}
}

// listedPrefix reports whether s lists p itself, as an entry or an except.
func listedPrefix(s *ruleset.Set, p netip.Prefix) bool {
	for _, list := range [][]config.SetEntry{s.Entries, s.Except} {
		for _, e := range list {
			if e.Prefix == p {
				return true
			}
		}
	}
	return false
}

// SetMember writes prefix p as ipset prints a member of a hash:net set: a
// single address (a /32 or /128) without its length, any other prefix as
// a CIDR.
func SetMember(p netip.Prefix) string {
	if p.Bits() == p.Addr().BitLen() {
		return p.Addr().String()
	}
	return p.String()
}
