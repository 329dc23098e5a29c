package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// FuzzLoad feeds arbitrary bytes to Load as vmfw.toml, as a set file, as a
// group file and as a VM file. Load must not panic, must fail only with an
// *Error naming a file, and must return a consistent Model when it
// succeeds. Set files, read in one walk of the parser rather than decoded,
// must be read exactly as decoding reads them.
func FuzzLoad(f *testing.F) {
	seeds := []string{
		"",
		web,
		"description = \"web\"\n[[in]]\nproto = \"tcp\"\ndport = \"80,443,8000:8080\"\ncomment = \"http\"\n",
		"[[in]]\nsource = [\"192.0.2.55\", \"2001:db8::/64\"]\naction = \"reject\"\nlog = true\n",
		"[[in]]\nproto = \"icmpv6\"\nicmp_type = \"neighbor-solicitation\"\nsource_group = \"web\"\n",
		"[[out]]\naction = \"drop\"\nproto = 6\ndport = 25\ndest = \"0.0.0.0/0\"\ndest_group = \"web\"\n",
		"in = [{proto = \"udp\", sport = \"53\"}, {source_mac = \"1e:0b:85:27:8d:65\"}]\n",
		"name = \"web01\"\nenable = false\npolicy_in = \"reject\"\n\n[net0]\nmac = \"1e:0b:85:27:8d:65\"\nips = [\"192.0.2.10\", \"2001:db8::10\"]\nbridge = \"vmbr0\"\ngroups = [\"web\"]\n",
		"[net1]\nips = [\"192.0.2.10\"]\n[net0]\nips = [\"192.0.2.10\"]\n",
		"net0.mac = \"02:00:00:00:00:01\"\nnet7 = {dhcp = false}\n",
		"managed = [\"tap+\", \"veth+\"]\nmark = 0x1000\nlog_limit = \"1/day\"\nlog_burst = 5\n",
		"[in.x]\n[[in]]\n[in.y]\n",
		"[[out]]\ndest_group = \"web-1\"\n[net0]\ngroups = [\"-web\", \"web-\"]\n",
		"a = [[[[1]]]]\n",
		"\xef\xbb\xbf[net01]\n",
		"description = \"\xff\"\n",
		"description = \"blocked\"\nentries = [\n  \"10.0.0.0/8\", # all\n  '2001:db8::/32',\n  \"10.1.2.0/24\",\n]\nexcept = [\"10.1.0.0/16\"]\n",
		"entries = [\"192.0.2.1\", \"192.0.2.1/32\"]\n",
		"entries = [\"0.0.0.0/0\", \"::/0\"]\nexcept = [\"255.255.255.255\", \"::/1\"]\n",
		"except = [\"10.0.0.0/8\"]\nentries = [\"10.0.0.0/9\"]\n",
		"entries = [1, \"\"\"x\"\"\"]\n\"entries\" = []\n",
		"[[in]]\nsource_set = \"bl\"\nsource_group = \"web\"\nsource = \"192.0.2.0/25\"\n[[out]]\ndest_set = \"bl\"\n",
		"[[out]]\nsource_set = \"bl\"\n[[in]]\nsource_set = \"nope\"\n",
		"[net0]\nmac = \"02:00:00:00:00:01\"\nantispoof = \"mac\"\n[net1]\nantispoof = \"Mac\"\n[net2]\nantispoof = \"ip\"\n",
		"log = \"info\"\nlog_in = false\nlog_out = \"DEBUG\"\n[[in]]\nlog = \"crit\"\n[[out]]\nlog = \"nolog\"\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	// Inputs run one after another within a worker, so the directories are
	// made once and only the fuzzed file is rewritten.
	targets := []string{"vmfw.toml", "sets/fuzz.toml", "groups/fuzz.toml", "vms/110.toml"}
	dirs := make([]string, len(targets))
	for i := range targets {
		dirs[i] = configtest.Dir(f, map[string]string{"groups/web.toml": web, "sets/bl.toml": "entries = [\"192.0.2.0/24\"]\n", targets[i]: ""})
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkScanSet(t, data)
		for i, rel := range targets {
			if err := os.WriteFile(filepath.Join(dirs[i], filepath.FromSlash(rel)), data, 0o644); err != nil {
				t.Fatal(err)
			}
			m, err := Load(dirs[i])
			if err != nil {
				var ce *Error
				if !errors.As(err, &ce) || ce.File == "" || ce.Msg == "" {
					t.Fatalf("%s: error %v (%T) is not an *Error with a file and message", rel, err, err)
				}
				continue
			}
			checkModel(t, m)
		}
	})
}

// checkScanSet asserts that scanSet reads data as a set file exactly
// when decoding does, with the same values and lines.
func checkScanSet(t *testing.T, data []byte) {
	t.Helper()
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if !utf8.Valid(data) {
		return // Load refuses it before either reads it
	}
	var p unstable.Parser
	got, ok := scanSet(&p, data)
	f := &file{rel: "sets/fuzz.toml", data: data, lines: scanLines(&p, data), schema: setSchema}
	var want setFile
	err := f.decode(&want)
	if ok != (err == nil) {
		t.Fatalf("scanSet ok %v, decode error %v", ok, err)
	}
	if !ok {
		return
	}
	if got.Description != want.Description || !slices.Equal(got.Entries, want.Entries) || !slices.Equal(got.Except, want.Except) {
		t.Fatalf("scanSet read %+v, decode %+v", got.setFile, want)
	}
	for key, lines := range map[string][]int{"entries": got.entryLines, "except": got.exceptLines} {
		spelt := spelling(f.lines, key)
		for i, l := range lines {
			if w := f.lines.line(index(spelt, i)); l != w {
				t.Fatalf("%s[%d] on line %d, the line scan says %d", key, i, l, w)
			}
		}
	}
}

// spelling returns how the file spells the top-level key the decoder
// takes for key: the last one equal to it but for case.
func spelling(k *keyLines, key string) string {
	spelt := key
	for _, top := range k.top {
		if strings.ToLower(top) == key {
			spelt = top
		}
	}
	return spelt
}

// checkModel asserts invariants every loaded Model keeps.
func checkModel(t *testing.T, m *Model) {
	t.Helper()
	if m.Host.Managed == nil || m.Host.Mark == 0 || m.Host.Mark&(m.Host.Mark-1) != 0 || m.Host.LogBurst < 1 {
		t.Fatalf("invalid host options %+v", m.Host)
	}
	for name, g := range m.Groups {
		for _, r := range g.In {
			if r.DestGroup != "" || r.DestSet != "" || r.Dest != nil {
				t.Fatalf("group %s: in rule %+v matches a destination", name, r)
			}
		}
		for _, r := range g.Out {
			if r.SourceGroup != "" || r.SourceSet != "" || r.Source != nil || r.SourceMAC != nil {
				t.Fatalf("group %s: out rule %+v matches a source", name, r)
			}
		}
		for _, r := range append(append([]Rule{}, g.In...), g.Out...) {
			if r.Line < 1 || r.Action == "" {
				t.Fatalf("group %s: rule %+v lacks line or action", name, r)
			}
			for _, ref := range []string{r.SourceGroup, r.DestGroup} {
				if ref != "" && m.Groups[ref] == nil {
					t.Fatalf("group %s refers to missing group %q", name, ref)
				}
			}
			for _, ref := range []string{r.SourceSet, r.DestSet} {
				if ref != "" && m.Sets[ref] == nil {
					t.Fatalf("group %s refers to missing set %q", name, ref)
				}
			}
			if r.Log != (r.LogLevel != LogOff) {
				t.Fatalf("group %s: rule %+v: Log and LogLevel disagree", name, r)
			}
			if (len(r.DPort) > 0 || len(r.SPort) > 0) && !portProto(r.Proto) {
				t.Fatalf("group %s: ports with proto %q", name, r.Proto)
			}
		}
	}
	for name, s := range m.Sets {
		if s.Name != name || s.index == nil {
			t.Fatalf("set %s: name %q, index %v", name, s.Name, s.index != nil)
		}
		for _, e := range append(append([]SetEntry{}, s.Entries...), s.Except...) {
			if e.Line < 1 || e.Prefix != e.Prefix.Masked() || !e.Prefix.IsValid() {
				t.Fatalf("set %s: entry %+v", name, e)
			}
			// Every listed prefix decides for its own first address.
			if got, ok := s.Match(e.Prefix.Addr()); got.Prefix.Bits() < e.Prefix.Bits() || (got == e) != (got.Prefix == e.Prefix) {
				t.Fatalf("set %s: Match(%s) = %+v %v, a less specific prefix than %s", name, e.Prefix.Addr(), got, ok, e.Prefix)
			}
		}
		for _, x := range s.Except {
			inside := false
			for _, e := range s.Entries {
				inside = inside || e.Prefix.Bits() < x.Prefix.Bits() && e.Prefix.Contains(x.Prefix.Addr())
			}
			if !inside {
				t.Fatalf("set %s: except %s lies inside no entry", name, x.Prefix)
			}
		}
	}
	seen := map[string]bool{}
	for id, vm := range m.VMs {
		if vm.Log != (vm.LogIn != LogOff || vm.LogOut != LogOff) {
			t.Fatalf("VM %d: Log %v but LogIn %q and LogOut %q", id, vm.Log, vm.LogIn, vm.LogOut)
		}
		for i, n := range vm.NICs {
			if n.VM != vm || n.Tap != TapName(id, n.Index) || len(n.Tap) > 15 || n.Line < 1 || m.NIC(n.Tap) != n {
				t.Fatalf("inconsistent interface %+v of VM %d", n, id)
			}
			if n.AntispoofMACOnly && (!n.Antispoof || n.MAC == nil) {
				t.Fatalf("interface %s: MAC-only anti-spoofing without Antispoof or a MAC: %+v", n.Tap, n)
			}
			if i > 0 && vm.NICs[i-1].Index >= n.Index {
				t.Fatalf("VM %d interfaces not sorted by index", id)
			}
			for _, a := range n.IPs {
				if seen[a.String()] {
					t.Fatalf("address %s claimed twice", a)
				}
				seen[a.String()] = true
			}
		}
	}
}
