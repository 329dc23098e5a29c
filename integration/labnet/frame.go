package labnet

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"net"
	"net/netip"
)

// markerLen is the length of a marker.
const markerLen = 16

// Broadcast is the Ethernet broadcast address.
var Broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// EtherTypes of the frames this package builds.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeIPv6 = 0x86dd
)

// NewMarker returns 16 fresh printable bytes ("vmfw:" and 11 random hex
// digits). Put one in a probe's payload and match it with HasMarker to
// recognise exactly that probe.
func NewMarker() []byte {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return []byte("vmfw:" + hex.EncodeToString(b)[:markerLen-5])
}

// HasMarker returns a Capture match function that accepts frames
// containing marker anywhere.
func HasMarker(marker []byte) func(frame []byte) bool {
	m := bytes.Clone(marker)
	return func(frame []byte) bool { return bytes.Contains(frame, m) }
}

// UDP4Frame builds an Ethernet+IPv4+UDP frame from any source to any
// destination, with correct IPv4 header and UDP checksums (TTL 64). src and
// dst must be IPv4 addresses.
func UDP4Frame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	udp := udpSegment(src.Port(), dst.Port(), payload)
	s, d := src.Addr().As4(), dst.Addr().As4()
	binary.BigEndian.PutUint16(udp[6:], fold(checksum(udp, pseudo4(s, d, 17, len(udp)))))
	return ether(dstMAC, srcMAC, EtherTypeIPv4, ipv4(s, d, 17, 64, udp))
}

// UDP6Frame builds an Ethernet+IPv6+UDP frame from any source to any
// destination, with a correct UDP checksum (hop limit 64).
func UDP6Frame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	udp := udpSegment(src.Port(), dst.Port(), payload)
	s, d := src.Addr().As16(), dst.Addr().As16()
	binary.BigEndian.PutUint16(udp[6:], fold(checksum(udp, pseudo6(s, d, 17, len(udp)))))
	return ether(dstMAC, srcMAC, EtherTypeIPv6, ipv6(s, d, 17, 64, udp))
}

// ICMPv6Frame builds an Ethernet+IPv6+ICMPv6 frame with hop limit 255 (as
// neighbour discovery requires) and a correct checksum. body is the message
// after the type, code and checksum fields.
func ICMPv6Frame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, typ, code uint8, body []byte) []byte {
	msg := append([]byte{typ, code, 0, 0}, body...)
	s, d := src.As16(), dst.As16()
	binary.BigEndian.PutUint16(msg[2:], checksum(msg, pseudo6(s, d, 58, len(msg))))
	return ether(dstMAC, srcMAC, EtherTypeIPv6, ipv6(s, d, 58, 255, msg))
}

// RouterAdvertFrame builds an ICMPv6 router advertisement (type 134) from
// srcMAC and src (a router sends from its link-local address) to all nodes
// (ff02::1), with router lifetime 0 so receivers install no default route,
// a source link-layer address option and marker in an experimental option
// (type 253, which receivers ignore).
func RouterAdvertFrame(srcMAC net.HardwareAddr, src netip.Addr, marker []byte) []byte {
	body := make([]byte, 12) // hop limit, flags, lifetime, reachable, retrans
	body[0] = 64
	body = append(body, 1, 1) // source link-layer address option
	body = append(body, srcMAC...)
	body = append(body, markerOption(marker)...)
	return ICMPv6Frame(srcMAC, multicastMAC6(allNodes), src, allNodes, 134, 0, body)
}

// DADSolicitFrame builds the neighbour solicitation (type 135) a host sends
// for duplicate address detection of target: from the unspecified address
// (::) to target's solicited-node multicast group, marker in an experimental
// option.
func DADSolicitFrame(srcMAC net.HardwareAddr, target netip.Addr, marker []byte) []byte {
	t := target.As16()
	group := netip.AddrFrom16([16]byte{0xff, 0x02, 10: 0, 11: 1, 12: 0xff, 13: t[13], 14: t[14], 15: t[15]})
	body := make([]byte, 4, 4+16+24)
	body = append(body, t[:]...)
	body = append(body, markerOption(marker)...)
	return ICMPv6Frame(srcMAC, multicastMAC6(group), netip.IPv6Unspecified(), group, 135, 0, body)
}

// NeighborAdvertFrame builds the unsolicited neighbour advertisement (type
// 136) a host sends when its link-layer address for target changes: from
// srcMAC and src to all nodes (ff02::1), override flag set, a target
// link-layer address option naming srcMAC, marker in an experimental
// option. Sent for an address that is not the sender's, it is how IPv6
// neighbour caches are poisoned.
func NeighborAdvertFrame(srcMAC net.HardwareAddr, src, target netip.Addr, marker []byte) []byte {
	t := target.As16()
	body := []byte{0x20, 0, 0, 0} // override
	body = append(body, t[:]...)
	body = append(body, 2, 1) // target link-layer address option
	body = append(body, srcMAC...)
	body = append(body, markerOption(marker)...)
	return ICMPv6Frame(srcMAC, multicastMAC6(allNodes), src, allNodes, 136, 0, body)
}

// DHCPDiscoverFrame builds a DHCPv4 DISCOVER from a client without an
// address: clientMAC → broadcast MAC, 0.0.0.0:68 → 255.255.255.255:67, with
// marker in a site-specific option (224).
func DHCPDiscoverFrame(clientMAC net.HardwareAddr, marker []byte) []byte {
	opts := []byte{53, 1, 1} // DHCPDISCOVER
	msg := bootp(1, clientMAC, netip.IPv4Unspecified(), netip.IPv4Unspecified(), opts, marker)
	return UDP4Frame(clientMAC, Broadcast,
		netip.AddrPortFrom(netip.IPv4Unspecified(), 68),
		netip.AddrPortFrom(limitedBroadcast, 67), msg)
}

// DHCPOfferFrame builds the DHCPv4 OFFER a (possibly rogue) server sends:
// serverMAC → broadcast MAC, server:67 → 255.255.255.255:68, offering
// offered to clientMAC, with marker in a site-specific option (224).
func DHCPOfferFrame(serverMAC net.HardwareAddr, server netip.Addr, clientMAC net.HardwareAddr, offered netip.Addr, marker []byte) []byte {
	s := server.As4()
	opts := []byte{53, 1, 2} // DHCPOFFER
	opts = append(opts, 54, 4, s[0], s[1], s[2], s[3])
	opts = append(opts, 51, 4, 0, 0, 0x0e, 0x10) // lease 3600 s
	opts = append(opts, 1, 4, 255, 255, 255, 0)
	msg := bootp(2, clientMAC, offered, server, opts, marker)
	return UDP4Frame(serverMAC, Broadcast,
		netip.AddrPortFrom(server, 67),
		netip.AddrPortFrom(limitedBroadcast, 68), msg)
}

// ARPRequestFrame builds a broadcast ARP request "who has targetIP, tell
// senderIP" from senderMAC, with marker in the Ethernet padding.
func ARPRequestFrame(senderMAC net.HardwareAddr, senderIP, targetIP netip.Addr, marker []byte) []byte {
	return arp(1, senderMAC, Broadcast, senderMAC, senderIP, make(net.HardwareAddr, 6), targetIP, marker)
}

// ARPRequestFrameFrom is ARPRequestFrame sent from the Ethernet source
// ethSrc while the ARP payload names senderMAC as the sender hardware
// address: what a host that checks only a frame's source MAC lets through
// and one that checks ARP too does not.
func ARPRequestFrameFrom(ethSrc, senderMAC net.HardwareAddr, senderIP, targetIP netip.Addr, marker []byte) []byte {
	return arp(1, ethSrc, Broadcast, senderMAC, senderIP, make(net.HardwareAddr, 6), targetIP, marker)
}

// ARPReplyFrame builds a unicast ARP reply "senderIP is at senderMAC" to
// targetMAC/targetIP, with marker in the Ethernet padding.
func ARPReplyFrame(senderMAC net.HardwareAddr, senderIP netip.Addr, targetMAC net.HardwareAddr, targetIP netip.Addr, marker []byte) []byte {
	return arp(2, senderMAC, targetMAC, senderMAC, senderIP, targetMAC, targetIP, marker)
}

var (
	allNodes         = netip.MustParseAddr("ff02::1")
	limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})
)

// ether prepends an Ethernet header and pads to the 60-byte minimum.
func ether(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	f := make([]byte, 14, max(60, 14+len(payload)))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], etherType)
	f = append(f, payload...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return f
}

func ipv4(src, dst [4]byte, proto uint8, ttl uint8, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	var id [2]byte
	_, _ = rand.Read(id[:])
	copy(h[4:6], id[:])
	h[8] = ttl
	h[9] = proto
	copy(h[12:16], src[:])
	copy(h[16:20], dst[:])
	binary.BigEndian.PutUint16(h[10:], checksum(h, 0))
	return append(h, payload...)
}

func ipv6(src, dst [16]byte, next uint8, hopLimit uint8, payload []byte) []byte {
	h := make([]byte, 40, 40+len(payload))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6] = next
	h[7] = hopLimit
	copy(h[8:24], src[:])
	copy(h[24:40], dst[:])
	return append(h, payload...)
}

func udpSegment(sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	return append(u, payload...)
}

func arp(op uint16, ethSrc, ethDst, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr, marker []byte) []byte {
	a := make([]byte, 8, 28+len(marker))
	binary.BigEndian.PutUint16(a[0:], 1) // Ethernet
	binary.BigEndian.PutUint16(a[2:], EtherTypeIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], op)
	s, t := spa.As4(), tpa.As4()
	a = append(a, sha[:6]...)
	a = append(a, s[:]...)
	a = append(a, tha[:6]...)
	a = append(a, t[:]...)
	a = append(a, marker...) // trailer; receivers ignore it
	return ether(ethDst, ethSrc, EtherTypeARP, a)
}

// bootp builds a BOOTP/DHCP message with the given options, then the marker
// option and the end option.
func bootp(op byte, chaddr net.HardwareAddr, yiaddr, siaddr netip.Addr, opts, marker []byte) []byte {
	m := make([]byte, 236, 236+4+len(opts)+2+len(marker)+1)
	m[0], m[1], m[2] = op, 1, 6
	_, _ = rand.Read(m[4:8]) // xid
	if op == 1 {
		binary.BigEndian.PutUint16(m[10:], 0x8000) // broadcast flag
	}
	y, s := yiaddr.As4(), siaddr.As4()
	copy(m[16:20], y[:])
	copy(m[20:24], s[:])
	copy(m[28:34], chaddr)
	m = append(m, 99, 130, 83, 99) // magic cookie
	m = append(m, opts...)
	if len(marker) > 0 {
		m = append(m, 224, byte(len(marker)))
		m = append(m, marker...)
	}
	return append(m, 255)
}

// markerOption wraps marker in an experimental ND option (type 253, RFC
// 4727), padded to a multiple of 8 bytes.
func markerOption(marker []byte) []byte {
	n := (2 + len(marker) + 7) / 8 * 8
	o := make([]byte, n)
	o[0], o[1] = 253, byte(n/8)
	copy(o[2:], marker)
	return o
}

func multicastMAC6(group netip.Addr) net.HardwareAddr {
	g := group.As16()
	return net.HardwareAddr{0x33, 0x33, g[12], g[13], g[14], g[15]}
}

func pseudo4(src, dst [4]byte, proto uint8, length int) uint32 {
	var sum uint32
	sum += uint32(src[0])<<8 | uint32(src[1])
	sum += uint32(src[2])<<8 | uint32(src[3])
	sum += uint32(dst[0])<<8 | uint32(dst[1])
	sum += uint32(dst[2])<<8 | uint32(dst[3])
	sum += uint32(proto)
	sum += uint32(length)
	return sum
}

func pseudo6(src, dst [16]byte, next uint8, length int) uint32 {
	var sum uint32
	for i := 0; i < 16; i += 2 {
		sum += uint32(src[i])<<8 | uint32(src[i+1])
		sum += uint32(dst[i])<<8 | uint32(dst[i+1])
	}
	sum += uint32(length >> 16)
	sum += uint32(length & 0xffff)
	sum += uint32(next)
	return sum
}

// checksum is the Internet checksum (RFC 1071) of b, starting from the
// partial sum initial (a pseudo-header).
func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// fold maps a computed UDP checksum of 0 to 0xffff (0 means "no checksum").
func fold(c uint16) uint16 {
	if c == 0 {
		return 0xffff
	}
	return c
}
