package iptables

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// Scoped changes.
//
// A full plan reads every chain (iptables-save of both families and
// ebtables-save, or their fingerprints over netlink), lays out every
// interface and diffs it all: at 5000 taps that is seconds of work to
// change a dozen chains. When the hint says which interfaces or groups
// changed, planScoped instead
//
//   - lays out only the scope of the change (layout.BuildScope,
//     layout.GroupScope): the interfaces' chains, their groups', the entry
//     chains, the dispatch roots and the few dispatch chains whose rules
//     change,
//   - reads back just those chains and the hooks (over netlink on
//     nf_tables; on legacy from the whole tables, read once), and
//   - diffs and applies them through the same plan as a full change, so
//     ordering, ipsets and the revert of one family when the other fails
//     are shared.
//
// It vouches for its plan only when every rule it reads in scope is one
// it can name: a rule of the policy before or after the change. Anything
// else (a group or VM file edited since the last apply, a hand-made rule,
// an installed interface whose settings the hint does not know) makes it
// plan everything, which repairs it. Reading no rule text, it rebuilds
// the text a revert needs from those same known rules.

// unknownRule stands for the rules of an ebtables chain in scope, which
// are not read (ebtables rules carry no fingerprint): it matches no
// desired rule, so the chain is rewritten.
const unknownRule = "\x00unknown"

// planScoped plans the change hint describes from the chains in its
// scope. ok is false, with nothing read beyond what it says, when it
// cannot vouch for the plan; the caller then plans everything.
func (b *Backend) planScoped(ctx context.Context, st *state, want *ruleset.Policy, hint *backend.Hint) (p *plan, ok bool, err error) {
	if hint.Members {
		if len(hint.Sets) > 0 {
			if p, ok, err := b.planSetEdit(ctx, want, hint.Sets); ok || err != nil {
				return p, ok, err
			}
		}
		return b.planMembers(ctx, st, want)
	}
	if b.bridge != nil && !b.bridge.Narrow() {
		trace.Printf("full plan: the ebtables backend cannot read single chains")
		return nil, false, nil
	}
	start := time.Now()
	var sc *layout.Scope
	switch {
	case hint.Interfaces != nil:
		sc = layout.BuildScope(hint.Was, want, hint.Interfaces)
		trace.Since(start, "lay out the scope of %s (%d interfaces installed)", strings.Join(hint.Interfaces, ", "), len(hint.Was.Interfaces))
	case hint.Groups != nil:
		if sc = layout.GroupScope(hint.Was, want, hint.Groups); sc == nil {
			trace.Printf("full plan: the edit reaches beyond the groups' chains")
			return nil, false, nil
		}
		trace.Since(start, "lay out the scope of groups %s", strings.Join(hint.Groups, ", "))
	default:
		return nil, false, nil
	}
	scoped, ok, err := b.readScope(ctx, st, sc)
	if !ok || err != nil {
		return nil, ok, err
	}
	p = b.diff(&layout.Ruleset{Tables: sc.Tables, Bridge: sc.Bridge, Sets: sc.Sets}, scoped)
	p.held = heldOf(want, sc.Sets)
	for f, dels := range pureDeletions(sc, scoped) {
		p.tables[f].DeleteOnly = dels
	}
	return p, true, nil
}

// readScope reads the chains in sc's scope and the hooks, checks that
// every rule in them is one sc knows, and returns them as a state whose
// rule text is rebuilt from those known rules. ok is false when a rule is
// unknown or a narrow read fails.
func (b *Backend) readScope(ctx context.Context, st *state, sc *layout.Scope) (scoped *state, ok bool, err error) {
	scoped = &state{full: true, tables: map[ruleset.Family]*xtables.Snapshot{}, textless: map[ruleset.Family]bool{}}
	if st.full {
		if err := b.completeTables(ctx, st); err != nil {
			return nil, false, err
		}
	}
	for _, f := range ruleset.Families {
		start := time.Now()
		read := append(slices.Clone(sc.Chains[f]), slices.Sorted(maps.Keys(sc.Expect[f]))...)
		var snap *xtables.Snapshot
		if st.full {
			snap = st.tables[f].Only(read)
		} else if snap, err = b.tables.SaveChains(ctx, f, read); err != nil {
			trace.Printf("full plan: reading %s chains: %v", f, err)
			return nil, false, nil
		}
		trace.Since(start, "read %d %s chains", len(read), f)
		if c, ok := unexpected(sc.Expect[f], snap); !ok {
			trace.Printf("full plan: %s/%s, which the scope relies on, is not as the configuration lays it out (an edit not applied yet, or drift)", f, c)
			return nil, false, nil
		}
		for c, hashes := range snap.Chains {
			snap.Lines[c] = nil
			for _, h := range hashes {
				rule, ok := sc.Known[f][c][h]
				if !ok {
					trace.Printf("full plan: %s/%s holds a rule the scope does not know (drift, or an edit not applied yet)", f, c)
					return nil, false, nil
				}
				snap.Lines[c] = append(snap.Lines[c], rule.Line(c))
			}
		}
		scoped.tables[f] = snap
	}
	if b.bridge != nil {
		start := time.Now()
		names := append(slices.Clone(sc.BridgeChains), slices.Sorted(maps.Keys(sc.ExpectBridge))...)
		exist, err := b.bridge.ChainsExist(ctx, names)
		if err != nil {
			trace.Printf("full plan: reading ebtables chains: %v", err)
			return nil, false, nil
		}
		for c, want := range sc.ExpectBridge {
			if exist[c] != want {
				trace.Printf("full plan: bridge/%s, which the scope relies on, is not as the configuration lays it out", c)
				return nil, false, nil
			}
		}
		var present []layout.Chain
		for _, c := range sc.BridgeChains {
			if exist[c] {
				present = append(present, c)
			}
		}
		targets, err := b.bridge.Targets(ctx, present)
		if err != nil {
			trace.Printf("full plan: reading ebtables chains: %v", err)
			return nil, false, nil
		}
		for _, c := range present {
			if want, known := sc.BridgeTargets[c]; !known || !slices.Equal(targets[c], want) {
				trace.Printf("full plan: bridge/%s jumps elsewhere than the configuration lays it out", c)
				return nil, false, nil
			}
		}
		hooks, err := b.bridge.Hooks(ctx)
		if err != nil {
			trace.Printf("full plan: reading ebtables hooks: %v", err)
			return nil, false, nil
		}
		trace.Since(start, "read %d ebtables chains", len(names))
		scoped.bridge = layout.Observed{Chains: map[layout.Chain][]string{}, Lines: map[layout.Chain][]string{}, Hooks: hooks}
		for _, c := range sc.BridgeChains {
			if exist[c] {
				scoped.bridge.Chains[c] = []string{unknownRule}
			}
		}
	}
	if scoped.sets, scoped.remembered, err = b.listSets(ctx); err != nil {
		return nil, false, err
	}
	return scoped, true, nil
}

// unexpected checks the chains of expect in snap, which it then leaves
// out of snap (they are read, never written): each must hold exactly the
// fingerprints expect lists, or be absent where it lists none. It returns
// the first chain that differs.
func unexpected(expect map[layout.Chain][]string, snap *xtables.Snapshot) (layout.Chain, bool) {
	for _, c := range slices.Sorted(maps.Keys(expect)) {
		got, present := snap.Chains[c]
		want := expect[c]
		if present != (want != nil) || !slices.Equal(got, want) {
			return c, false
		}
		delete(snap.Chains, c)
		delete(snap.Lines, c)
		delete(snap.Counters, c)
		delete(snap.Foreign, c)
	}
	return "", true
}

// planMembers plans a change of set members alone (cluster membership,
// an edit of address sets): the ipset members to add and remove, no
// chain. When a set would be created or destroyed, rules would change
// too, and ok is false. The sets are st's when st holds them (a full
// read): reading them again would cost another ipset save, over 100 ms
// for a set of 100,000 networks.
func (b *Backend) planMembers(ctx context.Context, st *state, want *ruleset.Policy) (p *plan, ok bool, err error) {
	sets, remembered := st.sets, st.remembered
	if !st.full || st.partial {
		if sets, remembered, err = b.listSets(ctx); err != nil {
			return nil, false, err
		}
	}
	wantSets := layout.Sets(want)
	if len(sets) != len(wantSets) {
		return nil, false, nil
	}
	for _, s := range wantSets {
		if sets[s.Name] == nil {
			return nil, false, nil
		}
	}
	p = &plan{
		tables:  map[ruleset.Family]*layout.Plan{},
		st:      &state{full: true, sets: sets, remembered: remembered},
		summary: &backend.Summary{Tables: map[string]backend.TableChanges{}, Sets: setChanges(wantSets, sets)},
	}
	if p.setsBefore, p.setsAfter = ipset.Plan(wantSets, sets); p.setsAfter != "" {
		return nil, false, nil
	}
	p.held = heldOf(want, wantSets)
	return p, true, nil
}

// pureDeletions returns, per family, the chains in scope whose desired
// rules are their observed rules with some left out, and the positions
// (from 1) of the rules left out, highest first (layout.Plan.DeleteOnly:
// a detach then adds no rule, which nf_tables would validate the whole
// table for: ~115 ms per family at 5000 taps). Deleting by position
// rather than by rule text also deletes a rule an older vmfw wrote with
// its matches in another order, which text would not match.
func pureDeletions(sc *layout.Scope, st *state) map[ruleset.Family]map[layout.Chain][]int {
	out := map[ruleset.Family]map[layout.Chain][]int{}
	for _, f := range ruleset.Families {
		out[f] = map[layout.Chain][]int{}
		for _, c := range sc.Tables[f].Chains {
			have, ok := st.tables[f].Chains[c.Name]
			want := c.Hashes()
			if !ok || len(want) >= len(have) {
				continue
			}
			var gone []int
			j := 0
			for i, h := range have {
				if j < len(want) && want[j] == h {
					j++
					continue
				}
				gone = append([]int{i + 1}, gone...)
			}
			if j == len(want) {
				out[f][c.Name] = gone
			}
		}
	}
	return out
}
