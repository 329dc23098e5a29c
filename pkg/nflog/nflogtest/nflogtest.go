// Package nflogtest builds the packets that tests hand to the readers of
// NFLOG messages, as the payload the kernel copies of a logged packet.
package nflogtest

import (
	"encoding/binary"
	"net/netip"
)

// IPv4 returns the headers of an IPv4 packet of protocol proto from
// src:sport to dst:dport: 20 bytes of IPv4 header, then a transport header
// of 20 bytes for tcp (6) and of 8 for any other protocol, zero but for
// the ports, which sit where tcp, udp, sctp and dccp keep them.
func IPv4(proto uint8, src, dst string, sport, dport uint16) []byte {
	n := 28
	if proto == 6 {
		n = 40
	}
	b := make([]byte, n)
	b[0], b[9] = 0x45, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[20:], sport)
	binary.BigEndian.PutUint16(b[22:], dport)
	return b
}
