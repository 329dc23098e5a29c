package nftables

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

// bigSet renders a set of n IPv6 entries (single addresses and /64s in
// turn, a /65 carved out of every hundredth /64), with one more address
// when extra.
func bigSet(n int, extra bool) string {
	var b, x strings.Builder
	b.WriteString("entries = [\n")
	for i := range n {
		if i%2 == 0 {
			fmt.Fprintf(&b, "  \"2001:db8:a000:%x::%x\",\n", i>>16, i&0xffff)
			continue
		}
		fmt.Fprintf(&b, "  \"2001:db8:b%03x:%x::/64\",\n", (i>>16)&0xfff, i&0xffff)
		if i%200 == 1 {
			fmt.Fprintf(&x, "  \"2001:db8:b%03x:%x:8000::/65\",\n", (i>>16)&0xfff, i&0xffff)
		}
	}
	if extra {
		b.WriteString("  \"2001:db8:c000::1\",\n")
	}
	return b.String() + "]\nexcept = [\n" + x.String() + "]\n"
}

// BenchmarkPlanSetEdit100000 plans a one-entry edit of a 100,000-entry
// address set as the agent does: from the state it remembers, with the
// members-only hint (docs/performance.md, "Address sets").
func BenchmarkPlanSetEdit100000(b *testing.B) {
	t := &testing.T{}
	before, after := setsPolicy(t, bigSet(100000, false)), setsPolicy(t, bigSet(100000, true))
	k := &fakeKernel{}
	be, err := New(Options{Kernel: k, Hooks: &fakeHooks{st: &HookState{}}})
	if err != nil {
		b.Fatal(err)
	}
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
