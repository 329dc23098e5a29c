package config

import "net/netip"

// Listed is where a set lists a prefix.
type Listed uint8

// The places of a prefix in a set.
const (
	NotListed Listed = iota
	ListedEntry
	ListedExcept
)

// SetChange is a prefix whose place in a set differs between two versions
// of it: added, removed, or moved between the entries and the excepts.
type SetChange struct {
	Prefix   netip.Prefix
	Was, Now Listed
}

// SetChanges returns the prefixes whose place differs between the set as
// was and as now (either nil for a set that does not exist): those now
// listed, in the order of now's entries and then its excepts, then those
// no longer listed, in was's order. Only these change which addresses
// match the set: an address that lies in none of them has the same most
// specific prefix, in the same place, in both.
//
// Entries and excepts keep their file order, so an edit leaves both lists
// alike but for a stretch in the middle: what comes before it and after it
// in both versions keeps its place, and only the prefixes in the two
// middles can have changed (a loaded set lists a prefix once). The lists
// are compared, not indexed: ~0.3 ms for an edit of one of 100,000
// entries (BenchmarkSetChanges100000).
func SetChanges(was, now *Set) []SetChange {
	oldE, newE := middle(listOf(was, false), listOf(now, false))
	oldX, newX := middle(listOf(was, true), listOf(now, true))
	before := make(map[netip.Prefix]Listed, len(oldE)+len(oldX))
	after := make(map[netip.Prefix]Listed, len(newE)+len(newX))
	for _, l := range []struct {
		m       map[netip.Prefix]Listed
		entries []SetEntry
		place   Listed
	}{{before, oldE, ListedEntry}, {before, oldX, ListedExcept}, {after, newE, ListedEntry}, {after, newX, ListedExcept}} {
		for _, e := range l.entries {
			l.m[e.Prefix] = l.place
		}
	}
	var out []SetChange
	for _, list := range [][]SetEntry{newE, newX} {
		for _, e := range list {
			if w, n := before[e.Prefix], after[e.Prefix]; w != n {
				out = append(out, SetChange{Prefix: e.Prefix, Was: w, Now: n})
			}
		}
	}
	for _, list := range [][]SetEntry{oldE, oldX} {
		for _, e := range list {
			if w, n := before[e.Prefix], after[e.Prefix]; n == NotListed && w != n {
				out = append(out, SetChange{Prefix: e.Prefix, Was: w})
			}
		}
	}
	return out
}

// listOf returns a set's entries, or its excepts; none for no set.
func listOf(s *Set, except bool) []SetEntry {
	switch {
	case s == nil:
		return nil
	case except:
		return s.Except
	}
	return s.Entries
}

// middle returns the parts of a and b between their longest common start
// and their longest common end, compared by prefix (lines may differ).
func middle(a, b []SetEntry) ([]SetEntry, []SetEntry) {
	start := 0
	for start < len(a) && start < len(b) && a[start].Prefix == b[start].Prefix {
		start++
	}
	end := 0
	for end < len(a)-start && end < len(b)-start && a[len(a)-1-end].Prefix == b[len(b)-1-end].Prefix {
		end++
	}
	return a[start : len(a)-end], b[start : len(b)-end]
}
