package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// Scoped attach and detach.
//
// The full path of Attach and Detach reads every chain (iptables-save of
// both families and ebtables-save), compiles every tap and diffs it all:
// at 5000 taps that is seconds of work to change a dozen chains. When the
// backend can read chosen chains on their own (nf_tables, over netlink),
// changeScoped instead
//
//   - lists the chain names of the IPv4 table to learn which taps are
//     installed (the dispatch tree and the ipsets depend on all of them),
//   - compiles only the scope of the change (layout.BuildScope): the tap's
//     chains, its groups', the entry chains and the few dispatch chains
//     whose rules change,
//   - reads back just those chains and the hooks, and
//   - applies the difference through the same applyRuleset as the full
//     path, so ordering, ipsets and the revert of IPv4 when IPv6 fails are
//     shared.
//
// It vouches for its result only when every rule it reads in scope is one
// it can name: a rule from the state before or after the change. Anything
// else (a group or VM file edited since the last apply, a hand-made rule,
// an installed interface the configuration no longer has) sends the
// operation down the full path, which repairs it. Reading no rule text,
// it rebuilds the text a revert needs from those same known rules.

// scopeReader is what a firewall backend offers for scoped changes;
// *xtables.Client does on nf_tables and fails with xtables.ErrNotNFT on
// legacy.
type scopeReader interface {
	// ListChains returns the names of the chains of f's filter table.
	ListChains(ctx context.Context, f ruleset.Family) (map[layout.Chain]bool, error)
	// SaveChains reads the named chains (those that exist) and the hooks,
	// with fingerprints but without rule text.
	SaveChains(ctx context.Context, f ruleset.Family, names []layout.Chain) (*xtables.Snapshot, error)
}

// bridgeScopeReader is what an ebtables backend offers for scoped changes.
// ebtables rules carry no fingerprints, so only existence and the hooks
// are read; chains in scope are rewritten.
type bridgeScopeReader interface {
	// ChainsExist reports which of the named chains exist.
	ChainsExist(ctx context.Context, names []layout.Chain) (map[layout.Chain]bool, error)
	// Hooks counts the jumps into vmfw-l2.
	Hooks(ctx context.Context) (map[layout.Hook]int, error)
}

// unknownRule stands for the rules of an ebtables chain in scope, which
// are not read: it matches no desired rule, so the chain is rewritten.
const unknownRule = "\x00unknown"

// changeScoped attaches the taps of up and detaches those of down by
// changing only what the change touches. It reports handled false, having
// changed nothing, when it cannot vouch for the result; the caller then
// takes the full path. When handled, err is the outcome of applying the
// change.
func (e *Engine) changeScoped(ctx context.Context, m *config.Model, r nicSource, up, down []string) (handled bool, ch *Change, err error) {
	view, handled, err := e.scopedView(ctx, r)
	if view == nil {
		return handled, nil, err
	}
	before := view.before
	focus := append(slices.Clone(up), down...)
	inFocus := make(map[string]bool, len(focus))
	for _, tap := range focus {
		inFocus[tap] = true
	}
	after := slices.DeleteFunc(slices.Clone(before), func(n *config.NIC) bool { return inFocus[n.Tap] })
	for _, tap := range up {
		nic := r.NIC(tap)
		if nic == nil {
			trace.Printf("full path: %s is not configured", tap)
			return false, nil, nil
		}
		after = append(after, nic)
	}
	start := time.Now()
	was, err := ruleset.Compile(m, before)
	if err != nil {
		trace.Printf("full path: compiling the scope: %v", err)
		return false, nil, nil // the full path reports it
	}
	now, err := ruleset.Compile(m, after)
	if err != nil {
		trace.Printf("full path: compiling the scope: %v", err)
		return false, nil, nil // the full path reports it
	}
	sc := layout.BuildScope(was, now, focus)
	trace.Since(start, "compile the scope of %s (%d interfaces installed)", strings.Join(focus, ", "), len(before))
	return e.applyScope(ctx, m, view, sc, after)
}

// scopeView is what a scoped change reads before it compiles: the
// interfaces installed, and how to read chosen chains.
type scopeView struct {
	// before are the installed interfaces' settings.
	before     []*config.NIC
	saveChains func(ctx context.Context, f ruleset.Family, names []layout.Chain) (*xtables.Snapshot, error)
	bridge     bridgeScopeReader
}

// scopedView learns which interfaces are installed without reading every
// chain. It returns nil (with handled false, or true and an error) when
// the scoped path cannot be taken.
func (e *Engine) scopedView(ctx context.Context, r nicSource) (view *scopeView, handled bool, err error) {
	fw, ok := e.kernel.Firewall.(scopeReader)
	if !ok {
		trace.Printf("full path: the firewall backend cannot read single chains")
		return nil, false, nil
	}
	var br bridgeScopeReader
	if e.kernel.Bridge != nil {
		if br, ok = e.kernel.Bridge.(bridgeScopeReader); !ok {
			trace.Printf("full path: the ebtables backend cannot read single chains")
			return nil, false, nil
		}
	}
	saveChains := fw.SaveChains
	start := time.Now()
	chains, err := fw.ListChains(ctx, ruleset.IPv4)
	trace.Since(start, "list chains")
	if errors.Is(err, xtables.ErrNotNFT) {
		// Legacy x_tables hands out whole tables only: read them once,
		// then compile, diff and write the scope as on nf_tables. That
		// still spares compiling and diffing every tap.
		full := map[ruleset.Family]*xtables.Snapshot{}
		for _, f := range ruleset.Families {
			if full[f], err = e.kernel.Firewall.Save(ctx, f); err != nil {
				return nil, true, err
			}
		}
		chains = map[layout.Chain]bool{}
		for c := range full[ruleset.IPv4].Chains {
			chains[c] = true
		}
		saveChains = func(_ context.Context, f ruleset.Family, names []layout.Chain) (*xtables.Snapshot, error) {
			return full[f].Only(names), nil
		}
	} else if err != nil {
		trace.Printf("full path: listing chains: %v", err)
		return nil, false, nil
	}
	var installed []string
	for c := range chains {
		name := string(c)
		if t, ok := layout.InstalledTap(layout.Chain(name)); ok {
			installed = append(installed, t)
		}
	}
	before := nicsFor(r, installed)
	if len(before) != len(installed) {
		trace.Printf("full path: %d installed interfaces are no longer configured", len(installed)-len(before))
		return nil, false, nil // chains of interfaces no longer configured: the full path removes them
	}
	return &scopeView{before: before, saveChains: saveChains, bridge: br}, false, nil
}

// applyScope reads the chains in scope, checks that every rule in them is
// one the scope knows (else it reports handled false: drift or an edit
// the scope did not expect, which the full path repairs), and applies the
// difference; after are the interfaces installed afterwards, whose flows
// the change may end.
func (e *Engine) applyScope(ctx context.Context, m *config.Model, view *scopeView, sc *layout.Scope, after []*config.NIC) (handled bool, ch *Change, err error) {
	saveChains, br := view.saveChains, view.bridge
	var start time.Time
	st := &kernelState{tables: map[ruleset.Family]*xtables.Snapshot{}}
	for _, f := range ruleset.Families {
		start = time.Now()
		snap, err := saveChains(ctx, f, sc.Chains[f])
		if err != nil {
			trace.Printf("full path: reading %s chains: %v", f, err)
			return false, nil, nil
		}
		trace.Since(start, "read %d %s chains", len(sc.Chains[f]), f)
		for c, hashes := range snap.Chains {
			snap.Lines[c] = nil
			for _, h := range hashes {
				rule, ok := sc.Known[f][c][h]
				if !ok {
					trace.Printf("full path: %s/%s holds a rule the scope does not know (drift, or an edit not applied yet)", f, c)
					return false, nil, nil // drift or an unapplied edit
				}
				snap.Lines[c] = append(snap.Lines[c], rule.Line(c))
			}
		}
		st.tables[f] = snap
	}
	if br != nil {
		start = time.Now()
		exist, err := br.ChainsExist(ctx, sc.BridgeChains)
		if err != nil {
			trace.Printf("full path: reading ebtables chains: %v", err)
			return false, nil, nil
		}
		hooks, err := br.Hooks(ctx)
		if err != nil {
			trace.Printf("full path: reading ebtables hooks: %v", err)
			return false, nil, nil
		}
		trace.Since(start, "read %d ebtables chains", len(sc.BridgeChains))
		st.bridge = layout.Observed{Chains: map[layout.Chain][]string{}, Lines: map[layout.Chain][]string{}, Hooks: hooks}
		for _, c := range sc.BridgeChains {
			if exist[c] {
				st.bridge.Chains[c] = []string{unknownRule}
			}
		}
	}
	if st.sets, err = e.kernel.Sets.List(ctx); err != nil {
		return true, nil, err
	}
	rs := &layout.Ruleset{Tables: sc.Tables, Bridge: sc.Bridge, Sets: sc.Sets}
	deleting := &deletingFirewall{Firewall: e.kernel.Firewall, deletes: pureDeletions(sc, st), done: map[ruleset.Family]bool{}}
	if ch, err = e.applyVia(ctx, deleting, rs, st, false); err != nil {
		return true, nil, err
	}
	// As converge does after applying: the change may end flows.
	start = time.Now()
	defer trace.Since(start, "cut flows")
	ch.FlowsCut, err = e.cutFlows(m, after)
	return true, ch, err
}

// Removals without the kernel's validation.
//
// nf_tables validates the whole table (every chain reachable from a base
// chain: ~115 ms per family at 5000 taps on the reference machine) at the
// commit of any transaction that adds a rule, and not when a transaction
// only deletes rules and chains. Rewriting a dispatch chain (declare, then
// refill) adds rules, so a detach, which only needs to take one entry out
// of one or two dispatch chains, would pay for it. deletingFirewall turns
// the rewrite of a chain that only loses rules into "-D" of those rules in
// the forward transaction, so a detach deletes and never adds. The revert
// transaction, if one is needed, stays a full rewrite.

// pureDeletions returns, per family, the chains in scope whose desired
// rules are their observed rules with some left out, and the positions
// (from 1) of the rules left out, highest first. Deleting by position
// rather than by rule text also deletes a rule an older vmfw wrote with
// its matches in another order, which text would not match.
func pureDeletions(sc *layout.Scope, st *kernelState) map[ruleset.Family]map[layout.Chain][]int {
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

// deletingFirewall passes restores on to Firewall, rewriting the first
// (forward) transaction of each family: chains in deletes are not
// redeclared and refilled but have the listed rules deleted.
// The families are written concurrently (restoreFamilies), hence mu.
type deletingFirewall struct {
	Firewall
	deletes map[ruleset.Family]map[layout.Chain][]int

	mu   sync.Mutex
	done map[ruleset.Family]bool
}

func (d *deletingFirewall) Restore(ctx context.Context, f ruleset.Family, text string) error {
	d.mu.Lock()
	if !d.done[f] && len(d.deletes[f]) > 0 && text != "" {
		text = deletesInstead(text, d.deletes[f])
	}
	d.done[f] = true
	d.mu.Unlock()
	return d.Firewall.Restore(ctx, f, text)
}

// deletesInstead rewrites a restore transaction (as layout.Plan renders
// it) so that each chain in dels is neither declared nor filled, and the
// rules at the positions listed for it (highest first) are deleted first
// instead.
func deletesInstead(text string, dels map[layout.Chain][]int) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(text, "\n") {
		name := ""
		switch {
		case strings.HasPrefix(line, ":"):
			name, _, _ = strings.Cut(line[1:], " ")
		case strings.HasPrefix(line, "-A "):
			name, _, _ = strings.Cut(line[3:], " ")
		}
		if _, skip := dels[layout.Chain(name)]; skip && name != "" {
			continue
		}
		b.WriteString(line)
		if line == "*filter\n" {
			chains := make([]layout.Chain, 0, len(dels))
			for c := range dels {
				chains = append(chains, c)
			}
			slices.Sort(chains)
			for _, c := range chains {
				for _, pos := range dels[c] {
					fmt.Fprintf(&b, "-D %s %d\n", c, pos)
				}
			}
		}
	}
	return b.String()
}

// SyncGroups applies an edit of the named groups' rules, and nothing else,
// from configuration was to the current one by rewriting only those
// groups' chains: the agent's path for the most common edit, which at
// thousands of taps would otherwise read and compile every chain. It
// reports handled false, having changed nothing, when it cannot vouch for
// the result (drift, or an edit that reaches the taps' chains); the caller
// then runs Sync.
func (e *Engine) SyncGroups(ctx context.Context, was *config.Model, groups []string) (handled bool, ch *Change, err error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return false, nil, err
	}
	defer release()
	view, handled, err := e.scopedView(ctx, r)
	if view == nil {
		return handled, nil, err
	}
	start := time.Now()
	var sc *layout.Scope
	pw, err := ruleset.Compile(was, view.before)
	if err == nil {
		var pn *ruleset.Policy
		if pn, err = ruleset.Compile(r.model, view.before); err == nil {
			sc = layout.GroupScope(pw, pn, groups)
		}
	}
	if err != nil || sc == nil {
		trace.Printf("full path: the edit reaches beyond the groups' chains (%v)", err)
		return false, nil, nil
	}
	trace.Since(start, "compile the scope of groups %s", strings.Join(groups, ", "))
	return e.applyScope(ctx, r.model, view, sc, view.before)
}
