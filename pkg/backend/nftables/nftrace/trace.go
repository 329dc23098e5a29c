// Package nftrace is the nftables backend's side of vmfw trace
// (docs/trace.md, docs/nftables.md "Tracing"): an interpreter of the
// netlink expressions vmfw's rules are made of (machine.go), the hooks a
// packet meets on each path through the host, bridge and inet tables'
// base chains in priority order with the mark handing state and verdicts
// from one to the next (path.go), and the drift on the way.
//
// The same interpreter walks the rules read back from the kernel and the
// rules the backend lays out for a policy (turned into the same
// expressions by package nlnft), so that the kernel's answer can be
// checked against the configuration's, and everything that differs on
// the packet's way named. Like package layout it is pure: the backend
// reads the kernel (nlnft.Client.Inspect), tests build kernels by hand.
package nftrace

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Kernel is vmfw's tables as read for a trace, with the mark bits the
// backend gives them: a backend.Inspection.
type Kernel struct {
	// Read is what the backend read: chains with their rules as netlink
	// expressions, sets with their elements, anonymous sets.
	Read *nlnft.Inspection
	// Marks are the backend's mark bits.
	Marks layout.Marks
	// Interfaces are the interfaces installed (the ports set), sorted.
	Interfaces []string

	mu        sync.Mutex
	installed *ruleset.Policy
	laidOut   *layout.Ruleset
}

var _ backend.Inspection = (*Kernel)(nil)

// Installed names the interfaces installed.
func (k *Kernel) Installed() []string { return k.Interfaces }

// Describe names how the tables were read.
func (k *Kernel) Describe() string { return "nftables (netlink)" }

// Trace lays out installed and want and prepares the walks of one flow
// over them and over the kernel.
func (k *Kernel) Trace(installed, want *ruleset.Policy, name func(ruleset.Origin) string) backend.KernelTrace {
	f := &flow{k: k, name: name, actual: k.layOut(installed), policies: []*ruleset.Policy{want, installed}}
	f.compiled = f.actual
	if want != installed {
		f.compiled = layout.Build(want, k.Marks)
	}
	return f
}

// layOut returns the layout of p, once per batch of traces.
func (k *Kernel) layOut(p *ruleset.Policy) *layout.Ruleset {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.installed != p {
		k.installed, k.laidOut = p, layout.Build(p, k.Marks)
	}
	return k.laidOut
}

// tables are the two tables a walk runs in; a nil one does not exist.
type tables struct {
	bridge, inet *table
}

func (ts tables) of(f layout.Family) *table {
	if f == layout.Bridge {
		return ts.bridge
	}
	return ts.inet
}

// flow is one trace's walks: over the kernel and over the layouts of the
// wanted policy (compiled) and the installed one (actual), which drift
// compares the kernel with.
type flow struct {
	k                *Kernel
	name             func(ruleset.Origin) string
	compiled, actual *layout.Ruleset
	// policies are the wanted policy and the installed one, where a frame
	// to a VM finds its destination MAC (backend.DestinationMAC).
	policies []*ruleset.Policy

	once              sync.Once
	err               error
	kernel, comp, act tables
}

// prepare turns the layouts and the kernel's tables into the
// interpreter's form, once per flow.
func (t *flow) prepare() error {
	t.once.Do(func() {
		conv := func(rs *layout.Ruleset) (tables, error) {
			b, err := fromLayout(rs.Bridge)
			if err != nil {
				return tables{}, err
			}
			i, err := fromLayout(rs.Inet)
			return tables{bridge: b, inet: i}, err
		}
		if t.comp, t.err = conv(t.compiled); t.err != nil {
			return
		}
		t.act = t.comp
		if t.actual != t.compiled {
			if t.act, t.err = conv(t.actual); t.err != nil {
				return
			}
		}
		ins := t.k.Read
		t.kernel = tables{
			bridge: fromKernel(layout.Bridge, ins, t.actual.Bridge, t.compiled.Bridge),
			inet:   fromKernel(layout.Inet, ins, t.actual.Inet, t.compiled.Inet),
		}
	})
	return t.err
}

// Walk follows p through the kernel's tables and the compiled ones, and
// names the drift on the kernel's way.
func (t *flow) Walk(p backend.Packet) (kernel, compiled backend.Walk) {
	if err := t.prepare(); err != nil {
		w := backend.Walk{Err: fmt.Errorf("laying out the policy for the walk: %w", err)}
		return w, w
	}
	c := t.walk(t.comp, p)
	a := c
	if t.actual != t.compiled {
		a = t.walk(t.act, p)
	}
	k := t.walk(t.kernel, p)
	kernel = k.public()
	kernel.Drift = t.drift(a, k)
	return kernel, c.public()
}

// drift names what differs, on the kernel walk's way, from the layout of
// the installed policy: a missing table, chains entered (or that the
// installed policy's walk entered) whose fingerprints differ, sets looked
// up whose elements differ.
func (t *flow) drift(actual, krn *result) []string {
	out := []string{}
	seen := map[string]bool{}
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, f := range []layout.Family{layout.Bridge, layout.Inet} {
		if t.kernel.of(f) == nil {
			add("table " + string(f) + " " + layout.TableName + " missing")
		}
	}
	for _, obj := range append(slices.Clone(krn.entered), actual.entered...) {
		f, name := splitObject(obj)
		kt, at := t.kernel.of(f), t.act.of(f)
		if kt == nil || at == nil {
			continue
		}
		kc, ac := kt.chains[name], at.chains[name]
		switch {
		case kc == nil && ac != nil:
			add(obj + " missing")
		case kc != nil && ac == nil:
			add(obj + " unexpected")
		case kc != nil && !sameRules(kc, ac):
			add(obj + " differs")
		}
	}
	for _, name := range slices.Sorted(maps.Keys(krn.setsUsed)) {
		f, set := splitObject(name)
		kt, at := t.kernel.of(f), t.act.of(f)
		if kt == nil || at == nil || kt.sets[set] == nil {
			continue
		}
		if d := setDiff(kt.sets[set], at.sets[set]); d != "" {
			add("set " + name + " differs: " + d)
		}
	}
	return out
}

func splitObject(obj string) (layout.Family, string) {
	for _, f := range []layout.Family{layout.Bridge, layout.Inet} {
		if p := string(f) + "/"; len(obj) > len(p) && obj[:len(p)] == p {
			return f, obj[len(p):]
		}
	}
	return "", obj
}

func sameRules(a, b *chain) bool {
	if len(a.rules) != len(b.rules) || !sameHook(a.hook, b.hook) {
		return false
	}
	for i := range a.rules {
		if a.rules[i].hash != b.rules[i].hash {
			return false
		}
	}
	return true
}

func sameHook(a, b *layout.Hook) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

// setDiff says how the kernel's set k differs from the laid out w, ""
// when it does not.
func setDiff(k, w *set) string {
	if w == nil {
		return "not laid out"
	}
	var missing, extra, other int
	for key := range w.keys {
		switch {
		case !k.keys[key]:
			missing++
		case w.data != nil && k.data[key] != w.data[key]:
			other++ // a verdict map's element jumps elsewhere
		}
	}
	for key := range k.keys {
		if !w.keys[key] {
			extra++
		}
	}
	switch {
	case missing+extra+other == 0:
		return ""
	case other > 0:
		return fmt.Sprintf("%d elements missing, %d unexpected, %d with another verdict", missing, extra, other)
	}
	return fmt.Sprintf("%d elements missing, %d unexpected", missing, extra)
}
