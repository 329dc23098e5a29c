package nlmsg

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// typeMask keeps an attribute's type without its nested and byte-order
// flags.
const typeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

// Attrs calls fn with the type (without its flags) and the payload of each
// netlink attribute of b, in place; an attribute whose length is
// impossible ends the walk.
func Attrs(b []byte, fn func(typ uint16, val []byte)) {
	for len(b) >= unix.SizeofNlAttr {
		n := int(binary.NativeEndian.Uint16(b[0:2]))
		if n < unix.SizeofNlAttr || n > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:4])&typeMask, b[unix.SizeofNlAttr:n])
		b = b[min(len(b), attrAlign(n)):]
	}
}

// AppendAttr appends one netlink attribute of type typ carrying val to b,
// padded to the attribute alignment.
func AppendAttr(b []byte, typ uint16, val []byte) []byte {
	var hdr [unix.SizeofNlAttr]byte
	binary.NativeEndian.PutUint16(hdr[0:2], uint16(unix.SizeofNlAttr+len(val)))
	binary.NativeEndian.PutUint16(hdr[2:4], typ)
	b = append(b, hdr[:]...)
	b = append(b, val...)
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func attrAlign(n int) int { return (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1) }
