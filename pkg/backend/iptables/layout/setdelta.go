package layout

import (
	"net/netip"
	"slices"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// MemberChanges is how the members of one ipset differ between two
// layouts: Added in the order the wanted layout lists them, Removed
// sorted, each in Member's form (a member whose nomatch flag changes is
// in both, with each flag).
type MemberChanges struct {
	Added, Removed []string
}

// AddressSetChanges returns how the members of an address set's ipsets
// differ, per family, between Build's layouts of the set as was and as
// now, from the prefixes whose place changed (config.SetChanges) and
// without laying out the members both have: for an edit of one entry of
// 100,000 the cost of comparing the two lists of prefixes, ~0.3 ms,
// instead of laying out 100,000 member strings and comparing them with
// the kernel's (BenchmarkPlanSetEdit100000). A family
// absent from the map has no change. ok is false when a changed prefix
// has length 0 or 1, whose layout is not one member each (the halves of
// a /0, see addressSetMembers).
func AddressSetChanges(was, now *config.Set) (map[ruleset.Family]MemberChanges, bool) {
	out := map[ruleset.Family]MemberChanges{}
	// SetChanges lists the prefixes listed now in the new layout's order
	// (entries, then excepts, each in file order), as Added must be.
	for _, c := range config.SetChanges(was, now) {
		if c.Prefix.Bits() <= 1 {
			return nil, false
		}
		f := ruleset.FamilyOf(c.Prefix.Addr())
		mc := out[f]
		if c.Now != config.NotListed {
			mc.Added = append(mc.Added, placedMember(c.Prefix, c.Now))
		}
		if c.Was != config.NotListed {
			mc.Removed = append(mc.Removed, placedMember(c.Prefix, c.Was))
		}
		out[f] = mc
	}
	for f, mc := range out {
		slices.Sort(mc.Removed)
		out[f] = mc
	}
	return out, true
}

// placedMember is the member a prefix listed in place is laid out as.
func placedMember(p netip.Prefix, place config.Listed) string {
	if place == config.ListedExcept {
		return SetMember(p) + NoMatch
	}
	return SetMember(p)
}
