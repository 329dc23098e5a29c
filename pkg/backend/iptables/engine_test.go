package iptables

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/iptables/ebtables"
	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// simTable is a filter table as a kernel would hold it: rule lines by
// chain, built-in chains included. Restores are applied like
// iptables-restore --noflush would, all or nothing, and fail on what the
// kernel refuses (a rule in or a jump to a missing chain, deleting a chain
// still referenced), so a wrong plan shows up as an error.
type simTable struct {
	bridge bool
	chains map[layout.Chain][]string
}

func newSimTable(bridge bool) *simTable {
	return &simTable{bridge: bridge, chains: map[layout.Chain][]string{layout.Forward: nil, layout.Input: nil, layout.Output: nil}}
}

func (t *simTable) clone() *simTable {
	c := &simTable{bridge: t.bridge, chains: map[layout.Chain][]string{}}
	for k, v := range t.chains {
		c.chains[k] = slices.Clone(v)
	}
	return c
}

func (t *simTable) builtin(c layout.Chain) bool { return layout.IsBuiltin(c) }

// save renders the table as iptables-save or ebtables-save would.
func (t *simTable) save() string {
	var b strings.Builder
	b.WriteString("*filter\n")
	names := make([]string, 0, len(t.chains))
	for c := range t.chains {
		names = append(names, string(c))
	}
	sort.Strings(names)
	for _, n := range names {
		switch {
		case t.builtin(layout.Chain(n)) && t.bridge:
			b.WriteString(":" + n + " ACCEPT\n")
		case t.builtin(layout.Chain(n)):
			b.WriteString(":" + n + " ACCEPT [0:0]\n")
		case t.bridge:
			b.WriteString(":" + n + " RETURN\n")
		default:
			b.WriteString(":" + n + " - [0:0]\n")
		}
	}
	for _, n := range names {
		for _, l := range t.chains[layout.Chain(n)] {
			b.WriteString(l + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func target(line string) layout.Chain {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			return layout.Chain(f[i+1])
		}
	}
	return ""
}

func (t *simTable) restore(text string) error {
	next := t.clone()
	var deleted []layout.Chain
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		switch {
		case line == "*filter" || line == "COMMIT":
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			next.chains[layout.Chain(name)] = nil // create, or flush
		case strings.HasPrefix(line, "-A "), strings.HasPrefix(line, "-I "), strings.HasPrefix(line, "-D "):
			f := strings.Fields(line)
			chain := layout.Chain(f[1])
			if _, ok := next.chains[chain]; !ok {
				return fmt.Errorf("%q: no chain %s", line, chain)
			}
			rest := strings.TrimPrefix(line[3:], f[1])
			if f[0] == "-I" {
				rest = strings.TrimPrefix(rest, " 1")
			}
			rule := "-A " + f[1] + rest
			switch f[0] {
			case "-A":
				next.chains[chain] = append(next.chains[chain], rule)
			case "-I":
				next.chains[chain] = append([]string{rule}, next.chains[chain]...)
			case "-D":
				i := slices.Index(next.chains[chain], rule)
				if n, err := strconv.Atoi(strings.TrimSpace(rest)); err == nil {
					i = n - 1 // by position
					if i >= len(next.chains[chain]) {
						i = -1
					}
				}
				if i < 0 {
					return fmt.Errorf("%q: no such rule", line)
				}
				next.chains[chain] = slices.Delete(next.chains[chain], i, i+1)
			}
		case strings.HasPrefix(line, "-X "):
			name := layout.Chain(strings.TrimPrefix(line, "-X "))
			if _, ok := next.chains[name]; !ok {
				return fmt.Errorf("%q: no chain %s", line, name)
			}
			delete(next.chains, name)
			deleted = append(deleted, name)
		default:
			return fmt.Errorf("unexpected restore line %q", line)
		}
	}
	for c, lines := range next.chains {
		for _, l := range lines {
			tgt := target(l)
			if tgt == "" || slices.Contains([]string{"ACCEPT", "DROP", "RETURN", "REJECT", "MARK", "LOG", "CONTINUE"}, string(tgt)) {
				continue
			}
			if _, ok := next.chains[tgt]; !ok {
				if slices.Contains(deleted, tgt) {
					return fmt.Errorf("chain %s deleted while %s jumps to it", tgt, c)
				}
				return fmt.Errorf("%s jumps to missing chain %s", c, tgt)
			}
		}
	}
	*t = *next
	return nil
}

// simKernel is a network namespace's firewall for the engine: both
// families, the bridge table and ipsets. With narrow set it also offers
// the narrow reads of nf_tables, answering from the same state.
type simKernel struct {
	tables map[ruleset.Family]*simTable
	bridge *simTable
	sets   map[string]*ipset.Observed
	narrow bool
	// saves counts whole-table reads, narrowReads chain-by-chain ones.
	saves       atomic.Int64
	narrowReads int
	// restores are the iptables transactions, in order; failIPv6 makes
	// the next IPv6 one fail. The engine writes the families side by
	// side, hence mu.
	mu       sync.Mutex
	restores []string
	failIPv6 bool
	// gen is the ruleset generation: every table write moves it, as an
	// nf_tables commit does, and no ipset write does.
	gen atomic.Uint32
}

func newSimKernel(narrow bool) *simKernel {
	return &simKernel{
		tables: map[ruleset.Family]*simTable{ruleset.IPv4: newSimTable(false), ruleset.IPv6: newSimTable(false)},
		bridge: newSimTable(true),
		sets:   map[string]*ipset.Observed{},
		narrow: narrow,
	}
}

// state renders everything, for comparing two kernels.
func (k *simKernel) state() string {
	var b strings.Builder
	for _, f := range ruleset.Families {
		b.WriteString(k.tables[f].save())
	}
	b.WriteString(k.bridge.save())
	names := make([]string, 0, len(k.sets))
	for n := range k.sets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := k.sets[n]
		var members []string
		for m := range s.Members {
			members = append(members, m)
		}
		sort.Strings(members)
		fmt.Fprintf(&b, "%s %s %s %v\n", n, s.Type, s.Family, members)
	}
	return b.String()
}

// simTables is both families' filter tables for the backend; with narrow
// set it offers the narrow reads of nf_tables, answering from the same
// state, and says it has none otherwise (legacy).
type simTables struct {
	k      *simKernel
	narrow bool
}

var _ Tables = simTables{}

// errSimRefused is what a restore fails with when failIPv6 is set, as a
// kernel refusing it would.
var errSimRefused = errors.New("ip6tables-restore: refused")

func (f simTables) Narrow() bool { return f.narrow }

func (f simTables) Save(_ context.Context, fam ruleset.Family) (*xtables.Snapshot, error) {
	f.k.saves.Add(1)
	return xtables.Parse([]byte(f.k.tables[fam].save()))
}

// SaveFingerprints reads a whole table as Save does, and counts as one.
func (f simTables) SaveFingerprints(ctx context.Context, fam ruleset.Family) (*xtables.Snapshot, error) {
	s, err := f.Save(ctx, fam)
	if err != nil {
		return nil, err
	}
	s.Lines = map[layout.Chain][]string{}
	return s, nil
}

func (f simTables) ChainLines(_ context.Context, fam ruleset.Family, names []layout.Chain) (map[layout.Chain][]string, error) {
	full, err := xtables.Parse([]byte(f.k.tables[fam].save()))
	if err != nil {
		return nil, err
	}
	out := map[layout.Chain][]string{}
	for _, n := range names {
		out[n] = full.Lines[n]
	}
	return out, nil
}

func (f simTables) Restore(_ context.Context, fam ruleset.Family, text string) error {
	if text == "" {
		return nil
	}
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	f.k.restores = append(f.k.restores, text)
	if fam == ruleset.IPv6 && f.k.failIPv6 {
		f.k.failIPv6 = false
		return errSimRefused
	}
	f.k.gen.Add(1)
	return f.k.tables[fam].restore(text)
}

func (f simTables) ListChains(_ context.Context, fam ruleset.Family) (map[layout.Chain]bool, error) {
	if !f.narrow {
		return nil, xtables.ErrNotNFT
	}
	out := map[layout.Chain]bool{}
	for c := range f.k.tables[fam].chains {
		out[c] = true
	}
	return out, nil
}

func (f simTables) SaveChains(_ context.Context, fam ruleset.Family, names []layout.Chain) (*xtables.Snapshot, error) {
	if !f.narrow {
		return nil, xtables.ErrNotNFT
	}
	f.k.narrowReads++
	full, err := xtables.Parse([]byte(f.k.tables[fam].save()))
	if err != nil {
		return nil, err
	}
	s := &xtables.Snapshot{
		Observed: layout.Observed{Chains: map[layout.Chain][]string{}, Lines: map[layout.Chain][]string{}, Hooks: full.Hooks},
		Counters: map[layout.Chain][]xtables.Counter{},
		Foreign:  map[layout.Chain]int{},
	}
	for _, n := range names {
		if _, ok := f.k.tables[fam].chains[n]; !ok {
			continue
		}
		// A chain the netlink read finds but Parse would not call vmfw's
		// (no vmfw comment) still reads, as rules without fingerprints.
		s.Chains[n] = []string{}
		for _, l := range f.k.tables[fam].chains[n] {
			h := ""
			if _, after, ok := strings.Cut(l, "--comment "); ok {
				after = strings.TrimPrefix(after, `"`)
				if rest, ok := strings.CutPrefix(after, layout.CommentPrefix); ok {
					h, _, _ = strings.Cut(rest, " ")
					h = strings.TrimSuffix(h, `"`)
				}
			}
			s.Chains[n] = append(s.Chains[n], h)
		}
	}
	return s, nil
}

// simBridge is the ebtables filter table; with narrow set it offers the
// narrow reads of ebtables-nft.
type simBridge struct {
	k      *simKernel
	narrow bool
}

var _ Bridge = simBridge{}

func (b simBridge) Save(context.Context) (layout.Observed, error) {
	b.k.saves.Add(1)
	return ebtables.Parse([]byte(b.k.bridge.save())), nil
}

func (b simBridge) Restore(_ context.Context, text string) error {
	if text == "" {
		return nil
	}
	b.k.gen.Add(1)
	return b.k.bridge.restore(text)
}

func (b simBridge) Narrow() bool { return b.narrow }

func (b simBridge) ChainsExist(_ context.Context, names []layout.Chain) (map[layout.Chain]bool, error) {
	out := map[layout.Chain]bool{}
	for _, n := range names {
		_, out[n] = b.k.bridge.chains[n]
	}
	return out, nil
}

func (b simBridge) Targets(_ context.Context, names []layout.Chain) (map[layout.Chain][]layout.Chain, error) {
	out := map[layout.Chain][]layout.Chain{}
	for _, n := range names {
		out[n] = []layout.Chain{}
		for _, l := range b.k.bridge.chains[n] {
			if t := target(l); t != "" && !slices.Contains([]layout.Chain{"ACCEPT", "DROP", "RETURN", "CONTINUE"}, t) {
				out[n] = append(out[n], t)
			}
		}
	}
	return out, nil
}

func (b simBridge) Hooks(context.Context) (map[layout.Hook]int, error) {
	return ebtables.Parse([]byte(b.k.bridge.save())).Hooks, nil
}

type simSets struct{ k *simKernel }

func (s simSets) List(context.Context) (map[string]*ipset.Observed, error) {
	out := map[string]*ipset.Observed{}
	for n, o := range s.k.sets {
		c := *o
		c.Members = map[string]bool{}
		for m := range o.Members {
			c.Members[m] = true
		}
		out[n] = &c
	}
	return out, nil
}

func (s simSets) Heads(ctx context.Context, script string, names []string) (map[string]ipset.Head, []string, error) {
	if err := s.Restore(ctx, script); err != nil {
		return nil, nil, err
	}
	heads := map[string]ipset.Head{}
	for _, n := range names {
		o := s.k.sets[n]
		if o == nil {
			return nil, nil, fmt.Errorf("ipset list %s: The set with the given name does not exist", n)
		}
		heads[n] = ipset.Head{Type: o.Type, Family: o.Family, MaxElem: o.MaxElem, Entries: len(o.Members)}
	}
	var all []string
	for n := range s.k.sets {
		all = append(all, n)
	}
	sort.Strings(all)
	return heads, all, nil
}

// Restore applies script as ipset restore would, refusing as the kernel
// does to add a member a set has or delete one it lacks.
func (s simSets) Restore(_ context.Context, script string) error {
	for _, line := range strings.Split(strings.TrimSpace(script), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "create":
			o := &ipset.Observed{Type: layout.SetType(f[2]), Members: map[string]bool{}, MaxElem: 65536}
			if len(f) > 4 && f[3] == "family" {
				o.Family = f[4]
			}
			s.k.sets[f[1]] = o
		case "add":
			o, m := s.k.sets[f[1]], strings.ToLower(f[2])
			if o == nil {
				return fmt.Errorf("%q: The set with the given name does not exist", line)
			}
			if slices.Contains(f[3:], "nomatch") {
				m += layout.NoMatch
			}
			if o.Members[m] || o.Members[strings.TrimSuffix(m, layout.NoMatch)] || o.Members[m+layout.NoMatch] {
				return fmt.Errorf("%q: Element cannot be added to the set: it's already added", line)
			}
			o.Members[m] = true
		case "del":
			o, m := s.k.sets[f[1]], strings.ToLower(f[2])
			if o == nil {
				return fmt.Errorf("%q: The set with the given name does not exist", line)
			}
			if !o.Members[m] && !o.Members[m+layout.NoMatch] {
				return fmt.Errorf("%q: Element cannot be deleted from the set: it's not added", line)
			}
			delete(o.Members, m)
			delete(o.Members, m+layout.NoMatch)
		case "destroy":
			// As the kernel: a set a rule matches against stays.
			for _, t := range s.k.tables {
				for _, lines := range t.chains {
					for _, l := range lines {
						if strings.Contains(l, "--match-set "+f[1]+" ") {
							return fmt.Errorf("ipset destroy %s: Set cannot be destroyed: it is in use by a kernel component", f[1])
						}
					}
				}
			}
			delete(s.k.sets, f[1])
		case "swap":
			s.k.sets[f[1]], s.k.sets[f[2]] = s.k.sets[f[2]], s.k.sets[f[1]]
		default:
			return fmt.Errorf("unexpected ipset line %q", line)
		}
	}
	return nil
}

// scopedConfig writes n VMs, with ids from 100 every step, in five groups
// that reference each other's members; some VMs are disabled, some lack
// anti-spoofing, and their addresses take every shape in turn (shapeIPs),
// the first VM's IPv4 only.
func scopedConfig(t *testing.T, n, step int) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	write := func(rel, text string) { configtest.Write(t, dir, map[string]string{rel: text}) }
	for g := range 5 {
		write(fmt.Sprintf("groups/g%d.toml", g), fmt.Sprintf(
			"[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"g%d\"\n\n[[out]]\naction = \"drop\"\nproto = \"tcp\"\ndport = \"25\"\n", (g+1)%5))
	}
	var taps []string
	for k := range n {
		id := 100 + step*k
		text := ""
		if k%11 == 4 {
			text += "enable = false\n"
		}
		text += fmt.Sprintf("[net0]\nmac = \"02:00:00:00:01:%02x\"\n%s\ngroups = [\"g%d\", \"g%d\"]\n", k, shapeIPs(k, id), k%5, (k+2)%5)
		if k%7 == 2 {
			text += "antispoof = false\n"
		}
		write(fmt.Sprintf("vms/%d.toml", id), text)
		taps = append(taps, fmt.Sprintf("tap%di0", id))
	}
	return dir, taps
}

// shapeIPs returns the ips line of the k-th VM of scopedConfig: IPv4
// only, IPv6 only, both, none, in turn.
func shapeIPs(k, id int) string {
	v4, v6 := fmt.Sprintf("%q", fmt.Sprintf("198.51.100.%d", k+1)), fmt.Sprintf("%q", fmt.Sprintf("2001:db8::%x", id))
	switch k % 4 {
	case 0:
		return "ips = [" + v4 + "]"
	case 1:
		return "ips = [" + v6 + "]"
	case 2:
		return "ips = [" + v4 + ", " + v6 + "]"
	}
	return ""
}

type fakeHost struct{ links map[string]bool }

func (h fakeHost) Links() (map[string]bool, error) { return h.links, nil }
func (h fakeHost) Attach(tap, bridge string) error { return nil }
func (h fakeHost) EnableBridgeNetfilter() error    { return nil }

// simEngine returns an engine on the backend over a simulated kernel;
// flavour "nft" offers the narrow reads, "legacy" has none for the
// filter tables, "full" none at all (every change is planned in full).
func simEngine(dir string, taps []string, flavour string) (*engine.Engine, *simKernel) {
	k := newSimKernel(flavour == "nft")
	links := map[string]bool{}
	for _, t := range taps {
		links[t] = true
	}
	be := New(Options{
		Tables:     simTables{k: k, narrow: flavour == "nft"},
		Sets:       simSets{k},
		Bridge:     simBridge{k: k, narrow: flavour != "full"},
		Describe:   "simulated " + flavour,
		Generation: func(context.Context) (uint32, error) { return k.gen.Load(), nil },
	})
	e := engine.New(engine.Kernel{
		Backend: be,
		Host:    fakeHost{links: links},
		Lock:    func(context.Context) (func(), error) { return func() {}, nil },
	}, dir)
	return e, k
}

// TestScopedMatchesFullPath runs the same random attaches and detaches on
// two simulated kernels, one through the scoped path and one through the
// full path, and checks after every step that both hold exactly the same
// chains, hooks and sets; that the scoped path on nf_tables did not read
// whole tables; and that an apply afterwards finds nothing to change. On
// legacy the scoped path reads whole tables but compiles only the scope.
func TestScopedMatchesFullPath(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) { testScopedMatchesFullPath(t, backend) })
	}
}

func testScopedMatchesFullPath(t *testing.T, backend string) {
	ctx := context.Background()
	dir, taps := scopedConfig(t, 40, 3)
	fast, fk := simEngine(dir, taps, backend)
	full, ref := simEngine(dir, taps, "full")
	r := rand.New(rand.NewSource(4))
	step := func(what string, op func(e *engine.Engine) error) {
		t.Helper()
		before := fk.saves.Load()
		if err := op(fast); err != nil {
			t.Fatalf("%s (scoped): %v", what, err)
		}
		if backend == "nft" && fk.saves.Load() != before {
			t.Errorf("%s: the scoped path read whole tables", what)
		}
		if err := op(full); err != nil {
			t.Fatalf("%s (full): %v", what, err)
		}
		if got, want := fk.state(), ref.state(); got != want {
			t.Fatalf("%s: scoped and full paths disagree\nscoped:\n%s\nfull:\n%s", what, got, want)
		}
	}
	for i := range 60 {
		tap := taps[r.Intn(len(taps))]
		if i < 20 || r.Intn(3) > 0 {
			step("ifup "+tap, func(e *engine.Engine) error { return e.Attach(ctx, tap) })
		} else {
			step("ifdown "+tap, func(e *engine.Engine) error { return e.Detach(ctx, tap) })
		}
	}
	for _, tap := range taps {
		step("ifdown "+tap, func(e *engine.Engine) error { return e.Detach(ctx, tap) })
	}
	step("ifdown of an unknown tap", func(e *engine.Engine) error { return e.Detach(ctx, "tap99i0") })
	for _, tap := range taps[:10] {
		step("ifup "+tap, func(e *engine.Engine) error { return e.Attach(ctx, tap) })
	}
	if backend == "nft" && fk.narrowReads == 0 {
		t.Error("the scoped path never ran")
	}
	// Only the ten taps are up, but all forty links exist: apply adds the
	// rest, then a second apply finds nothing.
	if _, err := fast.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	ch, err := fast.Sync(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if !ch.Empty() {
		var b strings.Builder
		ch.WriteTo(&b)
		t.Errorf("apply after scoped changes is not empty:\n%s", b.String())
	}
}

// TestScopedFirstAttachOnEmptyKernel starts each backend's simulated kernel
// empty, as on a new host, and makes an interface of every shape the first
// one attached (and, separately, detached), then attaches one of another
// shape: the scoped path must write a ruleset the kernel accepts and
// exactly what the full path writes.
func TestScopedFirstAttachOnEmptyKernel(t *testing.T) {
	ctx := context.Background()
	dir, taps := scopedConfig(t, 12, 1)
	for _, backend := range []string{"nft", "legacy"} {
		for i, first := range taps {
			second := taps[(i+1)%len(taps)]
			for _, firstOp := range []string{"ifup", "ifdown"} {
				fast, fk := simEngine(dir, taps, backend)
				full, ref := simEngine(dir, taps, "full")
				for _, op := range []struct{ name, tap string }{{firstOp, first}, {"ifup", second}} {
					run := func(e *engine.Engine) error {
						if op.name == "ifdown" {
							return e.Detach(ctx, op.tap)
						}
						return e.Attach(ctx, op.tap)
					}
					if err := run(fast); err != nil {
						t.Fatalf("%s: %s %s on an empty kernel (scoped): %v", backend, op.name, op.tap, err)
					}
					if err := run(full); err != nil {
						t.Fatalf("%s: %s %s on an empty kernel (full): %v", backend, op.name, op.tap, err)
					}
					if got, want := fk.state(), ref.state(); got != want {
						t.Fatalf("%s: %s %s after %s %s: scoped and full paths disagree\nscoped:\n%s\nfull:\n%s", backend, op.name, op.tap, firstOp, first, got, want)
					}
				}
			}
		}
	}
}

// TestScopedFallsBackOnUnknownRules checks that an edit not yet applied
// (a group's rules changed on disk) sends ifup down the full path, which
// rewrites the group, instead of leaving the group stale.
func TestScopedFallsBackOnUnknownRules(t *testing.T) {
	ctx := context.Background()
	dir, taps := scopedConfig(t, 6, 3)
	e, k := simEngine(dir, taps, "nft")
	for _, tap := range taps[:3] {
		if err := e.Attach(ctx, tap); err != nil {
			t.Fatal(err)
		}
	}
	if k.saves.Load() != 0 {
		t.Fatalf("attaches on a consistent kernel read whole tables %d times", k.saves.Load())
	}
	if err := os.WriteFile(filepath.Join(dir, "groups/g0.toml"), []byte("[[in]]\nproto = \"tcp\"\ndport = \"443\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.Attach(ctx, taps[5]); err != nil { // lists g0
		t.Fatal(err)
	}
	if k.saves.Load() == 0 {
		t.Error("ifup with an unapplied group edit stayed on the scoped path")
	}
	if !strings.Contains(k.state(), "--dport 443") {
		t.Error("the edited group was not rewritten")
	}
	ch, err := e.Sync(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	ch.WriteTo(&b)
	// The links of taps never attached exist, so apply would add them,
	// but it must find group g0's chains as configured.
	if strings.Contains(b.String(), ":sg-g0-") {
		t.Errorf("apply still has group g0's chains to change:\n%s", b.String())
	}
}

// TestScopedDetachDeletesAndReverts checks that a scoped detach only
// deletes (no rule is added, so the kernel has no table to validate), and
// that when IPv6 fails the IPv4 change is reverted to the exact state
// before.
func TestScopedDetachDeletesAndReverts(t *testing.T) {
	ctx := context.Background()
	dir, taps := scopedConfig(t, 30, 1)
	e, k := simEngine(dir, taps, "nft")
	for _, tap := range taps {
		if err := e.Attach(ctx, tap); err != nil {
			t.Fatal(err)
		}
	}
	// tap115i0 is one of ten in node tap11: its entry goes, the node stays.
	tap := taps[15]
	before := k.state()
	k.restores = nil
	if err := e.Detach(ctx, tap); err != nil {
		t.Fatal(err)
	}
	if k.saves.Load() != 0 {
		t.Fatal("the detach left the scoped path")
	}
	for _, text := range k.restores {
		for _, line := range strings.Split(text, "\n") {
			if strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, "-I ") {
				t.Errorf("detach adds a rule: %s", line)
			}
		}
		if !strings.Contains(text, "\n-D vmfw-tap11-out ") {
			t.Errorf("detach does not delete its dispatch entries:\n%s", text)
		}
	}
	if err := e.Attach(ctx, tap); err != nil {
		t.Fatal(err)
	}
	if k.state() != before {
		t.Fatal("detach and attach again do not give the state back")
	}
	// The engine reverts the rules, not ipset members (as on the full
	// path): compare the tables.
	tables := func() string { return k.tables[ruleset.IPv4].save() + k.tables[ruleset.IPv6].save() }
	want := tables()
	k.failIPv6 = true
	if err := e.Detach(ctx, tap); !errors.Is(err, errSimRefused) {
		t.Fatalf("detach error = %v, want the IPv6 failure", err)
	}
	if got := tables(); got != want {
		t.Errorf("the failed detach was not reverted:\nbefore:\n%s\nafter:\n%s", want, got)
	}
}

// TestSyncRevertsIPv4WhenIPv6Fails: when the IPv6 transaction of a first
// apply fails, the IPv4 one already written is reverted, on every
// flavour, and the operation fails with the kernel's error.
func TestSyncRevertsIPv4WhenIPv6Fails(t *testing.T) {
	ctx := context.Background()
	dir, taps := scopedConfig(t, 4, 1)
	for _, flavour := range []string{"nft", "legacy", "full"} {
		e, k := simEngine(dir, taps, flavour)
		tables := func() string { return k.tables[ruleset.IPv4].save() + k.tables[ruleset.IPv6].save() + k.bridge.save() }
		want := tables()
		k.failIPv6 = true
		if _, err := e.Sync(ctx, false); !errors.Is(err, errSimRefused) {
			t.Fatalf("%s: Sync error = %v, want the IPv6 failure", flavour, err)
		}
		if got := tables(); got != want {
			t.Errorf("%s: the failed apply was not reverted:\nbefore:\n%s\nafter:\n%s", flavour, want, got)
		}
		if _, err := e.Sync(ctx, false); err != nil {
			t.Fatalf("%s: Sync after the failure: %v", flavour, err)
		}
	}
}

// TestDryRunRendersTheTransactions: apply --dry-run prints the ipset
// script and both families' restores as they would be written, and
// writes nothing.
func TestDryRunRendersTheTransactions(t *testing.T) {
	dir, taps := scopedConfig(t, 3, 1)
	e, k := simEngine(dir, taps, "nft")
	ch, err := e.Sync(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.restores) != 0 || len(k.sets) != 0 {
		t.Fatalf("dry run wrote: %d restores, sets %v", len(k.restores), k.sets)
	}
	var b strings.Builder
	ch.WriteTo(&b)
	for _, want := range []string{"# ipset restore", "create sg-g0-v4 hash:ip family inet", "# iptables-restore --noflush", "# ip6tables-restore --noflush", ":tap100i0-in - [0:0]", "# ebtables-restore --noflush"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("dry-run output lacks %q", want)
		}
	}
	rep := ch.Report(true)
	if !rep.Changed || len(rep.Chains["ipv4"].Created) == 0 || len(rep.Sets.Created) == 0 {
		t.Errorf("report: %+v", rep)
	}
}

// TestScopedChecksWhatItReliesOn: a scoped ifup writes dispatch chains
// that jump to other interfaces' chains and may destroy sets no group
// uses any more, so it must not trust chains out of its scope that an
// edit not yet applied made stale: a group nobody in focus lists, or a
// VM's settings. Each such edit sends the ifup down the full path, and
// the kernel ends exactly as a full apply leaves it.
func TestScopedChecksWhatItReliesOn(t *testing.T) {
	ctx := context.Background()
	const vm103 = "[net0]\nmac = \"02:00:00:00:01:03\"\nips = [\"198.51.100.4\"]\ngroups = [\"g3\", \"g0\"]\n"
	for name, c := range map[string]struct {
		vm103 string // VM 103's file when the taps come up
		edit  map[string]string
	}{
		// g2 stops using g3's members, whose sets nothing else uses;
		// taps[4] lists neither (g4 and g1).
		"group out of focus": {vm103, map[string]string{"groups/g2.toml": "[[in]]\nproto = \"tcp\"\ndport = \"22\"\n"}},
		// taps[3], already attached, gains anti-spoofing: an L2 chain
		// the dispatch node it shares with taps[4] would jump to.
		"anti-spoofing turned on": {vm103 + "antispoof = false\n", map[string]string{"vms/103.toml": vm103}},
		// taps[3] loses it: the kernel's L2 dispatch still jumps to its
		// chain, which the configuration no longer lays out.
		"anti-spoofing turned off": {vm103, map[string]string{"vms/103.toml": vm103 + "antispoof = false\n"}},
	} {
		t.Run(name, func(t *testing.T) {
			dir, taps := scopedConfig(t, 6, 1)
			configtest.Write(t, dir, map[string]string{"vms/103.toml": c.vm103})
			e, k := simEngine(dir, taps, "nft")
			full, ref := simEngine(dir, taps, "full")
			for _, tap := range taps[:4] {
				for _, en := range []*engine.Engine{e, full} {
					if err := en.Attach(ctx, tap); err != nil {
						t.Fatal(err)
					}
				}
			}
			configtest.Write(t, dir, c.edit)
			saves := k.saves.Load()
			for _, en := range []*engine.Engine{e, full} {
				if err := en.Attach(ctx, taps[4]); err != nil {
					t.Fatalf("ifup after an unapplied edit: %v", err)
				}
			}
			if k.saves.Load() == saves {
				t.Error("the ifup stayed on the scoped path over stale chains")
			}
			if got, want := k.state(), ref.state(); got != want {
				t.Errorf("the ifup left another kernel than the full path:\nscoped:\n%s\nfull:\n%s", got, want)
			}
		})
	}
}

// TestScopedChecksBridgeDispatch: ebtables rules carry no fingerprints,
// so a scope rewrites the L2 dispatch chains it writes without reading
// their rules. When an unapplied edit took an attached VM's anti-spoofing
// away, the kernel's dispatch still holds a node for it that the
// configuration no longer lays out; rewriting the root over it would
// leave that node and the VM's L2 chain unreachable, never to be removed
// (and a later flush refused: a chain still jumped to). The scope reads
// what the chains it rewrites jump to, and takes the full path.
func TestScopedChecksBridgeDispatch(t *testing.T) {
	ctx := context.Background()
	dir, taps := scopedConfig(t, 12, 1)
	e, k := simEngine(dir, taps, "nft")
	full, ref := simEngine(dir, taps, "full")
	// tap100, 101, 103 and 105 share "tap10" below the root "tap1": a
	// node of their own, beside tap110i0.
	for _, i := range []int{0, 1, 3, 5, 10} {
		for _, en := range []*engine.Engine{e, full} {
			if err := en.Attach(ctx, taps[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	// VM 103 keeps its settings (no ips) but loses anti-spoofing.
	configtest.Write(t, dir, map[string]string{"vms/103.toml": "[net0]\nmac = \"02:00:00:00:01:03\"\ngroups = [\"g3\", \"g0\"]\nantispoof = false\n"})
	// tap111i0 joins the root beside tap110i0: the root is rewritten,
	// the name tree's node tap10 (which the iptables checks read) is not.
	for _, en := range []*engine.Engine{e, full} {
		if err := en.Attach(ctx, taps[11]); err != nil {
			t.Fatalf("ifup after an unapplied edit: %v", err)
		}
	}
	if got, want := k.state(), ref.state(); got != want {
		t.Errorf("the ifup left another kernel than the full path:\nscoped:\n%s\nfull:\n%s", got, want)
	}
	if _, err := e.Flush(ctx, false); err != nil {
		t.Errorf("flush: %v", err)
	}
}
