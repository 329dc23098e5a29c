package iptables

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// plan is a change of the iptables backend: one restore per family, one
// ebtables-restore, and the ipset scripts run before and after them.
type plan struct {
	tables map[ruleset.Family]*layout.Plan
	// bridge is the ebtables change, nil when ebtables is not managed.
	bridge *layout.Plan
	// setsBefore and setsAfter are the ipset scripts run before the
	// rules change (sets and members the new rules need) and after it
	// (sets nothing references any more).
	setsBefore, setsAfter string
	summary               *backend.Summary
	// st is what the plan was made from: the text a revert writes back.
	st *state
	// held is what the address sets hold once the plan is written.
	held map[string]heldSet
	// edit, for a plan of an edit of address sets alone made from the
	// sets Mark remembered (setedit.go), is the change of each ipset, by
	// name, which Apply then makes to the memory too.
	edit map[string]layout.MemberChanges
	// check, for a plan of an edit of address sets alone, is what Apply
	// verifies the kernel holds once it is written (applyChecked).
	check *setCheck
}

// Empty reports whether nothing is written: no chain, hook or set, and no
// leftover of an interrupted set rebuild to remove (which the summary of
// sets does not name).
func (p *plan) Empty() bool {
	for _, t := range p.tables {
		if !t.Empty() {
			return false
		}
	}
	return (p.bridge == nil || p.bridge.Empty()) && p.setsBefore == "" && p.setsAfter == ""
}

func (p *plan) Summary() *backend.Summary { return p.summary }

func (p *plan) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	if p.Empty() {
		b.WriteString("# no changes\n")
	}
	if p.setsBefore != "" {
		b.WriteString("# ipset restore\n" + p.setsBefore)
	}
	for _, f := range ruleset.Families {
		if t := p.tables[f]; t != nil && !t.Empty() {
			tool := "iptables-restore"
			if f == ruleset.IPv6 {
				tool = "ip6tables-restore"
			}
			b.WriteString("# " + tool + " --noflush\n" + t.Render())
		}
	}
	if p.bridge != nil && !p.bridge.Empty() {
		b.WriteString("# ebtables-restore --noflush\n" + p.bridge.Render())
	}
	if p.setsAfter != "" {
		b.WriteString("# ipset restore\n" + p.setsAfter)
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// Plan compares want, laid out as chains, with the kernel. A hint about
// attached or detached interfaces or edited groups lets it read and lay
// out only the chains the change touches (scoped.go); when what it reads
// there is not exactly what the hint promises (drift, an edit not yet
// applied) it plans everything.
func (b *Backend) Plan(ctx context.Context, s backend.State, want *ruleset.Policy, hint *backend.Hint) (backend.Plan, error) {
	p, err := b.plan(ctx, s.(*state), want, hint)
	if err != nil {
		return nil, err
	}
	if p.Empty() {
		// The kernel holds want's sets already: as good as written.
		b.setHeld(p.held)
	}
	return p, nil
}

func (b *Backend) plan(ctx context.Context, st *state, want *ruleset.Policy, hint *backend.Hint) (*plan, error) {
	if hint != nil && hint.Was != nil && want != nil {
		if p, ok, err := b.planScoped(ctx, st, want, hint); ok || err != nil {
			return p, err
		}
	}
	if !st.full {
		full, err := b.readFull(ctx, false)
		if err != nil {
			return nil, err
		}
		*st = *full
	} else if err := b.complete(ctx, st); err != nil {
		return nil, err
	}
	start := time.Now()
	rs := &layout.Ruleset{Tables: map[ruleset.Family]*layout.Table{}}
	if want != nil {
		rs = layout.Build(want)
		trace.Since(start, "lay out %d interfaces", len(want.Interfaces))
	}
	p := b.diff(rs, st)
	p.held = heldOf(want, rs.Sets)
	return p, nil
}

// diff is the plan that takes the kernel from st to rs.
func (b *Backend) diff(rs *layout.Ruleset, st *state) *plan {
	start := time.Now()
	defer trace.Since(start, "compare with the kernel")
	p := &plan{tables: map[ruleset.Family]*layout.Plan{}, st: st, summary: &backend.Summary{Tables: map[string]backend.TableChanges{}}}
	for _, f := range ruleset.Families {
		want := rs.Tables[f]
		if want == nil {
			want = &layout.Table{Family: f}
		}
		p.tables[f] = layout.Diff(want, st.tables[f].Observed)
		p.summary.Tables[f.String()] = tableChanges(p.tables[f])
	}
	if b.bridge != nil {
		want := rs.Bridge
		if want == nil {
			want = &layout.Table{Bridge: true}
		}
		p.bridge = layout.Diff(want, st.bridge)
		p.summary.Tables["bridge"] = tableChanges(p.bridge)
	}
	p.setsBefore, p.setsAfter = ipset.Plan(rs.Sets, st.sets)
	p.summary.Sets = setChanges(rs.Sets, st.sets)
	return p
}

// tableChanges names what a layout plan writes.
func tableChanges(p *layout.Plan) backend.TableChanges {
	names := func(list []layout.Chain) []string {
		out := make([]string, 0, len(list))
		for _, c := range list {
			out = append(out, string(c))
		}
		slices.Sort(out)
		return out
	}
	hooks := func(list []layout.Hook) []string {
		out := make([]string, 0, len(list))
		for _, h := range list {
			out = append(out, string(h.From)+" -> "+string(h.To))
		}
		return out
	}
	return backend.TableChanges{Created: names(p.Create), Rewritten: names(p.Rewrite), Deleted: names(p.Delete),
		HooksAdded: hooks(p.AddHooks), HooksRemoved: hooks(p.DelHooks)}
}

// setChanges compares the sets a ruleset wants with those the kernel has.
// Both sides are in ipset.Member's form (layout writes it, ipset.Parse
// reads it), so "2001:DB8::1" and "2001:db8::1" are one member; a member
// of an address set whose nomatch flag changes is removed with one flag
// and added with the other.
func setChanges(want []layout.Set, have map[string]*ipset.Observed) backend.SetChanges {
	sc := backend.NewSetChanges()
	wanted := map[string]bool{}
	for _, s := range want {
		wanted[s.Name] = true
		o := have[s.Name]
		var got map[string]bool
		if o == nil {
			sc.Created = append(sc.Created, s.Name)
		} else {
			got = o.Members
		}
		addChanges(&sc, s.Name, ipset.Changes(s.Members, got))
	}
	for name := range have {
		if !wanted[name] && layout.IsOwnedSet(name) {
			sc.Destroyed = append(sc.Destroyed, name)
		}
	}
	slices.Sort(sc.Created)
	slices.Sort(sc.Destroyed)
	return sc
}

// addChanges records c, the members set name gains and loses, in sc.
func addChanges(sc *backend.SetChanges, name string, c layout.MemberChanges) {
	if len(c.Added) > 0 {
		sc.Added[name] = c.Added
	}
	if len(c.Removed) > 0 {
		sc.Removed[name] = c.Removed
	}
}

// Apply writes the plan: the sets the new rules need, both families'
// transactions side by side, the bridge table, then the removal of sets
// nothing references. When a family or the bridge table fails, what was
// written of the others is reverted, so the host never keeps one family's
// new rules beside the other's old ones. When only the last step fails
// the rules are in place and unreferenced sets remain, which the next
// change removes; the error says so.
func (b *Backend) Apply(ctx context.Context, bp backend.Plan) error {
	p := bp.(*plan)
	if p.Empty() {
		b.setHeld(p.held)
		return nil
	}
	mem := b.takeMemory()
	write := b.apply
	if p.check != nil {
		write = b.applyChecked
	}
	if err := write(ctx, p); err != nil {
		b.setHeld(nil)
		if p.st.remembered {
			return &backend.StaleError{Err: err}
		}
		return err
	}
	b.setHeld(p.held)
	if p.edit != nil {
		b.rememberEdit(mem, p.edit)
	}
	return nil
}

func (b *Backend) apply(ctx context.Context, p *plan) error {
	if err := b.linesFor(ctx, p); err != nil {
		return err
	}
	if err := b.sets.Restore(ctx, p.setsBefore); err != nil {
		return err
	}
	if err := b.restoreFamilies(ctx, p); err != nil {
		return err
	}
	if p.bridge != nil && !p.bridge.Empty() {
		if err := b.bridge.Restore(ctx, p.bridge.Render()); err != nil {
			return errors.Join(err, b.revert(ctx, p, ruleset.Families))
		}
	}
	if err := b.sets.Restore(ctx, p.setsAfter); err != nil {
		return fmt.Errorf("rules applied, but removing unused ipsets failed: %w", err)
	}
	return nil
}

// restoreFamilies writes each family's transaction, the families side by
// side: they are separate transactions, and what iptables-restore does
// before its commit (parsing, reading the cache) overlaps. That is most of
// a large transaction (a first apply at 5000 taps: 26 s instead of 44).
// Small ones gain little: nf_tables commits one transaction at a time, and
// iptables-nft restarts a commit when the other family's moved the
// ruleset generation (docs/performance.md). When one fails (its table
// stays as it was), the families that succeeded are reverted: the same
// all-or-nothing as writing them one after the other and stopping at the
// first failure.
func (b *Backend) restoreFamilies(ctx context.Context, p *plan) error {
	errs := make([]error, len(ruleset.Families))
	var wg sync.WaitGroup
	for i, f := range ruleset.Families {
		if p.tables[f] == nil {
			continue
		}
		text := p.tables[f].Render()
		if text == "" {
			continue
		}
		wg.Go(func() {
			start := time.Now()
			errs[i] = b.tables.Restore(ctx, f, text)
			trace.Since(start, "write the %s table (%d bytes)", f, len(text))
		})
	}
	wg.Wait()
	var done []ruleset.Family
	var failed []error
	for i, f := range ruleset.Families {
		if errs[i] != nil {
			failed = append(failed, errs[i])
		} else {
			done = append(done, f)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return errors.Join(append(failed, b.revert(ctx, p, done))...)
}

// maxChainLineReads is how many chains' text a change reads one by one;
// above it one whole-table read is cheaper.
const maxChainLineReads = 16

// linesFor reads the rule text of the chains the plan rewrites or deletes
// in families read without it, so that a failure can put them back.
func (b *Backend) linesFor(ctx context.Context, p *plan) error {
	for _, f := range ruleset.Families {
		lp := p.tables[f]
		if lp == nil || !p.st.textless[f] || lp.Empty() {
			continue
		}
		need := append(slices.Clone(lp.Rewrite), lp.Delete...)
		if len(need) > maxChainLineReads {
			full, err := b.tables.Save(ctx, f)
			if err != nil {
				return err
			}
			p.st.tables[f].Lines = full.Lines
		} else if len(need) > 0 {
			lines, err := b.tables.ChainLines(ctx, f, need)
			if err != nil {
				return err
			}
			for c, l := range lines {
				p.st.tables[f].Lines[c] = l
			}
		}
		p.st.textless[f] = false
	}
	return nil
}

// revert undoes the families already changed when a later step fails, so
// the host never keeps IPv4 rules from the new configuration and IPv6
// from the old. It writes the chains back whole, also where the forward
// transaction only deleted rules.
func (b *Backend) revert(ctx context.Context, p *plan, done []ruleset.Family) error {
	var errs []error
	for _, f := range done {
		if p.tables[f] == nil {
			continue
		}
		if err := b.tables.Restore(ctx, f, p.tables[f].Revert(p.st.tables[f].Observed)); err != nil {
			errs = append(errs, fmt.Errorf("reverting %s after failure: %w", f, err))
		}
	}
	return errors.Join(errs...)
}
