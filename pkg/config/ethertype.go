package config

import (
	"fmt"
	"strconv"
	"strings"
)

// etherTypes maps the ethertype names of /etc/ethertypes (netbase), which
// ebtables uses when it prints rules, to their numbers. IPv4, IPv6 and ARP
// are always allowed and so not listed.
var etherTypes = map[string]uint16{
	"X25": 0x0805, "FR_ARP": 0x0808, "BPQ": 0x08ff, "TRILL": 0x22f3, "L2-IS-IS": 0x22f4,
	"TEB": 0x6558, "RAW_FR": 0x6559, "RARP": 0x8035, "ATALK": 0x809b, "AARP": 0x80f3,
	"802_1Q": 0x8100, "IPX": 0x8137, "NetBEUI": 0x8191, "PPP": 0x880b, "MPLS": 0x8847,
	"MPLS_MULTI": 0x8848, "ATMMPOA": 0x884c, "PPP_DISC": 0x8863, "PPP_SES": 0x8864,
	"ATMFATE": 0x8884, "EAPOL": 0x888e, "S-TAG": 0x88a8, "EAP_PREAUTH": 0x88c7,
	"LLDP": 0x88cc, "MACSEC": 0x88e5, "PBB": 0x88e7, "MVRP": 0x88f5, "PTP": 0x88f7,
	"FCOE": 0x8906, "FIP": 0x8914, "ROCE": 0x8915, "LoWPAN": 0xa0ed,
}

// EtherType returns the canonical form of an l2_protocols entry: the
// /etc/ethertypes name for a known type (given by name in any case, or by
// number), or "0xNNNN" for another number from 0x0600 (the smallest
// ethertype; lower values are 802.3 lengths).
func EtherType(s string) (string, bool) {
	for name := range etherTypes {
		if strings.EqualFold(name, s) {
			return name, true
		}
	}
	hex, ok := strings.CutPrefix(strings.ToLower(s), "0x")
	if !ok {
		return "", false
	}
	n, err := strconv.ParseUint(hex, 16, 16)
	if err != nil || n < 0x0600 {
		return "", false
	}
	for name, v := range etherTypes {
		if uint64(v) == n {
			return name, true
		}
	}
	if n == 0x0800 || n == 0x86dd || n == 0x0806 {
		return "", false
	}
	return fmt.Sprintf("0x%04x", n), true
}

// EtherTypeNumber returns the number of an l2_protocols entry in the
// canonical form EtherType returns (a name or "0xNNNN"), for backends
// that match ethertypes by number (nftables).
func EtherTypeNumber(canonical string) (uint16, bool) {
	if n, ok := etherTypes[canonical]; ok {
		return n, true
	}
	hex, ok := strings.CutPrefix(canonical, "0x")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(hex, 16, 16)
	return uint16(n), err == nil
}
