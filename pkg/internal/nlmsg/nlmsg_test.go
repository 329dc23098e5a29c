package nlmsg

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// msg builds one netlink message of type typ carrying data, padded to
// the netlink alignment unless last says it ends the datagram unpadded.
func msg(typ, flags uint16, seq uint32, data string, last bool) []byte {
	b := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(data)+4)
	binary.NativeEndian.PutUint32(b[0:4], uint32(unix.SizeofNlMsghdr+len(data)))
	binary.NativeEndian.PutUint16(b[4:6], typ)
	binary.NativeEndian.PutUint16(b[6:8], flags)
	binary.NativeEndian.PutUint32(b[8:12], seq)
	b = append(b, data...)
	for !last && len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// TestMessages walks a datagram of three messages, the last unpadded:
// each comes with its header's fields and exactly its payload.
func TestMessages(t *testing.T) {
	var dgram []byte
	dgram = append(dgram, msg(1, 2, 3, "abcde", false)...)
	dgram = append(dgram, msg(unix.NLMSG_ERROR, 0, 4, "", false)...)
	dgram = append(dgram, msg(unix.NLMSG_DONE, 5, 6, "xyz", true)...)
	want := []Msg{{1, 2, 3, []byte("abcde")}, {unix.NLMSG_ERROR, 0, 4, nil}, {unix.NLMSG_DONE, 5, 6, []byte("xyz")}}
	var got []Msg
	for m, err := range Messages(dgram) {
		if err != nil {
			t.Fatalf("message %d: %v", len(got), err)
		}
		got = append(got, m)
	}
	if len(got) != len(want) {
		t.Fatalf("%d messages, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Type != w.Type || g.Flags != w.Flags || g.Seq != w.Seq || string(g.Data) != string(w.Data) {
			t.Errorf("message %d: %+v, want %+v", i, g, w)
		}
	}
}

// TestMessagesTruncated: a length longer than the datagram, or shorter
// than a header, ends the walk with ErrTruncated after the messages
// before it; a caller that stops early stops the walk.
func TestMessagesTruncated(t *testing.T) {
	good := msg(1, 0, 1, "ok", false)
	long := msg(2, 0, 2, "cut", false)
	binary.NativeEndian.PutUint32(long[0:4], 100)
	short := msg(3, 0, 3, "", false)
	binary.NativeEndian.PutUint32(short[0:4], 4)
	for name, bad := range map[string][]byte{"too long": long, "shorter than a header": short} {
		var types []uint16
		var last error
		for m, err := range Messages(append(append([]byte{}, good...), bad...)) {
			if err != nil {
				last = err
				continue
			}
			types = append(types, m.Type)
		}
		if len(types) != 1 || types[0] != 1 || !errors.Is(last, ErrTruncated) {
			t.Errorf("%s: messages %v, error %v; want [1] and ErrTruncated", name, types, last)
		}
	}
	n := 0
	for range Messages(append(append([]byte{}, good...), good...)) {
		n++
		break
	}
	if n != 1 {
		t.Errorf("break after the first message: walked %d", n)
	}
}
