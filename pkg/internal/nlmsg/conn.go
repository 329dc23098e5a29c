package nlmsg

import (
	"context"
	"encoding/binary"
	"errors"

	"golang.org/x/sys/unix"
)

// Conn is a netfilter netlink socket in the network namespace of the
// thread that made it (With).
//
// Its receive buffer is 256 KiB on purpose: the kernel sizes each
// datagram of a dump by the largest buffer the reader has offered (up to
// 32 KiB), and nf_tables walks a set from its start again for each
// datagram of an element dump, so a reader that offers a page makes it
// walk a set of 5000 elements 90 times instead of 14 (docs/performance.md,
// "An ifup without the agent").
type Conn struct {
	fd  int
	seq uint32
	buf []byte
}

// ErrDumpInterrupted means the ruleset changed during a dump.
var ErrDumpInterrupted = errors.New("dump interrupted by a concurrent change")

// With runs fn on a fresh socket, and again, up to five times in all,
// while fn fails with ErrDumpInterrupted: a dump that a concurrent change
// interrupted, which fn must read again from its start.
func With(ctx context.Context, fn func(*Conn) error) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	c := &Conn{fd: fd, buf: make([]byte, 1<<18)}
	for try := 0; ; try++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := fn(c)
		if !errors.Is(err, ErrDumpInterrupted) || try == 4 {
			return err
		}
	}
}

// Request sends a netfilter request of type typ (subsystem << 8 | message:
// a dump, or a get with an ack) for family and calls fn with the family
// and the attributes of every message of the answer, which are valid
// during the call only, until the dump ends or the request is
// acknowledged.
func (c *Conn) Request(typ, flags uint16, family uint8, attrs []byte, fn func(family uint8, attrs []byte)) error {
	c.seq++
	req := make([]byte, unix.SizeofNlMsghdr+4, unix.SizeofNlMsghdr+4+len(attrs))
	req = append(req, attrs...)
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], typ)
	binary.NativeEndian.PutUint16(req[6:8], unix.NLM_F_REQUEST|flags)
	binary.NativeEndian.PutUint32(req[8:12], c.seq)
	req[unix.SizeofNlMsghdr] = family // nfgenmsg: family, version 0, res_id 0
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	interrupted := false
	err := Receive(c.fd, c.buf, func(m Msg) (bool, error) {
		if m.Seq != c.seq {
			return false, nil
		}
		if m.Flags&unix.NLM_F_DUMP_INTR != 0 {
			interrupted = true
		}
		switch m.Type {
		case unix.NLMSG_DONE:
			if interrupted {
				return true, ErrDumpInterrupted
			}
			return true, nil
		case unix.NLMSG_ERROR:
			if len(m.Data) < 4 {
				return true, errors.New("short netlink error")
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data[0:4])); code != 0 {
				return true, unix.Errno(-code)
			}
			return true, nil
		default:
			if len(m.Data) >= 4 {
				fn(m.Data[0], m.Data[4:])
			}
			return false, nil
		}
	})
	if errors.Is(err, ErrTruncated) {
		return errors.New("malformed netlink message")
	}
	return err
}
