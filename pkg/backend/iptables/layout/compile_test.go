package layout

import (
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// The tests describe their scenarios as configurations and attached
// interfaces, as an operator would; these compile them to the policy the
// layout takes.

func buildFor(m *config.Model, nics []*config.NIC) (*Ruleset, error) {
	p, err := ruleset.Compile(m, nics)
	if err != nil {
		return nil, err
	}
	return Build(p), nil
}

func buildScopedFor(m *config.Model, nics []*config.NIC, focus map[string]bool) (*Ruleset, error) {
	p, err := ruleset.Compile(m, nics)
	if err != nil {
		return nil, err
	}
	return buildScoped(p, focus), nil
}

func buildScopeFor(m *config.Model, before, after []*config.NIC, focus []string) (*Scope, error) {
	was, err := ruleset.Compile(m, before)
	if err != nil {
		return nil, err
	}
	now, err := ruleset.Compile(m, after)
	if err != nil {
		return nil, err
	}
	return BuildScope(was, now, focus), nil
}

func groupScopeFor(was, now *config.Model, nics []*config.NIC, groups []string) (*Scope, error) {
	pw, err := ruleset.Compile(was, nics)
	if err != nil {
		return nil, err
	}
	pn, err := ruleset.Compile(now, nics)
	if err != nil {
		return nil, err
	}
	return GroupScope(pw, pn, groups), nil
}
