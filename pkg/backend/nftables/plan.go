package nftables

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
)

// plan is a change of vmfw's tables: one batch.
type plan struct {
	batch *nlnft.Batch
	// hinted says the plan was made from the hint's installed policy,
	// not from the sets' elements as read (Backend.planHinted).
	hinted bool
	// scoped says the plan was laid out for what the hint touches alone
	// (Backend.planScoped).
	scoped bool
	// hooks is the change of vmfw's rules in iptables' chains; nil when
	// the plan did not look at them.
	hooks *hookChange
	// st is the state the plan was made from.
	st      *state
	summary *backend.Summary
	// held is what the address sets hold once the plan is written
	// (setedit.go); edit, for a plan of an edit of address sets alone,
	// is that edit, and the plan has no want.
	held map[string]heldSet
	edit *setEdit
}

func (p *plan) Empty() bool               { return len(p.batch.Tables) == 0 && p.hooks.empty() }
func (p *plan) Summary() *backend.Summary { return p.summary }

// diff is the plan taking the kernel from st to want (nil: remove both
// tables). Chains are compared by their rules' fingerprints and
// rewritten whole when they differ; sets by their signature, and their
// elements one by one, so an interface's change sends its elements only.
func diff(want *layout.Ruleset, st *state) *plan {
	p := &plan{st: st, batch: &nlnft.Batch{Gen: st.obs.Gen},
		summary: &backend.Summary{Tables: map[string]backend.TableChanges{}, Sets: backend.NewSetChanges()}}
	for _, f := range []layout.Family{layout.Bridge, layout.Inet} {
		var wt *layout.Table
		if want != nil {
			wt = want.Bridge
			if f == layout.Inet {
				wt = want.Inet
			}
		}
		tc, changes := diffTable(f, wt, st.obs.Tables[f], &p.summary.Sets)
		p.summary.Tables[string(f)] = changes
		if tc != nil {
			p.batch.Tables = append(p.batch.Tables, tc)
		}
	}
	return p
}

// createsOrDeletes reports whether the plan creates or deletes a table.
func (p *plan) createsOrDeletes() bool {
	for _, tc := range p.batch.Tables {
		if tc.Create || tc.Delete {
			return true
		}
	}
	return false
}

// summarizeHooks adds the change of vmfw's rules in iptables' chains to
// the summary, as the part "iptables".
func (p *plan) summarizeHooks() {
	if p.hooks.empty() {
		return
	}
	t := backend.TableChanges{Created: []string{}, Rewritten: []string{}, Deleted: []string{}, HooksAdded: []string{}, HooksRemoved: []string{}}
	for _, hc := range p.hooks.insert {
		t.HooksAdded = append(t.HooksAdded, hc.String()+" -> vmfw accept")
	}
	for _, hc := range hookChains {
		if len(p.hooks.delete[hc]) > 0 {
			t.HooksRemoved = append(t.HooksRemoved, hc.String()+" -> vmfw accept")
		}
	}
	p.summary.Tables["iptables"] = t
}

// diffTable compares one table; tc is nil when nothing changes.
func diffTable(f layout.Family, want *layout.Table, have *nlnft.ObservedTable, sc *backend.SetChanges) (tc *nlnft.TableChange, ch backend.TableChanges) {
	ch = backend.TableChanges{Created: []string{}, Rewritten: []string{}, Deleted: []string{}, HooksAdded: []string{}, HooksRemoved: []string{}}
	setName := func(s string) string { return string(f) + "/" + s }
	if want == nil {
		if have == nil {
			return nil, ch
		}
		for _, c := range slices.Sorted(maps.Keys(have.Chains)) {
			ch.Deleted = append(ch.Deleted, c)
			if have.Chains[c].Hook != nil {
				ch.HooksRemoved = append(ch.HooksRemoved, have.Chains[c].Hook.Hook+" -> "+c)
			}
		}
		for _, s := range slices.Sorted(maps.Keys(have.Sets)) {
			sc.Destroyed = append(sc.Destroyed, setName(s))
		}
		return &nlnft.TableChange{Family: f, Delete: true}, ch
	}
	tc = &nlnft.TableChange{Family: f, Sets: want.Sets, DelElements: map[string][]layout.Element{}, AddElements: map[string][]layout.Element{}}
	if have == nil {
		tc.Create = true
		have = &nlnft.ObservedTable{Chains: map[string]*nlnft.ObservedChain{}, Sets: map[string]*nlnft.ObservedSet{}}
	}
	recreated := map[string]bool{}
	for _, s := range want.Sets {
		o := have.Sets[s.Name]
		switch {
		case o == nil:
			tc.NewSets = append(tc.NewSets, s)
			sc.Created = append(sc.Created, setName(s.Name))
			addMembers(sc, setName(s.Name), s.Elements)
		case o.Signature != s.Signature():
			tc.DeleteSets = append(tc.DeleteSets, s.Name)
			tc.NewSets = append(tc.NewSets, s)
			recreated[s.Name] = true
			sc.Destroyed = append(sc.Destroyed, setName(s.Name))
			sc.Created = append(sc.Created, setName(s.Name))
			addMembers(sc, setName(s.Name), s.Elements)
		default:
			wanted := map[string]bool{}
			for _, e := range s.Elements {
				k := string(e.KeyBytes())
				_, have := o.Elements[k]
				if have && o.Data[k] == e.DataText() {
					wanted[k] = true
					continue
				}
				if have {
					// Other data (a map element jumping elsewhere): the
					// kernel replaces an element only by deleting it.
					tc.DelElements[s.Name] = append(tc.DelElements[s.Name], e)
					sc.Removed[setName(s.Name)] = append(sc.Removed[setName(s.Name)], e.Text())
				}
				wanted[k] = true
				tc.AddElements[s.Name] = append(tc.AddElements[s.Name], e)
				sc.Added[setName(s.Name)] = append(sc.Added[setName(s.Name)], e.Text())
			}
			// Only the elements that go are sorted, not the set (an
			// address set can hold 100,000).
			var gone []string
			for k := range o.Elements {
				if !wanted[k] {
					gone = append(gone, k)
				}
			}
			slices.Sort(gone)
			for _, k := range gone {
				e, ok := s.Decode([]byte(k))
				if !ok {
					// Not an element of this type: only a new set helps.
					tc.DeleteSets = append(tc.DeleteSets, s.Name)
					tc.NewSets = append(tc.NewSets, s)
					recreated[s.Name] = true
					break
				}
				tc.DelElements[s.Name] = append(tc.DelElements[s.Name], e)
				sc.Removed[setName(s.Name)] = append(sc.Removed[setName(s.Name)], e.Text())
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(recreated)) {
		delete(tc.AddElements, name)
		delete(tc.DelElements, name)
	}
	wantedChains := map[string]bool{}
	for _, c := range want.Chains {
		wantedChains[c.Name] = true
		o := have.Chains[c.Name]
		switch {
		case o == nil:
			tc.NewChains = append(tc.NewChains, c)
			tc.Fill = append(tc.Fill, c)
			ch.Created = append(ch.Created, c.Name)
			if c.Hook != nil {
				ch.HooksAdded = append(ch.HooksAdded, c.Hook.Hook+" -> "+c.Name)
			}
		case !sameHook(o.Hook, c.Hook):
			tc.Flush = append(tc.Flush, c.Name)
			tc.DeleteChains = append(tc.DeleteChains, c.Name)
			tc.NewChains = append(tc.NewChains, c)
			tc.Fill = append(tc.Fill, c)
			ch.Rewritten = append(ch.Rewritten, c.Name)
		case !slices.Equal(o.Hashes, c.Hashes()) || usesAny(c, recreated):
			tc.Flush = append(tc.Flush, c.Name)
			tc.Fill = append(tc.Fill, c)
			ch.Rewritten = append(ch.Rewritten, c.Name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(have.Chains)) {
		if !wantedChains[name] {
			tc.Flush = append(tc.Flush, name)
			tc.DeleteChains = append(tc.DeleteChains, name)
			ch.Deleted = append(ch.Deleted, name)
			if h := have.Chains[name].Hook; h != nil {
				ch.HooksRemoved = append(ch.HooksRemoved, h.Hook+" -> "+name)
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(have.Sets)) {
		if want.Set(name) == nil {
			tc.DeleteSets = append(tc.DeleteSets, name)
			sc.Destroyed = append(sc.Destroyed, setName(name))
		}
	}
	slices.Sort(ch.Created)
	slices.Sort(ch.Rewritten)
	slices.Sort(ch.Deleted)
	if !tc.Create && len(tc.Flush)+len(tc.DeleteChains)+len(tc.DeleteSets)+len(tc.NewSets)+len(tc.DelElements)+len(tc.AddElements)+len(tc.NewChains)+len(tc.Fill) == 0 {
		return nil, ch
	}
	return tc, ch
}

func addMembers(sc *backend.SetChanges, name string, elems []layout.Element) {
	for _, e := range elems {
		sc.Added[name] = append(sc.Added[name], e.Text())
	}
}

func sameHook(a, b *layout.Hook) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

// usesAny reports whether a rule of c looks up one of the sets.
func usesAny(c *layout.Chain, sets map[string]bool) bool {
	if len(sets) == 0 {
		return false
	}
	for _, r := range c.Rules {
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *layout.Lookup:
				if sets[e.Set] {
					return true
				}
			case *layout.VMap:
				if sets[e.Map] {
					return true
				}
			}
		}
	}
	return false
}

// observedOf is what a read would see of vmfw's tables holding rs
// (without counters and rule bodies); rs nil is no table.
func observedOf(rs *layout.Ruleset) *nlnft.Observed {
	out := &nlnft.Observed{Tables: map[layout.Family]*nlnft.ObservedTable{}}
	if rs == nil {
		return out
	}
	for _, t := range rs.Tables() {
		ot := &nlnft.ObservedTable{Chains: map[string]*nlnft.ObservedChain{}, Sets: map[string]*nlnft.ObservedSet{}}
		for _, c := range t.Chains {
			ot.Chains[c.Name] = &nlnft.ObservedChain{Hook: c.Hook, Hashes: c.Hashes()}
		}
		for _, s := range t.Sets {
			ot.Sets[s.Name] = nlnft.ObservedSetOf(s)
		}
		out.Tables[t.Family] = ot
	}
	return out
}

// WriteTo renders the plan as nft commands, in the order of the
// transaction (apply --dry-run); `nft -f` reads the same syntax.
func (p *plan) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	if p.Empty() {
		b.WriteString("# no changes\n")
	} else {
		b.WriteString("# one nf_tables transaction\n")
	}
	for _, tc := range p.batch.Tables {
		writeTableChange(&b, tc)
	}
	if !p.hooks.empty() {
		b.WriteString("# then iptables (not part of the transaction)\n")
		for _, hc := range hookChains {
			for _, l := range p.hooks.delete[hc] {
				b.WriteString("# " + hc.Family + ": " + strings.Replace(l, "-A ", "-D ", 1) + "\n")
			}
		}
		for _, hc := range p.hooks.insert {
			b.WriteString("# " + hc.Family + ": -I " + hc.Chain + " 1 " + strings.Join(p.hooks.rule, " ") + "\n")
		}
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

func writeTableChange(b *strings.Builder, tc *nlnft.TableChange) {
	tbl := string(tc.Family) + " " + layout.TableName
	if tc.Delete {
		b.WriteString("delete table " + tbl + "\n")
		return
	}
	if tc.Create {
		b.WriteString("add table " + tbl + "\n")
	}
	for _, c := range tc.Flush {
		b.WriteString("flush chain " + tbl + " " + c + "\n")
	}
	for _, c := range tc.DeleteChains {
		b.WriteString("delete chain " + tbl + " " + c + "\n")
	}
	for _, s := range tc.DeleteSets {
		b.WriteString("delete set " + tbl + " " + s + "\n")
	}
	for _, s := range tc.NewSets {
		b.WriteString("add set " + tbl + " " + s.Name + " { " + s.Signature() + "; }\n")
		writeElements(b, "add", tbl, s.Name, s.Elements)
	}
	for _, name := range slices.Sorted(maps.Keys(tc.DelElements)) {
		writeElements(b, "delete", tbl, name, tc.DelElements[name])
	}
	for _, name := range slices.Sorted(maps.Keys(tc.AddElements)) {
		writeElements(b, "add", tbl, name, tc.AddElements[name])
	}
	for _, c := range tc.NewChains {
		if h := c.Header(); h != "" {
			b.WriteString("add chain " + tbl + " " + c.Name + " { " + h + " }\n")
		} else {
			b.WriteString("add chain " + tbl + " " + c.Name + "\n")
		}
	}
	for _, c := range tc.Fill {
		for _, r := range c.Rules {
			b.WriteString("add rule " + tbl + " " + c.Name + " " + r.Text() + " comment " + strconv.Quote(r.UserComment(c.Name)) + "\n")
		}
	}
}

func writeElements(b *strings.Builder, verb, tbl, set string, elems []layout.Element) {
	if len(elems) == 0 {
		return
	}
	parts := make([]string, len(elems))
	for i, e := range elems {
		parts[i] = e.Text()
	}
	fmt.Fprintf(b, "%s element %s %s { %s }\n", verb, tbl, set, strings.Join(parts, ", "))
}
