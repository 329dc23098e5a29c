package layout

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Address sets (sets/NAME.toml, docs/nftables.md "Address sets").
//
// nf_tables has no nomatch: an element of a set matches or it is not
// there. So a configuration set, whose excepts carve addresses out of its
// entries, is loaded as what it matches: config.Set.Effective, the fewest
// disjoint prefixes covering exactly the matching addresses, as an
// interval set per family. A rule with source_set or dest_set looks the
// address up in the set of the packet's family, in both families whatever
// families the set's entries are of, so that an edit of the set (a first
// IPv6 entry, an entry turned except) changes elements only and never a
// rule, as on the iptables backend (docs/design.md, "Address sets").

// addressSetPrefix starts the names of address sets' kernel sets, as the
// iptables backend names its ipsets.
const addressSetPrefix = "as-"

// AddressSet names the interval set holding address set name's
// addresses of family f: as-NAME-v4, as-NAME-v6.
func AddressSet(name string, f ruleset.Family) string {
	if f == ruleset.IPv6 {
		return addressSetPrefix + name + "-v6"
	}
	return addressSetPrefix + name + "-v4"
}

// ParseAddressSet splits the name of an address set's kernel set into
// the configuration set's name and the family.
func ParseAddressSet(name string) (set string, f ruleset.Family, ok bool) {
	rest, found := strings.CutPrefix(name, addressSetPrefix)
	if !found {
		return "", 0, false
	}
	switch {
	case strings.HasSuffix(rest, "-v4") && len(rest) > 3:
		return rest[:len(rest)-3], ruleset.IPv4, true
	case strings.HasSuffix(rest, "-v6") && len(rest) > 3:
		return rest[:len(rest)-3], ruleset.IPv6, true
	}
	return "", 0, false
}

// addressSets lays out the interval sets of every address set a rule of
// the policy's groups refers to, both families each.
func (b *builder) addressSets() []*Set {
	var out []*Set
	for _, name := range slices.Sorted(maps.Keys(b.p.Sets)) {
		for _, f := range ruleset.Families {
			out = append(out, AddressSetOf(b.p.Sets[name], f))
		}
	}
	return out
}

// AddressSetOf lays out one family of address set s: an interval set of
// its effective prefixes. Besides Build, the members-only plan of a set
// edit and status use it.
func AddressSetOf(s *ruleset.Set, f ruleset.Family) *Set {
	t := TypeIPv4
	if f == ruleset.IPv6 {
		t = TypeIPv6
	}
	out := &Set{Name: AddressSet(s.Name, f), Key: []Type{t}, Interval: true}
	if s.Config == nil {
		return out
	}
	prefixes := s.Config.Effective(f == ruleset.IPv6)
	out.Elements = make([]Element, len(prefixes))
	for i, p := range prefixes {
		out.Elements[i] = PrefixElement(p)
	}
	return out
}

// PrefixElement is the element of an interval set covering p.
func PrefixElement(p netip.Prefix) Element {
	iv := PrefixInterval(p)
	return Element{Key: []Value{iv.Lo}, End: &iv.Hi}
}

// addressSetMatch restricts e to the addresses of address set name in
// family f, looked up in field.
func addressSetMatch(e []Expr, field Field, name string, f ruleset.Family) []Expr {
	if name == "" {
		return e
	}
	return append(e, in(field, AddressSet(name, f)))
}
