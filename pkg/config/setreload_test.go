package config

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2/unstable"
)

func setFileOf(data []byte) *file {
	return &file{rel: "sets/x.toml", path: "/etc/vmfw/sets/x.toml", data: data, schema: setSchema}
}

// loadSource loads data as loadSetSource does.
func loadSource(data []byte) (*Set, *setSource, *Error) {
	var p unstable.Parser
	return loadSetSource(setFileOf(data), &p, "x")
}

// lineEdit edits the lines of a set file as an operator or a generator
// does: an element line inserted, deleted, replaced or moved, a blank or
// comment line added; values are often networks the set lists already
// (a prefix twice), excepts inside no entry, or not networks.
func lineEdit(rng *rand.Rand, data []byte) []byte {
	lines := strings.SplitAfter(string(data), "\n")
	value := func() string {
		switch rng.IntN(8) {
		case 0:
			return "not a network"
		case 1:
			return fmt.Sprintf("10.%d.0.0/16", rng.IntN(4)) // often listed already
		case 2:
			return fmt.Sprintf("10.%d.%d.0/24", rng.IntN(4), rng.IntN(256)) // inside an entry
		}
		return fmt.Sprintf("2001:db8:%x::%x", rng.IntN(65536), rng.IntN(65536))
	}
	elementLine := func() string {
		switch rng.IntN(6) {
		case 0:
			return fmt.Sprintf("\t%q, # %d\n", value(), rng.IntN(100))
		case 1:
			return fmt.Sprintf("  %q, %q,\n", value(), value())
		}
		return fmt.Sprintf("  %q,\n", value())
	}
	for range 1 + rng.IntN(3) {
		i := rng.IntN(len(lines))
		switch rng.IntN(7) {
		case 0, 1:
			lines = slices.Insert(lines, i, elementLine())
		case 2:
			lines = slices.Delete(lines, i, i+1)
		case 3:
			lines[i] = elementLine()
		case 4:
			lines = slices.Insert(lines, i, []string{"\n", "  # a comment\n", "\r\n"}[rng.IntN(3)])
		case 5:
			j := rng.IntN(len(lines))
			lines[i], lines[j] = lines[j], lines[i]
		default:
			// A line cut in two or joined with the next.
			if n := len(lines[i]); n > 2 {
				k := rng.IntN(n)
				lines = slices.Insert(lines, i+1, lines[i][k:])
				lines[i] = lines[i][:k]
			}
		}
		if len(lines) == 0 {
			lines = []string{""}
		}
	}
	return []byte(strings.Join(lines, ""))
}

// reloadBases are set files of the common shape the edits start from.
func reloadBases() []string {
	var b strings.Builder
	b.WriteString("description = \"nested\"\nentries = [\n")
	for i := range 4 {
		fmt.Fprintf(&b, "  \"10.%d.0.0/16\",\n", i)
	}
	for i := range 200 {
		fmt.Fprintf(&b, "  \"2001:db8:%x::%x\",\n", i, i)
	}
	b.WriteString("]\nexcept = [\n  \"10.1.2.0/24\",\n  \"10.2.0.0/17\", # half\n]\n")
	nested := b.String()
	return []string{
		nested,
		strings.ReplaceAll(nested, "\n", "\r\n"),
		"except = [\"10.1.2.0/24\"]\n\nentries = [\n  \"10.1.0.0/16\",\n  \"10.2.0.0/16\",\n]\ndescription = \"except first\"\n",
		"entries = [\"10.0.0.0/16\",\n  \"10.1.0.0/16\"]\n",
		bigSet(500),
	}
}

// TestReloadSet edits set files line by line and at random and reads
// each edit from its difference with the version before (reloadSet),
// through chains of edits as the agent's cache sees them: whenever
// reloadSet reads an edit, the set and what it keeps for the next edit
// must be exactly what loading the new file whole gives, and the file
// must load; most edits of element lines must be read so.
func TestReloadSet(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	bases := reloadBases()
	runs := 3000
	if testing.Short() {
		runs = 300
	}
	reloaded, valid := 0, 0
	for run := range runs {
		data := []byte(bases[rng.IntN(len(bases))])
		set, src, err := loadSource(data)
		if err != nil || src == nil {
			t.Fatalf("base %q: %v", data, err)
		}
		for step := range 8 {
			var next []byte
			if rng.IntN(4) == 0 {
				next = mutateSet(rng, data)
			} else {
				next = lineEdit(rng, data)
			}
			got, gotSrc, ok := reloadSet(set, src, setFileOf(next))
			want, wantSrc, wantErr := loadSource(next)
			if wantErr == nil {
				valid++
			}
			if ok {
				reloaded++
				if wantErr != nil {
					t.Fatalf("run %d step %d: reloadSet read\n%q\nwhich does not load: %v", run, step, next, wantErr)
				}
				if !sameIndexedSet(got, want) {
					t.Fatalf("run %d step %d: reloadSet read\n%q\nfrom\n%q\notherwise than a load:\n%+v\n%+v", run, step, next, data, got.Entries, want.Entries)
				}
				if !sameSource(gotSrc, wantSrc) {
					t.Fatalf("run %d step %d: reloadSet keeps for the next edit\n%+v\na load\n%+v\nof\n%q\nfrom\n%q", run, step, gotSrc, wantSrc, next, data)
				}
			}
			if wantErr != nil || wantSrc == nil {
				continue // the agent keeps the last valid version
			}
			data, set, src = next, want, wantSrc
			if ok {
				set, src = got, gotSrc
			}
		}
	}
	t.Logf("reloaded %d of %d valid", reloaded, valid)
	if reloaded < valid/2 {
		t.Fatalf("reloadSet read %d of %d edits that load", reloaded, valid)
	}
}

// FuzzReloadSet reads a second version of a set file from its difference
// with a first and compares it with loading the second whole.
func FuzzReloadSet(f *testing.F) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, base := range reloadBases()[:4] {
		f.Add([]byte(base), lineEdit(rng, []byte(base)))
	}
	f.Fuzz(func(t *testing.T, old, cur []byte) {
		set, src, err := loadSource(old)
		if err != nil || src == nil {
			return
		}
		got, gotSrc, ok := reloadSet(set, src, setFileOf(cur))
		if !ok {
			return
		}
		want, wantSrc, wantErr := loadSource(cur)
		if wantErr != nil || !sameIndexedSet(got, want) || !sameSource(gotSrc, wantSrc) {
			t.Fatalf("reloadSet read\n%q\nfrom\n%q\notherwise than a load (%v)", cur, old, wantErr)
		}
	})
}

// sameSource reports whether a and b hold the same file and places (an
// empty list as nil).
func sameSource(a, b *setSource) bool {
	if !bytes.Equal(a.data, b.data) || !maps.Equal(a.keys, b.keys) {
		return false
	}
	for i := range a.places {
		if !slices.Equal(a.places[i].at, b.places[i].at) || !slices.Equal(a.places[i].starts, b.places[i].starts) {
			return false
		}
	}
	return true
}

// BenchmarkReloadSet100000 measures reading a set of 100,000 entries
// after an edit of one line, from its difference with the version before
// (reload) and whole (load).
func BenchmarkReloadSet100000(b *testing.B) {
	old := []byte(bigSet(100000))
	lines := strings.SplitAfter(string(old), "\n")
	lines = slices.Insert(lines, len(lines)/2, "  \"2001:db8:ffff::1\",\n")
	cur := []byte(strings.Join(lines, ""))
	set, src, err := loadSource(old)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("reload", func(b *testing.B) {
		for range b.N {
			if _, _, ok := reloadSet(set, src, setFileOf(cur)); !ok {
				b.Fatal("not read from the difference")
			}
		}
	})
	b.Run("load", func(b *testing.B) {
		for range b.N {
			if _, _, err := loadSource(cur); err != nil {
				b.Fatal(err)
			}
		}
	})
}
