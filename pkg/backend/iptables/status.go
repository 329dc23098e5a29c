package iptables

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Status lays out want and compares it, chain by chain, with what the
// kernel holds: the base chains and hooks, and for every interface of
// want its own chains and its groups'. It counts what each interface's
// DROP and REJECT rules matched, found by fingerprint.
func (b *Backend) Status(ctx context.Context, s backend.State, want *ruleset.Policy) (*backend.Status, error) {
	st := s.(*state)
	if !st.full {
		full, err := b.readFull(ctx, false)
		if err != nil {
			return nil, err
		}
		st = full
	} else if err := b.complete(ctx, st); err != nil {
		return nil, err
	}
	rs := layout.Build(want)
	out := &backend.Status{Interfaces: map[string]*backend.InterfaceStatus{}}
	plans := map[string]*layout.Plan{}
	for _, f := range ruleset.Families {
		plans[f.String()] = layout.Diff(rs.Tables[f], st.tables[f].Observed)
	}
	if b.bridge != nil {
		plans["bridge"] = layout.Diff(rs.Bridge, st.bridge)
	}
	for _, table := range []string{"ipv4", "ipv6", "bridge"} {
		if plans[table] != nil {
			out.BaseDrifted = append(out.BaseDrifted, baseDrift(table, plans[table])...)
		}
	}
	tables := map[ruleset.Family]map[layout.Chain]*layout.ChainRules{}
	for _, f := range ruleset.Families {
		tables[f] = rs.Tables[f].Index()
	}
	for _, n := range want.Interfaces {
		out.Interfaces[n.Name] = b.interfaceStatus(n, rs, plans, tables, st)
	}
	out.Sets = addressSetStatus(rs.Sets, st.sets)
	return out, nil
}

// addressSetStatus compares the address sets' ipsets of a laid out
// policy with the kernel's: members per family, and what differs.
func addressSetStatus(want []layout.Set, have map[string]*ipset.Observed) map[string]*backend.SetStatus {
	out := map[string]*backend.SetStatus{}
	for _, s := range want {
		kind, name, f, ok := layout.ParseSetName(s.Name)
		if !ok || kind != layout.AddressSet {
			continue
		}
		ss := out[name]
		if ss == nil {
			ss = &backend.SetStatus{Members: map[string]int{}}
			out[name] = ss
		}
		o := have[s.Name]
		if o == nil {
			ss.Drifted = append(ss.Drifted, backend.Drift{Object: "ipset " + s.Name, Problem: "missing"})
			continue
		}
		ss.Members[f.String()] = len(o.Members)
		missing := 0
		for _, m := range s.Members {
			if !o.Members[m] {
				missing++
			}
		}
		if extra := len(o.Members) - (len(s.Members) - missing); missing+extra > 0 {
			ss.Drifted = append(ss.Drifted, backend.Drift{Object: "ipset " + s.Name, Problem: fmt.Sprintf("%d members missing, %d unexpected", missing, extra)})
		}
	}
	return out
}

// baseDrift names the base chains and hooks plan would change in table.
func baseDrift(table string, plan *layout.Plan) []backend.Drift {
	out := chainDrift(table, plan, layout.IsBaseChain)
	for _, h := range plan.AddHooks {
		out = append(out, backend.Drift{Object: table + "/" + string(h.From), Problem: "jump to " + string(h.To) + " missing"})
	}
	for _, h := range plan.DelHooks {
		out = append(out, backend.Drift{Object: table + "/" + string(h.From), Problem: "jump to " + string(h.To) + " unexpected"})
	}
	return out
}

// chainDrift names the chains keep selects that plan would create,
// rewrite or delete in table.
func chainDrift(table string, plan *layout.Plan, keep func(layout.Chain) bool) []backend.Drift {
	var out []backend.Drift
	for _, l := range []struct {
		chains  []layout.Chain
		problem string
	}{{plan.Create, "missing"}, {plan.Rewrite, "drifted"}, {plan.Delete, "unexpected"}} {
		for _, c := range l.chains {
			if keep(c) {
				out = append(out, backend.Drift{Object: table + "/" + string(c), Problem: l.problem})
			}
		}
	}
	return out
}

func (b *Backend) interfaceStatus(n *ruleset.Interface, rs *layout.Ruleset, plans map[string]*layout.Plan, tables map[ruleset.Family]map[layout.Chain]*layout.ChainRules, st *state) *backend.InterfaceStatus {
	is := &backend.InterfaceStatus{}
	mine := map[layout.Chain]bool{layout.L2Chain(n.Name): true}
	for _, c := range layout.TapChains(n.Name) {
		mine[c] = true
	}
	if n.Enabled {
		for _, g := range n.Groups {
			for _, dir := range []string{"in", "lin", "out"} {
				mine[layout.GroupChain(g, dir)] = true
			}
		}
	}
	for _, table := range []string{"ipv4", "ipv6", "bridge"} {
		if plans[table] != nil {
			is.Drifted = append(is.Drifted, chainDrift(table, plans[table], func(c layout.Chain) bool { return mine[c] })...)
		}
	}
	for _, f := range ruleset.Families {
		have := st.tables[f]
		for _, name := range layout.TapChains(n.Name) {
			if c := tables[f][name]; c != nil {
				dropped := droppedBy(c, have.Chains[name], have.Counters[name])
				if layout.IsInChain(name) {
					is.DroppedIn.Add(dropped)
				} else {
					is.DroppedOut.Add(dropped)
				}
			}
		}
	}
	for _, s := range rs.Sets {
		if s.Type != layout.HashIP {
			continue // an address set's members are networks, not interfaces' addresses
		}
		have := st.sets[s.Name]
		for _, ip := range n.IPs {
			switch {
			case !slices.Contains(s.Members, ip.String()):
			case have == nil:
				is.Drifted = append(is.Drifted, backend.Drift{Object: "ipset " + s.Name, Problem: "missing"})
			case !have.Members[strings.ToLower(ip.String())]:
				is.Drifted = append(is.Drifted, backend.Drift{Object: "ipset " + s.Name, Problem: "member " + ip.String() + " missing"})
			}
		}
	}
	return is
}

// droppedBy sums the counters of the chain's DROP and REJECT rules, found
// in the kernel by their fingerprints.
func droppedBy(c *layout.ChainRules, hashes []string, counters []xtables.Counter) backend.Counter {
	var sum backend.Counter
	for _, r := range c.Rules {
		if !strings.HasSuffix(r.Spec, "-j DROP") && !strings.Contains(r.Spec, "-j REJECT") {
			continue
		}
		h := r.Hash(c.Name)
		for i, got := range hashes {
			if got == h && i < len(counters) {
				sum.Add(backend.Counter{Packets: counters[i].Packets, Bytes: counters[i].Bytes})
			}
		}
	}
	return sum
}
