package layout

import (
	"slices"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Policy log levels (a VM's log_in and log_out, docs/nftables.md
// "Logging"). The policy chains are shared by every interface, so an
// interface's level is which set it is in: log-in and log-out log at
// warning, as they always did; log-in-LEVEL and log-out-LEVEL at
// LEVEL. A set and its log rule exist for a level while an attached
// interface logs at it, so a configuration of warnings alone is laid out
// as before. NFLOG has no level: with log_group every logged interface
// is in log-in or log-out.

// LogSet names the set of interfaces whose policy of direction d logs at
// level.
func LogSet(d config.Direction, level config.LogLevel) string {
	base := SetLogOut
	if d == config.In {
		base = SetLogIn
	}
	if level == config.DefaultLogLevel || level == config.LogOff {
		return base
	}
	return base + "-" + string(level)
}

// policyLevel returns the level n's policy of direction d logs at as the
// layout of p keeps it ("" when it logs nothing): the default one under
// NFLOG.
func policyLevel(p *ruleset.Policy, n *ruleset.Interface, d config.Direction) config.LogLevel {
	level, a := n.LogOut, n.PolicyOut
	if d == config.In {
		level, a = n.LogIn, n.PolicyIn
	}
	if level == config.LogOff || a == config.Accept || !n.Enabled {
		return config.LogOff
	}
	if p.Host.LogGroup > 0 {
		return config.DefaultLogLevel
	}
	return level
}

// extraLevels lists the levels other than the default some interface of
// p's policy of direction d logs at, most severe first.
func extraLevels(p *ruleset.Policy, d config.Direction) []config.LogLevel {
	var out []config.LogLevel
	for _, n := range p.Interfaces {
		if l := policyLevel(p, n, d); l != config.LogOff && l != config.DefaultLogLevel && !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	slices.SortFunc(out, func(a, b config.LogLevel) int { return int(LogLevels[string(a)]) - int(LogLevels[string(b)]) })
	return out
}

// extraLevels is extraLevels of the policy laid out, or the levels a
// static layout was given (Static).
func (b *builder) extraLevels(d config.Direction) []config.LogLevel {
	if b.levels != nil {
		return b.levels[d]
	}
	return extraLevels(b.p, d)
}

// levelLogRules are the log rules of a policy chain of direction d and
// verdict a for the levels other than the default, one per level in use.
func (b *builder) levelLogRules(f Field, d config.Direction, a config.Action) []Rule {
	var out []Rule
	o := ruleset.Origin{Dir: d}
	for _, level := range b.extraLevels(d) {
		l := b.log(o, a)
		l.Level = string(level)
		out = append(out, Rule{Exprs: []Expr{in(f, LogSet(d, level)), b.limit(), l}, Origin: o})
	}
	return out
}
