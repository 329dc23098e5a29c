package config

import (
	"bytes"
	"slices"
	"sort"

	"github.com/pelletier/go-toml/v2/unstable"
)

// Reading an edited set file from its difference.
//
// An edit of one entry of a set of 100,000 leaves the file as it was but
// for a line or a few, yet reading it whole costs scanning 4 MB, parsing
// 100,000 prefixes and validating them: 21 ms, against 6 ms from the
// difference (BenchmarkReloadSet100000 on a 2-core machine), and the
// reload was the largest part of what the agent spent between the edit
// and the kernel holding it (docs/performance.md, "Address sets"). The agent's Cache
// therefore keeps, with each set read by the fast scanner, the file and
// where its elements are (setSource), and reads the next version of the
// file from their difference when the difference is lines of elements
// within one array: the entries before and after those lines are the
// entries before, with their lines moved by the lines added or removed,
// and only the lines in between are scanned and parsed.
//
// The result is the set loadSet returns for the new file, or nothing:
// anything else (a key, a bracket or the description edited, a value
// that does not parse, a prefix listed twice, an except inside no entry)
// makes the caller read the whole file, which words the error as ever.
// TestReloadSet compares the two on random edits.

// setSource is a set file as scanSetFast read it.
type setSource struct {
	data []byte
	// keys are the lines of the keys.
	keys map[string]int
	// places are where the elements of entries and except are.
	places [2]arrayPlaces
}

// loadSetSource is loadSet that also returns, for a file of the usual
// shape, what reloadSet needs to read its next version.
func loadSetSource(f *file, p *unstable.Parser, name string) (*Set, *setSource, *Error) {
	sf, places, ok := scanSetFast(f.data)
	if !ok {
		s, err := loadSetWith(f, p, name, false)
		return s, nil, err
	}
	s, err := buildSet(f, name, sf)
	if err != nil {
		return nil, nil, err
	}
	return s, &setSource{data: f.data, keys: sf.keys, places: places}, nil
}

// reloadSet reads f, a new version of the file prev was loaded from (as
// src), from their difference. ok is false when the difference is not
// one reloadSet reads, or the new file is not a valid set: the caller
// then loads f whole.
func reloadSet(prev *Set, src *setSource, f *file) (*Set, *setSource, bool) {
	old, cur := src.data, f.data
	if bytes.Equal(old, cur) {
		return prev, &setSource{data: cur, keys: src.keys, places: src.places}, true
	}
	// The lines that differ: from the start of the line of the first
	// byte that differs (from) to the start of the line after the last
	// (oldEnd, curEnd), which both versions end alike from.
	common := commonPrefix(old, cur)
	suffix := commonSuffix(old[common:], cur[common:])
	from := bytes.LastIndexByte(cur[:common], '\n') + 1
	oldEnd := len(old) - suffix
	if oldEnd > 0 && old[oldEnd-1] != '\n' {
		next := bytes.IndexByte(old[oldEnd:], '\n')
		if next < 0 {
			return nil, nil, false
		}
		oldEnd += next + 1
	}
	shift := len(cur) - len(old)
	curEnd := oldEnd + shift
	if from > oldEnd || from > curEnd || curEnd > 0 && cur[curEnd-1] != '\n' {
		return nil, nil, false
	}
	// Both ends must be line starts where the same array expects an
	// element: the lines between hold only its elements, blanks and
	// comments, and what follows reads alike in both versions.
	which := -1
	for i, pl := range src.places {
		if has(pl.starts, from) && has(pl.starts, oldEnd) {
			which = i
		}
	}
	if which < 0 {
		return nil, nil, false
	}
	line := bytes.Count(cur[:from], []byte{'\n'}) + 1
	s := fastScanner{data: cur[:curEnd], pos: from, line: line, all: string(cur[from:curEnd]), base: from}
	var mid arrayScan
	if closed, ok := s.elements(&mid); closed || !ok || s.pos != curEnd {
		return nil, nil, false
	}
	// Lines from oldEnd on move by moved.
	endLine := line + bytes.Count(old[from:oldEnd], []byte{'\n'})
	moved := s.line - endLine
	added := make([]SetEntry, len(mid.values))
	for i, v := range mid.values {
		p, problem := parsePrefix(v)
		if problem != "" {
			return nil, nil, false
		}
		added[i] = SetEntry{Prefix: p, Line: mid.lines[i]}
	}

	lists := [2][]SetEntry{prev.Entries, prev.Except}
	var replacedLo, replacedHi int
	next := &Set{Name: prev.Name, File: f.path, Description: prev.Description}
	nsrc := &setSource{data: cur, keys: make(map[string]int, len(src.keys))}
	for k, l := range src.keys {
		if l >= endLine {
			l += moved
		}
		nsrc.keys[k] = l
	}
	for i, pl := range src.places {
		list := lists[i]
		var out []SetEntry
		var np arrayPlaces
		if i == which {
			lo, hi := count(pl.at, from), count(pl.at, oldEnd)
			replacedLo, replacedHi = lo, hi
			out = make([]SetEntry, 0, len(list)-(hi-lo)+len(added))
			out = append(append(out, list[:lo]...), added...)
			out = appendMoved(out, list[hi:], endLine, moved)
			np.at = slices.Concat(pl.at[:lo], mid.at, shifted(pl.at[hi:], oldEnd, shift))
			np.starts = pl.starts[:count(pl.starts, from):count(pl.starts, from)]
			if from < curEnd {
				np.starts = append(np.starts, int32(from))
			}
			np.starts = slices.Concat(np.starts, mid.starts[:count(mid.starts, curEnd)], shifted(pl.starts[count(pl.starts, oldEnd):], oldEnd, shift))
		} else {
			// The other array lies wholly before the lines that
			// differ or wholly after them.
			out, np = list, pl
			if n := len(list); n > 0 && list[n-1].Line >= endLine {
				out = appendMoved(make([]SetEntry, 0, n), list, endLine, moved)
			}
			if n := len(pl.starts); n > 0 && int(pl.starts[n-1]) >= oldEnd || len(pl.at) > 0 && int(pl.at[len(pl.at)-1]) >= oldEnd {
				np = arrayPlaces{at: shifted(pl.at, oldEnd, shift), starts: shifted(pl.starts, oldEnd, shift)}
			}
		}
		if len(out) == 0 {
			out = nil
		}
		nsrc.places[i] = np
		if i == 0 {
			next.Entries = out
		} else {
			next.Except = out
		}
	}
	if !next.validateEdit(prev, which == 1, replacedLo, replacedHi, len(added)) {
		return nil, nil, false
	}
	return next, nsrc, true
}

// validateEdit indexes a set built from a file's difference with the set
// prev was, whose list (the excepts if except) had its elements [lo, hi)
// replaced by n others, and checks it as buildSet does; false for
// anything buildSet would refuse. The index is prev's, edited, when it
// can be (setIndex.replaced).
func (s *Set) validateEdit(prev *Set, except bool, lo, hi, n int) bool {
	ix, ok := prev.index.replaced(prev.Entries, prev.Except, s.Entries, s.Except, except, lo, hi, n)
	if !ok {
		return s.validate()
	}
	ix.lengths(s.Entries, s.Except)
	s.index = ix
	return s.checkExcepts()
}

// validate indexes a set built from a file's difference and checks it as
// buildSet does; false for anything buildSet would refuse.
func (s *Set) validate() bool {
	ix := newSetIndex(len(s.Entries) + len(s.Except))
	for i, e := range s.Entries {
		if ix.add(keyOf(e.Prefix), int32(i+1), s.Entries, s.Except) != 0 {
			return false
		}
	}
	for i, e := range s.Except {
		if ix.add(keyOf(e.Prefix), int32(-i-1), s.Entries, s.Except) != 0 {
			return false
		}
	}
	ix.lengths(s.Entries, s.Except)
	s.index = ix
	return s.checkExcepts()
}

// checkExcepts reports whether every except lies inside an entry.
func (s *Set) checkExcepts() bool {
	for _, x := range s.Except {
		if !s.insideEntry(x.Prefix) {
			return false
		}
	}
	return true
}

// appendMoved appends list to out, moving the lines from line on by
// moved.
func appendMoved(out, list []SetEntry, line, moved int) []SetEntry {
	for _, e := range list {
		if e.Line >= line {
			e.Line += moved
		}
		out = append(out, e)
	}
	return out
}

// shifted returns offsets with those from off on moved by shift.
func shifted(offsets []int32, off, shift int) []int32 {
	out := make([]int32, len(offsets))
	for i, o := range offsets {
		if int(o) >= off {
			o += int32(shift)
		}
		out[i] = o
	}
	return out
}

// count returns how many of the sorted offsets lie before off.
func count(offsets []int32, off int) int {
	return sort.Search(len(offsets), func(i int) bool { return int(offsets[i]) >= off })
}

// has reports whether the sorted offsets hold off.
func has(offsets []int32, off int) bool {
	i := count(offsets, off)
	return i < len(offsets) && int(offsets[i]) == off
}

// commonPrefix returns the length of the longest common start of a and
// b, comparing blocks with bytes.Equal first (memory speed: 4 MB in
// ~0.2 ms), then bytes.
func commonPrefix(a, b []byte) int {
	const block = 4096
	n := min(len(a), len(b))
	i := 0
	for i+block <= n && bytes.Equal(a[i:i+block], b[i:i+block]) {
		i += block
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}

// commonSuffix returns the length of the longest common end of a and b.
func commonSuffix(a, b []byte) int {
	const block = 4096
	n := min(len(a), len(b))
	i := 0
	for i+block <= n && bytes.Equal(a[len(a)-i-block:len(a)-i], b[len(b)-i-block:len(b)-i]) {
		i += block
	}
	for i < n && a[len(a)-1-i] == b[len(b)-1-i] {
		i++
	}
	return i
}
