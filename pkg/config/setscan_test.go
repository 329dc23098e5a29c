package config

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2/unstable"
)

// commonSets are set files in the shape scanSetFast reads itself.
var commonSets = []string{
	"",
	"\n\n# only comments\n\t# indented\n",
	"entries = []\n",
	"entries = [ ]\nexcept = [\n]\n",
	"description = \"scanners, except our partner's range\"\nentries = [                   # addresses and CIDRs; v4 and v6 may mix\n  \"198.51.100.0/24\",\n  \"203.0.113.7\",\n  \"2001:db8:bad::/48\",\n]\nexcept = [\"198.51.100.128/26\"] # networks carved out of the entries\n",
	"entries=[\"192.0.2.0/24\",\"192.0.2.1\"]\nexcept=[\"192.0.2.0/25\"]",
	"entries = [\r\n  \"192.0.2.0/24\", # a comment\r\n\r\n  \"198.51.100.0/24\"\r\n]\r\ndescription = \"crlf\"\r\n",
	"except = [\"192.0.2.128/25\"]\nentries = [\"192.0.2.0/24\"]\ndescription = \"Büro \tnetze ☃\"\n",
	"entries = [\n  \"192.0.2.0/24\" , # trailing comma next\n  \"2001:db8::/32\" ,\n\n  # the end\n]\n# done",
	"entries = [\"192.0.2.1\", \"192.0.2.1/32\"]\n",
	"entries = [\"10.0.0.0/8\", \"nope\", \"2001:db8::1%eth0\"]\n",
	"entries = [\"192.0.2.0/24\"]\nexcept = [\"198.51.100.0/25\"]\n",
	"except = [\"192.0.2.0/25\"]\n",
	"description = \"\"\nentries = [\"0.0.0.0/0\", \"::/0\"]\nexcept = [\"255.255.255.255\", \"::/1\"]\n",
	bigSet(300),
}

// uncommonSets are valid set files, or near ones, that scanSetFast
// leaves to scanSet.
var uncommonSets = []string{
	"entries = ['192.0.2.0/24']\n",
	"entries = [\"\"\"192.0.2.0/24\"\"\"]\n",
	"entries = [\"192.0.2.\\u0030/24\"]\n",
	"\"entries\" = [\"192.0.2.0/24\"]\n",
	"Entries = [\"192.0.2.0/24\"]\n",
	"entries = [\"1\"]\nEntries = [\n\"2\"]\n",
	"entries = [\"1\"]\nentries = [\"2\"]\n",
	"entries = [\"1\" \"2\"]\n",
	"entries = [,]\n",
	"entries = [\"1\",,]\n",
	"entries = [\"1\"] description = \"x\"\n",
	"entries = [\"1\"]\r",
	"entries = [\"1\"\r]\n",
	"entries = [\"1\"] # a\x01b\n",
	"entries = [1]\n",
	"entries = \"192.0.2.0/24\"\n",
	"description = [\"x\"]\n",
	"description = \"a\nb\"\n",
	"description = \"x\"\n[table]\n",
	"descriptions = \"x\"\n",
	"entries.x = [\"1\"]\n",
	"entries = [\"1\"\n",
	"entries = [\n# open\n",
	"description = \"a\x7fb\"\n",
}

// compareSetPaths loads data as a set file through scanSetFast and through
// scanSet alone and fails unless both give the same set, or the same
// error; when scanSetFast takes the file, it must read exactly what
// scanSet reads. It reports whether scanSetFast took the file.
func compareSetPaths(t *testing.T, data []byte) bool {
	t.Helper()
	var p unstable.Parser
	fast, _, ok := scanSetFast(data)
	if ok {
		full, fullOK := scanSet(&p, data)
		if !fullOK {
			t.Fatalf("%q: scanSetFast read %+v, which scanSet refuses", data, fast.setFile)
		}
		if !reflect.DeepEqual(fast, full) {
			t.Fatalf("%q: scanSetFast read\n%+v\nscanSet\n%+v", data, fast, full)
		}
	}
	load := func(try bool) (*Set, *Error) {
		f := &file{rel: "sets/x.toml", path: "/etc/vmfw/sets/x.toml", data: data, schema: setSchema}
		return loadSetWith(f, &p, "x", try)
	}
	s1, e1 := load(true)
	s2, e2 := load(false)
	if !reflect.DeepEqual(e1, e2) {
		t.Fatalf("%q: the fast path's error %v, the full reader's %v", data, e1, e2)
	}
	if !reflect.DeepEqual(s1, s2) {
		t.Fatalf("%q: the fast path's set %+v, the full reader's %+v", data, s1, s2)
	}
	return ok
}

func TestScanSetFast(t *testing.T) {
	for _, text := range commonSets {
		if !compareSetPaths(t, []byte(text)) {
			t.Errorf("%q: scanSetFast left a set file of the common shape to scanSet", text)
		}
	}
	for _, text := range uncommonSets {
		if compareSetPaths(t, []byte(text)) {
			t.Errorf("%q: scanSetFast read a file outside its shape", text)
		}
	}
}

// TestSetFastPathMutations mutates set files of the common shape a byte or
// a few at a time, with the characters TOML gives a meaning, and compares
// both readers on each. FuzzSetFastPath explores further with go test
// -fuzz.
func TestSetFastPathMutations(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	runs := 20000
	if testing.Short() {
		runs = 2000
	}
	fast := 0
	for range runs {
		data := mutateSet(rng, []byte(commonSets[rng.IntN(len(commonSets))]))
		if compareSetPaths(t, data) {
			fast++
		}
	}
	// Most mutations leave the shape or are harmless to it; a fast path
	// that took none would be compared with nothing.
	if fast < runs/10 {
		t.Fatalf("scanSetFast took %d of %d mutated files", fast, runs)
	}
}

// mutationBytes are the characters the set file's syntax turns on.
const mutationBytes = "\"'[],=#\\\n\r\t /.:0123456789abcdefEentriesxcptdion\x00\x7f\xc3\xa9\xff"

// mutateSet changes data in one to three places: a byte inserted,
// deleted or replaced, or a line duplicated or dropped.
func mutateSet(rng *rand.Rand, data []byte) []byte {
	out := append([]byte(nil), data...)
	for range 1 + rng.IntN(3) {
		at := 0
		if len(out) > 0 {
			at = rng.IntN(len(out) + 1)
		}
		c := mutationBytes[rng.IntN(len(mutationBytes))]
		switch op := rng.IntN(5); {
		case op == 0 || len(out) == 0:
			out = append(out[:at], append([]byte{c}, out[at:]...)...)
		case op == 1 && at < len(out):
			out = append(out[:at], out[at+1:]...)
		case op == 2 && at < len(out):
			out[at] = c
		default:
			lines := strings.SplitAfter(string(out), "\n")
			i := rng.IntN(len(lines))
			if op == 3 {
				lines = append(lines[:i], append([]string{lines[i]}, lines[i:]...)...)
			} else {
				lines = append(lines[:i], lines[i+1:]...)
			}
			out = []byte(strings.Join(lines, ""))
		}
	}
	return out
}

// FuzzSetFastPath compares scanSetFast's reading of a set file with
// scanSet's, on the common shapes and their mutations.
func FuzzSetFastPath(f *testing.F) {
	for _, s := range append(append([]string{}, commonSets[:len(commonSets)-1]...), uncommonSets...) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		compareSetPaths(t, data)
	})
}

// BenchmarkScanSet measures reading a set file of 100,000 entries into
// its strings and lines, by scanSetFast and by scanSet.
func BenchmarkScanSet(b *testing.B) {
	data := []byte(bigSet(100000))
	b.Run("fast", func(b *testing.B) {
		for range b.N {
			if _, _, ok := scanSetFast(data); !ok {
				b.Fatal("not read")
			}
		}
	})
	b.Run("parser", func(b *testing.B) {
		var p unstable.Parser
		for range b.N {
			if _, ok := scanSet(&p, data); !ok {
				b.Fatal("not read")
			}
		}
	})
}
