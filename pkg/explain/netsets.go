package explain

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
)

// Address sets (hash:net ipsets) in the interpreter.
//
// The interpreter's --match-set looks an address up in a set of
// addresses, which is what a group's hash:ip set holds. An address set's
// hash:net set holds prefixes, some flagged nomatch, and the most
// specific prefix containing an address decides (config.Set). Until the
// interpreter looks prefixes up itself, a trace resolves every hash:net
// set for the only two addresses its packets carry, the flow's source and
// destination: each machine's view of such a set is those of the two that
// match it, so --match-set answers as the kernel does for this trace.
// netSetDrift compares the prefixes the interpreter's set drift
// (setDrift), which compares single addresses, does not see.

// NetMember is a member of a hash:net set as the kernel holds it.
type NetMember struct {
	// Prefix is the member's network; a single address is a /32 or /128.
	Prefix netip.Prefix
	// NoMatch says the member excludes its addresses (ipset's nomatch).
	NoMatch bool
}

// ParseNetMember reads a member of a hash:net set as ipset save prints it
// (layout.SetMember, followed by layout.NoMatch for a nomatch member).
func ParseNetMember(s string) (NetMember, error) {
	bare, nomatch := strings.CutSuffix(s, layout.NoMatch)
	if a, err := netip.ParseAddr(bare); err == nil {
		return NetMember{Prefix: netip.PrefixFrom(a, a.BitLen()), NoMatch: nomatch}, nil
	}
	p, err := netip.ParsePrefix(bare)
	if err != nil {
		return NetMember{}, fmt.Errorf("%q is not an address or prefix", s)
	}
	return NetMember{Prefix: p, NoMatch: nomatch}, nil
}

// netMatch reports whether a matches a hash:net set of members: the most
// specific member containing a is not nomatch.
func netMatch(members []NetMember, a netip.Addr) bool {
	best, matched := -1, false
	for _, m := range members {
		if m.Prefix.Bits() > best && m.Prefix.Contains(a) {
			best, matched = m.Prefix.Bits(), !m.NoMatch
		}
	}
	return matched
}

// compiledNetSets returns the hash:net sets of a compiled ruleset with
// their members.
func compiledNetSets(rs *layout.Ruleset) map[string][]NetMember {
	out := map[string][]NetMember{}
	for _, s := range rs.Sets {
		if s.Type != layout.HashNet {
			continue
		}
		members := make([]NetMember, 0, len(s.Members))
		for _, m := range s.Members {
			if nm, err := ParseNetMember(m); err == nil {
				members = append(members, nm)
			}
		}
		out[s.Name] = members
	}
	return out
}

// resolveNetSets puts into sets, a machine's view of the sets, each
// hash:net set of nets as the addresses of this trace that match it.
func (t *tracer) resolveNetSets(sets map[string]map[netip.Addr]bool, nets map[string][]NetMember) {
	for name, members := range nets {
		view := map[netip.Addr]bool{}
		for _, a := range []netip.Addr{t.from.Address, t.to.Address} {
			if a.IsValid() && netMatch(members, a) {
				view[a] = true
			}
		}
		sets[name] = view
	}
}

// kernelSets is the kernel's sets as the kernel machine of this trace
// sees them: k.Sets, with the hash:net sets resolved. k is shared by the
// traces of a batch, so its maps are not changed.
func (t *tracer) kernelSets(k *Kernel) map[string]map[netip.Addr]bool {
	sets := maps.Clone(k.Sets)
	if sets == nil {
		sets = map[string]map[netip.Addr]bool{}
	}
	t.resolveNetSets(sets, k.NetSets)
	return sets
}

// netSetDrift lists the hash:net sets either walk looked up whose members
// other than single matching addresses (which setDrift compares) differ
// between the ruleset of the installed interfaces and the kernel.
func (t *tracer) netSetDrift(compiled, kernel *result) []string {
	want := compiledNetSets(t.actual)
	used := map[string]bool{}
	for _, r := range []*result{compiled, kernel} {
		if r == nil {
			continue
		}
		for s := range r.setsUsed {
			if _, isNet := want[s]; isNet {
				used[s] = true
			} else if _, isNet := t.in.Kernel.NetSets[s]; isNet {
				used[s] = true
			}
		}
	}
	var out []string
	for _, s := range slices.Sorted(maps.Keys(used)) {
		w, g := netKeys(want[s]), netKeys(t.in.Kernel.NetSets[s])
		var missing, extra []string
		for m := range w {
			if !g[m] {
				missing = append(missing, m)
			}
		}
		for m := range g {
			if !w[m] {
				extra = append(extra, m)
			}
		}
		if len(missing)+len(extra) == 0 {
			continue
		}
		slices.Sort(missing)
		slices.Sort(extra)
		d := "set " + s + " differs"
		if len(missing) > 0 {
			d += ": missing " + strings.Join(missing, ", ")
		}
		if len(extra) > 0 {
			d += ": extra " + strings.Join(extra, ", ")
		}
		out = append(out, d)
	}
	return out
}

// netKeys names the members setDrift does not compare: all but the
// single addresses without nomatch.
func netKeys(members []NetMember) map[string]bool {
	out := map[string]bool{}
	for _, m := range members {
		if !m.NoMatch && m.Prefix.IsSingleIP() {
			continue
		}
		key := layout.SetMember(m.Prefix)
		if m.NoMatch {
			key += layout.NoMatch
		}
		out[key] = true
	}
	return out
}
