package engine

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/explain"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Inspect reads what vmfw trace evaluates: the configuration, the
// interfaces whose chains are installed, and vmfw's part of the kernel
// with the rules' text (a trace interprets the rules the kernel holds, so
// the fingerprint-only read of the other operations is not enough). It
// changes nothing; it takes the lock so that it never reads a table
// another vmfw run is halfway through changing.
func (e *Engine) Inspect(ctx context.Context) (*explain.Input, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	k := &explain.Kernel{Backend: e.Backend, Tables: map[ruleset.Family]layout.Observed{}, Sets: map[string]map[netip.Addr]bool{}}
	installed := map[string]bool{}
	for _, f := range ruleset.Families {
		s, err := e.kernel.Firewall.Save(ctx, f)
		if err != nil {
			return nil, err
		}
		k.Tables[f] = s.Observed
		st := kernelState{tables: map[ruleset.Family]*xtables.Snapshot{f: s}}
		for _, t := range st.installed() {
			installed[t] = true
		}
	}
	if e.kernel.Bridge != nil {
		br, err := e.kernel.Bridge.Save(ctx)
		if err != nil {
			return nil, err
		}
		k.Bridge = &br
	}
	sets, err := e.kernel.Sets.List(ctx)
	if err != nil {
		return nil, err
	}
	for name, o := range sets {
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
	var taps []string
	for t := range installed {
		taps = append(taps, t)
	}
	return &explain.Input{Model: r.model, Resolve: r.NIC, Attached: nicsFor(r, dedupe(taps)), Kernel: k}, nil
}
