package nlnft

import (
	"bytes"
	"slices"

	"github.com/google/nftables"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

// Interval sets (layout.Set.Interval: address sets). The kernel keeps a
// range lo..hi as two elements, lo and the end hi+1 flagged
// NFT_SET_ELEM_INTERVAL_END (no end when hi is the last value of the key
// space), and returns them so. Plans and reads speak of whole ranges,
// keyed as layout.Element.KeyBytes keys them (lo's bytes, then hi's), so
// that adding or removing one prefix of an address set is the two
// elements of that prefix and nothing else.

// intervalElements turns ranges into the kernel's start and end elements.
// Ranges of one set are disjoint, and each is written with its own end,
// so that two adjacent ranges stay two (the end of one and the start of
// the next share a key, told apart by the flag), and either can later be
// deleted alone.
func intervalElements(list []layout.Element) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, 2*len(list))
	for _, e := range list {
		out = append(out, nftables.SetElement{Key: e.Key[0].Bytes})
		if e.End == nil {
			continue
		}
		if end, ok := increment(e.End.Bytes); ok {
			out = append(out, nftables.SetElement{Key: end, IntervalEnd: true})
		}
	}
	return out
}

// intervals pairs the start and end elements read from an interval set
// of keys n bytes long into ranges, keyed as layout.Element.KeyBytes keys
// them. A start whose end does not follow runs to the end of the key
// space, as the kernel reads it.
func intervals(elems []nftables.SetElement, n int) []string {
	type point struct {
		key []byte
		end bool
	}
	pts := make([]point, 0, len(elems))
	for _, e := range elems {
		if len(e.Key) != n {
			continue
		}
		pts = append(pts, point{e.Key, e.IntervalEnd})
	}
	// At one key the end of the range before it comes first.
	slices.SortFunc(pts, func(a, b point) int {
		if c := bytes.Compare(a.key, b.key); c != 0 {
			return c
		}
		switch {
		case a.end == b.end:
			return 0
		case a.end:
			return -1
		}
		return 1
	})
	last := bytes.Repeat([]byte{0xff}, n)
	var out []string
	for i := 0; i < len(pts); i++ {
		if pts[i].end {
			continue // an end without its start: nothing is in the set there
		}
		lo, hi := pts[i].key, last
		if i+1 < len(pts) && pts[i+1].end {
			hi = decrement(pts[i+1].key)
			i++
		}
		out = append(out, string(lo)+string(hi))
	}
	return out
}

// decrement returns b - 1 as a big-endian number (b is not zero: an end
// comes after its start).
func decrement(b []byte) []byte {
	out := append([]byte(nil), b...)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]--
		if out[i] != 0xff {
			break
		}
	}
	return out
}
