package explain

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
)

// drift lists the chains and sets on the packet's way (in the kernel or
// in the compiled rules) whose kernel contents differ from the compiled,
// and the hooks missing, each once.
func (t *tracer) drift(compiled, kernel *result) []string {
	all := t.hookDrift()
	all = append(all, t.chainDrift(compiled, kernel)...)
	all = append(all, t.bridgeDrift(compiled, kernel)...)
	all = append(all, t.setDrift(compiled, kernel)...)
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
func (t *tracer) hookDrift() []string {
	var out []string
	k := t.in.Kernel
	for _, h := range t.actual.Tables[t.family].Hooks {
		if k.Tables[t.family].Hooks[h] == 0 {
			out = append(out, fmt.Sprintf("%s/%s jump to %s missing", t.family, h.From, h.To))
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
func (t *tracer) chainDrift(compiled, kernel *result) []string {
	var out []string
	table := t.family.String()
	tbl := t.actual.Tables[t.family]
	chains := append(slices.Clone(compiled.entered[table]), kernel.entered[table]...)
	if kernel.err != nil && kernel.decider == nil {
		// The walk stopped at a chain it could not read: compare that
		// one too (errors name it).
		for _, c := range tbl.Chains {
			if strings.Contains(kernel.err.Error(), " "+string(c.Name)+" ") {
				chains = append(chains, c.Name)
			}
		}
	}
	obs := t.in.Kernel.Tables[t.family]
	for _, c := range chains {
		want := tbl.Chain(c)
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
func (t *tracer) bridgeDrift(compiled, kernel *result) []string {
	k := t.in.Kernel
	if k.Bridge == nil || t.actual.Bridge == nil {
		return nil
	}
	var out []string
	br := t.actual.Bridge
	for _, c := range append(slices.Clone(compiled.entered["bridge"]), kernel.entered["bridge"]...) {
		want := br.Chain(c)
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
func (t *tracer) setDrift(compiled, kernel *result) []string {
	var out []string
	want := compiledSets(t.actual)
	sets := map[string]bool{}
	for s := range compiled.setsUsed {
		sets[s] = true
	}
	for s := range kernel.setsUsed {
		sets[s] = true
	}
	for _, s := range slices.Sorted(maps.Keys(sets)) {
		w, g := want[s], t.in.Kernel.Sets[s]
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
