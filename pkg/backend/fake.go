package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Fake is an in-memory Backend for the tests of what sits above the seam
// (the engine, the agent, the entry points), as knftables' Fake is for
// kube-proxy: its "kernel" is the policy last applied, per interface,
// group and member set. It plans by comparing policies, counts what it is
// asked, and fails on demand. Dump shows what it holds. It also
// implements Generationer and Rechecker. The zero Fake is empty and
// ready; a Fake is safe for concurrent use.
type Fake struct {
	mu sync.Mutex
	// installed is what the "kernel" holds, nil when nothing is.
	installed *ruleset.Policy
	gen       uint64
	marked    uint64
	hasMark   bool

	// Reads, Plans and Applies count the calls (Applies only of plans
	// that change something); Hints are the hints Plan was given.
	Reads, Plans, Applies int
	Hints                 []*Hint
	// FailRead and FailApply, when set, are returned by the next Read or
	// Apply, which then do nothing; each is cleared when returned.
	FailRead, FailApply error
	// BeforeApply, when set, is called at the start of every Apply of a
	// plan that changes something, without the fake's lock held: a test
	// blocks in it to hold an operation half way.
	BeforeApply func()

	// watchers are the channels Watch handed out, signalled by Flush.
	watchers []chan struct{}
}

var (
	_ Backend      = (*Fake)(nil)
	_ Generationer = (*Fake)(nil)
	_ Rechecker    = (*Fake)(nil)
	_ Watcher      = (*Fake)(nil)
)

// Name is "fake".
func (f *Fake) Name() Name { return "fake" }

// Flavour is "".
func (f *Fake) Flavour() string { return "" }

// Describe is "fake".
func (f *Fake) Describe() string { return "fake" }

// fakeState is what Read saw.
type fakeState struct {
	installed *ruleset.Policy
	gen       uint64
}

func (s *fakeState) Installed() []string {
	if s.installed == nil {
		return []string{}
	}
	out := make([]string, 0, len(s.installed.Interfaces))
	for _, n := range s.installed.Interfaces {
		out = append(out, n.Name)
	}
	return out
}

// Read returns what the fake holds.
func (f *Fake) Read(context.Context, bool) (State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Reads++
	if err := f.FailRead; err != nil {
		f.FailRead = nil
		return nil, err
	}
	return &fakeState{installed: f.installed, gen: f.gen}, nil
}

// Current reports whether nothing was applied, tampered with or flushed
// since st was read.
func (f *Fake) Current(_ context.Context, st State) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := st.(*fakeState)
	return ok && s.gen == f.gen, nil
}

// fakePlan is a change of the fake: the policy to hold afterwards.
type fakePlan struct {
	want    *ruleset.Policy
	summary *Summary
	from    uint64
}

func (p *fakePlan) Empty() bool       { return p.summary.Empty() }
func (p *fakePlan) Summary() *Summary { return p.summary }
func (p *fakePlan) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	if p.Empty() {
		b.WriteString("# no changes\n")
	}
	t := p.summary.Tables["fake"]
	for _, l := range []struct {
		what  string
		names []string
	}{{"create", t.Created}, {"rewrite", t.Rewritten}, {"delete", t.Deleted}} {
		for _, n := range l.names {
			b.WriteString(l.what + " " + n + "\n")
		}
	}
	for _, set := range slices.Sorted(maps.Keys(p.summary.Sets.Added)) {
		b.WriteString("add " + set + " " + strings.Join(p.summary.Sets.Added[set], " ") + "\n")
	}
	for _, set := range slices.Sorted(maps.Keys(p.summary.Sets.Removed)) {
		b.WriteString("del " + set + " " + strings.Join(p.summary.Sets.Removed[set], " ") + "\n")
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// Plan compares want with what st saw: interfaces ("iface/NAME") and
// groups ("group/NAME") created, rewritten or deleted, and the members
// each group's set ("GROUP-v4") and each address set ("set/NAME-v4")
// gains and loses.
func (f *Fake) Plan(_ context.Context, s State, want *ruleset.Policy, hint *Hint) (Plan, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Plans++
	f.Hints = append(f.Hints, hint)
	have := s.(*fakeState).installed
	sum := &Summary{Tables: map[string]TableChanges{}, Sets: NewSetChanges()}
	var t TableChanges
	diffObjects(&t, "iface/", interfaces(have), interfaces(want))
	diffObjects(&t, "group/", groups(have), groups(want))
	sum.Tables["fake"] = t
	diffMembers(&sum.Sets, members(have), members(want))
	return &fakePlan{want: want, summary: sum, from: f.gen}, nil
}

// Apply makes the plan's policy what the fake holds.
func (f *Fake) Apply(_ context.Context, p Plan) error {
	fp := p.(*fakePlan)
	if fp.Empty() {
		return nil
	}
	f.mu.Lock()
	before := f.BeforeApply
	f.mu.Unlock()
	if before != nil {
		before()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.FailApply; err != nil {
		f.FailApply = nil
		return err
	}
	if fp.from != f.gen {
		return errors.New("fake: plan made before another change was applied")
	}
	f.Applies++
	f.installed = fp.want
	f.gen++
	return nil
}

// Status reports drift as the difference between what the fake holds and
// want, per interface, and no drop counts.
func (f *Fake) Status(_ context.Context, s State, want *ruleset.Policy) (*Status, error) {
	have := s.(*fakeState).installed
	st := &Status{Interfaces: map[string]*InterfaceStatus{}}
	hi := interfaces(have)
	for name, n := range interfaces(want) {
		is := &InterfaceStatus{}
		switch h, ok := hi[name]; {
		case !ok:
			is.Drifted = append(is.Drifted, Drift{Object: "iface/" + name, Problem: "missing"})
		case !reflect.DeepEqual(h, n):
			is.Drifted = append(is.Drifted, Drift{Object: "iface/" + name, Problem: "drifted"})
		}
		st.Interfaces[name] = is
	}
	st.Sets = map[string]*SetStatus{}
	held := members(have)
	for name, s := range setMembers(want) {
		ss := &SetStatus{Members: map[string]int{}}
		for fam, list := range s {
			got, ok := held["set/"+name+"-"+fam]
			if !ok {
				ss.Drifted = append(ss.Drifted, Drift{Object: "set/" + name + "-" + fam, Problem: "missing"})
				continue
			}
			ss.Members[map[string]string{"v4": "ipv4", "v6": "ipv6"}[fam]] = len(got)
			if !slices.Equal(got, list) {
				ss.Drifted = append(ss.Drifted, Drift{Object: "set/" + name + "-" + fam, Problem: "drifted"})
			}
		}
		st.Sets[name] = ss
	}
	return st, nil
}

// Usable succeeds unless FailRead is set.
func (f *Fake) Usable(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.FailRead
}

// ForgetAddresses takes addrs out of the member sets the fake holds.
func (f *Fake) ForgetAddresses(_ context.Context, addrs []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.installed == nil {
		return nil
	}
	p := *f.installed
	p.Members = map[string]*ruleset.Members{}
	for g, m := range f.installed.Members {
		c := &ruleset.Members{Group: g, Addrs: map[ruleset.Family][]netip.Addr{}}
		for fam, list := range m.Addrs {
			c.Addrs[fam] = slices.DeleteFunc(slices.Clone(list), func(a netip.Addr) bool { return slices.Contains(addrs, a) })
		}
		p.Members[g] = c
	}
	f.installed = &p
	f.gen++
	return nil
}

// Mark remembers the fake's generation.
func (f *Fake) Mark(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.marked, f.hasMark = f.gen, true
	return nil
}

// Unchanged reports whether nothing was applied since Mark.
func (f *Fake) Unchanged(context.Context) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hasMark && f.marked == f.gen, nil
}

// Tamper changes what the fake holds behind the engine's back, as a hand
// edit of the kernel would: the named interface's filtering is removed.
func (f *Fake) Tamper(iface string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.installed == nil {
		return
	}
	p := *f.installed
	p.Interfaces = slices.DeleteFunc(slices.Clone(p.Interfaces), func(n *ruleset.Interface) bool { return n.Name == iface })
	f.installed = &p
	f.gen++
}

// Flush removes everything the fake holds behind the engine's back, as a
// foreign "nft flush ruleset" does, and signals every watcher.
func (f *Fake) Flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.installed = nil
	f.gen++
	for _, w := range f.watchers {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

// Watch signals on the returned channel when Flush ran; the channel is
// closed once ctx ends.
func (f *Fake) Watch(ctx context.Context) (<-chan struct{}, error) {
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	f.watchers = append(f.watchers, ch)
	f.mu.Unlock()
	context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.watchers = slices.DeleteFunc(f.watchers, func(w chan struct{}) bool { return w == ch })
		close(ch)
	})
	return ch, nil
}

// Dump renders what the fake holds: one line per interface (its groups
// and addresses), group and member set, sorted.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.installed
	if p == nil {
		return ""
	}
	var b strings.Builder
	for _, n := range p.Interfaces {
		fmt.Fprintf(&b, "iface %s enabled=%v groups=%v ips=%v\n", n.Name, n.Enabled, n.Groups, n.IPs)
	}
	for _, g := range slices.Sorted(maps.Keys(p.Groups)) {
		fmt.Fprintf(&b, "group %s in=%d out=%d\n", g, len(p.Groups[g].In), len(p.Groups[g].Out))
	}
	for _, g := range slices.Sorted(maps.Keys(p.Members)) {
		fmt.Fprintf(&b, "members %s %v %v\n", g, p.Members[g].Addrs[ruleset.IPv4], p.Members[g].Addrs[ruleset.IPv6])
	}
	sets := setMembers(p)
	for _, name := range slices.Sorted(maps.Keys(sets)) {
		fmt.Fprintf(&b, "set %s %v %v\n", name, sets[name]["v4"], sets[name]["v6"])
	}
	return b.String()
}

func interfaces(p *ruleset.Policy) map[string]*ruleset.Interface {
	out := map[string]*ruleset.Interface{}
	if p != nil {
		for _, n := range p.Interfaces {
			c := *n
			c.Config = nil // where it was loaded from is not what is installed
			out[n.Name] = &c
		}
	}
	return out
}

func groups(p *ruleset.Policy) map[string]*ruleset.Group {
	if p == nil {
		return map[string]*ruleset.Group{}
	}
	return p.Groups
}

// members maps each set (GROUP-v4, GROUP-v6, and set/NAME-v4,
// set/NAME-v6 for address sets) to its members.
func members(p *ruleset.Policy) map[string][]string {
	out := map[string][]string{}
	if p == nil {
		return out
	}
	for name, fams := range setMembers(p) {
		for fam, list := range fams {
			out["set/"+name+"-"+fam] = list
		}
	}
	for g, m := range p.Members {
		for _, fam := range ruleset.Families {
			name := g + "-" + map[ruleset.Family]string{ruleset.IPv4: "v4", ruleset.IPv6: "v6"}[fam]
			out[name] = []string{}
			for _, a := range m.Addrs[fam] {
				out[name] = append(out[name], a.String())
			}
		}
	}
	return out
}

func diffObjects[V any](t *TableChanges, prefix string, have, want map[string]V) {
	for _, name := range slices.Sorted(maps.Keys(want)) {
		h, ok := have[name]
		switch {
		case !ok:
			t.Created = append(t.Created, prefix+name)
		case !reflect.DeepEqual(h, want[name]):
			t.Rewritten = append(t.Rewritten, prefix+name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(have)) {
		if _, ok := want[name]; !ok {
			t.Deleted = append(t.Deleted, prefix+name)
		}
	}
}

func diffMembers(s *SetChanges, have, want map[string][]string) {
	for _, name := range slices.Sorted(maps.Keys(want)) {
		h, ok := have[name]
		if !ok {
			s.Created = append(s.Created, name)
		}
		for _, m := range want[name] {
			if !slices.Contains(h, m) {
				s.Added[name] = append(s.Added[name], m)
			}
		}
		for _, m := range h {
			if !slices.Contains(want[name], m) {
				s.Removed[name] = append(s.Removed[name], m)
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(have)) {
		if _, ok := want[name]; !ok {
			s.Destroyed = append(s.Destroyed, name)
		}
	}
}

// setMembers maps each address set of p to its members per family ("v4",
// "v6"): its entries' prefixes and, followed by " nomatch", its excepts',
// in file order.
func setMembers(p *ruleset.Policy) map[string]map[string][]string {
	out := map[string]map[string][]string{}
	if p == nil {
		return out
	}
	for name, s := range p.Sets {
		fams := map[string][]string{"v4": {}, "v6": {}}
		for _, l := range []struct {
			entries []config.SetEntry
			flag    string
		}{{s.Entries, ""}, {s.Except, " nomatch"}} {
			for _, e := range l.entries {
				fam := "v4"
				if e.Prefix.Addr().Is6() {
					fam = "v6"
				}
				fams[fam] = append(fams[fam], e.Prefix.String()+l.flag)
			}
		}
		out[name] = fams
	}
	return out
}
