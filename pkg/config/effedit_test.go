package config

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// randomSet returns a valid set of random nested, adjacent and disjoint
// prefixes in 10.0.0.0/24, 255.255.255.0/24 (and 0.0.0.0/0) and
// 2001:db8::/120, or nil.
func randomSet(r *rand.Rand, entries, excepts []netip.Prefix) *Set {
	s := &Set{Name: "r"}
	for i, p := range entries {
		s.Entries = append(s.Entries, SetEntry{Prefix: p, Line: i + 1})
	}
	for i, p := range excepts {
		s.Except = append(s.Except, SetEntry{Prefix: p, Line: 1000 + i})
	}
	if !s.validate() {
		return nil
	}
	return s
}

func randomPrefix(r *rand.Rand) netip.Prefix {
	switch r.IntN(5) {
	case 0, 1:
		a := netip.AddrFrom4([4]byte{10, 0, 0, byte(r.IntN(256))})
		p, _ := a.Prefix(24 + r.IntN(9))
		return p
	case 2:
		// The end of the address space, and now and then all of it.
		if r.IntN(20) == 0 {
			return netip.MustParsePrefix("0.0.0.0/0")
		}
		a := netip.AddrFrom4([4]byte{255, 255, 255, byte(r.IntN(256))})
		p, _ := a.Prefix(24 + r.IntN(9))
		return p
	}
	b := netip.MustParseAddr("2001:db8::").As16()
	b[15] = byte(r.IntN(256))
	p, _ := netip.AddrFrom16(b).Prefix(120 + r.IntN(9))
	return p
}

// TestEffectiveEdit: on random sets and random edits of a few prefixes
// (added, removed, moved between entries and except), EffectiveEdit gives
// what Effective gives for the edited set, and the prefixes it reports
// removed and added are the difference of the two layouts.
func TestEffectiveEdit(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	tried := 0
	for tried < 3000 {
		var entries, excepts []netip.Prefix
		for range r.IntN(30) {
			entries = append(entries, randomPrefix(r))
		}
		for range r.IntN(10) {
			excepts = append(excepts, randomPrefix(r))
		}
		entries, excepts = uniq(entries, nil), uniq(excepts, entries)
		was := randomSet(r, entries, excepts)
		if was == nil {
			// Drop the excepts inside no entry.
			var keep []netip.Prefix
			for _, x := range excepts {
				if randomSet(r, entries, []netip.Prefix{x}) != nil {
					keep = append(keep, x)
				}
			}
			excepts = keep
			if was = randomSet(r, entries, excepts); was == nil {
				continue
			}
		}
		ne, nx := slices.Clone(entries), slices.Clone(excepts)
		for range 1 + r.IntN(3) {
			switch r.IntN(4) {
			case 0:
				ne = slices.Insert(ne, r.IntN(len(ne)+1), randomPrefix(r))
			case 1:
				nx = slices.Insert(nx, r.IntN(len(nx)+1), randomPrefix(r))
			case 2:
				ne, nx = dropOne(r, ne, nx)
			case 3:
				nx, ne = dropOne(r, nx, ne)
			}
		}
		now := randomSet(r, uniq(ne, nil), uniq(nx, ne))
		if now == nil {
			continue
		}
		tried++
		for _, v6 := range []bool{false, true} {
			wasEff, want := was.Effective(v6), now.Effective(v6)
			got, removed, added, ok := EffectiveEdit(was, now, v6, wasEff)
			if !ok {
				t.Fatalf("not ok")
			}
			if !slices.Equal(got, want) {
				t.Fatalf("v6 %v: was %v except %v, now %v except %v:\n got %v\nwant %v", v6, entries, excepts, ne, nx, got, want)
			}
			wr, wa := diffSorted(wasEff, want)
			if !slices.Equal(removed, wr) || !slices.Equal(added, wa) {
				t.Fatalf("v6 %v: was %v except %v, now %v except %v: removed %v added %v, want %v and %v", v6, entries, excepts, ne, nx, removed, added, wr, wa)
			}
		}
	}
}

// dropOne deletes a random prefix of from, an edit that one time in two
// moves it to to instead (an entry becomes an except or the other way
// round), and returns both lists; an empty from is left as it is.
func dropOne(r *rand.Rand, from, to []netip.Prefix) ([]netip.Prefix, []netip.Prefix) {
	if len(from) == 0 {
		return from, to
	}
	i := r.IntN(len(from))
	if r.IntN(2) == 0 {
		to = append(to, from[i])
	}
	return slices.Delete(from, i, i+1), to
}

// uniq drops repeated prefixes and those in not.
func uniq(ps, not []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if !slices.Contains(out, p) && !slices.Contains(not, p) {
			out = append(out, p)
		}
	}
	return out
}

// BenchmarkEffectiveEdit100000 measures EffectiveEdit for an edit of one
// entry in the middle of a set of 100,000, both families, against
// BenchmarkSetEffective100000's layout of the whole set.
func BenchmarkEffectiveEdit100000(b *testing.B) {
	was := mustLoad(b, configtest.Dir(b, map[string]string{"sets/big.toml": bigSet(100000)})).Sets["big"]
	now := &Set{Entries: slices.Delete(slices.Clone(was.Entries), 50000, 50001), Except: was.Except}
	if !now.validate() {
		b.Fatal("invalid edit")
	}
	eff4, eff6 := was.Effective(false), was.Effective(true)
	b.ResetTimer()
	for range b.N {
		_, r4, a4, ok4 := EffectiveEdit(was, now, false, eff4)
		_, r6, a6, ok6 := EffectiveEdit(was, now, true, eff6)
		if !ok4 || !ok6 || len(r4)+len(r6) != 1 || len(a4)+len(a6) != 0 {
			b.Fatalf("removed %v %v, added %v %v", r4, r6, a4, a6)
		}
	}
}
