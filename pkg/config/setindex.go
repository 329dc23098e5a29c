package config

import (
	"math/rand/v2"
	"net/netip"
	"slices"
)

// setIndex finds each prefix of a set where it is listed, and lists per
// family the prefix lengths that occur, longest first: an address is
// looked up once per length, at most 33 or 129 times, whatever the size of
// the set.
//
// The prefixes are kept in a hash table of their own rather than a Go map:
// open addressing over slots of 8 bytes, at most half full, so that a
// lookup of a prefix not listed mostly reads one slot. Indexing a set of
// 100,000 networks took 21 ms of a 55 ms load with a map (two random
// accesses per insert into 5 MB of buckets: one to find a duplicate, one
// to insert), and takes 6 ms so (CPU profiles of BenchmarkLoadSet100000
// on a 2-core machine); it was the largest part of reloading such a set
// after an edit of one entry (docs/performance.md, "Address sets").
type setIndex struct {
	slots        []setSlot
	lens4, lens6 []int
}

// setSlot is a slot of the table: ref is 1+i for Entries[i], -1-i for
// Except[i], 0 for an empty slot; tag is the high half of the hash, so
// that a prefix is compared only with those that likely equal it.
type setSlot struct {
	tag uint32
	ref int32
}

// prefixKey is a prefix as numbers, hashed and compared as one.
type prefixKey struct {
	hi, lo uint64
	// bits is the prefix length, plus 256 for IPv6.
	bits uint64
}

func keyOf(p netip.Prefix) prefixKey {
	u := fromAddr(p.Addr())
	k := prefixKey{hi: u.hi, lo: u.lo, bits: uint64(p.Bits())}
	if p.Addr().Is6() {
		k.bits += 256
	}
	return k
}

// indexSeed keys the hash with a value of this process's, so that no list
// of networks, however made, can be written to collide in every process
// (which would make indexing it quadratic).
var indexSeed = rand.Uint64()

func (k prefixKey) hash() uint64 {
	return mix64(mix64(mix64(k.hi^indexSeed)^k.lo) ^ k.bits)
}

// mix64 is MurmurHash3's finaliser: every bit of x changes about half the
// bits of the result.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// newSetIndex returns an index with room for n prefixes.
func newSetIndex(n int) *setIndex {
	return &setIndex{slots: make([]setSlot, indexSize(n))}
}

// indexSize is the number of slots for n prefixes: a power of two, at
// least twice n.
func indexSize(n int) int {
	size := 16
	for size < 2*n {
		size *= 2
	}
	return size
}

// entryAt returns the entry or except ref points at.
func entryAt(ref int32, entries, except []SetEntry) SetEntry {
	if ref > 0 {
		return entries[ref-1]
	}
	return except[-ref-1]
}

// find returns the ref of the prefix k in the index, 0 when it is not
// listed; entries and except are what the refs point into.
func (ix *setIndex) find(k prefixKey, entries, except []SetEntry) int32 {
	h := k.hash()
	tag, mask := uint32(h>>32), uint64(len(ix.slots)-1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := ix.slots[i]
		if s.ref == 0 {
			return 0
		}
		if s.tag == tag && keyOf(entryAt(s.ref, entries, except).Prefix) == k {
			return s.ref
		}
	}
}

// add indexes the prefix k as ref, unless it is indexed already: then it
// returns the ref it has and changes nothing.
func (ix *setIndex) add(k prefixKey, ref int32, entries, except []SetEntry) int32 {
	h := k.hash()
	tag, mask := uint32(h>>32), uint64(len(ix.slots)-1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := &ix.slots[i]
		if s.ref == 0 {
			*s = setSlot{tag: tag, ref: ref}
			return 0
		}
		if s.tag == tag && keyOf(entryAt(s.ref, entries, except).Prefix) == k {
			return s.ref
		}
	}
}

// lengths lists the prefix lengths of entries and except per family,
// longest first.
func (ix *setIndex) lengths(entries, except []SetEntry) {
	var seen4 [33]bool
	var seen6 [129]bool
	for _, list := range [][]SetEntry{entries, except} {
		for _, e := range list {
			if e.Prefix.Addr().Is4() {
				seen4[e.Prefix.Bits()] = true
			} else {
				seen6[e.Prefix.Bits()] = true
			}
		}
	}
	ix.lens4, ix.lens6 = nil, nil
	for l := 128; l >= 0; l-- {
		if l <= 32 && seen4[l] {
			ix.lens4 = append(ix.lens4, l)
		}
		if seen6[l] {
			ix.lens6 = append(ix.lens6, l)
		}
	}
}

// replaced returns the index of a set whose lists changed from oldE and
// oldX to newE and newX by the elements [lo, hi) of one list (the excepts
// if except) giving way to n others at the same place, made from ix
// rather than from nothing: a copy of its slots, the elements gone
// removed, those after them renumbered, the new ones added. For an edit
// of one entry of 100,000 that is 2 MB copied and 256 Ki slots visited
// instead of 100,000 prefixes hashed into random slots (0.7 ms against
// 4.4, BenchmarkReloadSet100000). ok is false when the table would need
// another size, or a new element is listed already: the caller then
// indexes the new lists whole, which says which.
//
// The slots it leaves may lie otherwise than those of an index built
// whole (linear probing places a prefix after those inserted before
// it), but it finds every prefix where that one does.
func (ix *setIndex) replaced(oldE, oldX, newE, newX []SetEntry, except bool, lo, hi, n int) (*setIndex, bool) {
	if indexSize(len(newE)+len(newX)) != len(ix.slots) {
		return nil, false
	}
	out := &setIndex{slots: slices.Clone(ix.slots)}
	ref := func(i int) int32 {
		if except {
			return int32(-i - 1)
		}
		return int32(i + 1)
	}
	oldA, newA := oldE, newE
	if except {
		oldA, newA = oldX, newX
	}
	for i := lo; i < hi; i++ {
		if !out.remove(keyOf(oldA[i].Prefix), ref(i), oldE, oldX) {
			return nil, false
		}
	}
	if moved := int32(n - (hi - lo)); moved != 0 {
		for j, s := range out.slots {
			switch {
			case !except && s.ref > int32(hi):
				out.slots[j].ref += moved
			case except && s.ref < int32(-hi):
				out.slots[j].ref -= moved
			}
		}
	}
	for i := lo; i < lo+n; i++ {
		if out.add(keyOf(newA[i].Prefix), ref(i), newE, newX) != 0 {
			return nil, false
		}
	}
	return out, true
}

// remove takes the prefix k, indexed as ref, out of the index, moving
// back the slots after it that would otherwise no longer be found from
// where their probes start; entries and except are what the refs point
// into. It is false when k is not indexed as ref.
func (ix *setIndex) remove(k prefixKey, ref int32, entries, except []SetEntry) bool {
	mask := uint64(len(ix.slots) - 1)
	i := k.hash() & mask
	for ix.slots[i].ref != ref {
		if ix.slots[i].ref == 0 {
			return false
		}
		i = (i + 1) & mask
	}
	for j := i; ; {
		j = (j + 1) & mask
		s := ix.slots[j]
		if s.ref == 0 {
			ix.slots[i] = setSlot{}
			return true
		}
		// s may fill the hole at i unless its probe starts after i,
		// up to j (cyclically): it would not be found from there.
		home := keyOf(entryAt(s.ref, entries, except).Prefix).hash() & mask
		if i < j && (home <= i || home > j) || i > j && home <= i && home > j {
			ix.slots[i] = s
			i = j
		}
	}
}
