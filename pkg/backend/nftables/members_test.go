package nftables

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// setsPolicy compiles a VM whose group refers to address set partners,
// defined as setFile.
func setsPolicy(t *testing.T, setFile string) *ruleset.Policy {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{
		"sets/partners.toml": setFile,
		"groups/web.toml":    "[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_set = \"partners\"\n\n[[out]]\ndest_set = \"partners\"\naction = \"drop\"\n",
		"vms/110.toml":       "[net0]\nmac = \"02:00:00:00:01:10\"\nips = [\"192.0.2.10\"]\ngroups = [\"web\"]\n",
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := config.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ruleset.Compile(m, []*config.NIC{m.NIC("tap110i0")})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPlanSetEdit: an edit of an address set, planned as the engine plans
// it (a narrow read and backend.Hint.Members), changes the elements of the
// set's interval sets alone, by the effective prefixes that come and go:
// an entry carved by a new except becomes the prefixes of what remains.
// The summary lists those prefixes, and the plan equals the full one.
func TestPlanSetEdit(t *testing.T) {
	ctx := context.Background()
	before := setsPolicy(t, "entries = [\"198.51.100.0/24\", \"2001:db8:1::/48\"]\n")
	after := setsPolicy(t, "entries = [\"198.51.100.0/24\", \"203.0.113.7\"]\nexcept = [\"198.51.100.0/26\"]\n")
	k := &fakeKernel{}
	b, err := New(Options{Kernel: k, Hooks: &fakeHooks{st: &HookState{}}})
	if err != nil {
		t.Fatal(err)
	}
	k.obs = observedOf(layout.Build(before, b.Marks()))
	k.obs.Gen = 7
	// vmfw's rules in iptables' chains are in place, as after any apply.
	if err := b.applyHooks(ctx, planHooks(&HookState{}, true, b.Marks().Acc)); err != nil {
		t.Fatal(err)
	}
	st, err := b.Read(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.Plan(ctx, st, after, &backend.Hint{Was: after, Members: true})
	if err != nil {
		t.Fatal(err)
	}
	full, err := b.Plan(ctx, &state{obs: k.obs.Clone(), full: true}, after, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !p.(*plan).hinted || text(t, p) != text(t, full) {
		t.Errorf("the members plan (hinted %v):\n%s\ndiffers from the full one:\n%s", p.(*plan).hinted, text(t, p), text(t, full))
	}
	sum := p.Summary()
	for table, c := range sum.Tables {
		if !c.Empty() {
			t.Errorf("a set edit changes %s: %+v", table, c)
		}
	}
	wantAdded := map[string][]string{
		"bridge/as-partners-v4": {"198.51.100.64/26", "198.51.100.128/25", "203.0.113.7"},
	}
	wantRemoved := map[string][]string{
		"bridge/as-partners-v4": {"198.51.100.0/24"},
		"bridge/as-partners-v6": {"2001:db8:1::/48"},
	}
	if !equalLists(sum.Sets.Added, wantAdded) || !equalLists(sum.Sets.Removed, wantRemoved) || len(sum.Sets.Created)+len(sum.Sets.Destroyed) > 0 {
		t.Errorf("the summary's sets: %+v, want added %v and removed %v", sum.Sets, wantAdded, wantRemoved)
	}
	batch := p.(*plan).batch
	if len(batch.Tables) != 1 {
		t.Fatalf("the plan writes %d tables, want the bridge table's elements", len(batch.Tables))
	}
	tc := batch.Tables[0]
	if len(tc.Flush)+len(tc.Fill)+len(tc.NewChains)+len(tc.DeleteChains)+len(tc.NewSets)+len(tc.DeleteSets) > 0 || tc.Create {
		t.Errorf("the plan writes more than elements: %+v", tc)
	}

	// Someone committed between the reads: the plan is made in full.
	k.obs.Gen++
	if p, err := b.Plan(ctx, st, after, &backend.Hint{Was: after, Members: true}); err != nil || p.(*plan).hinted {
		t.Errorf("with the generation moved, the plan is hinted %v (%v), want a full one", p.(*plan).hinted, err)
	}
}

// TestStatusAddressSets: status counts each family's effective prefixes
// in the kernel and names what differs as the set's drift, not an
// interface's.
func TestStatusAddressSets(t *testing.T) {
	ctx := context.Background()
	p := setsPolicy(t, "entries = [\"198.51.100.0/24\", \"2001:db8:1::/48\"]\nexcept = [\"198.51.100.0/26\"]\n")
	k := &fakeKernel{}
	b, err := New(Options{Kernel: k, Hooks: &fakeHooks{st: &HookState{}}})
	if err != nil {
		t.Fatal(err)
	}
	k.obs = observedOf(layout.Build(p, b.Marks()))
	if err := b.applyHooks(ctx, planHooks(&HookState{}, true, b.Marks().Acc)); err != nil {
		t.Fatal(err)
	}
	st, err := b.Read(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Status(ctx, st, p)
	if err != nil {
		t.Fatal(err)
	}
	ss := s.Sets["partners"]
	if ss == nil || ss.Members["ipv4"] != 2 || ss.Members["ipv6"] != 1 || len(ss.Drifted) > 0 || len(s.BaseDrifted) > 0 {
		t.Fatalf("status of set partners: %+v (base drift %v), want 2 IPv4 and 1 IPv6 prefixes in sync", ss, s.BaseDrifted)
	}
	v4 := k.obs.Tables[layout.Bridge].Sets["as-partners-v4"]
	for key := range v4.Elements {
		delete(v4.Elements, key)
		break
	}
	if st, err = b.Read(ctx, false); err != nil {
		t.Fatal(err)
	}
	s, err = b.Status(ctx, st, p)
	if err != nil {
		t.Fatal(err)
	}
	if ss := s.Sets["partners"]; ss == nil || ss.Members["ipv4"] != 1 || len(ss.Drifted) != 1 || len(s.Interfaces["tap110i0"].Drifted) > 0 {
		t.Errorf("with a prefix deleted: set %+v, tap drift %v", ss, s.Interfaces["tap110i0"].Drifted)
	}
}

func equalLists(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w := slices.Clone(b[k])
		v = slices.Clone(v)
		slices.Sort(v)
		slices.Sort(w)
		if !slices.Equal(v, w) {
			return false
		}
	}
	return true
}
