package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// loadsFromIndex reports whether a LoadIndexed of dir through index now
// answers from the index: it does when the index file is not rewritten.
func loadsFromIndex(t *testing.T, dir, index string) (*Model, bool) {
	t.Helper()
	before, _ := os.Stat(index)
	m, err := LoadIndexed(dir, index)
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(index)
	if err != nil {
		t.Fatalf("no index written: %v", err)
	}
	return m, before != nil && os.SameFile(before, after)
}

// TestLoadIndexed: the second load of an unchanged directory comes from
// the index and gives the Model Load gives; every kind of change makes the
// next load read the files again, and gives what Load gives then.
func TestLoadIndexed(t *testing.T) {
	files := manyVMs(20)
	files["vmfw.toml"] = "log_limit = \"5/second\"\n"
	files["sets/office.toml"] = "entries = [\"198.51.100.0/24\", \"2001:db8:5::/48\"]\nexcept = [\"198.51.100.128/25\"]\n"
	for name, change := range map[string]func(dir string){
		"a VM file edited": func(dir string) {
			configtest.Write(t, dir, map[string]string{"vms/1003.toml": "[net0]\nips = [\"198.51.100.3\"]\n"})
		},
		"a group edited": func(dir string) {
			configtest.Write(t, dir, map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = 81\n"})
		},
		"a set edited": func(dir string) {
			configtest.Write(t, dir, map[string]string{"sets/office.toml": "entries = [\"203.0.113.0/24\"]\n"})
		},
		"a VM file added":   func(dir string) { configtest.Write(t, dir, map[string]string{"vms/7.toml": "[net0]\n"}) },
		"a VM file removed": func(dir string) { os.Remove(filepath.Join(dir, "vms/1004.toml")) },
		"vmfw.toml removed": func(dir string) { os.Remove(filepath.Join(dir, "vmfw.toml")) },
		"a file replaced by one of the same size and time": func(dir string) {
			p := filepath.Join(dir, "vms/1005.toml")
			fi, _ := os.Stat(p)
			data, _ := os.ReadFile(p)
			tmp := p + ".new"
			os.WriteFile(tmp, []byte(strings.Replace(string(data), "vm1005", "vm1x05", 1)), 0o644)
			os.Chtimes(tmp, fi.ModTime(), fi.ModTime())
			os.Rename(tmp, p)
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := configtest.Dir(t, files)
			index := filepath.Join(t.TempDir(), "config.index")
			first, hit := loadsFromIndex(t, dir, index)
			if hit {
				t.Fatal("a first load answered from an index")
			}
			second, hit := loadsFromIndex(t, dir, index)
			if !hit {
				t.Fatal("the second load of an unchanged directory read the files")
			}
			if !reflect.DeepEqual(first, second) {
				t.Fatal("the index gives another Model than the files")
			}
			if e, ok := second.Sets["office"].Match(netip.MustParseAddr("198.51.100.200")); ok || e.Line == 0 {
				t.Errorf("a set read from the index matches 198.51.100.200 (%+v, %v), which its except excludes", e, ok)
			}
			time.Sleep(10 * time.Millisecond) // coarse file systems: a visible time step
			change(dir)
			got, hit := loadsFromIndex(t, dir, index)
			if hit {
				t.Fatalf("after %s the load answered from the index", name)
			}
			want, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("after %s: the load gives another Model than Load", name)
			}
		})
	}
}

// TestLoadIndexedRecordsOnlyValidLoads: a configuration that does not load
// is an error as from Load, leaves the index of the last valid load, and
// that index is not used while the files differ from what it records.
func TestLoadIndexedRecordsOnlyValidLoads(t *testing.T) {
	dir := configtest.Dir(t, manyVMs(3))
	index := filepath.Join(t.TempDir(), "config.index")
	if _, err := LoadIndexed(dir, index); err != nil {
		t.Fatal(err)
	}
	configtest.Write(t, dir, map[string]string{"vms/1001.toml": "[net0]\nips = [\"10.0.3.234\"]\n"}) // 1001 claims 1002's address
	_, err := LoadIndexed(dir, index)
	if _, want := Load(dir); err == nil || want == nil || err.Error() != want.Error() {
		t.Fatalf("LoadIndexed: %v, want Load's error %v", err, want)
	}
}

// TestLoadIndexedSeesNewDirectories: a subdirectory Load lists that did
// not exist when the index was written is recorded as missing, so its
// creation is seen.
func TestLoadIndexedSeesNewDirectories(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{"vms/5.toml": "[net0]\n"})
	index := filepath.Join(t.TempDir(), "config.index")
	loadsFromIndex(t, dir, index)
	if _, hit := loadsFromIndex(t, dir, index); !hit {
		t.Fatal("the second load read the files")
	}
	configtest.Write(t, dir, map[string]string{"groups/web.toml": "[[in]]\n"})
	m, hit := loadsFromIndex(t, dir, index)
	if hit || m.Groups["web"] == nil {
		t.Errorf("a new groups directory: from the index %v, groups %v", hit, m.Groups)
	}
}

// BenchmarkLoadIndexed10000 is BenchmarkLoad10000 answered from the index.
func BenchmarkLoadIndexed10000(b *testing.B) {
	dir := configtest.Dir(b, manyVMs(10000))
	index := filepath.Join(b.TempDir(), "config.index")
	if _, err := LoadIndexed(dir, index); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := LoadIndexed(dir, index); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLoadIndexedLater: the Model comes from the index before its files
// are checked; confirm gives that very Model while they are unchanged,
// and what Load reads once one of them changed.
func TestLoadIndexedLater(t *testing.T) {
	dir := configtest.Dir(t, manyVMs(20))
	index := filepath.Join(t.TempDir(), "config.index")
	if _, err := LoadIndexed(dir, index); err != nil {
		t.Fatal(err)
	}
	m, confirm, err := LoadIndexedLater(dir, index)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := confirm(); err != nil || got != m {
		t.Fatalf("confirm of an unchanged directory = %p, %v; want the index's Model %p", got, err, m)
	}

	configtest.Write(t, dir, map[string]string{"vms/1003.toml": "[net0]\nips = [\"198.51.100.3\"]\n"})
	m, confirm, err = LoadIndexedLater(dir, index)
	if err != nil {
		t.Fatal(err)
	}
	edited := []netip.Addr{netip.MustParseAddr("198.51.100.3")}
	if reflect.DeepEqual(m.VMs[1003].NICs[0].IPs, edited) {
		t.Fatalf("the index's Model already has the edit: %v", m.VMs[1003].NICs[0].IPs)
	}
	got, err := confirm()
	if err != nil {
		t.Fatal(err)
	}
	want, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got == m || !reflect.DeepEqual(got.VMs[1003].NICs[0].IPs, edited) || !reflect.DeepEqual(got.VMs, want.VMs) {
		t.Errorf("confirm after an edit gives the index's Model, not Load's")
	}

	configtest.Write(t, dir, map[string]string{"vms/1004.toml": "[net0]\nips = \"not a list\"\n"})
	if _, confirm, err = LoadIndexedLater(dir, index); err != nil {
		t.Fatal(err)
	}
	if _, err := confirm(); err == nil || !strings.Contains(err.Error(), "1004.toml") {
		t.Errorf("confirm after a broken edit = %v, want Load's error naming vms/1004.toml", err)
	}
}

// BenchmarkReadIndex5000 reads the index of 5000 VMs (configtest.Large,
// the bench's configuration) without checking its files: the decoding an
// ifup without the agent makes before anything else.
func BenchmarkReadIndex5000(b *testing.B) {
	dir := configtest.Dir(b, configtest.Large(5000))
	index := filepath.Join(b.TempDir(), "config.index")
	if _, err := LoadIndexed(dir, index); err != nil {
		b.Fatal(err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		b.Fatal(err)
	}
	program, err := programID()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if m, _ := readIndex(index, abs, program); m == nil || len(m.VMs) != 5000 {
			b.Fatal("the index was not read")
		}
	}
}
