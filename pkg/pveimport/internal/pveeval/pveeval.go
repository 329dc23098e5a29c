// Package pveeval decides, from a parsed Proxmox VE tree, what
// pve-firewall does with the first packet of a guest's connection: the
// verdict of the sender's tap chain (OUT) and of the receiver's (IN), as
// compile_iptables_filter, ruleset_create_vm_chain,
// ruleset_generate_vm_rules and ruleset_add_chain_policy build them. It
// is written from pve-firewall's sources independently of package
// pveimport's translation, so that tests can compare the two: what
// pve-firewall does to a packet, and what vmfw does with the imported
// configuration.
package pveeval

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/pveimport/pvefw"
)

// Verdict is what a chain does with a packet.
type Verdict string

// The verdicts.
const (
	Accept Verdict = "accept"
	Drop   Verdict = "drop"
	Reject Verdict = "reject"
)

// IP protocol numbers.
const (
	ICMP   = 1
	TCP    = 6
	UDP    = 17
	ICMPv6 = 58
)

// Flow is the first packet of a connection, bridged to or from a guest.
type Flow struct {
	Proto        uint8
	Src, Dst     netip.Addr
	SPort, DPort uint16
	// ICMPType is the type of an ICMP or ICMPv6 packet.
	ICMPType uint8
}

// ctState is what connection tracking makes of a flow's first packet:
// ICMP queries open a connection (NEW); neighbour discovery, router
// discovery and multicast listener messages are not tracked; every other
// ICMP message without a connection it belongs to (errors, replies) is
// INVALID.
func ctState(f Flow) string {
	switch f.Proto {
	case ICMP:
		switch f.ICMPType {
		case 8, 13, 15, 17:
			return "NEW"
		}
		return "INVALID"
	case ICMPv6:
		switch f.ICMPType {
		case 128, 139:
			return "NEW"
		case 130, 131, 132, 133, 134, 135, 136, 137, 143:
			return "UNTRACKED"
		}
		return "INVALID"
	}
	return "NEW"
}

// Forward is what PVEFW-FORWARD does before any tap chain, on the node
// of guest id (compile_iptables_filter, ruleset_chain_add_conn_filters):
// while the cluster firewall is on, every bridged packet conntrack finds
// INVALID is dropped, whatever the guest's own settings, unless the
// node's host.fw sets nf_conntrack_allow_invalid. ok is false when the
// packet goes on to the tap chains.
func (e *Eval) Forward(id int, f Flow) (v Verdict, why string, ok bool) {
	g, _ := e.guest(id)
	if g == nil || ctState(f) != "INVALID" {
		return "", "", false
	}
	if on, _ := opt(e.t.Cluster, "enable"); on != "1" {
		return "", "", false
	}
	if allow, _ := opt(e.t.HostOptions(g), "nf_conntrack_allow_invalid"); allow == "1" {
		return "", "", false
	}
	return Drop, "INVALID", true
}

// Eval answers for one tree.
type Eval struct {
	t *pvefw.Tree
}

// New returns an evaluator for tree t.
func New(t *pvefw.Tree) *Eval { return &Eval{t: t} }

func (e *Eval) guest(id int) (*pvefw.Guest, *pvefw.FwFile) {
	for _, g := range e.t.Guests {
		if g.ID == id {
			return g, e.t.GuestFw[id]
		}
	}
	return nil, nil
}

func opt(f *pvefw.FwFile, key string) (string, bool) {
	if f == nil {
		return "", false
	}
	o, ok := f.Options[key]
	return o.Value, ok
}

// filtered says whether pve-firewall builds tap chains for NIC index of
// guest id, and whether the interface sits on a firewall bridge at all.
func (e *Eval) filtered(id, index int) (chains, fwbr bool) {
	g, fw := e.guest(id)
	if g == nil {
		return false, false
	}
	on, _ := opt(e.t.Cluster, "enable")
	if on != "1" {
		return false, false
	}
	for _, n := range g.NICs {
		if n.Index == index && n.Firewall {
			en, _ := opt(fw, "enable")
			return en == "1", true
		}
	}
	return false, false
}

// Out is the verdict of the tap's OUT chain on a packet the guest sends.
func (e *Eval) Out(id, index int, f Flow) (Verdict, string) {
	chains, _ := e.filtered(id, index)
	if !chains {
		return Accept, "not filtered"
	}
	_, fw := e.guest(id)
	v6 := f.Src.Is6()
	if dhcp, _ := opt(fw, "dhcp"); dhcp != "0" && isDHCP(f, true) {
		return Accept, "dhcp"
	}
	radv, _ := opt(fw, "radv")
	if v6 && radv != "1" && f.Proto == ICMPv6 && f.ICMPType == 134 {
		return Drop, "router advertisement"
	}
	if ndp, _ := opt(fw, "ndp"); v6 && ndp != "0" && f.Proto == ICMPv6 {
		switch f.ICMPType {
		case 133, 135, 136:
			return Accept, "ndp"
		case 134:
			if radv == "1" {
				return Accept, "ndp"
			}
		}
	}
	return e.rulesThenPolicy(id, index, fw, "out", "ACCEPT", f)
}

// In is the verdict of PVEFW-FWBR-IN's input filters and the tap's IN
// chain on a packet to the guest.
func (e *Eval) In(id, index int, f Flow) (Verdict, string) {
	chains, fwbr := e.filtered(id, index)
	if !fwbr {
		return Accept, "not filtered"
	}
	g, fw := e.guest(id)
	if s, ok := e.t.Cluster.IPSets["blacklist"]; ok && inSetScoped(s, f.Src, e, nil) {
		return Drop, "blacklist"
	}
	host := e.t.HostOptions(g)
	if ns, _ := opt(host, "nosmurfs"); ns != "0" && f.Src.Is4() && (ctState(f) == "NEW" || ctState(f) == "INVALID") {
		// PVEFW-smurfs, entered for NEW and INVALID packets:
		// 0.0.0.0 returns (DHCP); a broadcast source (addrtype
		// BROADCAST: the host's subnets' broadcast addresses too,
		// which a tree does not tell) or a multicast one is dropped.
		if f.Src == broadcast || multicast4.Contains(f.Src) {
			return Drop, "smurfs"
		}
	}
	if !chains {
		return Accept, "the guest's firewall is off"
	}
	if dhcp, _ := opt(fw, "dhcp"); dhcp != "0" && isDHCP(f, false) {
		return Accept, "dhcp"
	}
	if ndp, _ := opt(fw, "ndp"); f.Src.Is6() && ndp != "0" && f.Proto == ICMPv6 && f.ICMPType >= 133 && f.ICMPType <= 136 {
		return Accept, "ndp"
	}
	return e.rulesThenPolicy(id, index, fw, "in", "DROP", f)
}

// isDHCP reports whether f is DHCP or DHCPv6 from the client's port to the
// server's (toServer) or from the server's to the client's.
func isDHCP(f Flow, toServer bool) bool {
	if f.Proto != UDP {
		return false
	}
	client, server := uint16(68), uint16(67)
	if f.Src.Is6() {
		client, server = 546, 547
	}
	if toServer {
		return f.SPort == client && f.DPort == server
	}
	return f.SPort == server && f.DPort == client
}

// rulesThenPolicy ends the tap's chain of direction dir: the guest's rules,
// then its policy_in or policy_out, def when the guest's firewall file does
// not set it.
func (e *Eval) rulesThenPolicy(id, index int, fw *pvefw.FwFile, dir, def string, f Flow) (Verdict, string) {
	if v, why, ok := e.rules(id, index, dir, f); ok {
		return v, why
	}
	p, _ := opt(fw, "policy_"+dir)
	if p == "" {
		p = def
	}
	return policy(p, f)
}

// Addresses the standard chains single out.
var (
	broadcast   = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	multicast4  = netip.MustParsePrefix("224.0.0.0/4")
	multicast6  = netip.MustParsePrefix("ff00::/8")
	smbUDPPorts = map[uint16]bool{135: true, 445: true, 137: true, 138: true, 139: true}
)

// policy is ruleset_add_chain_policy: DROP runs PVEFW-Drop first, then
// drops; REJECT runs PVEFW-Reject, then PVEFW-reject.
func policy(p string, f Flow) (Verdict, string) {
	if p == "ACCEPT" {
		return Accept, "policy"
	}
	v6 := f.Src.Is6()
	smb := f.Proto == UDP && (smbUDPPorts[f.DPort] || f.SPort == 137 && f.DPort >= 1024) ||
		f.Proto == TCP && (f.DPort == 135 || f.DPort == 139 || f.DPort == 445)
	// PVEFW-DropBroadcast, in both directions: IPv4's by address type
	// (the limited broadcast address; a subnet's, which the tree does
	// not tell, is not modelled) and 224.0.0.0/4, IPv6's ff00::/8.
	bcast := !v6 && (f.Dst == broadcast || multicast4.Contains(f.Dst)) || v6 && multicast6.Contains(f.Dst)
	if v6 && f.Proto == TCP && f.DPort == 43 {
		// IPv6's PVEFW-Drop and PVEFW-Reject start with it.
		return reject(f), "PVEFW-" + map[string]string{"DROP": "Drop", "REJECT": "Reject"}[p] + " rejects tcp/43 (IPv6)"
	}
	if p == "DROP" {
		return Drop, "policy DROP"
	}
	switch {
	case bcast:
		return Drop, "PVEFW-DropBroadcast"
	case smb:
		return reject(f), "PVEFW-Reject SMB"
	case f.Proto == UDP && (f.DPort == 1900 || f.SPort == 53):
		return Drop, "PVEFW-Reject drops"
	}
	return reject(f), "policy REJECT"
}

// reject is PVEFW-reject: in IPv4 packets to the broadcast address, from
// multicast sources and ICMP are dropped, in IPv6 ICMPv6; the rest is
// rejected.
func reject(f Flow) Verdict {
	if f.Src.Is4() && (f.Dst == broadcast || multicast4.Contains(f.Src) || f.Proto == ICMP) {
		return Drop
	}
	if f.Src.Is6() && f.Proto == ICMPv6 {
		return Drop
	}
	return Reject
}

// rules walks the guest's [RULES] for the NIC, GROUP lines expanded.
func (e *Eval) rules(id, index int, dir string, f Flow) (Verdict, string, bool) {
	_, fw := e.guest(id)
	iface := "net" + strconv.Itoa(index)
	for _, r := range fw.Rules {
		if r.Disabled || r.Iface != "" && r.Iface != iface {
			continue
		}
		if r.Type == "group" {
			g := e.t.Cluster.Groups[r.Action]
			if g == nil {
				continue
			}
			for _, gr := range g.Rules {
				if gr.Disabled || gr.Type != dir {
					continue
				}
				if v, ok := e.match(gr, f, nil); ok {
					return v, gr.Pos.String(), true
				}
			}
			continue
		}
		if r.Type != dir {
			continue
		}
		if v, ok := e.match(r, f, fw); ok {
			return v, r.Pos.String(), true
		}
	}
	return "", "", false
}

// match decides whether rule r matches f (fw is the guest's file, nil in
// a group) and what it does.
func (e *Eval) match(r pvefw.Rule, f Flow, fw *pvefw.FwFile) (Verdict, bool) {
	fam := 4
	if f.Src.Is6() {
		fam = 6
	}
	type tmpl struct{ proto, dport, sport string }
	list := []tmpl{{r.Proto, r.DPort, r.SPort}}
	if r.Macro != "" {
		m, ok := macros[strings.ToLower(r.Macro)]
		if !ok {
			return "", false
		}
		l := m.v4
		if fam == 6 {
			l = m.v6
		}
		list = nil
		for _, mr := range l {
			list = append(list, tmpl{mr[0], mr[1], mr[2]})
		}
	}
	for _, tp := range list {
		if !e.matchOne(r, tp.proto, tp.dport, tp.sport, f, fw, fam) {
			continue
		}
		switch r.Action {
		case "ACCEPT":
			return Accept, true
		case "DROP":
			return Drop, true
		}
		return reject(f), true
	}
	return "", false
}

var protoNumbers = map[string]int{"tcp": TCP, "udp": UDP, "icmp": ICMP, "icmpv6": ICMPv6, "ipv6-icmp": ICMPv6}

func (e *Eval) matchOne(r pvefw.Rule, proto, dport, sport string, f Flow, fw *pvefw.FwFile, fam int) bool {
	if proto != "" {
		n, ok := protoNumbers[proto]
		if !ok {
			n, _ = strconv.Atoi(proto)
		}
		if proto == "icmp" && fam != 4 || (proto == "icmpv6" || proto == "ipv6-icmp") && fam != 6 {
			return false
		}
		if int(f.Proto) != n {
			return false
		}
		if proto == "icmp" || proto == "icmpv6" || proto == "ipv6-icmp" {
			t := dport
			if r.ICMPType != "" {
				t = r.ICMPType
			}
			if t != "" && t != "any" && !icmpIs(t, f.ICMPType, fam) {
				return false
			}
		} else {
			if dport != "" && !portIn(dport, f.DPort) || sport != "" && !portIn(sport, f.SPort) {
				return false
			}
		}
	}
	if r.Source != "" && !e.addrIn(r.Source, f.Src, fw, fam) {
		return false
	}
	if r.Dest != "" && !e.addrIn(r.Dest, f.Dst, fw, fam) {
		return false
	}
	return true
}

func icmpIs(name string, t uint8, fam int) bool {
	switch name {
	case "echo-request":
		return fam == 4 && t == 8 || fam == 6 && t == 128
	case "echo-reply":
		return fam == 4 && t == 0 || fam == 6 && t == 129
	}
	n, err := strconv.Atoi(name)
	return err == nil && n == int(t)
}

var services = map[string]int{"ssh": 22, "smtp": 25, "domain": 53, "http": 80, "https": 443, "submission": 587}

func portIn(spec string, p uint16) bool {
	for _, e := range strings.Split(spec, ",") {
		lo, hi, isRange := strings.Cut(e, ":")
		a, err := strconv.Atoi(lo)
		if err != nil {
			a = services[lo]
		}
		b := a
		if isRange {
			b, _ = strconv.Atoi(hi)
		}
		if int(p) >= a && int(p) <= b {
			return true
		}
	}
	return false
}

// addrIn matches -source/-dest: an IP set (nomatch: the longest prefix
// decides), an alias, a list, a range. An address of the other family
// never matches: pve-firewall leaves such a rule out of that family's
// table.
func (e *Eval) addrIn(spec string, a netip.Addr, fw *pvefw.FwFile, fam int) bool {
	if name, ok := strings.CutPrefix(spec, "+"); ok {
		scope := ""
		if i := strings.Index(name, "/"); i >= 0 {
			scope, name = name[:i+1], name[i+1:]
		}
		if scope != "dc/" && fw != nil {
			if s, ok := fw.IPSets[name]; ok {
				return inSetScoped(s, a, e, fw)
			}
		}
		if s, ok := e.t.Cluster.IPSets[name]; ok && scope != "guest/" {
			return inSetScoped(s, a, e, nil)
		}
		return false
	}
	if c, ok := e.alias(spec, fw); ok {
		spec = c
	}
	for _, el := range strings.Split(spec, ",") {
		if lo, hi, ok := strings.Cut(el, "-"); ok {
			l, h := netip.MustParseAddr(lo), netip.MustParseAddr(hi)
			if l.Is4() == a.Is4() && !a.Less(l) && !h.Less(a) {
				return true
			}
			continue
		}
		if p, ok := prefix(el); ok && p.Contains(a) {
			return true
		}
	}
	return false
}

func (e *Eval) alias(spec string, fw *pvefw.FwFile) (string, bool) {
	scope, name := "", spec
	if i := strings.Index(spec, "/"); i >= 0 && (spec[:i] == "dc" || spec[:i] == "guest") {
		scope, name = spec[:i+1], spec[i+1:]
	}
	name = strings.ToLower(name)
	if strings.ContainsAny(name, ".:") {
		return "", false
	}
	if scope != "dc/" && fw != nil {
		if al, ok := fw.Aliases[name]; ok {
			return al.CIDR, true
		}
	}
	if scope != "guest/" {
		if al, ok := e.t.Cluster.Aliases[name]; ok {
			return al.CIDR, true
		}
	}
	return "", false
}

func prefix(s string) (netip.Prefix, bool) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	p, err := netip.ParsePrefix(s)
	return p.Masked(), err == nil
}

// inSetScoped is ipset hash:net with nomatch: the most specific matching
// entry decides.
func inSetScoped(s *pvefw.IPSet, a netip.Addr, e *Eval, fw *pvefw.FwFile) bool {
	best, match := -1, false
	for _, en := range s.Entries {
		c := en.CIDR
		if e != nil {
			if v, ok := e.alias(c, fw); ok {
				c = v
			}
		}
		p, ok := prefix(c)
		if !ok || !p.Contains(a) {
			continue
		}
		if p.Bits() > best {
			best, match = p.Bits(), !en.NoMatch
		}
	}
	return match
}

// macros are the macros the test trees use, from pve-firewall's table:
// per family, the proto, dport and sport of each rule.
var macros = map[string]struct{ v4, v6 [][3]string }{
	"ssh":        {v4: [][3]string{{"tcp", "22", ""}}, v6: [][3]string{{"tcp", "22", ""}}},
	"http":       {v4: [][3]string{{"tcp", "80", ""}}, v6: [][3]string{{"tcp", "80", ""}}},
	"https":      {v4: [][3]string{{"tcp", "443", ""}}, v6: [][3]string{{"tcp", "443", ""}}},
	"dns":        {v4: [][3]string{{"udp", "53", ""}, {"tcp", "53", ""}}, v6: [][3]string{{"udp", "53", ""}, {"tcp", "53", ""}}},
	"ping":       {v4: [][3]string{{"icmp", "echo-request", ""}}, v6: [][3]string{{"icmpv6", "echo-request", ""}}},
	"postgresql": {v4: [][3]string{{"tcp", "5432", ""}}, v6: [][3]string{{"tcp", "5432", ""}}},
	"trcrt":      {v4: [][3]string{{"udp", "33434:33524", ""}, {"icmp", "echo-request", ""}}, v6: [][3]string{{"udp", "33434:33524", ""}, {"icmpv6", "echo-request", ""}}},
}
