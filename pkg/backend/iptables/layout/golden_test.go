package layout

import (
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/internal/backendtest"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// featureDir holds one small configuration per rule feature.
const featureDir = "../../../ruleset/testdata/features"

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
	rs := buildFor(t, m, nics)
	backendtest.Golden(t, "reference.rules", render(rs), "generated rules")
}

// TestGoldenFeatures compiles one small config per rule feature, each in
// featureDir/NAME/ (a config dir, shared with the other backends and
// the policy evaluator) against testdata/NAME.rules.
func TestGoldenFeatures(t *testing.T) {
	backendtest.Features(t, featureDir, func(t *testing.T, name, dir string) {
		m, nics := scenario.Load(t, dir)
		rs := buildFor(t, m, nics)
		backendtest.Golden(t, name+".rules", render(rs), "generated rules")
	})
}
