package nlnft

import (
	"encoding/binary"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/internal/nlmsg"
)

// Reading a set's elements. nf_tables dumps a set's elements a message
// at a time, and starts its walk of the set from the first element again
// for every message it fills, skipping what earlier messages held (the
// red-black tree of an interval set and the hash of a plain set alike):
// the cost of a read grows with the square of the elements divided by
// the elements per message. The library reads with buffers of the size
// of each message, which leaves the kernel's messages at about 4 KiB
// (100 elements, 53 of the ports set's); nlmsg.Conn's 256 KiB buffer
// lets it fill 32 KiB ones (the most it makes), eight times fewer walks:
// a set of 100,000 prefixes (200,000 elements) reads in about a second
// instead of seven (docs/performance.md, "Address sets"), and the ports
// set of 5000 taps, which an ifup without the agent reads, in 2 ms
// instead of 12 to 16 ("An ifup without the agent"). The elements are
// walked in place and handed over one by one: collecting them as the
// library's elements, copies of their bytes, cost more than the kernel's
// part (readElements keeps only the strings its maps hold).

// setElements reads on nc the elements of set name of vmfw's table of
// family f, in the network namespace nc was made in, as the library's
// GetSetElements gives them (key, data: a verdict's attributes in a
// verdict map, interval end, comment and counter), calling each with
// every one; e, and what its slices hold, are valid during the call
// only. A dump that a concurrent change interrupted fails with
// nlmsg.ErrDumpInterrupted, on which nlmsg.With reads again.
func setElements(nc *nlmsg.Conn, f layout.Family, name string, each func(e *nftables.SetElement)) error {
	attrs := nlmsg.AppendAttr(nil, unix.NFTA_SET_ELEM_LIST_TABLE, append([]byte(layout.TableName), 0))
	attrs = nlmsg.AppendAttr(attrs, unix.NFTA_SET_ELEM_LIST_SET, append([]byte(name), 0))
	// One element for them all, which each's pointer would otherwise
	// move to the heap one by one.
	var e nftables.SetElement
	return nc.Request(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETSETELEM, unix.NLM_F_DUMP, byte(Family(f)), attrs, func(_ uint8, msg []byte) {
		nlmsg.Attrs(msg, func(typ uint16, list []byte) {
			if typ == unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				nlmsg.Attrs(list, func(_ uint16, elem []byte) {
					e = decodeElement(elem)
					each(&e)
				})
			}
		})
	})
}

// nftaSetElemExpressions is NFTA_SET_ELEM_EXPRESSIONS, an element's list
// of expressions when it has more than one (x/sys/unix lacks it).
const nftaSetElemExpressions = 0x11

// decodeElement reads one element's attributes; the key and data alias
// the message, which the socket's next datagram overwrites.
func decodeElement(elem []byte) nftables.SetElement {
	var e nftables.SetElement
	// inner is the payload of the value or verdict nested in a key or
	// data attribute, as the library keeps it.
	inner := func(b []byte) (out []byte) {
		nlmsg.Attrs(b, func(t uint16, val []byte) {
			if t == unix.NFTA_DATA_VALUE || t == unix.NFTA_DATA_VERDICT {
				out = val
			}
		})
		return out
	}
	nlmsg.Attrs(elem, func(typ uint16, val []byte) {
		switch typ {
		case unix.NFTA_SET_ELEM_KEY:
			e.Key = inner(val)
		case unix.NFTA_SET_ELEM_DATA:
			e.Val = inner(val)
		case unix.NFTA_SET_ELEM_FLAGS:
			if len(val) == 4 {
				e.IntervalEnd = binary.BigEndian.Uint32(val)&unix.NFT_SET_ELEM_INTERVAL_END != 0
			}
		case unix.NFTA_SET_ELEM_USERDATA:
			e.Comment, _ = userdata.GetString(val, userdata.NFTNL_UDATA_SET_ELEM_COMMENT)
		case unix.NFTA_SET_ELEM_EXPR:
			decodeCounter(val, &e)
		case nftaSetElemExpressions:
			nlmsg.Attrs(val, func(_ uint16, ex []byte) { decodeCounter(ex, &e) })
		}
	})
	return e
}

// decodeCounter reads the attributes of one expression into e's counter
// when it is a counter.
func decodeCounter(ex []byte, e *nftables.SetElement) {
	var name string
	var data []byte
	nlmsg.Attrs(ex, func(typ uint16, val []byte) {
		switch typ {
		case unix.NFTA_EXPR_NAME:
			name = strings.TrimRight(string(val), "\x00")
		case unix.NFTA_EXPR_DATA:
			data = val
		}
	})
	if name != "counter" {
		return
	}
	c := &expr.Counter{}
	nlmsg.Attrs(data, func(typ uint16, val []byte) {
		if len(val) != 8 {
			return
		}
		switch typ {
		case unix.NFTA_COUNTER_BYTES:
			c.Bytes = binary.BigEndian.Uint64(val)
		case unix.NFTA_COUNTER_PACKETS:
			c.Packets = binary.BigEndian.Uint64(val)
		}
	})
	e.Counter = c
}
