package layout

import (
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// featureDir holds one small configuration per rule feature, shared with
// the iptables backend's golden tests and the policy evaluator.
const featureDir = "../../../ruleset/testdata/features"

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the generated tables (run go test -update after checking the change):\n%s", path, lineDiff(string(want), got))
	}
}

func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want " + wl + "\n  got  " + gl + "\n")
		}
	}
	return b.String()
}

func allNICs(m *config.Model) []*config.NIC {
	var nics []*config.NIC
	for _, vm := range m.VMs {
		nics = append(nics, vm.NICs...)
	}
	sort.Slice(nics, func(i, j int) bool { return nics[i].Tap < nics[j].Tap })
	return nics
}

// buildDir compiles the configuration in dir with every tap attached.
func buildDir(t *testing.T, dir string) *Ruleset {
	t.Helper()
	m, err := config.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ruleset.Compile(m, allNICs(m))
	if err != nil {
		t.Fatal(err)
	}
	marks, err := NewMarks(DefaultMask)
	if err != nil {
		t.Fatal(err)
	}
	return Build(p, marks)
}

func render(rs *Ruleset) string { return rs.Bridge.Render() + rs.Inet.Render() }

// TestGoldenReference lays out the reference scenario.
func TestGoldenReference(t *testing.T) {
	golden(t, "reference.nft", render(buildDir(t, "../../../../conf/examples/reference")))
}

// TestGoldenFeatures lays out one small configuration per rule feature.
func TestGoldenFeatures(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join(featureDir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatal("no feature configs in " + featureDir)
	}
	for _, dir := range dirs {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			golden(t, name+".nft", render(buildDir(t, dir)))
		})
	}
}
