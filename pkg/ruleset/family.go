package ruleset

import "net/netip"

// Family is an IP family. Backends keep what they install per family
// (iptables has a table each; nftables' inet family holds both), and the
// policy's addresses and sets are split by it.
type Family int

// The two families vmfw filters.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// Families lists both families in the order backends apply them.
var Families = []Family{IPv4, IPv6}

func (f Family) String() string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// FamilyOf returns the family of a.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}
