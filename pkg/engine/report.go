package engine

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// SetChanges is what a change does to vmfw's ipsets.
type SetChanges struct {
	// Created and Destroyed list whole sets.
	Created   []string `json:"created"`
	Destroyed []string `json:"destroyed"`
	// Added and Removed map a set to the members it gains and loses.
	Added   map[string][]string `json:"added"`
	Removed map[string][]string `json:"removed"`
}

// Empty reports whether no set changes.
func (s SetChanges) Empty() bool {
	return len(s.Created)+len(s.Destroyed)+len(s.Added)+len(s.Removed) == 0
}

// setChanges compares the sets a ruleset wants with those the kernel has.
// Members are compared as addresses, so "2001:DB8::1" and "2001:db8::1"
// are one member.
func setChanges(want []layout.Set, have map[string]*ipset.Observed) SetChanges {
	sc := SetChanges{Created: []string{}, Destroyed: []string{}, Added: map[string][]string{}, Removed: map[string][]string{}}
	wanted := map[string]bool{}
	for _, s := range want {
		wanted[s.Name] = true
		o := have[s.Name]
		if o == nil {
			sc.Created = append(sc.Created, s.Name)
		}
		got := map[string]bool{}
		if o != nil {
			for m := range o.Members {
				got[normalMember(m)] = true
			}
		}
		w := map[string]bool{}
		for _, m := range s.Members {
			w[normalMember(m)] = true
			if !got[normalMember(m)] {
				sc.Added[s.Name] = append(sc.Added[s.Name], m)
			}
		}
		for m := range got {
			if !w[m] {
				sc.Removed[s.Name] = append(sc.Removed[s.Name], m)
			}
		}
		slices.Sort(sc.Removed[s.Name])
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

func normalMember(m string) string {
	if a, err := netip.ParseAddr(m); err == nil {
		return a.String()
	}
	return strings.ToLower(m)
}

// Report is what "apply -o json" and "check -o json" print: what an
// apply changed, or would change, in a form scripts can read.
type Report struct {
	// Changed says whether anything changed (check: whether an apply
	// would change anything).
	Changed bool `json:"changed"`
	// DryRun is true when nothing was written (apply --dry-run, check).
	DryRun bool `json:"dry_run"`
	// Chains maps ipv4, ipv6 and bridge to the chains written there.
	Chains map[string]ChainChanges `json:"chains"`
	// Sets is what changed in vmfw's ipsets.
	Sets SetChanges `json:"sets"`
	// FlowsCut counts the tracked connections deleted because the new
	// rules deny them; 0 in a dry run.
	FlowsCut int `json:"flows_cut"`
}

// ChainChanges is what a change writes in one table.
type ChainChanges struct {
	// Created, Rewritten and Deleted list whole chains.
	Created   []string `json:"created"`
	Rewritten []string `json:"rewritten"`
	Deleted   []string `json:"deleted"`
	// HooksAdded and HooksRemoved name jumps from built-in chains
	// ("FORWARD -> vmfw-FORWARD").
	HooksAdded   []string `json:"hooks_added"`
	HooksRemoved []string `json:"hooks_removed"`
}

// Report summarises the change for scripts.
func (c *Change) Report(dryRun bool) *Report {
	r := &Report{Changed: !c.Empty(), DryRun: dryRun, Chains: map[string]ChainChanges{}, Sets: c.Sets, FlowsCut: c.FlowsCut}
	if r.Sets.Created == nil {
		r.Sets = SetChanges{Created: []string{}, Destroyed: []string{}, Added: map[string][]string{}, Removed: map[string][]string{}}
	}
	for _, f := range ruleset.Families {
		if p := c.Plans[f]; p != nil {
			r.Chains[f.String()] = planChanges(p)
		}
	}
	if c.Bridge != nil {
		r.Chains["bridge"] = planChanges(c.Bridge)
	}
	return r
}

func planChanges(p *layout.Plan) ChainChanges {
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
	return ChainChanges{Created: names(p.Create), Rewritten: names(p.Rewrite), Deleted: names(p.Delete),
		HooksAdded: hooks(p.AddHooks), HooksRemoved: hooks(p.DelHooks)}
}
