package engine

import (
	"context"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// TestChangesDeriveTheirPolicies: an engine that keeps its configuration
// (the agent's) derives each change's policies from the last change's
// instead of compiling them; the backend gets the same Was and want a
// compilation gives, and after every change the host is what a full apply
// writes. When the installed interfaces are not the last change's (another
// process attached one), the engine compiles them again.
func TestChangesDeriveTheirPolicies(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{
		"groups/app.toml": "[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"app\"\n",
		"groups/db.toml":  "[[in]]\nproto = \"tcp\"\ndport = \"5432\"\nsource_group = \"app\"\n",
		"vms/101.toml":    "[net0]\nips = [\"192.0.2.1\"]\ngroups = [\"app\"]\n",
		"vms/102.toml":    "[net0]\nips = [\"192.0.2.2\"]\ngroups = [\"app\", \"db\"]\n",
		"vms/103.toml":    "[net0]\nips = [\"2001:db8::3\"]\ngroups = [\"db\"]\n",
	})
	m, err := config.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	be := &backend.Fake{}
	links := map[string]bool{} // the taps that exist: those attached
	k := Kernel{Backend: be, Host: fakeHost{links: links}, Lock: func(context.Context) (func(), error) { return func() {}, nil }, Flows: &fakeFlows{}}
	e := New(k, dir)
	e.Model = func() (*config.Model, error) { return m, nil }
	ctx := context.Background()
	check := func(what string, installed ...string) {
		t.Helper()
		h := be.Hints[len(be.Hints)-1]
		if h == nil || h.Was == nil {
			t.Fatalf("%s: planned without a hint", what)
		}
		var nics []*config.NIC
		for _, tap := range installed {
			nics = append(nics, m.NIC(tap))
		}
		want, err := ruleset.Compile(m, nics)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(e.last.policy.Names(), want.Names()) || !reflect.DeepEqual(e.last.policy.Members, want.Members) || !reflect.DeepEqual(e.last.policy.Groups, want.Groups) {
			t.Errorf("%s: the installed policy %v is not the compiled %v", what, e.last.policy.Names(), want.Names())
		}
		for tap := range links {
			delete(links, tap)
		}
		for _, tap := range installed {
			links[tap] = true
		}
		ch, err := New(k, dir).Sync(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ch.Empty() {
			var b strings.Builder
			ch.WriteTo(&b)
			t.Errorf("%s: a full apply would change:\n%s", what, b.String())
		}
	}
	if err := e.Attach(ctx, "tap101i0"); err != nil {
		t.Fatal(err)
	}
	check("ifup tap101i0", "tap101i0")
	if err := e.Attach(ctx, "tap102i0"); err != nil {
		t.Fatal(err)
	}
	if e.last == nil || be.Hints[len(be.Hints)-1].Was != nil && len(be.Hints[len(be.Hints)-1].Was.Interfaces) != 1 {
		t.Fatal("the second ifup did not start from the first one's policy")
	}
	first := be.Hints[len(be.Hints)-1].Was
	check("ifup tap102i0", "tap101i0", "tap102i0")
	// Another process (no agent) attaches tap103i0: the installed
	// interfaces are not the last change's.
	if err := New(k, dir).Attach(ctx, "tap103i0"); err != nil {
		t.Fatal(err)
	}
	if err := e.Detach(ctx, "tap101i0"); err != nil {
		t.Fatal(err)
	}
	if was := be.Hints[len(be.Hints)-1].Was; was == first || len(was.Interfaces) != 3 {
		t.Errorf("after another process's ifup the hint's Was holds %v, want the three installed interfaces compiled", was.Names())
	}
	check("ifdown tap101i0", "tap102i0", "tap103i0")
}

// TestLastPolicyFollowsRecords: an interface's settings come from its
// attachment record too, which another process may write again (the
// interface detached and attached elsewhere) while the names installed
// stay the same; the engine that keeps the last change's policy then
// compiles the installed policy again instead of deriving from settings
// the kernel no longer holds.
func TestLastPolicyFollowsRecords(t *testing.T) {
	e, be, st := attEngine(t)
	ctx := context.Background()
	if err := e.AttachRecords(ctx, attRecord("veth1", "198.51.100.2", "web")); err != nil {
		t.Fatal(err)
	}
	if e.last == nil {
		t.Fatal("the engine kept no policy after attaching")
	}
	// Another process attaches veth1 again, with another address.
	other := New(e.kernel, e.ConfigDir)
	other.State = st
	if err := other.AttachRecords(ctx, attRecord("veth1", "198.51.100.9", "web")); err != nil {
		t.Fatal(err)
	}
	if err := e.Attach(ctx, "tap110i0"); err != nil {
		t.Fatal(err)
	}
	h := be.Hints[len(be.Hints)-1]
	if h == nil || h.Was == nil {
		t.Fatal("the ifup was planned without a hint")
	}
	n := h.Was.Interface("veth1")
	if n == nil || len(n.IPs) != 1 || n.IPs[0].String() != "198.51.100.9" {
		t.Errorf("the ifup's Was has veth1 as %+v, want its record's address now, 198.51.100.9", n)
	}
}

// TestSyncGroupsKeepsRemoteMembers: in cluster mode the agent's
// configuration before a group edit is its own files' (no other host's
// members), the engine's the files' with the other hosts' members. The
// edit's policy, derived from the one before, keeps the other hosts'
// members of the groups it does not recompute.
func TestSyncGroupsKeepsRemoteMembers(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{
		"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"80\"\nsource_group = \"web\"\n",
		"vms/110.toml":    "[net0]\nips = [\"192.0.2.110\"]\ngroups = [\"web\"]\n",
	})
	load := func() *config.Model {
		m, err := config.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	remote := map[string][]netip.Addr{"web": {netip.MustParseAddr("198.51.100.50")}}
	withRemote := func(m *config.Model) *config.Model {
		c := *m
		c.RemoteMembers = remote
		return &c
	}
	own := load()
	cur := own
	be := &backend.Fake{}
	e := New(Kernel{Backend: be, Host: &attHost{links: map[string]bool{}},
		Lock: func(context.Context) (func(), error) { return func() {}, nil }}, dir)
	e.Model = func() (*config.Model, error) { return withRemote(cur), nil }
	ctx := context.Background()
	if err := e.Attach(ctx, "tap110i0"); err != nil {
		t.Fatal(err)
	}
	configtest.Write(t, dir, map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"81\"\nsource_group = \"web\"\n"})
	cur = load()
	if _, err := e.SyncGroups(ctx, own, []string{"web"}); err != nil {
		t.Fatal(err)
	}
	mem := e.last.policy.Members["web"]
	if mem == nil || !slices.Contains(mem.Addrs[ruleset.IPv4], netip.MustParseAddr("198.51.100.50")) {
		t.Errorf("after the group edit web's members are %+v, want the other host's 198.51.100.50 among them", mem)
	}
}
