package ruleset

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"

	"github.com/vmfw/vmfw/pkg/config"
)

// Deriving a policy from another.
//
// Compile walks every attached interface: at 5000 that is about 12 ms,
// more than the whole of an ifup through the agent may cost
// (docs/performance.md). An ifup, an ifdown or a group edit changes a few
// interfaces or groups, so the engine derives the policy after the change
// from the one before it: With attaches and detaches interfaces, Regroup
// recompiles groups, and both share what does not change (compiled
// interfaces and groups, the members of groups none of the changed
// interfaces lists). Each returns what Compile returns for the same
// configuration and interfaces (TestDeriveMatchesCompile).

// With returns the policy of m with the interfaces of up attached (again,
// when attached already) and those named by down detached. p must have
// been compiled from m (or derived from such a policy): only up's
// configuration is read from it, and the groups and sets the change
// brings in. Like Compile it fails for an interface listing an unknown
// group.
func (p *Policy) With(m *config.Model, up []*config.NIC, down []string) (*Policy, error) {
	gone := map[string]bool{}
	for _, name := range down {
		gone[name] = true
	}
	added := make([]*Interface, 0, len(up))
	for _, n := range up {
		if gone[n.Tap] {
			continue
		}
		gone[n.Tap] = true // its old compilation, if attached, goes
		for _, g := range n.Groups {
			if m.Groups[g] == nil {
				return nil, fmt.Errorf("%s: unknown group %q", n.Tap, g)
			}
		}
		added = append(added, compileInterface(n))
	}
	sort.Slice(added, func(i, j int) bool { return added[i].Name < added[j].Name })
	for i := 1; i < len(added); i++ {
		if added[i].Name == added[i-1].Name {
			return nil, fmt.Errorf("interface %s attached twice", added[i].Name)
		}
	}
	out := &Policy{Host: p.Host}
	// The interfaces, sorted: the kept ones merged with the added ones.
	var removed []*Interface
	out.Interfaces = make([]*Interface, 0, len(p.Interfaces)+len(added))
	j := 0
	for _, n := range p.Interfaces {
		for j < len(added) && added[j].Name < n.Name {
			out.Interfaces = append(out.Interfaces, added[j])
			j++
		}
		if gone[n.Name] {
			removed = append(removed, n)
			continue
		}
		out.Interfaces = append(out.Interfaces, n)
	}
	out.Interfaces = append(out.Interfaces, added[j:]...)
	// Groups: those some enabled interface lists.
	out.Groups = maps.Clone(p.Groups)
	touched := map[string]bool{}
	for _, n := range removed {
		for _, g := range n.Groups {
			touched[g] = true
		}
	}
	for _, n := range added {
		for _, g := range n.Groups {
			touched[g] = true
			if n.Enabled && out.Groups[g] == nil {
				out.Groups[g] = compileGroup(m.Groups[g])
			}
		}
	}
	for g := range touched {
		if out.Groups[g] != nil && !listedByEnabled(out.Interfaces, g) {
			delete(out.Groups, g)
		}
	}
	return out, out.references(m, p, touched, removed, added)
}

// listedByEnabled reports whether an enabled interface lists group.
func listedByEnabled(ifaces []*Interface, group string) bool {
	for _, n := range ifaces {
		if n.Enabled && slices.Contains(n.Groups, group) {
			return true
		}
	}
	return false
}

// Regroup returns the policy of m for p's interfaces when only the rules
// of the named groups differ between the configuration p was compiled
// from and m: the same interfaces, host settings and VMs. The groups are
// compiled again from m, and the members and sets their rules refer to
// follow.
func (p *Policy) Regroup(m *config.Model, groups []string) (*Policy, error) {
	out := &Policy{Host: p.Host, Interfaces: p.Interfaces, Groups: maps.Clone(p.Groups)}
	for _, g := range groups {
		if out.Groups[g] == nil {
			continue // no enabled interface lists it
		}
		if m.Groups[g] == nil {
			return nil, fmt.Errorf("group %s is not in the configuration", g)
		}
		out.Groups[g] = compileGroup(m.Groups[g])
	}
	return out, out.references(m, p, nil, nil, nil)
}

// references sets p's Members and Sets to what its groups' rules refer
// to, as Compile does, taking them from prev where they stay the same:
// the members of a group in touched (its member interfaces changed, the
// interfaces removed and added since prev) are prev's changed by those
// (membersAfter), or computed again when that cannot tell them or prev
// has none.
func (p *Policy) references(m *config.Model, prev *Policy, touched map[string]bool, removed, added []*Interface) error {
	p.Members = map[string]*Members{}
	p.Sets = map[string]*Set{}
	for _, name := range slices.Sorted(maps.Keys(p.Groups)) {
		g := p.Groups[name]
		for _, d := range []config.Direction{config.In, config.Out} {
			for _, r := range g.Rules(d) {
				for _, ref := range []string{r.Match.SourceGroup, r.Match.DestGroup} {
					if ref == "" || p.Members[ref] != nil {
						continue
					}
					old := prev.Members[ref]
					switch {
					case old != nil && !touched[ref]:
						p.Members[ref] = old
					case old != nil:
						if p.Members[ref] = p.membersAfter(old, removed, added, m.RemoteMembers[ref]); p.Members[ref] == nil {
							p.Members[ref] = members(ref, p.Interfaces, m.RemoteMembers[ref])
						}
					default:
						p.Members[ref] = members(ref, p.Interfaces, m.RemoteMembers[ref])
					}
				}
				for _, ref := range []string{r.Match.SourceSet, r.Match.DestSet} {
					if ref == "" || p.Sets[ref] != nil {
						continue
					}
					if old := prev.Sets[ref]; old != nil && m.Sets[ref] == old.Config {
						p.Sets[ref] = old
						continue
					}
					s := m.Sets[ref]
					if s == nil {
						return fmt.Errorf("group %s: unknown address set %q", g.Name, ref)
					}
					p.Sets[ref] = &Set{Name: s.Name, File: s.File, Entries: s.Entries, Except: s.Except, Config: s}
				}
			}
		}
	}
	return nil
}

// membersAfter returns old, the members of its group in the policy p was
// derived from, changed by the interfaces removed and added since, or nil
// when a removed interface's address is still listed by an interface of
// p, which may or may not be a member: then only members() can tell.
// Computing them again reads every interface, 0.3 ms of an ifup at 5000.
func (p *Policy) membersAfter(old *Members, removed, added []*Interface, remote []netip.Addr) *Members {
	out := &Members{Group: old.Group, Addrs: make(map[Family][]netip.Addr, len(old.Addrs))}
	for f, addrs := range old.Addrs {
		out.Addrs[f] = slices.Clone(addrs)
	}
	for _, n := range removed {
		if !slices.Contains(n.Groups, old.Group) {
			continue
		}
		for _, ip := range n.IPs {
			if p.Owner(ip) != nil {
				return nil
			}
			if slices.Contains(remote, ip) {
				continue
			}
			f := FamilyOf(ip)
			if i, ok := slices.BinarySearchFunc(out.Addrs[f], ip, netip.Addr.Compare); ok {
				out.Addrs[f] = slices.Delete(out.Addrs[f], i, i+1)
			}
		}
	}
	for _, n := range added {
		if !slices.Contains(n.Groups, old.Group) {
			continue
		}
		for _, ip := range n.IPs {
			f := FamilyOf(ip)
			if i, ok := slices.BinarySearchFunc(out.Addrs[f], ip, netip.Addr.Compare); !ok {
				out.Addrs[f] = slices.Insert(out.Addrs[f], i, ip)
			}
		}
	}
	for f, addrs := range out.Addrs {
		if len(addrs) == 0 {
			delete(out.Addrs, f)
		}
	}
	return out
}

// Names returns the names of p's interfaces, sorted.
func (p *Policy) Names() []string {
	out := make([]string, len(p.Interfaces))
	for i, n := range p.Interfaces {
		out[i] = n.Name
	}
	return out
}
