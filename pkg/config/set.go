package config

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// Set is a named address set (sets/NAME.toml): networks that rules match
// by name with source_set and dest_set. A packet's address matches the set
// when the most specific of the set's prefixes that contains it is one of
// Entries; the prefixes in Except carve networks out of entries, and an
// entry inside an except puts part of it back. That is the meaning of
// ipset's nomatch flag and of Proxmox's "!" entries, so either imports
// without a change of meaning.
type Set struct {
	// Name is the set's name, taken from its file name.
	Name string
	// File is the path of the file the set was loaded from.
	File string
	// Description is free text shown to operators.
	Description string
	// Entries are the networks the set matches, in file order; a single
	// address is a /32 or /128 prefix. IPv4 and IPv6 may mix.
	Entries []SetEntry
	// Except are the networks excluded from the entries, in file order.
	// Each lies inside an entry.
	Except []SetEntry

	// index finds the most specific prefix containing an address without
	// looking at every prefix; Load builds it, so a loaded Set must not
	// be changed (as nothing in a Model is). A Set built by hand has none
	// and is matched by a scan.
	index *setIndex
}

// SetEntry is one prefix of a set, with the line that lists it so that a
// verdict can name it.
type SetEntry struct {
	// Prefix is the network; its host bits are zero.
	Prefix netip.Prefix
	// Line is the line of the file that lists it, 0 for an entry not read
	// from a file.
	Line int
}

// Match reports whether a matches the set and which prefix decided: the
// most specific entry or except that contains a. When an except decides,
// entry is that except and matched is false; when no prefix contains a,
// entry is the zero SetEntry. Addresses are matched in their own family:
// an IPv4-mapped IPv6 address is an IPv6 address, as it is to the kernel.
func (s *Set) Match(a netip.Addr) (entry SetEntry, matched bool) {
	a = a.WithZone("")
	if !a.IsValid() {
		return SetEntry{}, false
	}
	if s.index == nil {
		return s.scan(a)
	}
	lens := s.index.lens4
	if a.Is6() {
		lens = s.index.lens6
	}
	for _, l := range lens {
		p, _ := a.Prefix(l)
		if r := s.index.find(keyOf(p), s.Entries, s.Except); r != 0 {
			return entryAt(r, s.Entries, s.Except), r > 0
		}
	}
	return SetEntry{}, false
}

// scan is Match without an index. Of an entry and an except that list the
// same prefix (which Load refuses), the except decides: a set built by
// hand then matches less, never more.
func (s *Set) scan(a netip.Addr) (SetEntry, bool) {
	best, longest, matched := SetEntry{}, -1, false
	for _, e := range s.Entries {
		if e.Prefix.Bits() > longest && e.Prefix.Contains(a) {
			best, longest, matched = e, e.Prefix.Bits(), true
		}
	}
	for _, e := range s.Except {
		if e.Prefix.Bits() >= longest && e.Prefix.Contains(a) {
			best, longest, matched = e, e.Prefix.Bits(), false
		}
	}
	return best, matched
}

// Effective returns the addresses of one family (IPv6 if v6, else IPv4)
// that match the set as the fewest prefixes that cover exactly them,
// sorted by address and disjoint: the entries with the excepts taken out,
// for a kernel set type that has no "nomatch" (nftables interval sets).
// An entry that an except only partly removes becomes the prefixes of what
// remains, so the list can be longer than Entries.
func (s *Set) Effective(v6 bool) []netip.Prefix {
	width := 32
	if v6 {
		width = 128
	}
	nodes := make([]setNode, 0, len(s.Entries)+len(s.Except))
	for _, list := range []struct {
		entries []SetEntry
		except  bool
	}{{s.Entries, false}, {s.Except, true}} {
		for _, e := range list.entries {
			p := e.Prefix.Masked()
			if !p.IsValid() || p.Addr().Is6() != v6 {
				continue
			}
			start := fromAddr(p.Addr())
			nodes = append(nodes, setNode{start: start, end: start.or(hostMask(width - p.Bits())), bits: p.Bits(), include: !list.except})
		}
	}
	// Prefixes nest or are disjoint, so sorted by start and, at one
	// start, widest first (an entry before an except of the same
	// prefix, so that the except is the more specific), every prefix
	// comes after each prefix that contains it.
	slices.SortFunc(nodes, compareNodes)
	ranges := effectiveRanges(nodes, width)
	out := make([]netip.Prefix, 0, len(ranges))
	for _, r := range ranges {
		out = appendRange(out, r, width)
	}
	return out
}

// compareNodes orders nested or disjoint prefixes by start and, at one
// start, widest first, an entry before an except of the same prefix.
func compareNodes(a, b setNode) int {
	if c := a.start.cmp(b.start); c != 0 {
		return c
	}
	if a.bits != b.bits {
		return a.bits - b.bits
	}
	if a.include == b.include {
		return 0
	}
	if a.include {
		return -1
	}
	return 1
}

// effectiveRanges returns the ranges of addresses that nodes, sorted by
// compareNodes, nested or disjoint, match: the innermost node containing
// an address decides it. Adjacent ranges are joined.
func effectiveRanges(nodes []setNode, width int) []addrRange {
	var ranges []addrRange
	emit := func(lo, hi u128, include bool) {
		if !include {
			return
		}
		if n := len(ranges); n > 0 && ranges[n-1].hi.next() == lo && !ranges[n-1].hi.isMax(width) {
			ranges[n-1].hi = hi
			return
		}
		ranges = append(ranges, addrRange{lo, hi})
	}
	// A walk over the nested prefixes: pos is the first address not yet
	// given to a range; the innermost open prefix decides the addresses
	// up to the start of the next prefix or to its own end.
	var stack []setNode
	var pos u128
	done := false // pos went past the last address of the family
	pop := func() {
		top := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if !done && pos.cmp(top.end) <= 0 {
			emit(pos, top.end, top.include)
			pos = top.end.next()
		}
		if top.end.isMax(width) {
			done = true
		}
	}
	for _, n := range nodes {
		for len(stack) > 0 && stack[len(stack)-1].end.cmp(n.start) < 0 {
			pop()
		}
		if len(stack) > 0 && pos.cmp(n.start) < 0 {
			emit(pos, n.start.prev(), stack[len(stack)-1].include)
		}
		pos, done = n.start, false
		stack = append(stack, n)
	}
	for len(stack) > 0 {
		pop()
	}
	return ranges
}

// setNode is one prefix of a set as the range of addresses it covers.
type setNode struct {
	start, end u128
	bits       int
	include    bool
}

// addrRange is an inclusive range of addresses.
type addrRange struct{ lo, hi u128 }

// appendRange appends the fewest prefixes that cover r exactly: at each
// step the largest aligned block that starts at r.lo and stays in r.
func appendRange(out []netip.Prefix, r addrRange, width int) []netip.Prefix {
	lo := r.lo
	for {
		size := min(lo.trailingZeros(), width) // log2 of the block
		for size > 0 && lo.or(hostMask(size)).cmp(r.hi) > 0 {
			size--
		}
		out = append(out, netip.PrefixFrom(lo.addr(width), width-size))
		last := lo.or(hostMask(size))
		if last.cmp(r.hi) >= 0 {
			return out
		}
		lo = last.next()
	}
}

// u128 is an address as a number: IPv4 in the low 32 bits.
type u128 struct{ hi, lo uint64 }

func fromAddr(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])}
	}
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func (u u128) addr(width int) netip.Addr {
	if width == 32 {
		return netip.AddrFrom4([4]byte{byte(u.lo >> 24), byte(u.lo >> 16), byte(u.lo >> 8), byte(u.lo)})
	}
	var b [16]byte
	for i := range 8 {
		b[7-i] = byte(u.hi >> (8 * i))
		b[15-i] = byte(u.lo >> (8 * i))
	}
	return netip.AddrFrom16(b)
}

// hostMask returns the number with the low n bits set.
func hostMask(n int) u128 {
	switch {
	case n <= 0:
		return u128{}
	case n < 64:
		return u128{lo: 1<<n - 1}
	case n == 64:
		return u128{lo: ^uint64(0)}
	case n < 128:
		return u128{hi: 1<<(n-64) - 1, lo: ^uint64(0)}
	}
	return u128{hi: ^uint64(0), lo: ^uint64(0)}
}

func (u u128) or(v u128) u128 { return u128{u.hi | v.hi, u.lo | v.lo} }

func (u u128) cmp(v u128) int {
	switch {
	case u.hi != v.hi:
		if u.hi < v.hi {
			return -1
		}
		return 1
	case u.lo < v.lo:
		return -1
	case u.lo > v.lo:
		return 1
	}
	return 0
}

// next returns u+1, wrapping at 2^128 (callers check isMax first).
func (u u128) next() u128 {
	if u.lo == ^uint64(0) {
		return u128{hi: u.hi + 1}
	}
	return u128{u.hi, u.lo + 1}
}

// prev returns u-1; u is never 0 where it is used.
func (u u128) prev() u128 {
	if u.lo == 0 {
		return u128{u.hi - 1, ^uint64(0)}
	}
	return u128{u.hi, u.lo - 1}
}

// isMax reports whether u is the last address of a family of width bits.
func (u u128) isMax(width int) bool { return u == hostMask(width) }

// trailingZeros returns how many low bits of u are zero, 128 for 0.
func (u u128) trailingZeros() int {
	if u.lo != 0 {
		return bits.TrailingZeros64(u.lo)
	}
	return 64 + bits.TrailingZeros64(u.hi)
}

// setFile is a set file as written.
type setFile struct {
	Description string   `toml:"description"`
	Entries     []string `toml:"entries"`
	Except      []string `toml:"except"`
}

// maxSetFileSize bounds a set file. Sets are lists of networks, often
// generated (blocklists, a cloud provider's ranges): 100,000 IPv6 networks
// take about 4 MB, well within it, while a runaway generator is still
// stopped.
const maxSetFileSize = 32 << 20

var setSchema = &schema{
	top:      "set keys are description, entries and except",
	maxSize:  maxSetFileSize,
	sizeNote: ", the limit for set files",
	ownWalk:  true,
}

// loadSet decodes and validates the set name, walking it with p. The
// file's lines are not scanned beforehand (see open): a set file is read
// in one pass, by scanSetFast when it has the usual shape, else by
// scanSet.
func loadSet(f *file, p *unstable.Parser, name string) (*Set, *Error) {
	return loadSetWith(f, p, name, true)
}

// loadSetWith is loadSet, trying scanSetFast first only when fast is set:
// the tests compare the two ways.
func loadSetWith(f *file, p *unstable.Parser, name string, fast bool) (*Set, *Error) {
	var sf scannedSet
	ok := false
	if fast {
		sf, _, ok = scanSetFast(f.data)
	}
	if !ok {
		sf, ok = scanSet(p, f.data)
	}
	if !ok {
		// What scanSet does not read is not a valid set file; decode
		// explains why (a syntax error, a wrong type, an unknown key),
		// in the words every other file's errors use.
		f.lines = scanLines(p, f.data)
		if err := f.decode(&setFile{}); err != nil {
			return nil, err
		}
		return nil, f.errorf(0, "not a set file: %s", setSchema.top)
	}
	return buildSet(f, name, sf)
}

// buildSet validates the set name as sf holds it.
func buildSet(f *file, name string, sf scannedSet) (*Set, *Error) {
	f.lines = &keyLines{at: sf.keys}
	if err := checkDescription(f, sf.Description); err != nil {
		return nil, err
	}
	s := &Set{Name: name, File: f.path, Description: sf.Description}
	// Every prefix goes into one index, which finds the same prefix listed
	// twice (also as an entry and an except) and then serves Match.
	ix := newSetIndex(len(sf.Entries) + len(sf.Except))
	var err *Error
	if s.Entries, err = setPrefixes(f, "entries", sf.Entries, sf.entryLines, false, ix, nil); err != nil {
		return nil, err
	}
	if s.Except, err = setPrefixes(f, "except", sf.Except, sf.exceptLines, true, ix, s.Entries); err != nil {
		return nil, err
	}
	ix.lengths(s.Entries, s.Except)
	s.index = ix
	// An except must carve something out of an entry; one inside no entry
	// is a mistake (a typo in the network, or an entry that was removed).
	for i, x := range s.Except {
		if !s.insideEntry(x.Prefix) {
			return nil, f.errorf(x.Line, "except %q: lies inside no entry, so it would exclude nothing", sf.Except[i])
		}
	}
	return s, nil
}

// scannedSet is a set file as scanSet read it.
type scannedSet struct {
	setFile
	// entryLines and exceptLines are the lines of the elements.
	entryLines, exceptLines []int
	// keys are the lines of the keys, as keyLines.at holds them.
	keys map[string]int
}

// scanSet reads a set file in one walk of the parser, taking each element's
// line as it goes. Decoding into a struct and scanning lines separately, as
// other files are read, costs three times as much, and a set file can list
// 100,000 networks. ok is false for anything but the shape of a valid set
// file: top-level keys description (a string), entries and except (arrays
// of strings), each at most once, matched as decoding matches them.
func scanSet(p *unstable.Parser, data []byte) (sf scannedSet, ok bool) {
	sf.keys = map[string]int{}
	seen := map[string]bool{}
	p.Reset(data)
	line, lineAt := 1, 0 // the line of offset lineAt; offsets only grow
	lineOf := func(r unstable.Range) int {
		off := int(r.Offset)
		line += bytes.Count(data[lineAt:off], []byte{'\n'})
		lineAt = off
		return line
	}
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind != unstable.KeyValue {
			return sf, false
		}
		it := e.Key()
		if !it.Next() || !it.IsLast() {
			return sf, false
		}
		k := it.Node()
		// A key defined twice is a TOML error; keys that differ in case
		// only are the same field to the decoder, which keeps the last.
		if seen[string(k.Data)] {
			return sf, false
		}
		seen[string(k.Data)] = true
		key := strings.ToLower(string(k.Data))
		sf.keys[key] = lineOf(k.Raw)
		v := e.Value()
		switch key {
		case "description":
			if v.Kind != unstable.String {
				return sf, false
			}
			sf.Description = string(v.Data)
		case "entries", "except":
			if v.Kind != unstable.Array {
				return sf, false
			}
			// A first pass sizes the lists and one string holds every
			// value: 100,000 small strings and growing slices would be
			// most of the garbage a load makes.
			count, size := 0, 0
			for c := v.Children(); c.Next(); {
				n := c.Node()
				if n.Kind == unstable.Comment {
					continue
				}
				if n.Kind != unstable.String {
					return sf, false
				}
				count++
				size += len(n.Data)
			}
			buf := make([]byte, 0, size)
			for c := v.Children(); c.Next(); {
				if n := c.Node(); n.Kind == unstable.String {
					buf = append(buf, n.Data...)
				}
			}
			all := string(buf)
			values, lines := make([]string, 0, count), make([]int, 0, count)
			for c := v.Children(); c.Next(); {
				if n := c.Node(); n.Kind == unstable.String {
					values = append(values, all[:len(n.Data)])
					all = all[len(n.Data):]
					lines = append(lines, lineOf(n.Raw))
				}
			}
			if key == "entries" {
				sf.Entries, sf.entryLines = values, lines
			} else {
				sf.Except, sf.exceptLines = values, lines
			}
		default:
			return sf, false
		}
	}
	return sf, p.Error() == nil
}

// setPrefixes validates the entries or, with except, the excepts of a
// set (key names which), listed on lines, adding each to ix; entries are
// the set's entries when it reads the excepts.
func setPrefixes(f *file, key string, values []string, lines []int, except bool, ix *setIndex, entries []SetEntry) ([]SetEntry, *Error) {
	if len(values) == 0 {
		return nil, nil
	}
	out := make([]SetEntry, 0, len(values))
	for i, v := range values {
		p, problem := parsePrefix(v)
		if problem != "" {
			return nil, f.errorf(lines[i], "%s %q: %s", key, v, problem)
		}
		ref := int32(len(out) + 1)
		es, xs := out, []SetEntry(nil)
		if except {
			ref, es, xs = -ref, entries, out
		}
		out = append(out, SetEntry{Prefix: p, Line: lines[i]})
		if r := ix.add(keyOf(p), ref, es, xs); r != 0 {
			first := entryAt(r, es, xs)
			if (r < 0) == except {
				return nil, f.errorf(lines[i], "%s %q: listed twice (%s at line %d is the same prefix)", key, v, p, first.Line)
			}
			return nil, f.errorf(lines[i], "%s %q: also listed in entries (%s at line %d); a prefix is either an entry or an except", key, v, p, first.Line)
		}
	}
	return out, nil
}

// insideEntry reports whether an entry of s wider than p contains it.
func (s *Set) insideEntry(p netip.Prefix) bool {
	lens := s.index.lens4
	if p.Addr().Is6() {
		lens = s.index.lens6
	}
	for _, l := range lens {
		if l >= p.Bits() {
			continue
		}
		outer, _ := p.Addr().Prefix(l)
		if r := s.index.find(keyOf(outer), s.Entries, s.Except); r > 0 {
			return true
		}
	}
	return false
}

// reindex rebuilds the index Match uses from the set's validated
// prefixes, for a set that was not read by the loader (config.LoadIndexed
// decodes sets without it).
func (s *Set) reindex() {
	ix := newSetIndex(len(s.Entries) + len(s.Except))
	for i, e := range s.Entries {
		ix.add(keyOf(e.Prefix), int32(i+1), s.Entries, s.Except)
	}
	for i, e := range s.Except {
		ix.add(keyOf(e.Prefix), int32(-i-1), s.Entries, s.Except)
	}
	ix.lengths(s.Entries, s.Except)
	s.index = ix
}

// SameMembers reports whether s and o list the same prefixes as entries
// and as excepts, in the same order: their effective prefixes are the
// same, whatever their comments, description or lines. Most are the same
// pointer (the configuration cache keeps an unchanged file's set); else
// 100,000 prefixes compare in about 0.3 ms. Sets reordered are reported
// as different, which costs a plan that finds nothing to write. Either
// may be nil (no such set).
func (s *Set) SameMembers(o *Set) bool {
	if s == o {
		return true
	}
	if s == nil || o == nil {
		return false
	}
	same := func(x, y []SetEntry) bool {
		return slices.EqualFunc(x, y, func(p, q SetEntry) bool { return p.Prefix == q.Prefix })
	}
	return same(s.Entries, o.Entries) && same(s.Except, o.Except)
}
