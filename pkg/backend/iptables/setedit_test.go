package iptables

import (
	"context"
	"fmt"
	"maps"
	"math/rand"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// setLab is a configuration whose groups refer to address sets, loaded
// through a config.Cache as the agent loads it (an unchanged set keeps
// its pointer), and an engine on a simulated kernel that takes the last
// configuration loaded.
type setLab struct {
	t       testing.TB
	flavour string
	dir     string
	cache   config.Cache
	model   *config.Model
	k       *simKernel
	be      *Backend
	e       *engine.Engine
}

// setLabFiles are the lab's files but for sets/big.toml: two VMs in a
// group whose rules refer to the sets big and small; unused is a set no
// rule refers to.
var setLabFiles = map[string]string{
	"groups/web.toml":  "[[in]]\nproto = \"udp\"\nsource_set = \"big\"\naction = \"drop\"\n\n[[in]]\nsource_group = \"web\"\n\n[[out]]\ndest_set = \"small\"\naction = \"reject\"\n",
	"vms/101.toml":     "[net0]\nmac = \"02:00:00:00:01:01\"\nips = [\"192.0.2.1\", \"2001:db8::1\"]\ngroups = [\"web\"]\n",
	"vms/102.toml":     "[net0]\nmac = \"02:00:00:00:01:02\"\nips = [\"192.0.2.2\"]\ngroups = [\"web\"]\n",
	"sets/small.toml":  "entries = [\"203.0.113.0/24\"]\n",
	"sets/unused.toml": "entries = [\"198.51.100.0/24\"]\n",
}

var setLabTaps = []string{"tap101i0", "tap102i0"}

// newSetLab writes the lab with big as given and applies it.
func newSetLab(t testing.TB, flavour, big string) *setLab {
	t.Helper()
	l := &setLab{t: t, flavour: flavour, dir: configtest.Dir(t, setLabFiles)}
	configtest.Write(t, l.dir, map[string]string{"sets/big.toml": big})
	var err error
	if l.model, err = l.cache.Load(l.dir, nil); err != nil {
		t.Fatal(err)
	}
	l.k = newSimKernel(flavour == "nft")
	l.be, l.e = l.backendOn(l.k)
	if _, err := l.e.Sync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	l.mark()
	return l
}

// backendOn returns a backend of the lab's flavour on k, and an engine on
// it that takes the lab's configuration.
func (l *setLab) backendOn(k *simKernel) (*Backend, *engine.Engine) {
	be := New(Options{
		Tables:     simTables{k: k, narrow: l.flavour == "nft"},
		Sets:       simSets{k},
		Bridge:     simBridge{k: k, narrow: true},
		Flavour:    "sim",
		Generation: func(context.Context) (uint32, error) { return k.gen.Load(), nil },
	})
	links := map[string]bool{}
	for _, tap := range setLabTaps {
		links[tap] = true
	}
	e := engine.New(engine.Kernel{
		Backend: be,
		Host:    fakeHost{links: links},
		Lock:    func(context.Context) (func(), error) { return func() {}, nil },
	}, l.dir)
	e.Model = func() (*config.Model, error) { return l.model, nil }
	return be, e
}

// mark remembers the kernel as the agent does after each of its changes.
func (l *setLab) mark() {
	l.t.Helper()
	if err := l.be.Mark(context.Background()); err != nil {
		l.t.Fatal(err)
	}
}

// load writes big and loads it as an edit of that file alone; it returns
// the configuration before, or false (and keeps it) when the edit does
// not load.
func (l *setLab) load(big string) (*config.Model, bool) {
	l.t.Helper()
	data, err := os.ReadFile(filepath.Join(l.dir, "sets", "big.toml"))
	if err != nil {
		l.t.Fatal(err)
	}
	configtest.Write(l.t, l.dir, map[string]string{"sets/big.toml": big})
	m, err := l.cache.Load(l.dir, []string{"sets/big.toml"})
	if err != nil {
		// As the agent: the last valid configuration stays.
		configtest.Write(l.t, l.dir, map[string]string{"sets/big.toml": string(data)})
		return nil, false
	}
	prev := l.model
	l.model = m
	return prev, true
}

// clone copies the kernel's state, for planning the same edit twice.
func (k *simKernel) clone() *simKernel {
	c := newSimKernel(k.narrow)
	for f, t := range k.tables {
		c.tables[f] = t.clone()
	}
	c.bridge = k.bridge.clone()
	for n, o := range k.sets {
		d := *o
		d.Members = maps.Clone(o.Members)
		c.sets[n] = &d
	}
	c.gen.Store(k.gen.Load())
	return c
}

// render is what apply --dry-run prints of ch.
func render(t *testing.T, ch *engine.Change) string {
	t.Helper()
	var b strings.Builder
	if _, err := ch.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// fromEdit reports whether ch's plan is one planSetEdit made, which holds
// no set it read, not the members plan.
func fromEdit(ch *engine.Change) bool {
	p, ok := ch.Plan.(*plan)
	return ok && p.st.sets == nil
}

// settled plans an apply with a backend that remembers nothing, reading
// the kernel, and returns what it would write.
func (l *setLab) settled() *engine.Change {
	l.t.Helper()
	_, e := l.backendOn(l.k)
	ch, err := e.Sync(context.Background(), true)
	if err != nil {
		l.t.Fatal(err)
	}
	return ch
}

// randomSet is an address set as lists of prefixes, rendered as a set
// file; mutations keep it loadable most of the time.
type randomSet struct {
	entries, except []netip.Prefix
}

func (s *randomSet) text(desc string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "description = %q\nentries = [\n", desc)
	for _, p := range s.entries {
		fmt.Fprintf(&b, "  %q,\n", p.String())
	}
	b.WriteString("]\nexcept = [\n")
	for _, p := range s.except {
		fmt.Fprintf(&b, "  %q,\n", p.String())
	}
	b.WriteString("]\n")
	return b.String()
}

func (s *randomSet) clone() *randomSet {
	return &randomSet{entries: slices.Clone(s.entries), except: slices.Clone(s.except)}
}

// randomPrefix returns a prefix in 198.51.100.0/24 or 2001:db8::/48,
// nested in others often enough.
func randomPrefix(r *rand.Rand) netip.Prefix {
	if r.Intn(2) == 0 {
		a := netip.AddrFrom4([4]byte{198, 51, 100, byte(r.Intn(256))})
		p, _ := a.Prefix(24 + r.Intn(9))
		return p
	}
	var b [16]byte
	copy(b[:], netip.MustParseAddr("2001:db8::").AsSlice())
	b[6], b[14], b[15] = byte(r.Intn(4)), byte(r.Intn(256)), byte(r.Intn(256))
	p, _ := netip.AddrFrom16(b).Prefix([]int{48, 56, 64, 96, 120, 127, 128}[r.Intn(7)])
	return p
}

// mutate changes s as an operator edits a set: an entry or except added,
// removed, moved to the other list or moved within its list.
func (s *randomSet) mutate(r *rand.Rand) {
	insert := func(list []netip.Prefix, p netip.Prefix) []netip.Prefix {
		i := r.Intn(len(list) + 1)
		return slices.Insert(list, i, p)
	}
	// take removes a prefix of *list at random; false when it has none.
	take := func(list *[]netip.Prefix) (netip.Prefix, bool) {
		if len(*list) == 0 {
			return netip.Prefix{}, false
		}
		i := r.Intn(len(*list))
		p := (*list)[i]
		*list = slices.Delete(*list, i, i+1)
		return p, true
	}
	switch r.Intn(7) {
	case 0, 1:
		s.entries = insert(s.entries, randomPrefix(r))
	case 2:
		take(&s.entries)
	case 3:
		s.except = insert(s.except, randomPrefix(r))
	case 4:
		take(&s.except)
	case 5:
		if p, ok := take(&s.entries); ok {
			s.except = insert(s.except, p)
		}
	case 6:
		if p, ok := take(&s.except); ok {
			s.entries = insert(s.entries, p)
		}
	}
}

// TestSetEditMatchesMembersPlan edits an address set at random, one to
// three changes at a time, and plans each edit twice: through the
// agent's path (engine.EditSets, the plan from the edit) and, on a copy
// of the kernel, through the members plan, which lays out every member
// and compares it with the kernel's. Both must write the same commands
// and report the same members added and removed, the kernels must then
// agree, the edit's path must have planned from the edit (not read
// the sets) whenever no changed prefix is a /0 or /1, and an apply
// afterwards must find nothing to change.
func TestSetEditMatchesMembersPlan(t *testing.T) {
	for _, flavour := range []string{"nft", "legacy"} {
		t.Run(flavour, func(t *testing.T) {
			ctx := context.Background()
			r := rand.New(rand.NewSource(7))
			s := &randomSet{}
			for range 40 {
				s.mutate(r)
			}
			l := newSetLab(t, flavour, "entries = []\n")
			edits, fromEdits := 0, 0
			for step := 0; edits < 150; step++ {
				if step > 5000 {
					t.Fatalf("only %d of %d random edits load", edits, step)
				}
				next := s.clone()
				for range 1 + r.Intn(3) {
					next.mutate(r)
				}
				if step%50 == 0 {
					next.entries = append(next.entries, netip.MustParsePrefix("::/0"))
				}
				prev, ok := l.load(next.text(fmt.Sprintf("step %d", step)))
				if !ok {
					continue // an except inside no entry, a prefix twice
				}
				s, edits = next, edits+1
				twin := l.k.clone()
				_, twinE := l.backendOn(twin)
				want, err := twinE.SyncSets(ctx, nil)
				if err != nil {
					t.Fatalf("step %d: members plan: %v", step, err)
				}
				got, err := l.e.EditSets(ctx, prev, []string{"big"})
				if err != nil {
					t.Fatalf("step %d: edit: %v", step, err)
				}
				l.mark()
				if g, w := render(t, got), render(t, want); g != w {
					t.Fatalf("step %d: the edit's plan writes\n%s\nthe members plan\n%s", step, g, w)
				}
				if g, w := got.Summary(), want.Summary(); !reflect.DeepEqual(g, w) {
					t.Fatalf("step %d: the edit's plan reports %+v, the members plan %+v", step, g.Sets, w.Sets)
				}
				if g, w := l.k.state(), twin.state(); g != w {
					t.Fatalf("step %d: the kernels differ\nedit:\n%s\nmembers plan:\n%s", step, g, w)
				}
				small := true
				for _, c := range config.SetChanges(prev.Sets["big"], l.model.Sets["big"]) {
					small = small && c.Prefix.Bits() > 1
				}
				if small {
					if !fromEdit(got) {
						t.Fatalf("step %d: the edit was planned in full", step)
					}
					fromEdits++
				}
				if ch := l.settled(); !ch.Empty() {
					t.Fatalf("step %d: apply after the edit plans\n%s", step, render(t, ch))
				}
			}
			if fromEdits < edits/2 {
				t.Fatalf("%d of %d edits planned from the edit", fromEdits, edits)
			}
		})
	}
}

// bigBefore and bigAfter are the set the fallback tests edit: the edit removes
// 198.51.100.7 and makes 2001:db8::/64 an except.
const (
	bigBefore = "entries = [\"198.51.100.0/24\", \"198.51.100.7\", \"2001:db8::/48\", \"2001:db8::/64\"]\n"
	bigAfter  = "entries = [\"198.51.100.0/24\", \"2001:db8::/48\"]\nexcept = [\"2001:db8::/64\"]\n"
)

// TestSetEditFallsBack: the edit's plan is used only while the kernel is
// known to hold the sets as the last write left them; otherwise the
// members plan reads the kernel, and the outcome is the configuration.
func TestSetEditFallsBack(t *testing.T) {
	ctx := context.Background()
	v4, v6 := layout.AddressSetName("big", ruleset.IPv4), layout.AddressSetName("big", ruleset.IPv6)
	cases := []struct {
		name string
		// flavours it applies to; before disturbs the lab before the
		// edit is loaded and applied.
		flavours []string
		before   func(l *setLab)
		// planned says whether the edit's plan is used.
		planned bool
		// drift says the edit leaves drift the drift check must find.
		drift bool
	}{
		{
			name: "nothing happened", flavours: []string{"nft", "legacy"},
			before: func(*setLab) {}, planned: true,
		},
		{
			name: "another process wrote rules", flavours: []string{"nft"},
			before: func(l *setLab) { l.k.gen.Add(1) },
		},
		{
			name: "no Mark since the last write", flavours: []string{"nft"},
			before: func(l *setLab) { l.be.forget() },
		},
		{
			name: "a backend that wrote nothing yet", flavours: []string{"nft", "legacy"},
			before: func(l *setLab) {
				l.be, l.e = l.backendOn(l.k)
				l.mark()
			},
		},
		{
			// The size read back after the write is one more than the
			// edit leaves.
			name: "a member added by hand", flavours: []string{"nft", "legacy"},
			before: func(l *setLab) { l.k.sets[v6].Members["2001:db8:1::/64"] = true },
		},
		{
			// What no check sees: the drift check's to find.
			name: "a member the edit does not touch replaced by hand", flavours: []string{"nft", "legacy"},
			before: func(l *setLab) {
				delete(l.k.sets[v4].Members, "198.51.100.0/24")
				l.k.sets[v4].Members["198.51.100.0/25"] = true
			},
			planned: true, drift: true,
		},
		{
			name: "a member the edit deletes deleted by hand, another added", flavours: []string{"nft", "legacy"},
			before: func(l *setLab) {
				delete(l.k.sets[v4].Members, "198.51.100.7")
				l.k.sets[v4].Members["198.51.100.9"] = true
			},
		},
		{
			name: "an edit the kernel never got", flavours: []string{"nft", "legacy"},
			before: func(l *setLab) {
				if _, ok := l.load("entries = [\"198.51.100.0/24\", \"2001:db8::/48\", \"2001:db8::/64\"]\n"); !ok {
					l.t.Fatal("intermediate edit does not load")
				}
			},
		},
	}
	for _, c := range cases {
		for _, flavour := range c.flavours {
			t.Run(flavour+"/"+c.name, func(t *testing.T) {
				l := newSetLab(t, flavour, bigBefore)
				c.before(l)
				prev, ok := l.load(bigAfter)
				if !ok {
					t.Fatal("the edit does not load")
				}
				ch, err := l.e.EditSets(ctx, prev, []string{"big"})
				if err != nil {
					t.Fatal(err)
				}
				if fromEdit(ch) != c.planned {
					t.Errorf("planned from the edit: %v, want %v\n%s", fromEdit(ch), c.planned, render(t, ch))
				}
				l.mark()
				if c.drift {
					// The drift check finds it, and its apply repairs it.
					if same, err := l.be.Unchanged(ctx); err != nil || same {
						t.Fatalf("the drift check finds no drift (%v)", err)
					}
					if ch := l.settled(); ch.Empty() {
						t.Fatal("no drift after all")
					}
					if _, err := l.e.Sync(ctx, false); err != nil {
						t.Fatal(err)
					}
				}
				if ch := l.settled(); !ch.Empty() {
					t.Fatalf("after the edit, apply plans:\n%s", render(t, ch))
				}
				// The kernel holds the edit: what the edit added is
				// there, what it removed is not.
				members := l.k.sets[v6].Members
				if !members["2001:db8::/64 nomatch"] || members["2001:db8::/64"] || l.k.sets[v4].Members["198.51.100.7"] {
					t.Errorf("the kernel does not hold the edit: %v %v", l.k.sets[v4].Members, members)
				}
			})
		}
	}
}

// BenchmarkPlanSetEdit100000 plans an edit of one entry of a set of
// 100,000 entries on nf_tables, with the sets remembered: from the set's
// configuration before and after (edit), and as the members plan does,
// laying out every member and comparing it with the remembered copy
// (members).
func BenchmarkPlanSetEdit100000(b *testing.B) {
	ctx := context.Background()
	var entries strings.Builder
	for i := range 100000 {
		fmt.Fprintf(&entries, "  \"2001:db8:%x:%x::/64\",\n", 0x100+i>>16, i&0xffff)
	}
	big := func(extra string) string { return "entries = [\n" + entries.String() + extra + "]\n" }
	l := newSetLab(b, "nft", big(""))
	was, ok := l.load(big("  \"2001:db8:ffff::1\",\n"))
	if !ok {
		b.Fatal("the edit does not load")
	}
	var nics []*config.NIC
	for _, tap := range setLabTaps {
		nics = append(nics, l.model.NIC(tap))
	}
	want, err := ruleset.Compile(l.model, nics)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		hint *backend.Hint
	}{
		{"edit", &backend.Hint{Was: want, Members: true, Sets: []backend.SetEdit{{Name: "big", Was: was.Sets["big"], Now: l.model.Sets["big"]}}}},
		{"members", &backend.Hint{Was: want, Members: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				st, err := l.be.Read(ctx, true)
				if err != nil {
					b.Fatal(err)
				}
				p, err := l.be.Plan(ctx, st, want, c.hint)
				if err != nil || p.Summary().Sets.MembersAdded() != 1 {
					b.Fatalf("plan %v: %v", p, err)
				}
			}
		})
	}
}
