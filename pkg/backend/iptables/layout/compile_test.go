package layout

import (
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// The tests describe their scenarios as configurations and attached
// interfaces, as an operator would; these compile them to the policy the
// layout takes. A configuration that does not compile fails the test.

func compile(t testing.TB, m *config.Model, nics []*config.NIC) *ruleset.Policy {
	t.Helper()
	p, err := ruleset.Compile(m, nics)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func buildFor(t testing.TB, m *config.Model, nics []*config.NIC) *Ruleset {
	t.Helper()
	return Build(compile(t, m, nics))
}

func buildScopedFor(t testing.TB, m *config.Model, nics []*config.NIC, focus map[string]bool) *Ruleset {
	t.Helper()
	return buildScoped(compile(t, m, nics), focus)
}

func buildScopeFor(t testing.TB, m *config.Model, before, after []*config.NIC, focus []string) *Scope {
	t.Helper()
	return BuildScope(compile(t, m, before), compile(t, m, after), focus)
}

func groupScopeFor(t testing.TB, was, now *config.Model, nics []*config.NIC, groups []string) *Scope {
	t.Helper()
	return GroupScope(compile(t, was, nics), compile(t, now, nics), groups)
}
