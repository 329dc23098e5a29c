package layout

import (
	"fmt"
	"slices"
	"sort"
	"testing"
)

// BenchmarkBuildScope compiles the scope of attaching batches of
// interfaces to 1000 installed ones, against compiling everything: a
// batch of hundreds of ifups (the agent's boot storm) must not cost more
// than the full compile.
func BenchmarkBuildScope(b *testing.B) {
	m, nics := scopeModel(b, 1500)
	sort.Slice(nics, func(i, j int) bool { return nics[i].Tap < nics[j].Tap })
	before := nics[:1000]
	for _, k := range []int{1, 10, 100, 500} {
		after := slices.Clone(before)
		var focus []string
		for _, n := range nics[1000 : 1000+k] {
			after = append(after, n)
			focus = append(focus, n.Tap)
		}
		b.Run(fmt.Sprintf("scope/focus=%d", k), func(b *testing.B) {
			for b.Loop() {
				buildScopeFor(b, m, before, after, focus)
			}
		})
		b.Run(fmt.Sprintf("full/taps=%d", len(after)), func(b *testing.B) {
			for b.Loop() {
				buildFor(b, m, after)
			}
		})
	}
}
