package iptables

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables/interp"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Inspect reads vmfw's part of the kernel with the rules' text, which
// vmfw trace interprets (package interp; the fingerprint-only reads of
// other operations are not enough), and names the installed interfaces.
func (b *Backend) Inspect(ctx context.Context) (backend.Inspection, error) {
	k := &interp.Kernel{Backend: b.desc, Tables: map[ruleset.Family]layout.Observed{}, Sets: map[string]map[netip.Addr]bool{}, Nets: map[string]interp.NetSet{}}
	st := &state{full: true, tables: map[ruleset.Family]*xtables.Snapshot{}}
	for _, f := range ruleset.Families {
		s, err := b.tables.Save(ctx, f)
		if err != nil {
			return nil, err
		}
		k.Tables[f] = s.Observed
		st.tables[f] = s
	}
	if b.bridge != nil {
		br, err := b.bridge.Save(ctx)
		if err != nil {
			return nil, err
		}
		k.Bridge = &br
	}
	sets, err := b.sets.List(ctx)
	if err != nil {
		return nil, err
	}
	for name, o := range sets {
		if o.Type == layout.HashNet {
			// An address set: prefixes, with their nomatch flags.
			n := interp.NetSet{}
			for member := range o.Members {
				p, nomatch, err := interp.ParseNetMember(member)
				if err != nil {
					return nil, fmt.Errorf("ipset %s: member %w", name, err)
				}
				n[p] = nomatch
			}
			k.Nets[name] = n
			continue
		}
		m := map[netip.Addr]bool{}
		for member := range o.Members {
			a, err := netip.ParseAddr(member)
			if err != nil {
				return nil, fmt.Errorf("ipset %s: member %q is not an address", name, member)
			}
			m[a] = true
		}
		k.Sets[name] = m
	}
	k.Interfaces = st.Installed()
	return k, nil
}
