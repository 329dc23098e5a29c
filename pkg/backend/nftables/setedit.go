package nftables

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// Edits of address sets alone (backend.Hint.Sets), as kube-proxy's
// nftables proxier syncs: only the elements that change are sent.
//
// The full plan of a one-entry edit of a set of 100,000 lays the whole
// policy out (the set's 100,000 effective prefixes, 30-100 ms), compares
// every element with the agent's memory of the kernel (copied for the
// plan, then two maps of 100,000 keys), and remembers the result as a
// new copy: 472 ms of the agent's 570 ms per edit on a loaded 2-core
// machine (docs/performance.md, "Address sets"). The engine knows more:
// which sets were edited, and their configuration before and after. When
// the kernel is known to hold the sets as the backend last wrote them,
// the change is the difference of the two configurations' effective
// prefixes around the prefixes that changed (config.EffectiveEdit: ~4 ms
// for 100,000 entries), sent as the elements deleted and added, in one
// transaction.
//
// "Known to hold" is exact here, unlike on the iptables backend: every
// nf_tables commit moves the ruleset generation. held records, with the
// generation the backend's last write made (or found the tables at, when
// nothing was to be written), the configuration each address set's
// interval sets were laid out from and their effective prefixes. The
// edit is planned from it only when the state it plans from is the
// memory of that very generation (Read returns it while the generation
// has not moved), and the batch carries that generation, which the kernel
// checks at commit: if anyone committed in between, nothing is written
// and Apply returns backend.StaleError, on which the engine reads the
// tables and plans in full. Besides, the memory must show every chain and
// every other set as the policy lays them out (the edit's promise, kept
// by a layout of the policy without the address sets' elements), each
// edited interval set the size held, each element to delete present and
// each to add absent.

// heldSets is what the address sets' interval sets hold at generation
// gen: per configuration set, the set they were laid out from and their
// effective prefixes per family.
type heldSets struct {
	gen  uint32
	sets map[string]heldSet
}

type heldSet struct {
	config *config.Set
	eff    map[ruleset.Family][]netip.Prefix
}

// heldOf returns what the address sets of want hold once rs, want's
// layout, is in the tables; nil for no policy.
func heldOf(want *ruleset.Policy, rs *layout.Ruleset) map[string]heldSet {
	if want == nil || rs == nil {
		return nil
	}
	out := make(map[string]heldSet, len(want.Sets))
	for name, s := range want.Sets {
		h := heldSet{config: s.Config, eff: map[ruleset.Family][]netip.Prefix{}}
		for _, f := range ruleset.Families {
			if ls := rs.Bridge.Set(layout.AddressSet(name, f)); ls != nil {
				h.eff[f] = ls.Prefixes
			}
		}
		out[name] = h
	}
	return out
}

// setHeld records held as what the tables hold at generation gen; held
// nil forgets.
func (b *Backend) setHeld(gen uint32, held map[string]heldSet) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if held == nil || gen == 0 {
		b.held = nil
		return
	}
	b.held = &heldSets{gen: gen, sets: held}
}

// heldAfter returns what the address sets hold once p is written: the
// plan's own account when it laid the sets out (a full or hinted plan),
// else (a scoped plan lays out only what its change touches) what was
// held at the generation p was planned at, provided p's batch touches no
// address set; nil when that is not known.
func (b *Backend) heldAfter(p *plan) map[string]heldSet {
	if p.held != nil {
		return p.held
	}
	b.mu.Lock()
	held := b.held
	b.mu.Unlock()
	if held == nil || held.gen == 0 || p.batch == nil || held.gen != p.batch.Gen || touchesAddressSets(p.batch) {
		return nil
	}
	return held.sets
}

// touchesAddressSets reports whether a batch creates, deletes or changes
// the elements of an address set's interval set, or a whole table.
func touchesAddressSets(batch *nlnft.Batch) bool {
	isAS := func(name string) bool {
		_, _, ok := layout.ParseAddressSet(name)
		return ok
	}
	for _, t := range batch.Tables {
		if t.Delete || t.Create || slices.ContainsFunc(t.DeleteSets, isAS) ||
			slices.ContainsFunc(t.NewSets, func(s *layout.Set) bool { return isAS(s.Name) }) {
			return true
		}
		for _, m := range []map[string][]layout.Element{t.DelElements, t.AddElements} {
			for name := range m {
				if isAS(name) {
					return true
				}
			}
		}
	}
	return false
}

// setEdit is a plan's edit of address sets' elements alone: the
// elements deleted and added per interval set, and what the sets hold
// once it is written.
type setEdit struct {
	del, add map[string][]layout.Element
	held     map[string]heldSet
}

// planSetEdit plans an edit of address sets alone from what held says
// the tables hold; nil when the tables are not known to hold the sets as
// they were, and the plan must be made in full.
func (b *Backend) planSetEdit(st *state, want *ruleset.Policy, edits []backend.SetEdit) *plan {
	start := time.Now()
	b.mu.Lock()
	held := b.held
	b.mu.Unlock()
	switch {
	case held == nil:
		trace.Printf("set edit: what the address sets hold is not known")
		return nil
	case !st.remembered || st.obs.Gen != held.gen:
		trace.Printf("set edit: the tables are not remembered at the generation of the last write")
		return nil
	case len(held.sets) != len(want.Sets):
		return nil
	}
	edited := map[string]bool{}
	for _, e := range edits {
		edited[e.Name] = true
	}
	for name, s := range want.Sets {
		h, ok := held.sets[name]
		if !ok || !edited[name] && !h.config.SameMembers(s.Config) {
			trace.Printf("set edit: address set %s is not held as the policy has it", name)
			return nil
		}
	}
	have := st.obs.Tables[layout.Bridge]
	rs := layout.Build(withoutSetConfigs(want), b.marks)
	if have == nil || !sameButAddressSets(st.obs, rs) {
		trace.Printf("set edit: the tables do not hold the policy's chains and other sets")
		return nil
	}
	ed := &setEdit{del: map[string][]layout.Element{}, add: map[string][]layout.Element{}, held: make(map[string]heldSet, len(held.sets))}
	for name, h := range held.sets {
		ed.held[name] = h
	}
	summary := &backend.Summary{Tables: map[string]backend.TableChanges{}, Sets: backend.NewSetChanges()}
	for _, f := range []layout.Family{layout.Bridge, layout.Inet} {
		summary.Tables[string(f)] = backend.TableChanges{Created: []string{}, Rewritten: []string{}, Deleted: []string{}, HooksAdded: []string{}, HooksRemoved: []string{}}
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range edited {
			if want.Sets[n] != nil && !yield(n) {
				return
			}
		}
	})
	for _, name := range names {
		h, now := held.sets[name], want.Sets[name].Config
		next := heldSet{config: now, eff: map[ruleset.Family][]netip.Prefix{}}
		for _, f := range ruleset.Families {
			kname := layout.AddressSet(name, f)
			nowEff, removed, added, ok := config.EffectiveEdit(h.config, now, f == ruleset.IPv6, h.eff[f])
			o := have.Sets[kname]
			if !ok || o == nil || len(o.Elements) != len(h.eff[f]) {
				trace.Printf("set edit: interval set %s is not held as it was", kname)
				return nil
			}
			next.eff[f] = nowEff
			for _, p := range removed {
				e := layout.PrefixElement(p)
				if _, in := o.Elements[string(e.KeyBytes())]; !in {
					return nil
				}
				ed.del[kname] = append(ed.del[kname], e)
				summary.Sets.Removed["bridge/"+kname] = append(summary.Sets.Removed["bridge/"+kname], e.Text())
			}
			for _, p := range added {
				e := layout.PrefixElement(p)
				if _, in := o.Elements[string(e.KeyBytes())]; in {
					return nil
				}
				ed.add[kname] = append(ed.add[kname], e)
				summary.Sets.Added["bridge/"+kname] = append(summary.Sets.Added["bridge/"+kname], e.Text())
			}
		}
		ed.held[name] = next
	}
	p := &plan{st: st, summary: summary, edit: ed, batch: &nlnft.Batch{Gen: st.obs.Gen}}
	if len(ed.del)+len(ed.add) > 0 {
		p.batch.Tables = []*nlnft.TableChange{{Family: layout.Bridge, Sets: rs.Bridge.Sets, DelElements: ed.del, AddElements: ed.add}}
	}
	trace.Since(start, "plan the edit of address sets %s from their configuration", strings.Join(names, ", "))
	return p
}

// withoutSetConfigs returns want with its address sets' configuration
// left out, which lays them out as empty interval sets: what the rest of
// the layout is made of costs no effective prefix.
func withoutSetConfigs(want *ruleset.Policy) *ruleset.Policy {
	p := *want
	p.Sets = make(map[string]*ruleset.Set, len(want.Sets))
	for name, s := range want.Sets {
		c := *s
		c.Config, c.Entries, c.Except = nil, nil, nil
		p.Sets[name] = &c
	}
	return &p
}

// sameButAddressSets reports whether obs holds rs's chains and sets,
// every set's elements but the address sets' included.
func sameButAddressSets(obs *nlnft.Observed, rs *layout.Ruleset) bool {
	if !holdsLayout(obs, rs) {
		return false
	}
	for _, t := range rs.Tables() {
		have := obs.Tables[t.Family]
		for _, s := range t.Sets {
			if t.Family == layout.Bridge && isListSet(s.Name) {
				continue
			}
			o := have.Sets[s.Name]
			if len(o.Elements) != len(s.Elements) {
				return false
			}
			for _, e := range s.Elements {
				if _, ok := o.Elements[string(e.KeyBytes())]; !ok {
					return false
				}
			}
		}
	}
	return true
}

// appliedEdit changes st, the memory the plan of edit was made from, as
// the transaction changed the tables, and records it as their state at
// generation gen: the next plan needs no copy of 100,000 elements. The
// edit leaves the ports set, and so the installed interfaces, as they
// were.
func (b *Backend) appliedEdit(st *state, ed *setEdit, gen uint32) {
	obs := st.obs
	t := obs.Tables[layout.Bridge]
	for name, elems := range ed.del {
		for _, e := range elems {
			delete(t.Sets[name].Elements, string(e.KeyBytes()))
		}
	}
	for name, elems := range ed.add {
		for _, e := range elems {
			t.Sets[name].Elements[string(e.KeyBytes())] = nlnft.Counter{}
		}
	}
	obs.Gen = gen
	b.mu.Lock()
	b.pending = &kept{obs: obs, installed: st.installed}
	b.mu.Unlock()
	b.setHeld(gen, ed.held)
}
