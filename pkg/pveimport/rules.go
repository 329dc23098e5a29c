package pveimport

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/pveimport/pvefw"
)

// prule is a pve-firewall rule after macro expansion, for one family or
// both: what iptables is given.
type prule struct {
	src                     pvefw.Rule
	dir                     string // in or out
	action                  string // ACCEPT DROP REJECT
	proto                   string // vmfw's spelling, "" for any
	dport, sport, icmpType  string
	source, dest            addrs
	hasSource, hasDest      bool
	family                  int // 4, 6, or 0 for both
	log                     string
	also                    []pvefw.Line
	notes                   []string
	macro                   string
	restrictedByMacroFamily bool
}

// protocols whose rules may have ports in vmfw.
var vmfwPortProtos = map[string]bool{"tcp": true, "udp": true, "sctp": true}

// pveProtosWithPorts are the protocols pve-firewall allows ports for
// ($PROTOCOLS_WITH_PORTS).
var pveProtosWithPorts = map[string]bool{"udp": true, "17": true, "udplite": true, "136": true, "tcp": true, "6": true, "dccp": true, "33": true, "sctp": true, "132": true}

// icmpNames and icmpv6Names are the type names pve-firewall accepts
// ($icmp_type_names, $icmpv6_type_names).
var icmpNames = set("any", "echo-reply", "destination-unreachable", "network-unreachable", "host-unreachable",
	"protocol-unreachable", "port-unreachable", "fragmentation-needed", "source-route-failed", "network-unknown",
	"host-unknown", "network-prohibited", "host-prohibited", "TOS-network-unreachable", "TOS-host-unreachable",
	"communication-prohibited", "host-precedence-violation", "precedence-cutoff", "source-quench", "redirect",
	"network-redirect", "host-redirect", "TOS-network-redirect", "TOS-host-redirect", "echo-request",
	"router-advertisement", "router-solicitation", "time-exceeded", "ttl-zero-during-transit",
	"ttl-zero-during-reassembly", "parameter-problem", "ip-header-bad", "required-option-missing",
	"timestamp-request", "timestamp-reply", "address-mask-request", "address-mask-reply")

var icmpv6Names = set("destination-unreachable", "no-route", "communication-prohibited", "beyond-scope",
	"address-unreachable", "port-unreachable", "failed-policy", "reject-route", "packet-too-big", "time-exceeded",
	"ttl-zero-during-transit", "ttl-zero-during-reassembly", "parameter-problem", "bad-header",
	"unknown-header-type", "unknown-option", "echo-request", "echo-reply", "router-solicitation",
	"router-advertisement", "neighbor-solicitation", "neighbour-solicitation", "neighbor-advertisement",
	"neighbour-advertisement", "redirect")

// icmpTypeNames returns the type names of proto, icmp or icmpv6.
func icmpTypeNames(proto string) map[string]bool {
	if proto == "icmpv6" {
		return icmpv6Names
	}
	return icmpNames
}

func set(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

var (
	portRange  = regexp.MustCompile(`^([0-9]+):([0-9]+)$`)
	portNumber = regexp.MustCompile(`^[0-9]+$`)
	netID      = regexp.MustCompile(`^net\d+$`)
)

// refusal is why a rule is refused: kind and reason.
type refusal struct {
	kind   ProblemKind
	reason string
}

func ignored(format string, args ...any) *refusal {
	return &refusal{Ignored, fmt.Sprintf(format, args...)}
}

func untranslatable(format string, args ...any) *refusal {
	return &refusal{Untranslatable, fmt.Sprintf(format, args...)}
}

// vmfwProto maps a -p value to vmfw's spelling and tells whether
// pve-firewall knows it (pve_fw_verify_protocol_spec).
func vmfwProto(p string) (string, *refusal) {
	switch p {
	case "tcp", "udp", "sctp", "icmp", "icmpv6":
		return p, nil
	case "ipv6-icmp":
		return "icmpv6", nil
	}
	n, known := protocolNumbers[p]
	if !known {
		v, err := strconv.Atoi(p)
		if err != nil || !portNumber.MatchString(p) {
			return "", ignored("unknown protocol '%s'", p)
		}
		if v > 255 {
			return "", ignored("unknown protocol '%s'", p)
		}
		n = v
	}
	switch n {
	case 0:
		// -p 0 (and its names ip and hopopt) is every protocol to
		// iptables.
		return "", nil
	case 1, 58:
		// In the other family's table iptables matches the number as
		// written; vmfw keeps icmp rules to IPv4 and icmpv6 to IPv6.
		return "", untranslatable("protocol %s by number: pve-firewall matches it in both IPv4 and IPv6, vmfw's icmp and icmpv6 rules apply to one family; write icmp or icmpv6", p)
	case 6:
		return "tcp", nil
	case 17:
		return "udp", nil
	case 132:
		return "sctp", nil
	}
	return strconv.Itoa(n), nil
}

// ports reads a -dport or -sport value (parse_port_name_number_or_range)
// into vmfw's form, service names replaced by their numbers.
func ports(spec string) (string, []string, *refusal) {
	elems := strings.Split(spec, ",")
	count := 0
	var out, notes []string
	for _, e := range elems {
		if e == "" {
			return "", nil, ignored("extraneous commas in list")
		}
		switch {
		case portRange.MatchString(e):
			m := portRange.FindStringSubmatch(e)
			a, _ := strconv.Atoi(m[1])
			b, _ := strconv.Atoi(m[2])
			if a > 65535 || b > 65535 {
				return "", nil, ignored("invalid port '%s'", e)
			}
			if a > b {
				return "", nil, ignored("backwards range '%s' not allowed", e)
			}
			if a == 0 {
				return "", nil, untranslatable("port 0: vmfw matches ports 1 to 65535")
			}
			count += 2
			out = append(out, strconv.Itoa(a)+":"+strconv.Itoa(b))
		case portNumber.MatchString(e):
			a, _ := strconv.Atoi(e)
			if a > 65535 {
				return "", nil, ignored("invalid port '%s'", e)
			}
			if a == 0 {
				return "", nil, untranslatable("port 0: vmfw matches ports 1 to 65535")
			}
			count++
			out = append(out, strconv.Itoa(a))
		default:
			p, ok := servicePorts[e]
			if !ok {
				return "", nil, ignored("invalid port '%s'", e)
			}
			count++
			out = append(out, strconv.Itoa(p))
			notes = append(notes, fmt.Sprintf("port %s is %d", e, p))
		}
	}
	if count > 15 {
		return "", nil, ignored("too many entries in port list (> 15 numbers)")
	}
	return strings.Join(out, ","), notes, nil
}

// addrSpec resolves a -source or -dest value: an IP set, an alias or an
// address list.
func (t *translator) addrSpec(spec string, sc setScope, group bool, notes *[]string, also *[]pvefw.Line) (addrs, *refusal) {
	if strings.HasPrefix(spec, "+") {
		m := ipsetRef.FindStringSubmatch(spec)
		if m == nil {
			return addrs{}, ignored("invalid ipset name '%s'", spec)
		}
		scope, name := m[1], lowerASCII(m[2])
		if scope == "sdn/" {
			return addrs{}, untranslatable("SDN IP sets (%s) are not part of the import", spec)
		}
		if scope != "dc/" && !group && sc.fw != nil {
			if s, ok := sc.fw.IPSets[name]; ok {
				if strings.HasPrefix(name, "ipfilter-net") {
					return addrs{}, untranslatable("the ipfilter set %s in a rule", name)
				}
				if vn, ok := t.guestSets[sc.id][name]; ok {
					*also = append(*also, s.Line)
					return addrs{set: vn, via: "IP set " + spec}, nil
				}
				return addrs{}, untranslatable("IP set %s could not be imported", name)
			}
		}
		if scope != "guest/" {
			if s, ok := t.cluster.IPSets[name]; ok {
				if name == "management" {
					return addrs{}, untranslatable("the management IP set: pve-firewall adds the host's local network to it, which the import does not know")
				}
				if vn, ok := t.clusterSets[name]; ok {
					*also = append(*also, s.Line)
					return addrs{set: vn, via: "IP set " + spec}, nil
				}
				return addrs{}, untranslatable("IP set %s could not be imported", name)
			}
		}
		return addrs{}, ignored("no such ipset '%s'", name)
	}
	if m := aliasRef.FindStringSubmatch(spec); m != nil {
		if group {
			sc = setScope{}
		}
		p, line, err := t.resolveAlias(sc, m[1], m[2])
		if err != nil {
			return addrs{}, ignored("%v", err)
		}
		*also = append(*also, line)
		return addrs{prefixes: []netip.Prefix{p}, family: familyOf(p.Addr()), via: "alias " + spec}, nil
	}
	a, err := addrList(spec, notes)
	if err != nil {
		return addrs{}, ignored("%v", err)
	}
	return a, nil
}

// checkRule verifies a rule as verify_rule does and resolves its values.
// group says the rule belongs to a security group (no -i, cluster scope).
func (t *translator) checkRule(r pvefw.Rule, sc setScope, group bool) (*prule, *refusal) {
	p := &prule{src: r, dir: r.Type, action: r.Action, log: r.Log}
	if r.Action != "ACCEPT" && r.Action != "DROP" && r.Action != "REJECT" {
		return nil, ignored("unknown action '%s'", r.Action)
	}
	if r.Iface != "" {
		if group {
			return nil, ignored("parameter -i not allowed for this rule type")
		}
		if !netID.MatchString(r.Iface) {
			return nil, ignored("value does not match the regex pattern 'net\\d+'")
		}
	}
	if r.Macro != "" {
		name, _, ok := lookupMacro(r.Macro)
		if !ok {
			return nil, ignored("unknown macro '%s'", r.Macro)
		}
		p.macro = name
	}
	isICMP := false
	if r.Proto != "" {
		proto, ref := vmfwProto(r.Proto)
		if ref != nil {
			return nil, ref
		}
		p.proto = proto
		isICMP = r.Proto == "icmp" || r.Proto == "icmpv6" || r.Proto == "ipv6-icmp"
		if proto == "icmp" {
			p.family = 4
		}
		if proto == "icmpv6" {
			p.family = 6
		}
	}
	// portList reads a list of ports of the rule's protocol into dst.
	portList := func(spec string, dst *string) *refusal {
		if !pveProtosWithPorts[r.Proto] {
			return ignored("protocol '%s' does not support ports", r.Proto)
		}
		v, notes, ref := ports(spec)
		if ref != nil {
			return ref
		}
		*dst, p.notes = v, append(p.notes, notes...)
		return nil
	}
	if r.DPort != "" {
		if r.Proto == "" {
			return nil, ignored("missing property - 'dport' requires this property")
		}
		if isICMP {
			// Old configurations keep the ICMP type in -dport.
			if !icmpTypeNames(p.proto)[r.DPort] && !portNumber.MatchString(r.DPort) {
				return nil, ignored("invalid icmp-type '%s'", r.DPort)
			}
			p.icmpType = r.DPort
		} else if ref := portList(r.DPort, &p.dport); ref != nil {
			return nil, ref
		}
	}
	if r.ICMPType != "" {
		if !isICMP {
			return nil, ignored("missing property - 'icmp-type' requires this property")
		}
		if r.DPort != "" {
			return nil, ignored("'icmp-type' cannot be specified together with 'dport'")
		}
		if !icmpTypeNames(p.proto)[r.ICMPType] {
			return nil, ignored("invalid icmp-type '%s' for proto '%s'", r.ICMPType, r.Proto)
		}
		p.icmpType = r.ICMPType
	}
	if r.SPort != "" {
		if r.Proto == "" {
			return nil, ignored("missing property - 'sport' requires this property")
		}
		if ref := portList(r.SPort, &p.sport); ref != nil {
			return nil, ref
		}
	}
	if (p.dport != "" || p.sport != "") && !vmfwPortProtos[p.proto] {
		return nil, untranslatable("ports of protocol %s: vmfw matches ports of tcp, udp and sctp", r.Proto)
	}
	setFamily := func(f int) *refusal {
		if f == 0 {
			return nil
		}
		if p.family != 0 && p.family != f {
			return ignored("detected mixed ipv4/ipv6 addresses in rule")
		}
		p.family = f
		return nil
	}
	// address reads -source or -dest, when the rule has it, into a.
	address := func(spec string, a *addrs, has *bool) *refusal {
		if spec == "" {
			return nil
		}
		v, ref := t.addrSpec(spec, sc, group, &p.notes, &p.also)
		if ref != nil {
			return ref
		}
		if ref := setFamily(v.family); ref != nil {
			return ref
		}
		*a, *has = v, true
		return nil
	}
	if ref := address(r.Source, &p.source, &p.hasSource); ref != nil {
		return nil, ref
	}
	if ref := address(r.Dest, &p.dest, &p.hasDest); ref != nil {
		return nil, ref
	}
	if r.Type == "in" && p.hasDest {
		return nil, untranslatable("an IN rule with -dest: vmfw's in rules match the sender (source), not the guest's own address")
	}
	if r.Type == "out" && p.hasSource {
		return nil, untranslatable("an OUT rule with -source: vmfw's out rules match the destination, not the guest's own address")
	}
	if p.macro != "" && r.ICMPType != "" {
		return nil, untranslatable("a macro with -icmp-type")
	}
	return p, nil
}

// expand applies the rule's macro (apply_macro) and returns the rules per
// family: one list for both families when the macro (or the lack of one)
// is the same in both.
func expand(p *prule) (both, v4, v6 []*prule, ref *refusal) {
	if p.macro == "" {
		return []*prule{p}, nil, nil, nil
	}
	m := macros[p.macro]
	inst := func(list []macroRule, fam int) ([]*prule, *refusal) {
		var out []*prule
		for _, mr := range list {
			q := *p
			q.notes = append([]string{"macro " + p.macro}, p.notes...)
			for _, kv := range []struct {
				key       string
				param     *string
				tmpl, raw string
			}{{"proto", &q.proto, mr.proto, p.src.Proto}, {"dport", &q.dport, mr.dport, p.src.DPort}, {"sport", &q.sport, mr.sport, p.src.SPort}} {
				if kv.tmpl == "" {
					continue
				}
				if kv.raw != "" && kv.raw != kv.tmpl {
					return nil, ignored("parameter '%s' already define in macro (value = '%s')", kv.key, kv.tmpl)
				}
				*kv.param = kv.tmpl
			}
			proto, ref := vmfwProto(q.proto)
			if ref != nil {
				return nil, ref
			}
			q.proto = proto
			if proto == "icmp" || proto == "icmpv6" {
				q.icmpType, q.dport = q.dport, ""
			}
			if fam != 0 && q.family == 0 {
				q.family, q.restrictedByMacroFamily = fam, true
			}
			out = append(out, &q)
		}
		return out, nil
	}
	if p.family == 0 && slices.Equal(m.v4, m.v6) {
		l, ref := inst(m.v4, 0)
		return l, nil, nil, ref
	}
	if p.family != 6 {
		if v4, ref = inst(m.v4, 4); ref != nil {
			return nil, nil, nil, ref
		}
	}
	if p.family != 4 {
		if v6, ref = inst(m.v6, 6); ref != nil {
			return nil, nil, nil, ref
		}
	}
	return nil, v4, v6, nil
}

// translateRule translates one IN or OUT rule into vmfw rules, or records
// why it cannot and returns ok false.
func (t *translator) translateRule(r pvefw.Rule, sc setScope, group bool) ([]outRule, bool) {
	p, ref := t.checkRule(r, sc, group)
	var both, v4, v6 []*prule
	if ref == nil {
		both, v4, v6, ref = expand(p)
	}
	if ref != nil {
		t.problem(r.Line, ref.kind, ref.reason, r.Action == "ACCEPT")
		return nil, false
	}
	var out []outRule
	if both != nil {
		for _, q := range both {
			out = append(out, t.emit(q)...)
		}
	} else {
		// Packets of the two families never meet each other's rules, so
		// writing the IPv4 rules before the IPv6 ones keeps each
		// family's order; rules the same in both are written once.
		for i := 0; i < max(len(v4), len(v6)); i++ {
			if i < len(v4) && i < len(v6) && sameExpansion(v4[i], v6[i]) {
				q := *v4[i]
				q.family, q.restrictedByMacroFamily = 0, false
				out = append(out, t.emit(&q)...)
				continue
			}
			if i < len(v4) {
				out = append(out, t.emit(v4[i])...)
			}
			if i < len(v6) {
				out = append(out, t.emit(v6[i])...)
			}
		}
	}
	if len(out) == 0 {
		t.rep.set(r.Line, NoEffect, "the macro has no rules for the rule's address family")
		return nil, true
	}
	return out, true
}

func sameExpansion(a, b *prule) bool {
	return a.proto == b.proto && a.dport == b.dport && a.sport == b.sport && a.icmpType == b.icmpType
}

// emit writes one expanded rule as vmfw rules, with pve-firewall's REJECT:
// PVEFW-reject drops ICMP, resets TCP, answers UDP with port-unreachable
// and everything else with host-prohibited (adm-prohibited for IPv6).
func (t *translator) emit(p *prule) []outRule {
	base := outRule{src: p.src.Line, also: p.also, proto: p.proto, dport: p.dport, sport: p.sport, icmpType: p.icmpType,
		comment: "pve " + p.src.Pos.String(), note: strings.Join(p.notes, "; ")}
	if p.log != "" && p.log != "nolog" {
		base.log = p.log
	}
	if base.icmpType == "any" {
		base.icmpType = ""
	}
	base.icmpType = lowerASCII(base.icmpType)
	if p.hasSource {
		base.source, base.sourceSet = prefixTexts(p.source.prefixes), p.source.set
	}
	if p.hasDest {
		base.dest, base.destSet = prefixTexts(p.dest.prefixes), p.dest.set
	}
	// A rule the macro gives only one family needs an address of that
	// family for vmfw to leave it out of the other family's table.
	if p.restrictedByMacroFamily && p.proto != "icmp" && p.proto != "icmpv6" {
		any := "0.0.0.0/0"
		if p.family == 6 {
			any = "::/0"
		}
		if p.dir == "in" && len(base.source) == 0 {
			base.source = []string{any}
		}
		if p.dir == "out" && len(base.dest) == 0 {
			base.dest = []string{any}
		}
	}
	switch p.action {
	case "ACCEPT":
		base.action = "accept"
		return []outRule{base}
	case "DROP":
		base.action = "drop"
		return []outRule{base}
	}
	switch p.proto {
	case "tcp", "udp":
		base.action = "reject"
		return append(rejectGuards(p, base), base)
	case "icmp", "icmpv6":
		base.action = "drop"
		base.note = joinNote(base.note, "pve-firewall's REJECT drops ICMP")
		return []outRule{base}
	}
	var out []outRule
	if p.proto == "" {
		for _, ic := range []struct {
			proto  string
			family int
		}{{"icmp", 4}, {"icmpv6", 6}} {
			if p.family != 0 && p.family != ic.family {
				continue
			}
			r := base
			r.proto, r.action = ic.proto, "drop"
			r.note = joinNote(base.note, "pve-firewall's REJECT drops "+ic.proto)
			out = append(out, r)
		}
	}
	out = append(out, rejectGuards(p, base)...)
	r := base
	r.action = "reject"
	r.note = joinNote(base.note, "pve-firewall answers protocols other than TCP and UDP with ICMP host-prohibited, vmfw with port-unreachable")
	t.rep.note(p.src.Line, "REJECT of protocols other than TCP, UDP and ICMP: vmfw answers ICMP port-unreachable where pve-firewall answers host-prohibited")
	return append(out, r)
}

// Addresses PVEFW-reject drops rather than rejects, in IPv4: packets
// from a multicast source, and to the broadcast address.
var (
	multicast4 = netip.MustParsePrefix("224.0.0.0/4")
	broadcast4 = netip.MustParsePrefix("255.255.255.255/32")
)

// rejectGuards are the drops PVEFW-reject makes before it rejects, for
// the addresses vmfw's rules can see: the sender's, in in rules
// (multicast sources), and the receiver's, in out rules (the limited
// broadcast address). Each matches what the REJECT rule base matches and
// logs as it does (pve-firewall logs before it jumps to PVEFW-reject).
// None for an IPv6 rule: IPv6's PVEFW-reject only drops ICMPv6.
func rejectGuards(p *prule, base outRule) []outRule {
	if p.family == 6 {
		return nil
	}
	guard, list, note := multicast4, base.source, "pve-firewall's REJECT drops packets from multicast sources (PVEFW-reject)"
	if p.dir == "out" {
		guard, list, note = broadcast4, base.dest, "pve-firewall's REJECT drops packets to the broadcast address (PVEFW-reject)"
	}
	var within []string
	if len(list) == 0 {
		within = []string{prefixText(guard)}
	}
	for _, a := range list {
		q, _, err := parsePrefix(a)
		if err != nil || !q.Overlaps(guard) {
			continue
		}
		if q.Bits() < guard.Bits() {
			q = guard
		}
		within = append(within, prefixText(q))
	}
	if len(within) == 0 {
		return nil // the rule cannot match such a packet
	}
	r := base
	if p.dir == "out" {
		r.dest = slices.Compact(within)
	} else {
		r.source = slices.Compact(within)
	}
	r.action, r.note = "drop", joinNote(base.note, note)
	return []outRule{r}
}
