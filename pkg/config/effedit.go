package config

import (
	"net/netip"
	"slices"
	"sort"
)

// maxEffectiveChanges bounds the changed prefixes EffectiveEdit works
// around one by one; an edit of more is laid out whole.
const maxEffectiveChanges = 64

// EffectiveEdit returns Effective(v6) of now from was's (wasEff, as
// Effective returned it for was) without laying out the prefixes the
// edit cannot have touched, and the prefixes that differ: removed (of
// wasEff) and added (of the result), each sorted. It is what a backend
// that holds a set as effective prefixes (nftables interval sets) sends
// for an edit of one entry of 100,000: a few elements, found in linear
// scans of the two versions' lists and binary searches of wasEff, with no
// sort of 100,000 prefixes (Effective: 30-100 ms on a 2-core machine).
//
// Only addresses in a prefix whose place changed (SetChanges) can match
// differently; the innermost listed prefix around any other address is
// the same in both versions. Around each such prefix the window is its
// outermost listed container in either version, widened to the whole
// runs of contiguous addresses wasEff has at and next to its edges: past
// the window's edges no address matches in either version, so the
// prefixes outside it are the same in both and none crosses its edges.
// Inside it the addresses now matches are laid out as Effective does,
// from now's prefixes that overlap the window, clipped to it.
//
// ok is false when the edit changes more than maxEffectiveChanges
// prefixes of the family; the caller then lays now out whole.
func EffectiveEdit(was, now *Set, v6 bool, wasEff []netip.Prefix) (nowEff, removed, added []netip.Prefix, ok bool) {
	width := 32
	if v6 {
		width = 128
	}
	var windows []addrRange
	for _, c := range SetChanges(was, now) {
		if c.Prefix.Addr().Is6() != v6 {
			continue
		}
		if len(windows) == maxEffectiveChanges {
			return nil, nil, nil, false
		}
		windows = append(windows, rangeOf(c.Prefix, width))
	}
	if len(windows) == 0 {
		return wasEff, nil, nil, true
	}
	// The outermost listed prefix around each changed one, in either
	// version.
	for i, w := range windows {
		for _, s := range []*Set{was, now} {
			if o, found := s.outermost(w, v6, width); found {
				windows[i].lo, windows[i].hi = minU128(windows[i].lo, o.lo), maxU128(windows[i].hi, o.hi)
			}
		}
	}
	windows = joinRanges(windows, width)
	// Widen each window to the runs of wasEff that reach into it or end
	// or start next to it, joining windows that then meet, until none
	// grows: past its edges no address matches was, nor now.
	type span struct {
		w    addrRange
		i, j int // wasEff[i:j] lie inside w
	}
	var spans []span
	for _, w := range windows {
		i, j := widen(wasEff, &w, width)
		if n := len(spans); n > 0 && touches(spans[n-1].w, w, width) {
			spans[n-1].w.hi = maxU128(spans[n-1].w.hi, w.hi)
			spans[n-1].j = j
			continue
		}
		spans = append(spans, span{w, i, j})
	}
	ws := make([]addrRange, len(spans))
	for k, sp := range spans {
		ws[k] = sp.w
	}
	inside := now.effectiveWithin(ws, v6, width)
	nowEff = make([]netip.Prefix, 0, len(wasEff)+8)
	last := 0
	for k, sp := range spans {
		nowEff = append(nowEff, wasEff[last:sp.i]...)
		r, a := diffSorted(wasEff[sp.i:sp.j], inside[k])
		removed, added = append(removed, r...), append(added, a...)
		nowEff = append(nowEff, inside[k]...)
		last = sp.j
	}
	nowEff = append(nowEff, wasEff[last:]...)
	return nowEff, removed, added, true
}

// outermost returns the range of the widest prefix of s of the family
// that contains w, a prefix's range; found is false when none does.
// Prefixes nest or are disjoint, so any listed prefix that overlaps w
// contains it or lies inside it. With an index that is a lookup per
// prefix length the set has, else a scan.
func (s *Set) outermost(w addrRange, v6 bool, width int) (out addrRange, found bool) {
	if s == nil {
		return out, false
	}
	if s.index != nil {
		lens := s.index.lens4
		if v6 {
			lens = s.index.lens6
		}
		a := w.lo.addr(width)
		// lens are longest first: the widest is found last.
		for k := len(lens) - 1; k >= 0; k-- {
			p, err := a.Prefix(lens[k])
			if err != nil {
				continue
			}
			r := rangeOf(p, width)
			if r.hi.cmp(w.hi) < 0 {
				continue // it does not contain w
			}
			if s.index.find(keyOf(p), s.Entries, s.Except) != 0 {
				return r, true
			}
		}
		return out, false
	}
	for _, list := range [][]SetEntry{s.Entries, s.Except} {
		for _, e := range list {
			if e.Prefix.Addr().Is6() != v6 {
				continue
			}
			r := rangeOf(e.Prefix, width)
			if r.lo.cmp(w.lo) <= 0 && w.hi.cmp(r.hi) <= 0 && (!found || r.lo.cmp(out.lo) <= 0 && out.hi.cmp(r.hi) <= 0) {
				out, found = r, true
			}
		}
	}
	return out, found
}

// rangeOf is the range of addresses p covers.
func rangeOf(p netip.Prefix, width int) addrRange {
	lo := fromAddr(p.Addr())
	return addrRange{lo, lo.or(hostMask(width - p.Bits()))}
}

// touches reports whether a, which starts no later than b, overlaps b or
// ends right before it.
func touches(a, b addrRange, width int) bool {
	return b.lo.cmp(a.hi) <= 0 || !a.hi.isMax(width) && a.hi.next() == b.lo
}

func maxU128(a, b u128) u128 {
	if a.cmp(b) >= 0 {
		return a
	}
	return b
}

// joinRanges sorts ranges and joins those that overlap or meet.
func joinRanges(rs []addrRange, width int) []addrRange {
	slices.SortFunc(rs, func(a, b addrRange) int { return a.lo.cmp(b.lo) })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && touches(out[n-1], r, width) {
			out[n-1].hi = maxU128(out[n-1].hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// widen grows w, a range no prefix of eff (sorted, disjoint) crosses the
// edges of unless it overlaps it, to the prefixes of eff that overlap it
// or are contiguous with it or with each other from it, and returns them
// as eff[i:j].
func widen(eff []netip.Prefix, w *addrRange, width int) (i, j int) {
	at := func(k int) addrRange { return rangeOf(eff[k], width) }
	// The first prefix that ends at or after the address before w.
	i = sort.Search(len(eff), func(k int) bool {
		r := at(k)
		return r.hi.cmp(w.lo) >= 0 || !r.hi.isMax(width) && r.hi.next() == w.lo
	})
	j = i
	for ; j < len(eff); j++ {
		r := at(j)
		if r.lo.cmp(w.hi) > 0 && (w.hi.isMax(width) || r.lo != w.hi.next()) {
			break
		}
		w.lo, w.hi = minU128(w.lo, r.lo), maxU128(w.hi, r.hi)
	}
	for i > 0 && i < j {
		prev := at(i - 1)
		if prev.hi.isMax(width) || prev.hi.next() != w.lo {
			break
		}
		i--
		w.lo = prev.lo
	}
	return i, j
}

func minU128(a, b u128) u128 {
	if a.cmp(b) <= 0 {
		return a
	}
	return b
}

// effectiveWithin is Effective restricted to the addresses of each of
// ws (sorted, disjoint), for ranges no matching range of s crosses the
// edges of: the prefixes of s that overlap each, clipped to it, laid out
// as Effective lays out all. One scan of s's lists serves every range.
func (s *Set) effectiveWithin(ws []addrRange, v6 bool, width int) [][]netip.Prefix {
	nodes := make([][]setNode, len(ws))
	if s != nil {
		for _, list := range []struct {
			entries []SetEntry
			except  bool
		}{{s.Entries, false}, {s.Except, true}} {
			for _, e := range list.entries {
				if e.Prefix.Addr().Is6() != v6 {
					continue
				}
				r := rangeOf(e.Prefix, width)
				k := sort.Search(len(ws), func(k int) bool { return ws[k].hi.cmp(r.lo) >= 0 })
				for ; k < len(ws) && ws[k].lo.cmp(r.hi) <= 0; k++ {
					nodes[k] = append(nodes[k], setNode{start: maxU128(r.lo, ws[k].lo), end: minU128(r.hi, ws[k].hi), bits: e.Prefix.Bits(), include: !list.except})
				}
			}
		}
	}
	out := make([][]netip.Prefix, len(ws))
	for k := range ws {
		slices.SortFunc(nodes[k], compareNodes)
		for _, r := range effectiveRanges(nodes[k], width) {
			out[k] = appendRange(out[k], r, width)
		}
	}
	return out
}

// diffSorted returns the prefixes of a not in b and of b not in a, both
// sorted by address and disjoint.
func diffSorted(a, b []netip.Prefix) (onlyA, onlyB []netip.Prefix) {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] == b[j]:
			i++
			j++
		case fromAddr(a[i].Addr()).cmp(fromAddr(b[j].Addr())) < 0 || a[i].Addr() == b[j].Addr() && a[i].Bits() < b[j].Bits():
			onlyA = append(onlyA, a[i])
			i++
		default:
			onlyB = append(onlyB, b[j])
			j++
		}
	}
	return append(onlyA, a[i:]...), append(onlyB, b[j:]...)
}
