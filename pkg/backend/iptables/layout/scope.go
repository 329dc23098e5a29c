package layout

import (
	"slices"
	"strings"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Scope is the part of the desired state an attach or detach of a few
// interfaces can change, compiled without compiling every other tap: at
// 5000 taps Build spends most of its time writing the chains of taps the
// change does not touch. Given the interfaces attached before and after,
// it holds
//
//   - the chains of the interfaces in focus,
//   - the chains of the groups they list (created for the first member,
//     deleted after the last),
//   - vmfw's entry chains and hooks (so a first attach installs them),
//   - the dispatch chains whose rules differ before and after (see
//     dispatch.go: a handful, on the focus taps' paths),
//   - and every ipset with its full membership, which is cheap to compute
//     and lets the ipset diff stay exact.
//
// A chain outside the scope is the same before and after, so a change
// confined to the scope leaves the kernel exactly where Build and Diff over
// everything would: the next apply finds nothing to do.
type Scope struct {
	// Tables holds, per family, the desired chains in scope (after the
	// change) and the hooks.
	Tables map[ruleset.Family]*Table
	// Bridge holds the desired ebtables chains in scope and the hooks.
	Bridge *Table
	// Sets are all ipsets the rules reference after the change, with all
	// their members, as Build returns them.
	Sets []Set
	// Chains lists, per family, every chain in scope before or after the
	// change: those to read back, and to delete if no longer wanted.
	Chains map[ruleset.Family][]Chain
	// BridgeChains lists the ebtables chains in scope before or after.
	BridgeChains []Chain
	// Known holds, per family and chain, the rules the chain holds before
	// or after the change by fingerprint, so that fingerprints read back
	// can be turned into rule text for a revert without reading the text.
	Known map[ruleset.Family]map[Chain]map[string]Rule
	// Expect lists, per family, chains out of scope that the scope relies
	// on, with the fingerprints they must hold (nil: the chain must not
	// exist): every group chain, and the chains of the interfaces out of
	// focus that a dispatch chain in scope jumps to. A scope written over
	// anything else (an edit of a group or a VM not applied yet) could
	// jump to a chain that is missing or stale, or destroy a set a stale
	// group chain still uses; the caller reads them back first.
	Expect map[ruleset.Family]map[Chain][]string
	// ExpectBridge lists the ebtables chains the scope relies on, true for
	// those that must exist (ebtables rules carry no fingerprints).
	ExpectBridge map[Chain]bool
	// BridgeTargets holds, for each ebtables chain of BridgeChains that
	// the installed policy lays out, the chains its rules jump to. The
	// scope rewrites those chains without reading their rules, so it
	// checks what they jump to first: a dispatch chain the kernel holds
	// from another layout (an unapplied edit that changed which VMs have
	// anti-spoofing) would otherwise lose its jumps to chains the scope
	// does not know, left behind unreachable.
	BridgeTargets map[Chain][]Chain
}

// BuildScope compiles the scope of changing the attached interfaces from
// those of policy was to those of policy now, where focus names the
// interfaces added, removed or re-attached (every other interface must be
// attached in both, with the same settings, and both policies must come
// from the same configuration).
func BuildScope(was, now *ruleset.Policy, focus []string) *Scope {
	inFocus := map[string]bool{}
	for _, f := range focus {
		inFocus[f] = true
	}
	before, after := was.Interfaces, now.Interfaces
	wasRS, nowRS := buildScoped(was, inFocus), buildScoped(now, inFocus)
	// The dispatch chains that change, written for both states.
	b := newBuilder(now)
	wasTree, nowTree := newDispatchTree(tapNames(before)), newDispatchTree(tapNames(after))
	changed := scopeNodes(wasTree, nowTree)
	for _, s := range dispatchStyles(now.Host.Managed, b.clearMark()) {
		wasChains, nowChains := s.someChains(wasTree, changed), s.someChains(nowTree, changed)
		for _, f := range ruleset.Families {
			wasRS.Tables[f].Chains = append(wasRS.Tables[f].Chains, wasChains...)
			nowRS.Tables[f].Chains = append(nowRS.Tables[f].Chains, nowChains...)
		}
	}
	// The route trees, per family: attaching a tap adds its addresses.
	for _, f := range ruleset.Families {
		wasRT, wasOwners := routeTree(f, before)
		nowRT, nowOwners := routeTree(f, after)
		changed := scopeNodes(wasRT, nowRT)
		wasStyles, nowStyles := b.routeStyles(f, wasOwners), b.routeStyles(f, nowOwners)
		for i := range wasStyles {
			wasRS.Tables[f].Chains = append(wasRS.Tables[f].Chains, wasStyles[i].someChains(wasRT, changed)...)
			nowRS.Tables[f].Chains = append(nowRS.Tables[f].Chains, nowStyles[i].someChains(nowRT, changed)...)
		}
	}
	// vmfw-l2out lists disabled and unmanaged interfaces: written from
	// every interface, not the representatives buildScoped compiled.
	wasRS.Bridge.Chains = append(wasRS.Bridge.Chains, b.l2Out(before))
	nowRS.Bridge.Chains = append(nowRS.Bridge.Chains, b.l2Out(after))
	wasL2, nowL2 := newDispatchTree(l2Names(before)), newDispatchTree(l2Names(after))
	changedL2 := scopeNodes(wasL2, nowL2)
	wasRS.Bridge.Chains = append(wasRS.Bridge.Chains, l2Style.someChains(wasL2, changedL2)...)
	nowRS.Bridge.Chains = append(nowRS.Bridge.Chains, l2Style.someChains(nowL2, changedL2)...)
	wasL2D, nowL2D := newDispatchTree(l2DestNames(before)), newDispatchTree(l2DestNames(after))
	changedL2D := scopeNodes(wasL2D, nowL2D)
	wasRS.Bridge.Chains = append(wasRS.Bridge.Chains, l2DestStyle.someChains(wasL2D, changedL2D)...)
	nowRS.Bridge.Chains = append(nowRS.Bridge.Chains, l2DestStyle.someChains(nowL2D, changedL2D)...)

	groups := map[string]bool{}
	for _, list := range [][]*ruleset.Interface{before, after} {
		for _, n := range list {
			if inFocus[n.Name] {
				for _, g := range n.Groups {
					groups[g] = true
				}
			}
		}
	}
	// inScope keeps the chains of the groups the focus interfaces list out
	// of all group chains; everything else compiled here is in scope.
	inScope := func(c Chain) bool {
		if g, _, ok := ParseGroupChain(c); ok {
			return groups[g]
		}
		return true
	}
	sc := &Scope{
		Tables: map[ruleset.Family]*Table{},
		Sets:   nowRS.Sets,
		Chains: map[ruleset.Family][]Chain{},
		Known:  map[ruleset.Family]map[Chain]map[string]Rule{},
	}
	for _, f := range ruleset.Families {
		t := &Table{Family: f, Hooks: nowRS.Tables[f].Hooks}
		known := map[Chain]map[string]Rule{}
		names := scopeNames(wasRS.Tables[f], nowRS.Tables[f], inScope)
		// Looked up by index: with hundreds of interfaces in focus (a
		// batch of ifups), walking the chain list for each name made the
		// compile quadratic.
		wasIndex, nowIndex := wasRS.Tables[f].Index(), nowRS.Tables[f].Index()
		for _, name := range names {
			known[name] = map[string]Rule{}
			for _, index := range []map[Chain]*ChainRules{wasIndex, nowIndex} {
				if c := index[name]; c != nil {
					for _, r := range c.Rules {
						known[name][r.Hash(name)] = r
					}
				}
			}
			if c := nowIndex[name]; c != nil {
				t.Chains = append(t.Chains, c)
			}
		}
		sc.Tables[f], sc.Chains[f], sc.Known[f] = t, names, known
	}
	sc.Bridge = &Table{Bridge: true, Hooks: nowRS.Bridge.Hooks}
	sc.BridgeChains = scopeNames(wasRS.Bridge, nowRS.Bridge, inScope)
	sc.BridgeTargets = map[Chain][]Chain{}
	wasBridge := wasRS.Bridge.Index()
	for _, name := range sc.BridgeChains {
		if c := wasBridge[name]; c != nil {
			sc.BridgeTargets[name] = jumpTargets(c)
		}
	}
	nowBridge := nowRS.Bridge.Index()
	for _, name := range sc.BridgeChains {
		if c := nowBridge[name]; c != nil {
			sc.Bridge.Chains = append(sc.Bridge.Chains, c)
		}
	}
	// The interfaces out of focus that the dispatch chains written jump to.
	var targets []*ruleset.Interface
	target := func(n *ruleset.Interface) {
		if n != nil && !inFocus[n.Name] && !slices.Contains(targets, n) {
			targets = append(targets, n)
		}
	}
	for _, tree := range [][2]*dispatchNode{{wasTree, nowTree}, {wasL2, nowL2}, {wasL2D, nowL2D}} {
		for _, name := range leavesOf(tree[1], scopeNodes(tree[0], tree[1])) {
			target(was.Interface(name))
		}
	}
	for _, f := range ruleset.Families {
		wasRT, _ := routeTree(f, before)
		nowRT, owners := routeTree(f, after)
		for _, key := range leavesOf(nowRT, scopeNodes(wasRT, nowRT)) {
			target(owners[key])
		}
	}
	sc.expect(b, wasRS, targets, inScope)
	return sc
}

// jumpTargets returns the chains c's rules jump to, in order.
func jumpTargets(c *ChainRules) []Chain {
	out := []Chain{}
	for _, r := range c.Rules {
		if t := r.target(); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// leavesOf returns the leaves of the nodes of tree that nodes selects:
// the interfaces (in an address tree, the route keys of their addresses)
// those chains jump to.
func leavesOf(tree *dispatchNode, nodes map[string]bool) []string {
	var out []string
	tree.walk(func(n *dispatchNode) {
		if !nodes[nodeKey(tree, n)] {
			return
		}
		for _, e := range n.entries {
			if e.node == nil {
				out = append(out, e.name)
			}
		}
	})
	return out
}

// expect fills Expect and ExpectBridge: every group chain out of scope as
// wasRS lays it out, and every chain of targets, the interfaces out of
// focus that the written dispatch chains jump to.
func (sc *Scope) expect(b *builder, wasRS *Ruleset, targets []*ruleset.Interface, inScope func(Chain) bool) {
	sc.Expect = map[ruleset.Family]map[Chain][]string{}
	sc.ExpectBridge = map[Chain]bool{}
	for _, f := range ruleset.Families {
		expect := map[Chain][]string{}
		for _, c := range wasRS.Tables[f].Chains {
			if _, _, isGroup := ParseGroupChain(c.Name); isGroup && !inScope(c.Name) {
				expect[c.Name] = c.Hashes()
			}
		}
		for _, n := range targets {
			for _, name := range TapChains(n.Name) {
				expect[name] = nil
			}
			for _, c := range b.tapChains(f, n) {
				expect[c.Name] = c.Hashes()
			}
		}
		sc.Expect[f] = expect
	}
	for _, n := range targets {
		sc.ExpectBridge[L2Chain(n.Name)] = n.Enabled && n.Antispoof
		sc.ExpectBridge[L2DestChain(n.Name)] = hasL2Dest(n)
	}
}

// scopeNodes returns the keys of the nodes of a dispatch tree that a scope
// writes: those whose chains differ between the trees, and the root
// whether or not it does. vmfw's entry chains and hooks, which every scope
// installs, jump to every root, so the scope must vouch for each root too:
// a change can leave a tree as it was and still need its root created. A
// host's first IPv4-only tap leaves the IPv6 address tree empty before and
// after, and on an empty kernel its root (vmfw-route) did not exist yet, so
// the IPv6 transaction jumped to a chain it never declared (issue: a fresh
// host's first VM does not start). A root is one small chain to read back.
func scopeNodes(was, now *dispatchNode) map[string]bool {
	nodes := changedNodes(was, now)
	nodes[nodeKey(now, now)] = true
	return nodes
}

func tapNames(nics []*ruleset.Interface) []string {
	out := make([]string, len(nics))
	for i, n := range nics {
		out[i] = n.Name
	}
	return out
}

// l2Names returns the interfaces bridgeTable gives an L2 chain: those of
// enabled VMs with anti-spoofing (antispoof = "mac" included).
func l2Names(nics []*ruleset.Interface) []string {
	var out []string
	for _, n := range nics {
		if n.Enabled && n.Antispoof {
			out = append(out, n.Name)
		}
	}
	return out
}

// scopeNames returns the chains of was and now that keep says are in
// scope, in the order now lists them, then those only was has.
func scopeNames(was, now *Table, keep func(c Chain) bool) []Chain {
	var out []Chain
	seen := map[Chain]bool{}
	for _, src := range []*Table{now, was} {
		for _, c := range src.Chains {
			if seen[c.Name] {
				continue
			}
			seen[c.Name] = true
			if keep(c.Name) {
				out = append(out, c.Name)
			}
		}
	}
	return out
}

// isDispatchChain reports whether c is a dispatch root or node chain, or
// vmfw-l2out: one of the roots, or vmfw-NODE-out, -in, -l2, -l2d, -rt or -lo (see
// dispatchStyle.nodeChain). BuildScope writes these from every interface.
func isDispatchChain(c Chain) bool {
	switch c {
	case ChainOut, ChainIn, ChainL2, ChainL2Dest, ChainL2Out, ChainRoute, ChainLocal:
		return true
	case ChainForward, ChainInput, ChainOutput, ChainAccept:
		return false
	}
	s := string(c)
	if !IsBaseChain(c) {
		return false
	}
	for _, suffix := range []string{"-out", "-in", "-l2", "-l2d", "-rt", "-lo"} {
		if strings.HasSuffix(s, suffix) {
			return true
		}
	}
	return false
}

// buildScoped is Build with per-interface chains only for the interfaces
// in focus and without the dispatch chains (BuildScope writes those it
// needs). It lays out the rest through Build itself, on a few interfaces
// that between them list every group the attached interfaces use (so the
// same group chains, entry chains, hooks and sets come out: the sets are
// the policy's, with every member).
func buildScoped(p *ruleset.Policy, focus map[string]bool) *Ruleset {
	var reps []*ruleset.Interface
	covered := map[string]bool{}
	for _, n := range p.Interfaces {
		if focus[n.Name] {
			reps = append(reps, n)
			continue
		}
		if !n.Enabled {
			continue
		}
		for _, g := range n.Groups {
			if !covered[g] {
				reps = append(reps, n)
				break
			}
		}
		for _, g := range n.Groups {
			covered[g] = true
		}
	}
	rs := Build(&ruleset.Policy{Host: p.Host, Interfaces: reps, Groups: p.Groups, Members: p.Members, Sets: p.Sets})

	// Drop the chains of representatives out of focus, and the dispatch
	// compiled for the representatives only.
	drop := map[Chain]bool{}
	for _, n := range reps {
		if !focus[n.Name] {
			for _, c := range TapChains(n.Name) {
				drop[c] = true
			}
			drop[L2Chain(n.Name)] = true
			drop[L2DestChain(n.Name)] = true
		}
	}
	for _, f := range ruleset.Families {
		t := rs.Tables[f]
		var kept []*ChainRules
		for _, c := range t.Chains {
			if !drop[c.Name] && !isDispatchChain(c.Name) {
				kept = append(kept, c)
			}
		}
		t.Chains = kept
	}
	var kept []*ChainRules
	for _, c := range rs.Bridge.Chains {
		if !drop[c.Name] && !isDispatchChain(c.Name) {
			kept = append(kept, c)
		}
	}
	rs.Bridge.Chains = kept
	return rs
}

// GroupScope is the scope of editing the rules of the named groups, and
// nothing else, from policy was to policy now (the same interfaces
// attached): the groups' chains (sg-NAME-in, -out, -lin) of both versions,
// the hooks, and every ipset with its members (a rule may start or stop
// naming a source_group). It returns nil when such an edit reaches further
// — a group gained or lost its source MAC rules, which adds or removes the
// TAP-lin chains of its members — and the caller applies everything.
func GroupScope(was, now *ruleset.Policy, groups []string) *Scope {
	bw, bn := newBuilder(was), newBuilder(now)
	sc := &Scope{
		Tables: map[ruleset.Family]*Table{},
		Chains: map[ruleset.Family][]Chain{},
		Known:  map[ruleset.Family]map[Chain]map[string]Rule{},
		Bridge: &Table{Bridge: true, Hooks: bridgeHooks()},
		Expect: map[ruleset.Family]map[Chain][]string{},
	}
	for _, f := range ruleset.Families {
		t := &Table{Family: f, Hooks: filterHooks()}
		known := map[Chain]map[string]Rule{}
		var names []Chain
		add := func(c *ChainRules, desired bool) {
			if known[c.Name] == nil {
				known[c.Name] = map[string]Rule{}
				names = append(names, c.Name)
			}
			for _, r := range c.Rules {
				known[c.Name][r.Hash(c.Name)] = r
			}
			if desired {
				t.Chains = append(t.Chains, c)
			}
		}
		for _, g := range slices.Sorted(slices.Values(groups)) {
			if now.Groups[g] == nil {
				continue // no attached interface lists it: no chain to write
			}
			if was.Groups[g] == nil || bw.macGroup(g) != bn.macGroup(g) {
				return nil
			}
			for _, dir := range []config.Direction{config.In, config.Out} {
				add(bw.groupChain(f, was.Groups[g], dir), false)
				add(bn.groupChain(f, now.Groups[g], dir), true)
			}
			if bn.macGroup(g) {
				add(bw.localGroupChain(f, was.Groups[g]), false)
				add(bn.localGroupChain(f, now.Groups[g]), true)
			}
		}
		sc.Tables[f], sc.Chains[f], sc.Known[f] = t, names, known
		// The other groups' chains stay; the edit's sets rely on them
		// holding what was lays out (an unapplied edit of another group
		// could still use a set the edited group stops using).
		expect := map[Chain][]string{}
		for g, grp := range was.Groups {
			if slices.Contains(groups, g) || now.Groups[g] == nil {
				continue
			}
			for _, c := range []*ChainRules{bw.groupChain(f, grp, config.In), bw.groupChain(f, grp, config.Out)} {
				expect[c.Name] = c.Hashes()
			}
			if bw.macGroup(g) {
				c := bw.localGroupChain(f, grp)
				expect[c.Name] = c.Hashes()
			}
		}
		sc.Expect[f] = expect
	}
	sc.Sets = bn.sets()
	return sc
}
