package layout

import (
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/internal/backendtest"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// featureDir holds one small configuration per rule feature, shared with
// the iptables backend's golden tests and the policy evaluator.
const featureDir = "../../../ruleset/testdata/features"

// compileDir compiles the configuration in dir with every tap attached,
// and returns it with the default mark bits.
func compileDir(tb testing.TB, dir string) (*ruleset.Policy, Marks) {
	tb.Helper()
	p, err := ruleset.Compile(scenario.Load(tb, dir))
	if err != nil {
		tb.Fatal(err)
	}
	marks, err := NewMarks(DefaultMask)
	if err != nil {
		tb.Fatal(err)
	}
	return p, marks
}

// buildDir lays out the configuration in dir with every tap attached.
func buildDir(t *testing.T, dir string) *Ruleset {
	t.Helper()
	return Build(compileDir(t, dir))
}

func render(rs *Ruleset) string { return rs.Bridge.Render() + rs.Inet.Render() }

// TestGoldenReference lays out the reference scenario.
func TestGoldenReference(t *testing.T) {
	backendtest.Golden(t, "reference.nft", render(buildDir(t, "../../../../conf/examples/reference")), "the generated tables")
}

// TestGoldenFeatures lays out one small configuration per rule feature.
func TestGoldenFeatures(t *testing.T) {
	backendtest.Features(t, featureDir, func(t *testing.T, name, dir string) {
		backendtest.Golden(t, name+".nft", render(buildDir(t, dir)), "the generated tables")
	})
}
