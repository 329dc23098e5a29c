package nftables

import (
	"context"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// bigSet renders a set of n IPv6 entries (single addresses and /64s in
// turn, a /65 carved out of every hundredth /64), with one more address
// when extra.
func bigSet(n int, extra bool) string {
	entries, except := configtest.Blocklist(n)
	if extra {
		entries = append(entries, "2001:db8:c000::1")
	}
	return configtest.SetFile("", entries, except)
}

// bigSetEdit returns the policies before and after a one-entry edit of a
// 100,000-entry address set, and a backend on a kernel that holds
// nothing yet.
func bigSetEdit(b *testing.B) (before, after *ruleset.Policy, be *Backend, k *fakeKernel) {
	before, after = setsPolicy(b, bigSet(100000, false)), setsPolicy(b, bigSet(100000, true))
	k = &fakeKernel{}
	be, err := New(Options{Kernel: k, Hooks: &fakeHooks{st: &HookState{}}})
	if err != nil {
		b.Fatal(err)
	}
	return before, after, be, k
}

// BenchmarkPlanSetEdit100000 plans a one-entry edit of a 100,000-entry
// address set as the agent does: from the state it remembers, with the
// members-only hint (docs/performance.md, "Address sets").
func BenchmarkPlanSetEdit100000(b *testing.B) {
	before, after, be, k := bigSetEdit(b)
	k.obs = observedOf(layout.Build(before, be.Marks()))
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		st := &state{obs: k.obs.Clone(), full: true, remembered: true}
		p, err := be.Plan(ctx, st, after, &backend.Hint{Was: after, Members: true})
		if err != nil {
			b.Fatal(err)
		}
		if n := p.Summary().Sets.MembersAdded(); n != 1 {
			b.Fatalf("%d members added, want 1", n)
		}
	}
}

// BenchmarkPlanSetEditFromConfiguration100000 plans the same edit as the
// agent now does: with the sets' configuration before and after
// (Hint.Sets), from the memory of the generation the backend last wrote.
func BenchmarkPlanSetEditFromConfiguration100000(b *testing.B) {
	before, after, be, k := bigSetEdit(b)
	rs := layout.Build(before, be.Marks())
	k.obs = observedOf(rs)
	k.obs.Gen = 1
	be.setHeld(1, heldOf(before, rs))
	hint := &backend.Hint{Was: after, Members: true, Sets: []backend.SetEdit{{Name: "partners", Was: before.Sets["partners"].Config, Now: after.Sets["partners"].Config}}}
	st := &state{obs: k.obs, full: true, remembered: true}
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		p, err := be.Plan(ctx, st, after, hint)
		if err != nil {
			b.Fatal(err)
		}
		if p.(*plan).edit == nil || p.Summary().Sets.MembersAdded() != 1 {
			b.Fatal("not one member added from the configuration")
		}
	}
}
