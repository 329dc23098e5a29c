package config

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode"
)

// protoNames maps the protocol names a rule may use to the stored form.
var protoNames = map[string]string{
	"any": "", "tcp": "tcp", "udp": "udp", "sctp": "sctp",
	"icmp": "icmp", "icmpv6": "icmpv6", "ipv6-icmp": "icmpv6",
}

// protoByNumber stores the numbers of named protocols as their names, so
// that "proto = 6" takes dport like "tcp" does and the ruleset has one
// spelling per protocol.
var protoByNumber = map[int]string{ProtoICMP: "icmp", ProtoTCP: "tcp", ProtoUDP: "udp", ProtoICMPv6: "icmpv6", ProtoSCTP: "sctp"}

// The IP protocol numbers of the protocols a rule may name.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
	ProtoSCTP   = 132
)

// parseProto returns the stored form of a proto value: a name, a decimal
// number, or "" for any.
func parseProto(v any) (string, bool) {
	n := -1
	switch v := v.(type) {
	case int64:
		if v < 0 || v > 255 {
			return "", false
		}
		n = int(v)
	case string:
		if p, ok := protoNames[strings.ToLower(v)]; ok {
			return p, true
		}
		d, ok := parseDecimal(v, 255)
		if !ok {
			return "", false
		}
		n = d
	default:
		return "", false
	}
	if name, ok := protoByNumber[n]; ok {
		return name, true
	}
	return strconv.Itoa(n), true
}

// parseAction parses a rule action or VM policy.
func parseAction(s string) (Action, bool) {
	switch a := Action(strings.ToLower(s)); a {
	case Accept, Drop, Reject:
		return a, true
	}
	return "", false
}

// parseMAC accepts the MAC of a single Ethernet interface: 48 bits, unicast,
// not all zero. On failure it returns the problem.
func parseMAC(s string) (net.HardwareAddr, string) {
	mac, err := net.ParseMAC(s)
	if err != nil {
		return nil, "not a MAC address; write it like 02:00:00:00:01:01"
	}
	if len(mac) != 6 {
		return nil, "not a 48-bit Ethernet MAC address"
	}
	if mac[0]&1 != 0 {
		return nil, "a multicast MAC address; an interface has a unicast one"
	}
	if allZero(mac) {
		return nil, "the all-zero MAC address"
	}
	return mac, ""
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// parsePrefix parses an address or CIDR of a rule. An address becomes a
// /32 or /128. Zones and IPv4-mapped IPv6 addresses are refused: neither
// can be matched by iptables the way the operator means it.
func parsePrefix(s string) (netip.Prefix, string) {
	if !strings.Contains(s, "/") {
		a, problem := parseAddr(s)
		if problem != "" {
			return netip.Prefix{}, problem
		}
		return netip.PrefixFrom(a, a.BitLen()), ""
	}
	if strings.Contains(s, "%") {
		return netip.Prefix{}, "zones (%) are not allowed"
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, "not an IP address or CIDR prefix"
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, "IPv4-mapped IPv6 prefix; write the IPv4 prefix instead"
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, "host bits set; did you mean " + strconv.Quote(m.String()) + "?"
	}
	return p, ""
}

// parseAddr parses a single IP address, no prefix, zone or IPv4-mapped form.
func parseAddr(s string) (netip.Addr, string) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		if strings.Contains(s, "/") {
			return netip.Addr{}, "a single address is expected, not a prefix"
		}
		return netip.Addr{}, "not an IP address"
	}
	if a.Zone() != "" {
		return netip.Addr{}, "zones (%) are not allowed"
	}
	if a.Is4In6() {
		return netip.Addr{}, "IPv4-mapped IPv6 address; write the IPv4 address instead"
	}
	return a, ""
}

// maxComment leaves room in iptables' 256-byte comment for what vmfw adds.
const maxComment = 128

// validComment keeps comments to printable ASCII without the characters a
// shell or iptables-restore would interpret: comments end up quoted in
// iptables-restore input, and a quote must not end that quoting early.
func validComment(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || strings.IndexByte("\"\\'`$", c) >= 0 {
			return false
		}
	}
	return true
}

// maxDescription bounds a group's description.
const maxDescription = 1024

// validDescription allows any text without control characters, which
// would garble status output.
func validDescription(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}
