package nflog

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Header is what a logged packet's IP and transport headers say.
type Header struct {
	// Family is 4 or 6.
	Family int
	// Proto is the transport protocol (after IPv6 extension headers).
	Proto    uint8
	Src, Dst netip.Addr
	// SPort and DPort are set for tcp, udp, udplite, sctp and dccp
	// (HasPorts).
	SPort, DPort uint16
	HasPorts     bool
	// ICMPType and ICMPCode are set for icmp and icmpv6 (HasICMP).
	ICMPType, ICMPCode uint8
	HasICMP            bool
}

// ParseHeader reads the IP header at the start of payload and the
// transport header after it, as far as payload holds it.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < 1 {
		return h, errors.New("empty packet")
	}
	var rest []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return h, errors.New("truncated IPv4 header")
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return h, errors.New("bad IPv4 header length")
		}
		h.Family, h.Proto = 4, b[9]
		h.Src = netip.AddrFrom4([4]byte(b[12:16]))
		h.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		if binary.BigEndian.Uint16(b[6:])&0x1fff != 0 {
			return h, nil // a later fragment: no transport header
		}
		rest = b[ihl:]
	case 6:
		if len(b) < 40 {
			return h, errors.New("truncated IPv6 header")
		}
		h.Family = 6
		h.Src = netip.AddrFrom16([16]byte(b[8:24]))
		h.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		next, rest := b[6], b[40:]
		for {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(rest) < 8 {
					h.Proto = next
					return h, nil
				}
				next, rest = rest[0], rest[min(int(rest[1]+1)*8, len(rest)):]
				continue
			case 44: // fragment
				if len(rest) < 8 {
					h.Proto = next
					return h, nil
				}
				offset := binary.BigEndian.Uint16(rest[2:]) &^ 7
				next, rest = rest[0], rest[8:]
				if offset != 0 {
					h.Proto = next
					return h, nil
				}
				continue
			}
			break
		}
		h.Proto = next
		h.transport(rest)
		return h, nil
	default:
		return h, errors.New("not an IP packet")
	}
	h.transport(rest)
	return h, nil
}

func (h *Header) transport(b []byte) {
	switch h.Proto {
	case 6, 17, 33, 132, 136: // tcp, udp, dccp, sctp, udplite
		if len(b) >= 4 {
			h.SPort, h.DPort = binary.BigEndian.Uint16(b), binary.BigEndian.Uint16(b[2:])
			h.HasPorts = true
		}
	case 1, 58:
		if len(b) >= 2 {
			h.ICMPType, h.ICMPCode = b[0], b[1]
			h.HasICMP = true
		}
	}
}
