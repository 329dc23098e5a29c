package interp

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/vmfw/vmfw/pkg/ruleset"
)

// drift lists the chains and sets on the packet's way (in the kernel or
// in the rules laid out for the installed interfaces, actual) whose
// kernel contents differ from actual's, and the hooks missing, each once.
func (t *flow) drift(m *machines, f ruleset.Family, actual, kernel *result) []string {
	all := t.hookDrift(f)
	all = append(all, t.chainDrift(m, f, actual, kernel)...)
	all = append(all, t.bridgeDrift(m, actual, kernel)...)
	all = append(all, t.setDrift(m, actual, kernel)...)
	out := []string{}
	seen := map[string]bool{}
	for _, s := range all {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// hookDrift lists the jumps into vmfw's chains the kernel lacks.
func (t *flow) hookDrift(f ruleset.Family) []string {
	var out []string
	k := t.k
	for _, h := range t.actual.Tables[f].Hooks {
		if k.Tables[f].Hooks[h] == 0 {
			out = append(out, fmt.Sprintf("%s/%s jump to %s missing", f, h.From, h.To))
		}
	}
	if k.Bridge != nil && t.actual.Bridge != nil {
		for _, h := range t.actual.Bridge.Hooks {
			if k.Bridge.Hooks[h] == 0 {
				out = append(out, fmt.Sprintf("bridge/%s jump to %s missing", h.From, h.To))
			}
		}
	}
	return out
}

// chainDrift lists the IP chains either walk entered that differ.
func (t *flow) chainDrift(m *machines, f ruleset.Family, actual, kernel *result) []string {
	var out []string
	table := f.String()
	chains := append(slices.Clone(actual.entered[table]), kernel.entered[table]...)
	if kernel.lost != "" {
		// The kernel's walk stopped at a chain that is not there: the
		// configuration may want it.
		chains = append(chains, kernel.lost)
	}
	obs := t.k.Tables[f]
	for _, c := range chains {
		want := m.want[c]
		got, ok := obs.Chains[c]
		switch {
		case want == nil && ok:
			out = append(out, fmt.Sprintf("%s/%s is installed but the configuration has no such chain", table, c))
		case want != nil && !ok:
			out = append(out, fmt.Sprintf("%s/%s is missing", table, c))
		case want != nil && !slices.Equal(got, want.Hashes()):
			out = append(out, fmt.Sprintf("%s/%s differs", table, c))
		}
	}
	return out
}

// bridgeDrift lists the ebtables chains either walk entered that differ.
func (t *flow) bridgeDrift(m *machines, actual, kernel *result) []string {
	k := t.k
	if k.Bridge == nil || t.actual.Bridge == nil {
		return nil
	}
	var out []string
	br := t.actual.Bridge
	for _, c := range append(slices.Clone(actual.entered["bridge"]), kernel.entered["bridge"]...) {
		want := m.wantL2[c]
		got, ok := k.Bridge.Chains[c]
		switch {
		case want == nil && ok:
			out = append(out, fmt.Sprintf("bridge/%s is installed but the configuration has no such chain", c))
		case want != nil && !ok:
			out = append(out, fmt.Sprintf("bridge/%s is missing", c))
		case want != nil && !slices.Equal(got, br.Fingerprints(want)):
			out = append(out, fmt.Sprintf("bridge/%s differs", c))
		}
	}
	return out
}

// setDrift lists the ipsets either walk looked up whose members differ.
func (t *flow) setDrift(m *machines, actual, kernel *result) []string {
	var out []string
	want := m.wantSets
	sets := map[string]bool{}
	for s := range actual.setsUsed {
		sets[s] = true
	}
	for s := range kernel.setsUsed {
		sets[s] = true
	}
	for _, s := range slices.Sorted(maps.Keys(sets)) {
		w, g := want[s], t.k.Sets[s]
		var missing, extra []string
		for a := range w {
			if !g[a] {
				missing = append(missing, a.String())
			}
		}
		for a := range g {
			if !w[a] {
				extra = append(extra, a.String())
			}
		}
		// An address set: its prefixes, each with its nomatch flag.
		wn, gn := m.wantNets[s], t.k.Nets[s]
		for p, nomatch := range wn {
			if got, ok := gn[p]; !ok || got != nomatch {
				missing = append(missing, wn.member(p))
			}
		}
		for p, nomatch := range gn {
			if want, ok := wn[p]; !ok || want != nomatch {
				extra = append(extra, gn.member(p))
			}
		}
		if len(missing)+len(extra) == 0 {
			continue
		}
		sort.Strings(missing)
		sort.Strings(extra)
		d := "set " + s + " differs"
		if len(missing) > 0 {
			d += ": missing " + strings.Join(missing, " ")
		}
		if len(extra) > 0 {
			d += ": extra " + strings.Join(extra, " ")
		}
		out = append(out, d)
	}
	return out
}
