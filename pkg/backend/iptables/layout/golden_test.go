package layout

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// featureDir holds one small configuration per rule feature.
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
		t.Errorf("%s differs from generated rules (run go test -update after checking the change):\n%s", path, lineDiff(string(want), got))
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

// render prints a whole ruleset: both tables and the sets.
func render(rs *Ruleset) string {
	var b strings.Builder
	for _, f := range ruleset.Families {
		b.WriteString("# " + f.String() + "\n" + rs.Tables[f].Render())
	}
	b.WriteString("# ebtables\n" + rs.Bridge.Render())
	b.WriteString("# ipsets\n")
	for _, s := range rs.Sets {
		b.WriteString(s.Name + " " + string(s.Type) + " " + strings.Join(s.Members, " ") + "\n")
	}
	return b.String()
}

// TestGoldenReference compiles the reference scenario with every tap attached.
func TestGoldenReference(t *testing.T) {
	m, nics := scenario.Load(t, "../../../../conf/examples/reference")
	rs, err := buildFor(m, nics)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "reference.rules", render(rs))
}

// TestGoldenFeatures compiles one small config per rule feature, each in
// featureDir/NAME/ (a config dir, shared with the other backends and
// the policy evaluator) against testdata/NAME.rules.
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
			m, nics := scenario.Load(t, dir)
			rs, err := buildFor(m, nics)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name+".rules", render(rs))
		})
	}
}
