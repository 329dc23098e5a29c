package config

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// randomSetFile returns a set file of prefixes drawn from a small pool in
// 192.0.2.0/24 and 2001:db8::/120, each an entry, an except or absent,
// in a random order: most files do not load (an except inside no entry),
// the others nest entries and excepts every way.
func randomSetFile(rng *rand.Rand) string {
	var entries, except []string
	for _, p := range setPool {
		switch rng.IntN(4) {
		case 0:
			entries = append(entries, p)
		case 1:
			except = append(except, p)
		}
	}
	rng.Shuffle(len(entries), func(i, j int) { entries[i], entries[j] = entries[j], entries[i] })
	rng.Shuffle(len(except), func(i, j int) { except[i], except[j] = except[j], except[i] })
	quote := func(list []string) string {
		var q []string
		for _, p := range list {
			q = append(q, fmt.Sprintf("%q", p))
		}
		return strings.Join(q, ", ")
	}
	return "entries = [" + quote(entries) + "]\nexcept = [" + quote(except) + "]\n"
}

var setPool = []string{
	"192.0.2.0/24", "192.0.2.0/25", "192.0.2.128/25", "192.0.2.0/26", "192.0.2.64/26", "192.0.2.128/26",
	"192.0.2.192/27", "192.0.2.200/29", "192.0.2.7", "192.0.2.130", "192.0.2.201",
	"2001:db8::/120", "2001:db8::/121", "2001:db8::80/121", "2001:db8::80/124", "2001:db8::85", "2001:db8::7",
}

// TestSetChanges checks SetChanges against every address of the pool's
// networks, for random pairs of sets and for edits of one prefix: an
// address that lies in no changed prefix matches both versions alike;
// every prefix whose place differs is listed once, those listed now in
// now's order.
func TestSetChanges(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var sets []*Set
	for len(sets) < 60 {
		dir := configtest.Dir(t, map[string]string{"sets/s.toml": randomSetFile(rng)})
		if m, err := Load(dir); err == nil {
			sets = append(sets, m.Sets["s"])
		}
	}
	addrs := poolAddrs()
	place := func(s *Set, p netip.Prefix) Listed {
		if s == nil {
			return NotListed
		}
		for _, e := range s.Entries {
			if e.Prefix == p {
				return ListedEntry
			}
		}
		for _, e := range s.Except {
			if e.Prefix == p {
				return ListedExcept
			}
		}
		return NotListed
	}
	check := func(was, now *Set) {
		t.Helper()
		changes := SetChanges(was, now)
		seen := map[netip.Prefix]bool{}
		for _, c := range changes {
			if seen[c.Prefix] || c.Was == c.Now || c.Was != place(was, c.Prefix) || c.Now != place(now, c.Prefix) {
				t.Fatalf("%v -> %v: change %+v wrong or twice", was, now, c)
			}
			seen[c.Prefix] = true
		}
		for _, p := range setPool {
			pp, _ := parsePrefix(p)
			if place(was, pp) != place(now, pp) && !seen[pp] {
				t.Fatalf("%v -> %v: %s changed place, not listed", was, now, pp)
			}
		}
		for _, a := range addrs {
			touched := slices.ContainsFunc(changes, func(c SetChange) bool { return c.Prefix.Contains(a) })
			_, m1 := matchOf(was, a)
			_, m2 := matchOf(now, a)
			if !touched && m1 != m2 {
				t.Fatalf("%v -> %v: %s changed from %v to %v, in no changed prefix", was, now, a, m1, m2)
			}
		}
	}
	for i, was := range sets {
		check(was, sets[(i+1)%len(sets)])
		check(nil, was)
		check(was, nil)
		check(was, was)
		// One prefix added, removed, or moved to the other list.
		if len(was.Entries) > 1 {
			now := &Set{Entries: slices.Delete(slices.Clone(was.Entries), 1, 2), Except: was.Except}
			check(was, now)
			check(now, was)
			moved := &Set{Entries: slices.Delete(slices.Clone(was.Entries), 0, 1), Except: append(slices.Clone(was.Except), was.Entries[0])}
			check(was, moved)
		}
	}
}

func matchOf(s *Set, a netip.Addr) (SetEntry, bool) {
	if s == nil {
		return SetEntry{}, false
	}
	return s.Match(a)
}

// poolAddrs returns every address of the pool's networks.
func poolAddrs() []netip.Addr {
	var out []netip.Addr
	for _, base := range []string{"192.0.2.0", "2001:db8::"} {
		a := netip.MustParseAddr(base)
		for range 256 {
			out = append(out, a)
			a = a.Next()
		}
	}
	return out
}

// BenchmarkSetChanges100000 measures SetChanges for an edit of one entry
// in the middle of a set of 100,000.
func BenchmarkSetChanges100000(b *testing.B) {
	was := mustLoad(b, configtest.Dir(b, map[string]string{"sets/big.toml": bigSet(100000)})).Sets["big"]
	now := &Set{Entries: slices.Delete(slices.Clone(was.Entries), 50000, 50001), Except: was.Except}
	b.ResetTimer()
	for range b.N {
		if len(SetChanges(was, now)) != 1 {
			b.Fatal("not one change")
		}
	}
}
