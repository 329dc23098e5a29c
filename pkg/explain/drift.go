package explain

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
)

// drift lists the chains and sets on the packet's way (in the kernel or
// in the compiled rules) whose kernel contents differ from the compiled.
func (t *tracer) drift(compiled, kernel *result) []string {
	out := []string{}
	k := t.in.Kernel
	table := t.family.String()
	tbl := t.actual.Tables[t.family]
	seen := map[string]bool{}
	note := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, h := range tbl.Hooks {
		if k.Tables[t.family].Hooks[h] == 0 {
			note(fmt.Sprintf("%s/%s jump to %s missing", table, h.From, h.To))
		}
	}
	if k.Bridge != nil && t.actual.Bridge != nil {
		for _, h := range t.actual.Bridge.Hooks {
			if k.Bridge.Hooks[h] == 0 {
				note(fmt.Sprintf("bridge/%s jump to %s missing", h.From, h.To))
			}
		}
	}
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
	obs := k.Tables[t.family]
	for _, c := range chains {
		want := tbl.Chain(c)
		got, ok := obs.Chains[c]
		switch {
		case want == nil && ok:
			note(fmt.Sprintf("%s/%s is installed but the configuration has no such chain", table, c))
		case want != nil && !ok:
			note(fmt.Sprintf("%s/%s is missing", table, c))
		case want != nil && !slices.Equal(got, want.Hashes()):
			note(fmt.Sprintf("%s/%s differs", table, c))
		}
	}
	if k.Bridge != nil && t.actual.Bridge != nil {
		br := t.actual.Bridge
		for _, c := range append(slices.Clone(compiled.entered["bridge"]), kernel.entered["bridge"]...) {
			want := br.Chain(c)
			got, ok := k.Bridge.Chains[c]
			switch {
			case want == nil && ok:
				note(fmt.Sprintf("bridge/%s is installed but the configuration has no such chain", c))
			case want != nil && !ok:
				note(fmt.Sprintf("bridge/%s is missing", c))
			case want != nil && !slices.Equal(got, br.Fingerprints(want)):
				note(fmt.Sprintf("bridge/%s differs", c))
			}
		}
	}
	want := compiledSets(t.actual)
	sets := map[string]bool{}
	for s := range compiled.setsUsed {
		sets[s] = true
	}
	for s := range kernel.setsUsed {
		sets[s] = true
	}
	for _, s := range slices.Sorted(maps.Keys(sets)) {
		w, g := want[s], k.Sets[s]
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
		note(d)
	}
	return out
}
