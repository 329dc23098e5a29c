package nftables

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// setsPolicy compiles a VM whose group refers to address set partners,
// defined as setFile.
func setsPolicy(t testing.TB, setFile string) *ruleset.Policy {
	t.Helper()
	m, err := config.Load(configtest.Dir(t, map[string]string{
		"sets/partners.toml": setFile,
		"groups/web.toml":    "[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_set = \"partners\"\n\n[[out]]\ndest_set = \"partners\"\naction = \"drop\"\n",
		"vms/110.toml":       "[net0]\nmac = \"02:00:00:00:01:10\"\nips = [\"192.0.2.10\"]\ngroups = [\"web\"]\n",
	}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ruleset.Compile(m, []*config.NIC{m.NIC("tap110i0")})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// partnersEdit returns the policies before and after an edit of address
// set partners (an IPv6 entry replaced by an IPv4 one, an except carved
// from an entry) and a backend on a kernel that holds the first at
// generation 7.
func partnersEdit(t *testing.T) (before, after *ruleset.Policy, b *Backend, k *fakeKernel) {
	t.Helper()
	before = setsPolicy(t, "entries = [\"198.51.100.0/24\", \"2001:db8:1::/48\"]\n")
	after = setsPolicy(t, "entries = [\"198.51.100.0/24\", \"203.0.113.7\"]\nexcept = [\"198.51.100.0/26\"]\n")
	b, k = installedBackend(t, before)
	k.obs.Gen = 7
	return before, after, b, k
}

// TestPlanSetEdit: an edit of an address set, planned as the engine plans
// it (a narrow read and backend.Hint.Members), changes the elements of the
// set's interval sets alone, by the effective prefixes that come and go:
// an entry carved by a new except becomes the prefixes of what remains.
// The summary lists those prefixes, and the plan equals the full one.
func TestPlanSetEdit(t *testing.T) {
	ctx := context.Background()
	_, after, b, k := partnersEdit(t)
	st, err := b.Read(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	p := mustPlan(t, b, st, after, &backend.Hint{Was: after, Members: true})
	full := mustPlan(t, b, &state{obs: k.obs.Clone(), full: true}, after, nil)
	if !p.hinted || text(t, p) != text(t, full) {
		t.Errorf("the members plan (hinted %v):\n%s\ndiffers from the full one:\n%s", p.hinted, text(t, p), text(t, full))
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
	batch := p.batch
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
	p := setsPolicy(t, "entries = [\"198.51.100.0/24\", \"2001:db8:1::/48\"]\nexcept = [\"198.51.100.0/26\"]\n")
	b, k := installedBackend(t, p)
	s := statusOf(t, b, p)
	ss := s.Sets["partners"]
	if ss == nil || ss.Members["ipv4"] != 2 || ss.Members["ipv6"] != 1 || len(ss.Drifted) > 0 || len(s.BaseDrifted) > 0 {
		t.Fatalf("status of set partners: %+v (base drift %v), want 2 IPv4 and 1 IPv6 prefixes in sync", ss, s.BaseDrifted)
	}
	v4 := k.obs.Tables[layout.Bridge].Sets["as-partners-v4"]
	for key := range v4.Elements {
		delete(v4.Elements, key)
		break
	}
	s = statusOf(t, b, p)
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

// TestPlanSetEditFromConfiguration: an edit of an address set that the
// agent names with its configuration before and after (Hint.Sets), on
// tables remembered at the generation of the backend's last write, is
// planned from the two configurations: the same elements as the full
// plan, and no chain. The memory is changed as the tables were, so the
// next edit is planned so too; once someone else commits, the plan is
// made from the tables again.
func TestPlanSetEditFromConfiguration(t *testing.T) {
	ctx := context.Background()
	before, after, b, k := partnersEdit(t)
	// A full plan finds the tables as wanted: the sets are held as
	// before at generation 7, which Mark remembers.
	if p := readPlan(t, b, false, before, nil); !p.Empty() {
		t.Fatalf("the first plan: %v", p)
	}
	if err := b.Mark(ctx); err != nil {
		t.Fatal(err)
	}
	edit := func(was, now *ruleset.Policy) *plan {
		t.Helper()
		return readPlan(t, b, true, now, &backend.Hint{Was: now, Members: true, Sets: []backend.SetEdit{{Name: "partners", Was: was.Sets["partners"].Config, Now: now.Sets["partners"].Config}}})
	}
	for i, step := range []struct{ was, now *ruleset.Policy }{{before, after}, {after, before}} {
		p := edit(step.was, step.now)
		full := mustPlan(t, b, &state{obs: k.obs.Clone(), full: true}, step.now, nil)
		if p.edit == nil || text(t, p) != text(t, full) {
			t.Fatalf("edit %d, planned from the configuration %v:\n%s\ndiffers from the full plan:\n%s", i, p.edit != nil, text(t, p), text(t, full))
		}
		for table, c := range p.Summary().Tables {
			if !c.Empty() {
				t.Errorf("edit %d changes %s: %+v", i, table, c)
			}
		}
		if !equalLists(p.Summary().Sets.Added, full.Summary().Sets.Added) || !equalLists(p.Summary().Sets.Removed, full.Summary().Sets.Removed) {
			t.Errorf("edit %d: summary %+v, the full plan's %+v", i, p.Summary().Sets, full.Summary().Sets)
		}
		if err := b.Apply(ctx, p); err != nil {
			t.Fatal(err)
		}
		// The kernel commits on top of the plan's generation.
		k.obs = observedOf(layout.Build(step.now, b.Marks()))
		k.obs.Gen = p.batch.Gen + 1
		if err := b.Mark(ctx); err != nil {
			t.Fatal(err)
		}
		mem := b.remembered()
		if mem == nil || mem.obs.Gen != k.obs.Gen {
			t.Fatalf("edit %d: nothing remembered at generation %d", i, k.obs.Gen)
		}
		for _, name := range []string{"as-partners-v4", "as-partners-v6"} {
			got, want := mem.obs.Tables[layout.Bridge].Sets[name].Elements, k.obs.Tables[layout.Bridge].Sets[name].Elements
			if len(got) != len(want) {
				t.Errorf("edit %d: the memory of %s holds %d elements, the tables %d", i, name, len(got), len(want))
			}
			for key := range want {
				if _, ok := got[key]; !ok {
					t.Errorf("edit %d: the memory of %s lacks an element", i, name)
				}
			}
		}
	}

	// Someone else committed: the edit is planned from the tables.
	k.obs.Gen++
	if p := edit(before, after); p.edit != nil {
		t.Error("with the generation moved, the edit was planned from the configuration")
	}
	// A write that fails forgets what the sets held.
	if err := b.Mark(ctx); err != nil {
		t.Fatal(err)
	}
	b.setHeld(k.obs.Gen, heldOf(before, layout.Build(before, b.Marks())))
	k.failWrite = errors.New("refused")
	p := edit(before, after)
	if p.edit == nil {
		t.Fatal("not planned from the configuration")
	}
	var stale *backend.StaleError
	if err := b.Apply(ctx, p); !errors.As(err, &stale) {
		t.Errorf("a failed edit returned %v, want a StaleError", err)
	}
	if p := edit(before, after); p.edit != nil {
		t.Error("after a failed write, the edit was planned from the configuration")
	}
}
