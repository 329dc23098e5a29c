package nftables

import (
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// Scoped plans.
//
// A full plan lays out every interface and compares every element: at
// 5000 taps 30 ms of layout and 80 ms of comparison for a change of a
// dozen elements. With a hint the plan is laid out and compared for what
// the change touches alone:
//
//   - the hinted interfaces' elements (those keyed by their names, their
//     addresses in vm4/vm6 and in their groups' member sets), each
//     wanted as the wanted policy says (an address stays in a member set
//     while another member lists it) and compared with the element the
//     tables hold;
//   - the chains of the groups they list, or the groups edited, and the
//     chains of their group lists, each kept while some enabled
//     interface lists it;
//   - the member sets that appear or go because a group did, or a rule's
//     reference (created whole, or deleted);
//   - with Members, every member set's elements.
//
// The chains that do not depend on interfaces or groups (hooks, out, in,
// ...) and the sets' signatures are checked against the wanted layout;
// any difference is beyond the scope, and the plan is made in full.
//
// What the tables hold comes from the agent's remembered state or a full
// read, exactly. Without either (an ifup without the agent), it is read
// narrowly, the chains the scope relies on and the sets' signatures
// without elements, and the touched chains and member sets are checked
// against the layout of hint.Was; the
// touched elements are taken to be what hint.Was lays out, as plans from
// a hint always did (docs/nftables.md), once each hinted interface's
// fingerprint in the ports set says it is installed as hint.Was has it
// (settingsAsWas): an element someone else deleted is found by the
// kernel refusing the transaction, and the next plan is full.

// scope is what a hinted change touches.
type scope struct {
	was, want *ruleset.Policy
	// ifaces are the hinted interfaces; groups the groups whose chains
	// are compared; lists the group lists (by ListKey) whose chains are.
	ifaces []string
	groups map[string]bool
	lists  map[string][]string
	// memberGroups are the groups whose member sets are compared: for
	// existence, and for addrs (all their elements with allMembers).
	memberGroups map[string]bool
	addrs        []netip.Addr
	allMembers   bool
	// wasEls and wantEls are the hinted interfaces' elements as was and
	// want lay them out, made once for every check and table compared.
	wasEls, wantEls *elements
}

// newScope returns the scope of hint; nil when the hint says nothing a
// scoped plan covers.
func newScope(want *ruleset.Policy, hint *backend.Hint) *scope {
	sc := &scope{was: hint.Was, want: want, groups: map[string]bool{}, lists: map[string][]string{}, memberGroups: map[string]bool{}}
	switch {
	case hint.Interfaces != nil:
		sc.ifaces = slices.Clone(hint.Interfaces)
		seen := map[netip.Addr]bool{}
		for _, name := range sc.ifaces {
			for _, n := range []*ruleset.Interface{sc.was.Interface(name), want.Interface(name)} {
				if n == nil {
					continue
				}
				for _, g := range n.Groups {
					sc.groups[g] = true
					sc.memberGroups[g] = true
				}
				if n.Enabled && len(n.Groups) > 0 {
					sc.lists[layout.ListKey(n.Groups)] = n.Groups
				}
				for _, a := range n.IPs {
					if !seen[a] {
						seen[a] = true
						sc.addrs = append(sc.addrs, a)
					}
				}
			}
		}
	case hint.Groups != nil:
		for _, g := range hint.Groups {
			sc.groups[g] = true
		}
	case hint.Members:
		sc.allMembers = true
		for g := range want.Members {
			sc.memberGroups[g] = true
		}
		for g := range sc.was.Members {
			sc.memberGroups[g] = true
		}
	default:
		return nil
	}
	// Member sets that appear or go with a group or a reference.
	for g := range want.Members {
		if sc.was.Members[g] == nil {
			sc.memberGroups[g] = true
		}
	}
	for g := range sc.was.Members {
		if want.Members[g] == nil {
			sc.memberGroups[g] = true
		}
	}
	sc.wasEls, sc.wantEls = elementsOf(sc.was, sc), elementsOf(want, sc)
	return sc
}

// chains names the chains the scope relies on, by table: static's (which
// depend on neither interfaces nor groups), and those of its groups and
// group lists.
func (sc *scope) chains(static *layout.Ruleset) map[layout.Family][]string {
	out := map[layout.Family][]string{}
	for _, t := range static.Tables() {
		for _, c := range t.Chains {
			out[t.Family] = append(out[t.Family], c.Name)
		}
	}
	for _, g := range slices.Sorted(maps.Keys(sc.groups)) {
		out[layout.Bridge] = append(out[layout.Bridge], layout.GroupChain(g, config.In), layout.GroupChain(g, config.Out))
	}
	for _, k := range slices.Sorted(maps.Keys(sc.lists)) {
		out[layout.Bridge] = append(out[layout.Bridge], layout.ListChain(sc.lists[k], config.In), layout.ListChain(sc.lists[k], config.Out))
	}
	return out
}

// holding is what the tables hold of the scope: the state itself, or
// the narrow read completed by hint.Was's layout.
type holding struct {
	obs *nlnft.Observed
	// was, when set, stands in for the elements: the narrow read has
	// none but the member sets' with allMembers.
	was *elements
}

// element reports whether set of table f holds the element with key k
// and, in a map, its data.
func (h *holding) element(f layout.Family, set, k string) (data string, ok bool) {
	if h.was != nil && !(h.was.allMembers && isMemberSet(set)) {
		return h.was.get(f, set, k)
	}
	t := h.obs.Tables[f]
	if t == nil || t.Sets[set] == nil {
		return "", false
	}
	s := t.Sets[set]
	if _, ok := s.Elements[k]; !ok {
		return "", false
	}
	return s.Data[k], true
}

// elements is a policy's elements of the scope, by family, set and key.
type elements struct {
	p          *ruleset.Policy
	byIface    map[string]map[string]layout.Element // "family/set" + "\x00" + key -> element
	allMembers bool
}

func elementsOf(p *ruleset.Policy, sc *scope) *elements {
	e := &elements{p: p, byIface: map[string]map[string]layout.Element{}, allMembers: sc.allMembers}
	for _, name := range sc.ifaces {
		m := map[string]layout.Element{}
		if n := p.Interface(name); n != nil {
			for _, pl := range layout.InterfaceElements(p, n) {
				m[string(pl.Family)+"/"+pl.Set+"\x00"+string(pl.Element.KeyBytes())] = pl.Element
			}
		}
		e.byIface[name] = m
	}
	return e
}

// get reports whether p's layout has the element and what it carries
// besides its key (layout.Element.DataText).
func (e *elements) get(f layout.Family, set, k string) (string, bool) {
	el, ok := e.element(f, set, k)
	return el.DataText(), ok
}

// element returns p's layout of the element with key k: an address of
// vm4/vm6 while an interface lists it, of a member set while a member
// does, an interface's element as its layout has it.
func (e *elements) element(f layout.Family, set, k string) (layout.Element, bool) {
	if f == layout.Inet || isMemberSet(set) {
		a, _ := netip.AddrFromSlice([]byte(k))
		el := layout.Element{Key: []layout.Value{layout.Addr(a)}}
		if f == layout.Inet {
			return el, e.p.Owner(a) != nil
		}
		g, fam, _ := parseMemberSet(set)
		mem := e.p.Members[g]
		if mem == nil {
			return el, false
		}
		_, found := slices.BinarySearchFunc(mem.Addrs[fam], a, func(x, y netip.Addr) int { return x.Compare(y) })
		return el, found
	}
	name := strings.TrimRight(k[:min(16, len(k))], "\x00")
	el, ok := e.byIface[name][string(f)+"/"+set+"\x00"+k]
	return el, ok
}

func isMemberSet(name string) bool { _, _, ok := parseMemberSet(name); return ok }

// parseMemberSet splits a member set's name into group and family.
func parseMemberSet(name string) (string, ruleset.Family, bool) {
	rest, ok := strings.CutPrefix(name, config.GroupChainPrefix)
	switch {
	case !ok:
		return "", 0, false
	case strings.HasSuffix(rest, "-v4"):
		return strings.TrimSuffix(rest, "-v4"), ruleset.IPv4, true
	case strings.HasSuffix(rest, "-v6"):
		return strings.TrimSuffix(rest, "-v6"), ruleset.IPv6, true
	}
	return "", 0, false
}

// listUsed reports whether an enabled interface of p lists exactly groups.
func listUsed(p *ruleset.Policy, groups []string) bool {
	for _, n := range p.Interfaces {
		if n.Enabled && slices.Equal(n.Groups, groups) {
			return true
		}
	}
	return false
}

// planScoped returns the plan of the change hint describes, laid out and
// compared within its scope; nil when the scope cannot vouch for it.
func (b *Backend) planScoped(st *state, want *ruleset.Policy, hint *backend.Hint) (*plan, error) {
	if len(want.Sets) > 0 || len(hint.Was.Sets) > 0 {
		return nil, nil // address sets are laid out whole (planHinted)
	}
	start := time.Now()
	sc := newScope(want, hint)
	if sc == nil {
		return nil, nil
	}
	// The policy chains hold a log rule per level the interfaces log at:
	// an ifup or ifdown that brings in or takes away a level changes
	// them, which only a full plan does.
	static := layout.Static(want, b.marks)
	h := &holding{obs: st.obs}
	if !st.full {
		var only []string
		if sc.allMembers {
			for g := range sc.memberGroups {
				only = append(only, layout.MemberSet(g, ruleset.IPv4), layout.MemberSet(g, ruleset.IPv6))
			}
		}
		obs, err := b.kernel.ReadChains(sc.chains(static))
		if err != nil {
			return nil, err
		}
		if len(only) > 0 {
			sets, err := b.kernel.Read(false, only...)
			if err != nil {
				return nil, err
			}
			if sets.Gen != obs.Gen {
				return nil, nil
			}
			for f, t := range sets.Tables {
				if ot := obs.Tables[f]; ot != nil {
					for name, s := range t.Sets {
						ot.Sets[name] = s
					}
				}
			}
		}
		if obs.Gen != st.obs.Gen {
			return nil, nil // something committed between the two reads
		}
		h = &holding{obs: obs, was: sc.wasEls}
	}
	if why := b.outOfScope(h, static, sc, !st.full); why != "" {
		trace.Printf("full plan: %s", why)
		return nil, nil
	}
	// Each hinted interface must be installed with the settings hint.Was
	// gives it, which its fingerprint in the ports set tells (a narrow
	// read has nothing else of it): after an edit not applied, hint.Was
	// has the edit's, and a plan from them would leave the elements of
	// the settings installed and miss their addresses in member sets and
	// vm4/vm6 (TestScopedMatchesFull).
	if why := settingsAsWas(st.obs, sc.wasEls, sc.ifaces); why != "" {
		trace.Printf("full plan: %s", why)
		return nil, nil
	}
	defs := layout.SetDefs(want)
	switch {
	case st.remembered:
		// The agent's memory of its own last change: the fingerprints
		// say the hinted interfaces hold hint.Was's elements, which
		// spares reading through the 5000 elements of each set keyed by
		// an interface and an address or MAC for theirs (0.5 ms of an
		// ifup at 5000 taps). Nothing has committed since the memory was
		// made (the generation says so); what only the elements would
		// show, an element keyed by the interface that the tables held
		// when the agent last read them and no layout has, is drift,
		// which the drift check finds and repair removes.
		h.was = sc.wasEls
	case st.full:
		if why := installedAsWas(h, sc, defs[layout.Bridge]); why != "" {
			trace.Printf("full plan: %s", why)
			return nil, nil
		}
	}
	p := &plan{st: st, hinted: !st.full, scoped: true, batch: &nlnft.Batch{Gen: h.obs.Gen},
		summary: &backend.Summary{Tables: map[string]backend.TableChanges{}, Sets: backend.NewSetChanges()}}
	for _, f := range []layout.Family{layout.Bridge, layout.Inet} {
		tc, ch := b.diffScope(f, h, sc, defs[f], &p.summary.Sets)
		p.summary.Tables[string(f)] = ch
		if tc != nil {
			p.batch.Tables = append(p.batch.Tables, tc)
		}
	}
	trace.Since(start, "plan the scope (%d interfaces, %d groups, %d lists)", len(sc.ifaces), len(sc.groups), len(sc.lists))
	return p, nil
}

// outOfScope says why the tables are not as the scope relies on, "" when
// they are: the chains and sets that do not depend on interfaces or
// groups as static lays them out, and, from a narrow read, the scope's
// chains and member sets as hint.Was lays them out.
func (b *Backend) outOfScope(h *holding, static *layout.Ruleset, sc *scope, narrow bool) string {
	for _, t := range static.Tables() {
		have := h.obs.Tables[t.Family]
		if have == nil {
			return "table " + string(t.Family) + " " + layout.TableName + " is missing"
		}
		for _, c := range t.Chains {
			o := have.Chains[c.Name]
			if o == nil || !sameHook(o.Hook, c.Hook) || !slices.Equal(o.Hashes, c.Hashes()) {
				return string(t.Family) + "/" + c.Name + " is not as the configuration lays it out"
			}
		}
		for _, s := range t.Sets {
			if o := have.Sets[s.Name]; o == nil || o.Signature != s.Signature() {
				return "set " + string(t.Family) + "/" + s.Name + " is not as the configuration lays it out"
			}
		}
	}
	br := h.obs.Tables[layout.Bridge]
	for g := range sc.memberGroups {
		for _, f := range ruleset.Families {
			s := layout.MemberSetDef(g, f)
			o := br.Sets[s.Name]
			if o != nil && o.Signature != s.Signature() {
				return "set " + s.Name + " is not as the configuration lays it out"
			}
			if narrow && (o != nil) != (sc.was.Members[g] != nil) {
				return "set " + s.Name + " is not as the installed configuration lays it out (an edit not applied yet, or drift)"
			}
		}
	}
	if !narrow {
		return ""
	}
	for g := range sc.groups {
		var chains []*layout.Chain
		if grp := sc.was.Groups[g]; grp != nil {
			chains = layout.GroupChains(grp, sc.was, b.marks)
		}
		if why := unlike(br, chains, layout.GroupChain(g, config.In), layout.GroupChain(g, config.Out)); why != "" {
			return why
		}
	}
	for _, l := range sc.lists {
		var chains []*layout.Chain
		if listUsed(sc.was, l) {
			chains = layout.ListChains(l, b.marks)
		}
		if why := unlike(br, chains, layout.ListChain(l, config.In), layout.ListChain(l, config.Out)); why != "" {
			return why
		}
	}
	return ""
}

// installedAsWas says how the elements the tables hold keyed by a hinted
// interface's name differ from hint.Was's layout of it, "" when they do
// not: the hint promises that the interface is installed as Was says (or
// not at all), and a plan that trusted a broken promise would leave what
// it did not look at, such as the chain of a group list the interface
// used under a configuration since edited.
func installedAsWas(h *holding, sc *scope, defs map[string]*layout.Set) string {
	was := sc.wasEls
	br := h.obs.Tables[layout.Bridge]
	for _, name := range sc.ifaces {
		key := string(layout.Ifname(name).Bytes)
		for set, def := range defs {
			s := br.Sets[set]
			if s == nil || def.Key[0] != layout.TypeIfname {
				continue
			}
			check := func(k string) string {
				d, ok := was.get(layout.Bridge, set, k)
				if _, had := s.Elements[k]; had != ok || s.Data[k] != d {
					return "the element of " + name + " in " + set + " is not as the installed configuration lays it out (an edit not applied yet, or drift)"
				}
				return ""
			}
			if len(def.Key) == 1 {
				if why := check(key); why != "" {
					return why
				}
				continue
			}
			for k := range s.Elements {
				if strings.HasPrefix(k, key) {
					if why := check(k); why != "" {
						return why
					}
				}
			}
			for fk := range was.byIface[name] {
				if rest, ok := strings.CutPrefix(fk, "bridge/"+set+"\x00"); ok {
					if why := check(rest); why != "" {
						return why
					}
				}
			}
		}
	}
	return ""
}

// settingsAsWas says which hinted interface's element of the ports set
// (which every read has, with the fingerprint of the interface's other
// elements and groups as its comment) is not as hint.Was lays it out, ""
// when none. A scoped plan takes the elements it does not read from
// hint.Was, so an interface whose settings were edited since it was
// installed (a VM file changed and not applied, then an ifdown) must be
// planned in full, or its elements of the settings before the edit would
// stay.
func settingsAsWas(obs *nlnft.Observed, was *elements, ifaces []string) string {
	var ports *nlnft.ObservedSet
	if t := obs.Tables[layout.Bridge]; t != nil {
		ports = t.Sets[layout.SetPorts]
	}
	if ports == nil {
		return "the ports set is missing"
	}
	for _, name := range ifaces {
		k := string(layout.Ifname(name).Bytes)
		want, wanted := was.get(layout.Bridge, layout.SetPorts, k)
		if _, had := ports.Elements[k]; had != wanted || ports.Data[k] != want {
			return "the settings of " + name + " are not as the installed configuration lays them out (an edit not applied yet, or drift)"
		}
	}
	return ""
}

// unlike says how the chains called names differ from chains (none: they
// must not exist), "" when they do not.
func unlike(t *nlnft.ObservedTable, chains []*layout.Chain, names ...string) string {
	for _, name := range names {
		o, want := t.Chains[name], chainNamed(chains, name)
		switch {
		case want == nil && o != nil:
			return "bridge/" + name + " exists, which the installed configuration does not lay out (an edit not applied yet, or drift)"
		case want != nil && (o == nil || !slices.Equal(o.Hashes, want.Hashes())):
			return "bridge/" + name + " is not as the installed configuration lays it out (an edit not applied yet, or drift)"
		}
	}
	return ""
}

// chainNamed returns the chain of chains called name, or nil.
func chainNamed(chains []*layout.Chain, name string) *layout.Chain {
	if i := slices.IndexFunc(chains, func(c *layout.Chain) bool { return c.Name == name }); i >= 0 {
		return chains[i]
	}
	return nil
}

// diffScope compares table f within the scope; tc is nil when nothing
// changes.
func (b *Backend) diffScope(f layout.Family, h *holding, sc *scope, defs map[string]*layout.Set, sc2 *backend.SetChanges) (*nlnft.TableChange, backend.TableChanges) {
	ch := backend.TableChanges{Created: []string{}, Rewritten: []string{}, Deleted: []string{}, HooksAdded: []string{}, HooksRemoved: []string{}}
	tc := &nlnft.TableChange{Family: f, DelElements: map[string][]layout.Element{}, AddElements: map[string][]layout.Element{}}
	for _, name := range slices.Sorted(maps.Keys(defs)) {
		tc.Sets = append(tc.Sets, defs[name])
	}
	setName := func(s string) string { return string(f) + "/" + s }
	have := h.obs.Tables[f]
	wantEls := sc.wantEls
	skip := map[string]bool{} // sets created or deleted whole
	if f == layout.Bridge {
		for _, g := range slices.Sorted(maps.Keys(sc.memberGroups)) {
			for _, fam := range ruleset.Families {
				name := layout.MemberSet(g, fam)
				_, had := have.Sets[name]
				switch wanted := sc.want.Members[g] != nil; {
				case wanted && !had:
					s := layout.MemberSetDef(g, fam)
					s.Elements = layout.MemberElements(sc.want, g, fam)
					tc.NewSets = append(tc.NewSets, s)
					sc2.Created = append(sc2.Created, setName(name))
					addMembers(sc2, setName(name), s.Elements)
					skip[name] = true
				case !wanted && had:
					tc.DeleteSets = append(tc.DeleteSets, name)
					sc2.Destroyed = append(sc2.Destroyed, setName(name))
					skip[name] = true
				}
			}
		}
	}
	// The keys in scope, per set.
	keys := map[string]map[string]bool{}
	touch := func(set, k string) {
		if skip[set] || defs[set] == nil && have.Sets[set] == nil {
			return
		}
		if keys[set] == nil {
			keys[set] = map[string]bool{}
		}
		keys[set][k] = true
	}
	prefix := string(f) + "/"
	for _, name := range sc.ifaces {
		for _, els := range []*elements{sc.wasEls, wantEls} {
			for fk := range els.byIface[name] {
				if rest, ok := strings.CutPrefix(fk, prefix); ok {
					set, k, _ := strings.Cut(rest, "\x00")
					touch(set, k)
				}
			}
		}
		if h.was == nil && f == layout.Bridge {
			// Whatever the tables hold keyed by the name, also with an
			// address or a MAC the configuration no longer gives it.
			key := string(layout.Ifname(name).Bytes)
			for set, def := range defs {
				s := have.Sets[set]
				switch {
				case s == nil || def.Key[0] != layout.TypeIfname:
				case len(def.Key) == 1:
					if _, ok := s.Elements[key]; ok {
						touch(set, key)
					}
				default:
					for k := range s.Elements {
						if strings.HasPrefix(k, key) {
							touch(set, k)
						}
					}
				}
			}
		}
	}
	for _, a := range sc.addrs {
		k := string(layout.Addr(a).Bytes)
		if f == layout.Inet {
			set := layout.SetVM4
			if !a.Is4() {
				set = layout.SetVM6
			}
			touch(set, k)
			continue
		}
		for g := range sc.memberGroups {
			touch(layout.MemberSet(g, ruleset.FamilyOf(a)), k)
		}
	}
	if sc.allMembers && f == layout.Bridge {
		for g := range sc.memberGroups {
			for _, fam := range ruleset.Families {
				name := layout.MemberSet(g, fam)
				for _, e := range layout.MemberElements(sc.want, g, fam) {
					touch(name, string(e.KeyBytes()))
				}
				if s := have.Sets[name]; s != nil {
					for k := range s.Elements {
						touch(name, k)
					}
				}
			}
		}
	}
	for _, set := range slices.Sorted(maps.Keys(keys)) {
		def := defs[set]
		for _, k := range slices.Sorted(maps.Keys(keys[set])) {
			wantData, wanted := wantEls.get(f, set, k)
			haveData, had := h.element(f, set, k)
			if wanted == had && wantData == haveData {
				continue
			}
			var types []layout.Type
			if def != nil {
				types = def.Key
			} else if g, fam, ok := parseMemberSet(set); ok {
				types = layout.MemberSetDef(g, fam).Key
			}
			e, ok := layout.DecodeElement(types, []byte(k))
			if !ok {
				continue
			}
			if had {
				tc.DelElements[set] = append(tc.DelElements[set], e)
				sc2.Removed[setName(set)] = append(sc2.Removed[setName(set)], e.Text())
			}
			if wanted {
				e, _ = wantEls.element(f, set, k)
				tc.AddElements[set] = append(tc.AddElements[set], e)
				sc2.Added[setName(set)] = append(sc2.Added[setName(set)], e.Text())
			}
		}
	}
	if f == layout.Bridge {
		var want []*layout.Chain
		var names []string
		for _, g := range slices.Sorted(maps.Keys(sc.groups)) {
			names = append(names, layout.GroupChain(g, config.In), layout.GroupChain(g, config.Out))
			if grp := sc.want.Groups[g]; grp != nil {
				want = append(want, layout.GroupChains(grp, sc.want, b.marks)...)
			}
		}
		for _, k := range slices.Sorted(maps.Keys(sc.lists)) {
			l := sc.lists[k]
			names = append(names, layout.ListChain(l, config.In), layout.ListChain(l, config.Out))
			if listUsed(sc.want, l) {
				want = append(want, layout.ListChains(l, b.marks)...)
			}
		}
		for _, name := range names {
			o, c := have.Chains[name], chainNamed(want, name)
			switch {
			case c != nil && o == nil:
				tc.NewChains = append(tc.NewChains, c)
				tc.Fill = append(tc.Fill, c)
				ch.Created = append(ch.Created, name)
			case c != nil && !slices.Equal(o.Hashes, c.Hashes()):
				tc.Flush = append(tc.Flush, name)
				tc.Fill = append(tc.Fill, c)
				ch.Rewritten = append(ch.Rewritten, name)
			case c == nil && o != nil:
				tc.Flush = append(tc.Flush, name)
				tc.DeleteChains = append(tc.DeleteChains, name)
				ch.Deleted = append(ch.Deleted, name)
			}
		}
		// Group chains before the list chains that jump to them, and
		// list chains deleted before the group chains they jump to.
		sort.SliceStable(tc.NewChains, func(i, j int) bool { return !isList(tc.NewChains[i].Name) && isList(tc.NewChains[j].Name) })
		sort.SliceStable(tc.DeleteChains, func(i, j int) bool { return isList(tc.DeleteChains[i]) && !isList(tc.DeleteChains[j]) })
	}
	slices.Sort(ch.Created)
	slices.Sort(ch.Rewritten)
	slices.Sort(ch.Deleted)
	if len(tc.Flush)+len(tc.DeleteChains)+len(tc.DeleteSets)+len(tc.NewSets)+len(tc.DelElements)+len(tc.AddElements)+len(tc.NewChains)+len(tc.Fill) == 0 {
		return nil, ch
	}
	return tc, ch
}

func isList(chain string) bool { return strings.HasPrefix(chain, layout.ListChainPrefix) }
