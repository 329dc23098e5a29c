// Package nflog receives packets the kernel's NFLOG target logs: it binds
// one NFLOG group over nfnetlink (NETLINK_NETFILTER, subsystem ULOG) in
// the calling thread's network namespace and decodes each logged packet's
// prefix, interfaces and IP headers. vmfw log and the agent print them.
//
// It speaks the protocol directly with golang.org/x/sys/unix instead of
// using libnetfilter_log or a Go binding: the part vmfw needs (bind a
// group, copy packets, read their attributes) is a few hundred lines, and
// vmfw already talks nf_tables netlink the same way (pkg/iptables).
package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/internal/nlmsg"
)

// nfnetlink constants (linux/netfilter/nfnetlink.h, nfnetlink_log.h).
const (
	nfnlSubsysULOG = 4
	msgPacket      = 0
	msgConfig      = 1

	cfgCmd     = 1
	cfgMode    = 2
	cfgTimeout = 4
	cfgQThresh = 5

	cmdBind    = 1
	cmdPFBind  = 3
	copyPacket = 2

	attrPacketHdr  = 1
	attrMark       = 2
	attrTimestamp  = 3
	attrInDev      = 4
	attrOutDev     = 5
	attrPhysInDev  = 6
	attrPhysOutDev = 7
	attrHWAddr     = 8
	attrPayload    = 9
	attrPrefix     = 10
)

// Packet is one logged packet.
type Packet struct {
	// Time is when the kernel logged it, or when it was received if the
	// kernel did not say.
	Time time.Time
	// Prefix is the rule's --nflog-prefix.
	Prefix string
	// Hook is the netfilter hook (0 PREROUTING, 1 INPUT, 2 FORWARD, 3
	// OUTPUT, 4 POSTROUTING).
	Hook uint8
	// Mark is the packet mark.
	Mark uint32
	// InDev, OutDev, PhysInDev and PhysOutDev are interface indexes, 0
	// when the kernel did not say: the bridge ports (physdev) of bridged
	// packets are the taps.
	InDev, OutDev, PhysInDev, PhysOutDev uint32
	// HWAddr is the frame's source MAC, nil when not known.
	HWAddr net.HardwareAddr
	// Payload is the packet from its IP header on.
	Payload []byte
}

// Conn is a bound NFLOG group.
type Conn struct {
	fd    int
	group uint16
	buf   []byte
	queue []*Packet
}

// ErrBusy is returned by Listen when another socket has bound the group
// (only one listener per group and network namespace).
var ErrBusy = errors.New("the NFLOG group is bound by another listener (another vmfw log, the agent, ulogd)")

// Listen binds NFLOG group in the current network namespace and asks for
// whole packets, each delivered as soon as it is logged.
func Listen(group uint16) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nflog: opening netlink socket: %w", err)
	}
	c := &Conn{fd: fd, group: group, buf: make([]byte, 1<<17)}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nflog: binding netlink socket: %w", err)
	}
	// A bigger receive buffer rides out bursts (log_burst packets at once).
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	// Kernels before 3.17 needed the families bound to nfnetlink_log;
	// later ones ignore the command, so its answer does not matter.
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6, unix.AF_BRIDGE} {
		_ = c.config(fam, 0, attr(cfgCmd, []byte{cmdPFBind}))
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, 0xffff)
	mode[4] = copyPacket
	steps := [][]byte{
		attr(cfgCmd, []byte{cmdBind}),
		attr(cfgMode, mode),
		attr(cfgQThresh, be32(1)),
		attr(cfgTimeout, be32(0)),
	}
	for i, a := range steps {
		if err := c.config(unix.AF_UNSPEC, group, a); err != nil {
			unix.Close(fd)
			// The kernel refuses another socket's group with EPERM.
			if i == 0 && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EBUSY)) {
				return nil, fmt.Errorf("nflog: group %d: %w", group, ErrBusy)
			}
			return nil, fmt.Errorf("nflog: configuring group %d: %w", group, err)
		}
	}
	return c, nil
}

// Close unbinds the group.
func (c *Conn) Close() error { return unix.Close(c.fd) }

// SetDeadline bounds the next Read; the zero time waits for ever.
func (c *Conn) SetDeadline(t time.Time) error {
	var tv unix.Timeval
	if !t.IsZero() {
		d := time.Until(t)
		if d <= 0 {
			d = time.Microsecond
		}
		tv = unix.NsecToTimeval(d.Nanoseconds())
	}
	return unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
}

// Read returns the next logged packet. After SetDeadline it fails with
// os.ErrDeadlineExceeded when the deadline passes first.
func (c *Conn) Read() (*Packet, error) {
	for len(c.queue) == 0 {
		dgram, err := nlmsg.Recv(c.fd, c.buf)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EWOULDBLOCK) {
				return nil, os.ErrDeadlineExceeded
			}
			if errors.Is(err, unix.ENOBUFS) {
				// The kernel dropped messages the reader was too slow
				// for; later ones still come.
				continue
			}
			return nil, fmt.Errorf("nflog: reading: %w", err)
		}
		pkts, err := Decode(dgram)
		if err != nil {
			return nil, err
		}
		c.queue = pkts
	}
	p := c.queue[0]
	c.queue = c.queue[1:]
	return p, nil
}

// config sends one configuration message and waits for its
// acknowledgement.
func (c *Conn) config(family uint8, resID uint16, attrs []byte) error {
	msg := make([]byte, unix.SizeofNlMsghdr+4, unix.SizeofNlMsghdr+4+len(attrs))
	msg = append(msg, attrs...)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], nfnlSubsysULOG<<8|msgConfig)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], 1) // sequence
	msg[16] = family
	binary.BigEndian.PutUint16(msg[18:], resID)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	return nlmsg.Receive(c.fd, c.buf, func(m nlmsg.Msg) (bool, error) {
		if m.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
			return false, nil
		}
		if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
			return true, unix.Errno(-errno)
		}
		return true, nil
	})
}

// Decode parses one netlink datagram from the NFLOG socket into the
// packets it carries; other messages are skipped.
func Decode(b []byte) ([]*Packet, error) {
	var out []*Packet
	for m, err := range nlmsg.Messages(b) {
		if err != nil {
			return out, fmt.Errorf("nflog: %w", err)
		}
		if m.Type == nfnlSubsysULOG<<8|msgPacket && len(m.Data) >= 4 {
			out = append(out, decodePacket(m.Data[4:]))
		}
	}
	return out, nil
}

func decodePacket(attrs []byte) *Packet {
	p := &Packet{}
	nlmsg.Attrs(attrs, func(typ uint16, v []byte) {
		switch typ {
		case attrPacketHdr:
			if len(v) >= 3 {
				p.Hook = v[2]
			}
		case attrMark:
			p.Mark = u32(v)
		case attrTimestamp:
			if len(v) >= 16 {
				sec := int64(binary.BigEndian.Uint64(v))
				usec := int64(binary.BigEndian.Uint64(v[8:]))
				p.Time = time.Unix(sec, usec*1000)
			}
		case attrInDev:
			p.InDev = u32(v)
		case attrOutDev:
			p.OutDev = u32(v)
		case attrPhysInDev:
			p.PhysInDev = u32(v)
		case attrPhysOutDev:
			p.PhysOutDev = u32(v)
		case attrHWAddr:
			if len(v) >= 4 {
				n := int(binary.BigEndian.Uint16(v))
				if n > 0 && 4+n <= len(v) {
					p.HWAddr = net.HardwareAddr(append([]byte(nil), v[4:4+n]...))
				}
			}
		case attrPayload:
			p.Payload = append([]byte(nil), v...)
		case attrPrefix:
			for i, c := range v {
				if c == 0 {
					v = v[:i]
					break
				}
			}
			p.Prefix = string(v)
		}
	})
	if p.Time.IsZero() {
		p.Time = time.Now()
	}
	return p
}

func u32(v []byte) uint32 {
	if len(v) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func be32(v uint32) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, v)
	return b
}

// attr encodes one netlink attribute, padded.
func attr(typ uint16, v []byte) []byte { return nlmsg.AppendAttr(nil, typ, v) }
