package config

import (
	"math/rand/v2"
	"net/netip"
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
	size := 16
	for size < 2*n {
		size *= 2
	}
	return &setIndex{slots: make([]setSlot, size)}
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
