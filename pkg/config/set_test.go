package config

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// TestLoadSet loads a set using every key and checks the Model.
func TestLoadSet(t *testing.T) {
	m := mustLoad(t, configtest.Dir(t, map[string]string{"sets/office-nets.toml": `description = "offices, without the guest Wi-Fi"
entries = [
  "10.0.0.0/8",       # every office
  "192.0.2.7",
  '2001:DB8::/32',
  "10.1.2.0/24",      # the printers, inside the guest range
]
except = ["10.1.0.0/16", "2001:db8:ffff::/48"]
`}))
	s := m.Sets["office-nets"]
	if s == nil {
		t.Fatalf("sets %v, want office-nets", m.Sets)
	}
	pfx := netip.MustParsePrefix
	want := &Set{Name: "office-nets", File: s.File, Description: "offices, without the guest Wi-Fi",
		Entries: []SetEntry{{pfx("10.0.0.0/8"), 3}, {pfx("192.0.2.7/32"), 4}, {pfx("2001:db8::/32"), 5}, {pfx("10.1.2.0/24"), 6}},
		Except:  []SetEntry{{pfx("10.1.0.0/16"), 8}, {pfx("2001:db8:ffff::/48"), 8}}}
	if !strings.HasSuffix(s.File, "sets/office-nets.toml") {
		t.Errorf("File = %q", s.File)
	}
	if !reflect.DeepEqual(s.Entries, want.Entries) || !reflect.DeepEqual(s.Except, want.Except) || s.Name != want.Name || s.Description != want.Description {
		t.Errorf("set\n got %+v %+v\nwant %+v %+v", s.Entries, s.Except, want.Entries, want.Except)
	}
	if len(m.Groups) != 0 || len(m.VMs) != 0 {
		t.Errorf("groups %v, VMs %v from a set file", m.Groups, m.VMs)
	}
}

// TestLoadSetEmpty: a set without entries is valid (a list kept empty
// until it is needed) and matches nothing.
func TestLoadSetEmpty(t *testing.T) {
	m := mustLoad(t, configtest.Dir(t, map[string]string{"sets/none.toml": "", "sets/empty.toml": "entries = []\nexcept = []\n"}))
	for _, name := range []string{"none", "empty"} {
		s := m.Sets[name]
		if s == nil || len(s.Entries) != 0 || len(s.Except) != 0 {
			t.Fatalf("set %s = %+v", name, s)
		}
		if _, ok := s.Match(netip.MustParseAddr("192.0.2.1")); ok {
			t.Errorf("empty set %s matches", name)
		}
		if got := s.Effective(false); len(got) != 0 {
			t.Errorf("empty set %s: Effective = %v", name, got)
		}
	}
}

// TestLoadSetSizeLimit: set files have 32 MiB where every other file has
// 1 MiB, and the error says which limit applies.
func TestLoadSetSizeLimit(t *testing.T) {
	big := bigSet(60000) // about 1.6 MB
	if len(big) <= maxFileSize {
		t.Fatalf("test set is %d bytes, not over 1 MiB", len(big))
	}
	if s := mustLoad(t, configtest.Dir(t, map[string]string{"sets/big.toml": big})).Sets["big"]; len(s.Entries) != 60000 {
		t.Fatalf("%d entries, want 60000", len(s.Entries))
	}
	_, err := Load(configtest.Dir(t, map[string]string{"groups/web.toml": "#" + strings.Repeat("x", maxFileSize) + "\n"}))
	checkError(t, err, "groups/web.toml: ", "file is larger than 1 MiB")
	_, err = Load(configtest.Dir(t, map[string]string{"sets/big.toml": "#" + strings.Repeat("x", maxSetFileSize) + "\n"}))
	checkError(t, err, "sets/big.toml: ", "file is larger than 32 MiB, the limit for set files")
}

// TestLoadSet100000 loads the largest set the design names.
func TestLoadSet100000(t *testing.T) {
	s := mustLoad(t, configtest.Dir(t, map[string]string{"sets/big.toml": bigSet(100000)})).Sets["big"]
	// An except in every hundredth /24: i = 1 mod 3 and 1 mod 100.
	if len(s.Entries) != 100000 || len(s.Except) != 334 {
		t.Fatalf("%d entries and %d excepts, want 100000 and 334", len(s.Entries), len(s.Except))
	}
	if e, ok := s.Match(netip.MustParseAddr("10.1.134.159")); !ok || e.Prefix.String() != "10.1.134.159/32" || e.Line != 3+99999 {
		t.Errorf("Match of the last address: %+v %v", e, ok)
	}
	if e, ok := s.Match(netip.MustParseAddr("100.0.1.200")); ok || e.Prefix.String() != "100.0.1.128/25" {
		t.Errorf("Match inside the first except: %+v %v", e, ok)
	}
}

// TestScanSetAgreesWithDecode: the one-walk reader of set files takes
// the values and lines that decoding and the generic line scan take, for
// every way TOML lets a valid set file be written, and keys in any case,
// which decoding takes as their lower-case field (the last one wins).
func TestScanSetAgreesWithDecode(t *testing.T) {
	for _, text := range []string{
		"",
		"# only a comment\n",
		"entries = []\n",
		"entries = [\"10.0.0.1\"]\n",
		"\"entries\" = [\n  \"10.0.0.1\", # a comment\n\n  '10.0.0.2',\n]\n'except' = []\n",
		"description = \"\"\"\nmulti\"\"\"\nentries = [\"\"\"10.0.0.1\"\"\", '''10.0.0.2''']\n",
		"entries = [\r\n  \"10.0.0.1\",\r\n  \"10.0.0.2\"\r\n]\r\n",
		"entries = [\n\"a\\u0041\",\n\"b\\tc\"]\nexcept = [\"x\"]\ndescription = \"d\"\n",
		"entries=[\"1\",\"2\",\n\n\n\"3\"]",
		"ENTRIES = [\"1\"]\nDescription = \"d\"\n",
		"entries = [\"1\"]\nEntries = [\n\"2\"]\n",
	} {
		var p unstable.Parser
		got, ok := scanSet(&p, []byte(text))
		if !ok {
			t.Errorf("%q: scanSet refused a valid set file", text)
			continue
		}
		f := &file{data: []byte(text), lines: scanLines(&p, []byte(text)), schema: setSchema}
		var want setFile
		if err := f.decode(&want); err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if !reflect.DeepEqual(got.setFile, want) {
			t.Errorf("%q: scanSet read %+v, decode %+v", text, got.setFile, want)
		}
		for key, lines := range map[string][]int{"entries": got.entryLines, "except": got.exceptLines} {
			spelt := spelling(f.lines, key)
			for i, l := range lines {
				if w := f.lines.line(index(spelt, i)); l != w {
					t.Errorf("%q: %s[%d] on line %d, want %d", text, key, i, l, w)
				}
			}
		}
		for key, l := range got.keys {
			if w := f.lines.line(spelling(f.lines, key)); l != w {
				t.Errorf("%q: key %s on line %d, want %d", text, key, l, w)
			}
		}
	}
}

// TestSetMatch: the most specific prefix decides, an except among them
// too, and Match names it.
func TestSetMatch(t *testing.T) {
	s := loadedSet(t, []string{"10.0.0.0/8", "10.1.2.0/24", "10.1.2.3", "192.0.2.0/24", "2001:db8::/32", "2001:db8:1:2::/64", "0.0.0.0/1"},
		[]string{"10.1.0.0/16", "10.1.2.128/25", "2001:db8:1::/48"})
	for _, tc := range []struct {
		addr    string
		prefix  string // "" for none
		matched bool
	}{
		{"10.200.0.1", "10.0.0.0/8", true},
		{"10.1.0.1", "10.1.0.0/16", false},
		{"10.1.2.4", "10.1.2.0/24", true},
		{"10.1.2.3", "10.1.2.3/32", true},
		{"10.1.2.128", "10.1.2.128/25", false},
		{"192.0.2.255", "192.0.2.0/24", true},
		{"192.0.3.0", "", false},
		{"127.0.0.1", "0.0.0.0/1", true},
		{"128.0.0.0", "", false},
		{"2001:db8::1", "2001:db8::/32", true},
		{"2001:db8:1::1", "2001:db8:1::/48", false},
		{"2001:db8:1:2::99", "2001:db8:1:2::/64", true},
		{"2001:db9::1", "", false},
		{"::ffff:10.0.0.1", "", false}, // IPv6, not 10.0.0.1
		{"fe80::1%eth0", "", false},
	} {
		e, ok := s.Match(netip.MustParseAddr(tc.addr))
		if ok != tc.matched || (tc.prefix == "" && e != SetEntry{}) || (tc.prefix != "" && e.Prefix.String() != tc.prefix) {
			t.Errorf("Match(%s) = %v %v, want %s %v", tc.addr, e, ok, tc.prefix, tc.matched)
		}
		if tc.prefix != "" && e.Line == 0 {
			t.Errorf("Match(%s) names no line", tc.addr)
		}
	}
}

// loadedSet loads a set of entries and excepts written one per line, as
// an operator would, with names for lines: entry i is on line i+2.
func loadedSet(t *testing.T, entries, except []string) *Set {
	t.Helper()
	return mustLoad(t, configtest.Dir(t, map[string]string{"sets/s.toml": configtest.SetFile("", entries, except)})).Sets["s"]
}

// TestSetEffective checks the prefixes of hand-worked examples.
func TestSetEffective(t *testing.T) {
	for _, tc := range []struct {
		name            string
		entries, except []string
		v4, v6          string
	}{
		{
			name:    "chain of entry, except, entry",
			entries: []string{"10.0.0.0/8", "10.1.2.0/24"},
			except:  []string{"10.1.0.0/16"},
			v4:      "10.0.0.0/16 10.1.2.0/24 10.2.0.0/15 10.4.0.0/14 10.8.0.0/13 10.16.0.0/12 10.32.0.0/11 10.64.0.0/10 10.128.0.0/9",
		},
		{
			name:    "an except of one address",
			entries: []string{"192.0.2.0/30"},
			except:  []string{"192.0.2.2"},
			v4:      "192.0.2.0/31 192.0.2.3/32",
		},
		{
			name:    "adjacent entries merge",
			entries: []string{"192.0.2.0/25", "192.0.2.128/26", "192.0.2.192/26", "2001:db8::/33", "2001:db8:8000::/33"},
			v4:      "192.0.2.0/24",
			v6:      "2001:db8::/32",
		},
		{
			name:    "nested entries",
			entries: []string{"192.0.2.0/24", "192.0.2.7", "192.0.2.64/26"},
			v4:      "192.0.2.0/24",
		},
		{
			name:    "everything but one network, to the last address",
			entries: []string{"0.0.0.0/0", "::/0"},
			except:  []string{"0.0.0.0/1", "255.255.255.255", "::/1"},
			v4:      "128.0.0.0/2 192.0.0.0/3 224.0.0.0/4 240.0.0.0/5 248.0.0.0/6 252.0.0.0/7 254.0.0.0/8 255.0.0.0/9 255.128.0.0/10 255.192.0.0/11 255.224.0.0/12 255.240.0.0/13 255.248.0.0/14 255.252.0.0/15 255.254.0.0/16 255.255.0.0/17 255.255.128.0/18 255.255.192.0/19 255.255.224.0/20 255.255.240.0/21 255.255.248.0/22 255.255.252.0/23 255.255.254.0/24 255.255.255.0/25 255.255.255.128/26 255.255.255.192/27 255.255.255.224/28 255.255.255.240/29 255.255.255.248/30 255.255.255.252/31 255.255.255.254/32",
			v6:      "8000::/1",
		},
		{
			name:    "the whole space, and entries inside an except at its end",
			entries: []string{"0.0.0.0/0", "255.255.255.254/31"},
			except:  []string{"128.0.0.0/1"},
			v4:      "0.0.0.0/1 255.255.255.254/31",
		},
		{
			name:    "only the other family",
			entries: []string{"2001:db8::1"},
			v6:      "2001:db8::1/128",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := loadedSet(t, tc.entries, tc.except)
			for _, fam := range []struct {
				v6   bool
				want string
			}{{false, tc.v4}, {true, tc.v6}} {
				var got []string
				for _, p := range s.Effective(fam.v6) {
					got = append(got, p.String())
				}
				if strings.Join(got, " ") != fam.want {
					t.Errorf("Effective(v6=%v)\n got %s\nwant %s", fam.v6, strings.Join(got, " "), fam.want)
				}
			}
		})
	}
}

// TestSetProperties checks Match and Effective against a brute-force
// reading of the definition on random sets: nested chains of entries and
// excepts in a small region, so that random addresses hit them, and a few
// wide prefixes around it. For every set, every address of the region
// and the edges of every prefix: Match returns the most specific
// containing prefix and whether it is an entry, and the address is in
// Effective exactly when it matches. Effective is sorted, disjoint and
// minimal (no two prefixes are the halves of one). The same holds for the
// set built by hand (no index, Match scans).
func TestSetProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 21))
	bases := []netip.Prefix{netip.MustParsePrefix("10.20.30.0/24"), netip.MustParsePrefix("2001:db8:0:1::ff00/120")}
	wide := []string{"10.0.0.0/8", "10.20.0.0/16", "0.0.0.0/0", "2001:db8::/32", "::/0", "2001:db8:0:1::/64"}
	for iter := range 300 {
		// Random prefixes in the region; each is an entry or an
		// except, which Load accepts only when the except lies in an
		// entry, so those that do not are made entries.
		type pick struct {
			p      netip.Prefix
			except bool
		}
		var picks []pick
		seen := map[netip.Prefix]bool{}
		for range 1 + rng.IntN(12) {
			base := bases[rng.IntN(len(bases))]
			bits := base.Bits() + rng.IntN(base.Addr().BitLen()-base.Bits()+1)
			a := base.Addr()
			b := a.AsSlice()
			b[len(b)-1] = byte(rng.IntN(256))
			a, _ = netip.AddrFromSlice(b)
			p, _ := a.Prefix(bits)
			if !seen[p] {
				seen[p] = true
				picks = append(picks, pick{p, rng.IntN(2) == 0})
			}
		}
		for _, w := range wide {
			if rng.IntN(4) == 0 {
				p := netip.MustParsePrefix(w)
				if !seen[p] {
					seen[p] = true
					picks = append(picks, pick{p, rng.IntN(3) == 0})
				}
			}
		}
		// Wider prefixes first, so that an except knows its entries.
		slices.SortStableFunc(picks, func(a, b pick) int { return a.p.Bits() - b.p.Bits() })
		var entries, except []string
		var hand Set
		for i, pk := range picks {
			inside := false
			for _, o := range picks[:i] {
				if !o.except && o.p.Bits() < pk.p.Bits() && o.p.Contains(pk.p.Addr()) {
					inside = true
				}
			}
			if pk.except && inside {
				except = append(except, pk.p.String())
				hand.Except = append(hand.Except, SetEntry{Prefix: pk.p})
			} else {
				entries = append(entries, pk.p.String())
				hand.Entries = append(hand.Entries, SetEntry{Prefix: pk.p})
			}
		}
		loaded := loadedSet(t, entries, except)
		for _, s := range []*Set{loaded, &hand} {
			label := fmt.Sprintf("iteration %d, entries %v, except %v (index %v)", iter, entries, except, s.index != nil)
			checkSetProperties(t, label, s, probeAddrs(bases, s))
		}
	}
}

// probeAddrs returns every address of the regions and the first and last
// address of every prefix of s, and the addresses just outside them.
func probeAddrs(regions []netip.Prefix, s *Set) []netip.Addr {
	var out []netip.Addr
	for _, r := range regions {
		for a := r.Addr(); r.Contains(a); a = a.Next() {
			out = append(out, a)
		}
	}
	for _, e := range append(append([]SetEntry{}, s.Entries...), s.Except...) {
		first, last := e.Prefix.Addr(), lastAddr(e.Prefix)
		out = append(out, first, last, first.Prev(), last.Next())
	}
	return slices.DeleteFunc(out, func(a netip.Addr) bool { return !a.IsValid() })
}

func lastAddr(p netip.Prefix) netip.Addr {
	width := p.Addr().BitLen()
	return fromAddr(p.Addr()).or(hostMask(width - p.Bits())).addr(width)
}

func checkSetProperties(t *testing.T, label string, s *Set, addrs []netip.Addr) {
	t.Helper()
	eff := map[bool][]netip.Prefix{false: s.Effective(false), true: s.Effective(true)}
	for v6, list := range eff {
		for i, p := range list {
			if p.Addr().Is6() != v6 || p != p.Masked() {
				t.Fatalf("%s: Effective(v6=%v) holds %s", label, v6, p)
			}
			if i == 0 {
				continue
			}
			prev := list[i-1]
			if lastAddr(prev).Compare(p.Addr()) >= 0 {
				t.Fatalf("%s: Effective(v6=%v) not sorted and disjoint: %s then %s", label, v6, prev, p)
			}
			if prev.Bits() == p.Bits() && prev.Bits() > 0 {
				if parent, _ := prev.Addr().Prefix(prev.Bits() - 1); parent.Contains(p.Addr()) {
					t.Fatalf("%s: Effective(v6=%v) not minimal: %s and %s make %s", label, v6, prev, p, parent)
				}
			}
		}
	}
	for _, a := range addrs {
		// The definition: the most specific prefix containing a.
		want, wantOK, bits := SetEntry{}, false, -1
		for _, e := range s.Entries {
			if e.Prefix.Contains(a) && e.Prefix.Bits() > bits {
				want, wantOK, bits = e, true, e.Prefix.Bits()
			}
		}
		for _, e := range s.Except {
			if e.Prefix.Contains(a) && e.Prefix.Bits() > bits {
				want, wantOK, bits = e, false, e.Prefix.Bits()
			}
		}
		got, ok := s.Match(a)
		if got != want || ok != wantOK {
			t.Fatalf("%s: Match(%s) = %+v %v, want %+v %v", label, a, got, ok, want, wantOK)
		}
		inEff := false
		for _, p := range eff[a.Is6()] {
			if p.Contains(a) {
				inEff = true
			}
		}
		if inEff != ok {
			t.Fatalf("%s: %s matches %v but is in Effective %v: %v", label, a, ok, inEff, eff[a.Is6()])
		}
	}
}

// TestRuleSets: source_set in in rules, dest_set in out rules, alone and
// with the other address keys of their direction.
func TestRuleSets(t *testing.T) {
	m := mustLoad(t, configtest.Dir(t, map[string]string{
		"sets/office-nets.toml": "entries = [\"192.0.2.0/24\"]\n",
		"sets/blocked.toml":     "entries = [\"198.51.100.0/24\"]\n",
		"groups/admins.toml":    "",
		"groups/web.toml": `[[in]]
source_set = "office-nets"

[[in]]
proto = "tcp"
dport = 22
source = ["192.0.2.0/25", "2001:db8::/64"]
source_group = "admins"
source_set = "office-nets"
source_mac = "02:00:00:00:00:01"

[[out]]
action = "drop"
dest_set = "blocked"
dest = "198.51.100.0/25"
dest_group = "admins"
`,
	}))
	g := m.Groups["web"]
	in0, in1, out0 := g.In[0], g.In[1], g.Out[0]
	if in0.SourceSet != "office-nets" || in0.DestSet != "" || in0.Source != nil || in0.SourceGroup != "" {
		t.Errorf("in rule 1 = %+v", in0)
	}
	if in1.SourceSet != "office-nets" || in1.SourceGroup != "admins" || len(in1.Source) != 2 || in1.SourceMAC == nil || in1.Line != 4 {
		t.Errorf("in rule 2 = %+v", in1)
	}
	if out0.DestSet != "blocked" || out0.SourceSet != "" || out0.DestGroup != "admins" || len(out0.Dest) != 1 || out0.Action != Drop {
		t.Errorf("out rule 1 = %+v", out0)
	}
	if m.Sets[in0.SourceSet] == nil || m.Sets[out0.DestSet] == nil {
		t.Error("a rule's set is not in Model.Sets")
	}
}
