// Package nlmsg receives netlink datagrams, walks the messages packed in
// them and the attributes packed in a message, for the packages that
// speak netfilter's netlink directly with golang.org/x/sys/unix (nflog,
// iptables/xtables) or read what a binding does not decode (the
// nftables backend's set dumps, conntrack's filtered dumps). It knows the
// netlink header and attribute framing only: what a message carries is
// each caller's.
package nlmsg

import (
	"encoding/binary"
	"errors"
	"iter"

	"golang.org/x/sys/unix"
)

// Msg is one netlink message: its header's type, flags and sequence
// number, and its payload.
type Msg struct {
	Type  uint16
	Flags uint16
	Seq   uint32
	Data  []byte
}

// ErrTruncated is the message whose length is shorter than its header or
// longer than the rest of the datagram.
var ErrTruncated = errors.New("truncated netlink message")

// Recv receives one datagram on the netlink socket fd into buf and returns
// its bytes, receiving again when a signal interrupted the call.
func Recv(fd int, buf []byte) ([]byte, error) {
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// Receive reads the answer to a request: it calls fn with each message
// received on fd, datagram after datagram (each into buf, so m.Data is
// valid only during the call), until fn is done and Receive returns fn's
// error, or receiving fails, or a message is truncated (ErrTruncated).
func Receive(fd int, buf []byte, fn func(m Msg) (done bool, err error)) error {
	for {
		dgram, err := Recv(fd, buf)
		if err != nil {
			return err
		}
		for m, err := range Messages(dgram) {
			if err != nil {
				return err
			}
			if done, err := fn(m); done {
				return err
			}
		}
	}
}

// Messages yields the messages of the datagram b in order, in place: a
// dump of tens of thousands of messages copies none. A message whose
// length is impossible ends the walk, yielded with ErrTruncated.
func Messages(b []byte) iter.Seq2[Msg, error] {
	return func(yield func(Msg, error) bool) {
		for len(b) >= unix.SizeofNlMsghdr {
			size := int(binary.NativeEndian.Uint32(b[0:4]))
			if size < unix.SizeofNlMsghdr || size > len(b) {
				yield(Msg{}, ErrTruncated)
				return
			}
			m := Msg{
				Type:  binary.NativeEndian.Uint16(b[4:6]),
				Flags: binary.NativeEndian.Uint16(b[6:8]),
				Seq:   binary.NativeEndian.Uint32(b[8:12]),
				Data:  b[unix.SizeofNlMsghdr:size],
			}
			b = b[min(align(size), len(b)):]
			if !yield(m, nil) {
				return
			}
		}
	}
}

func align(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }
