package iptables

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/explain"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Inspect reads vmfw's part of the kernel with the rules' text, which
// vmfw trace interprets (the fingerprint-only reads of other operations
// are not enough), and names the installed interfaces.
func (b *Backend) Inspect(ctx context.Context) (*explain.Kernel, []string, error) {
	k := &explain.Kernel{Backend: b.desc, Tables: map[ruleset.Family]layout.Observed{}, Sets: map[string]map[netip.Addr]bool{}, NetSets: map[string][]explain.NetMember{}}
	st := &state{full: true, tables: map[ruleset.Family]*xtables.Snapshot{}}
	for _, f := range ruleset.Families {
		s, err := b.tables.Save(ctx, f)
		if err != nil {
			return nil, nil, err
		}
		k.Tables[f] = s.Observed
		st.tables[f] = s
	}
	if b.bridge != nil {
		br, err := b.bridge.Save(ctx)
		if err != nil {
			return nil, nil, err
		}
		k.Bridge = &br
	}
	sets, err := b.sets.List(ctx)
	if err != nil {
		return nil, nil, err
	}
	for name, o := range sets {
		if o.Type == layout.HashNet {
			// An address set: its prefixes and nomatch flags, and the
			// single addresses as the interpreter's sets hold them.
			nets := make([]explain.NetMember, 0, len(o.Members))
			hosts := map[netip.Addr]bool{}
			for member := range o.Members {
				nm, err := explain.ParseNetMember(member)
				if err != nil {
					return nil, nil, fmt.Errorf("ipset %s: member %w", name, err)
				}
				nets = append(nets, nm)
				if !nm.NoMatch && nm.Prefix.IsSingleIP() {
					hosts[nm.Prefix.Addr()] = true
				}
			}
			k.NetSets[name], k.Sets[name] = nets, hosts
			continue
		}
		m := map[netip.Addr]bool{}
		for member := range o.Members {
			a, err := netip.ParseAddr(member)
			if err != nil {
				return nil, nil, fmt.Errorf("ipset %s: member %q is not an address", name, member)
			}
			m[a] = true
		}
		k.Sets[name] = m
	}
	return k, st.Installed(), nil
}
