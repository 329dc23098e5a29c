package nftrace

import (
	"encoding/binary"
	"net"

	"github.com/google/nftables/expr"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// packet is a traced packet as the rules see it at one hook: its headers
// as bytes (payload loads read them), the interfaces and the family of
// the hook it is at, and the mark that the hooks pass on.
type packet struct {
	q backend.Packet
	// ll, nh and th are the link, network and transport headers.
	ll, nh, th []byte
	mark       uint32
	// At the hook: the family (NFPROTO_*), the input and output
	// interfaces' names and kinds.
	nfproto          byte
	iif, oif         string
	iifKind, oifKind string
}

// bridgeMAC stands for the hypervisor's bridge as the source of a frame
// it sends or routes: no VM's, and no rule's unless one names it.
var bridgeMAC = net.HardwareAddr{0x02, 0xff, 0xff, 0xff, 0xff, 0xfe}

// receiverMAC is the destination of a frame: unicast.
var receiverMAC = net.HardwareAddr{0x02, 0xff, 0xff, 0xff, 0xff, 0xfd}

// NFPROTO values (linux/netfilter.h).
const (
	nfprotoIPv4   = 2
	nfprotoBridge = 7
	nfprotoIPv6   = 10
)

// newPacket builds q's headers with source MAC src (nil: the bridge's).
func newPacket(q backend.Packet, src net.HardwareAddr) *packet {
	p := &packet{q: q}
	if src == nil {
		src = bridgeMAC
	}
	p.ll = make([]byte, 14)
	copy(p.ll[0:6], receiverMAC)
	copy(p.ll[6:12], src)
	binary.BigEndian.PutUint16(p.ll[12:], p.etherType())
	if q.Family == ruleset.IPv4 {
		p.nh = make([]byte, 20)
		p.nh[0] = 0x45
		p.nh[8] = 64
		p.nh[9] = q.Proto
		copy(p.nh[12:16], q.Src.AsSlice())
		copy(p.nh[16:20], q.Dst.AsSlice())
	} else {
		p.nh = make([]byte, 40)
		p.nh[0] = 0x60
		p.nh[6] = q.Proto
		p.nh[7] = 64
		copy(p.nh[8:24], q.Src.AsSlice())
		copy(p.nh[24:40], q.Dst.AsSlice())
	}
	switch q.Proto {
	case 6:
		p.th = make([]byte, 20)
		binary.BigEndian.PutUint16(p.th[0:], q.SPort)
		binary.BigEndian.PutUint16(p.th[2:], q.DPort)
		p.th[12] = 0x50
		// The first packet of a flow: a SYN.
		p.th[13] = 0x02
	case 17, 132:
		p.th = make([]byte, 8)
		binary.BigEndian.PutUint16(p.th[0:], q.SPort)
		binary.BigEndian.PutUint16(p.th[2:], q.DPort)
	case 1, 58:
		p.th = make([]byte, 8)
		p.th[0], p.th[1] = q.ICMPType, q.ICMPCode
		if q.NDTarget.IsValid() {
			p.th = append(p.th, q.NDTarget.AsSlice()...)
		}
	}
	return p
}

func (p *packet) etherType() uint16 {
	if p.q.Family == ruleset.IPv4 {
		return 0x0800
	}
	return 0x86dd
}

// at puts the packet at a hook of family nfproto with its interfaces.
func (p *packet) at(nfproto byte, iif, oif, iifKind, oifKind string) {
	p.nfproto, p.iif, p.oif, p.iifKind, p.oifKind = nfproto, iif, oif, iifKind, oifKind
}

func ifname(s string) []byte {
	b := make([]byte, 16)
	copy(b, s)
	return b
}

// Meta keys of vmfw's rules that x/sys does not name (nlnft).
const (
	metaKeyIIFKIND expr.MetaKey = 26
	metaKeyOIFKIND expr.MetaKey = 27
)

// meta returns what a meta load of key gives.
func (p *packet) meta(key expr.MetaKey) ([]byte, bool) {
	switch key {
	case expr.MetaKeyIIFNAME:
		return ifname(p.iif), true
	case expr.MetaKeyOIFNAME:
		return ifname(p.oif), true
	case metaKeyIIFKIND:
		return ifname(p.iifKind), true
	case metaKeyOIFKIND:
		return ifname(p.oifKind), true
	case expr.MetaKeyPROTOCOL:
		return binary.BigEndian.AppendUint16(nil, p.etherType()), true
	case expr.MetaKeyNFPROTO:
		return []byte{p.nfproto}, true
	case expr.MetaKeyL4PROTO:
		return []byte{p.q.Proto}, true
	case expr.MetaKeyMARK:
		return binary.NativeEndian.AppendUint32(nil, p.mark), true
	}
	return nil, false
}

// payload returns len bytes at off of a header; ok is false when the
// packet has no such bytes (the kernel's rule does not match then).
func (p *packet) payload(base expr.PayloadBase, off, n int) ([]byte, bool) {
	var h []byte
	switch base {
	case expr.PayloadBaseLLHeader:
		h = p.ll
	case expr.PayloadBaseNetworkHeader:
		h = p.nh
	case expr.PayloadBaseTransportHeader:
		h = p.th
	}
	if off+n > len(h) {
		return nil, false
	}
	return h[off : off+n], true
}

// ctState is the packet's connection tracking state as ct state loads
// it (NF_CT_STATE_*_BIT).
func (p *packet) ctState() uint32 {
	switch p.q.State {
	case "INVALID":
		return 1
	case "UNTRACKED":
		return 1 << 6
	case "ESTABLISHED":
		return 1 << 1
	case "RELATED":
		return 1 << 2
	}
	return 1 << 3
}
