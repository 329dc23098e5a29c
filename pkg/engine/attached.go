package engine

import (
	"context"

	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Attached returns the interfaces whose chains are installed, with their
// configuration: what cluster mode publishes as this host's members.
// Installed chains the configuration no longer names are left out.
func (e *Engine) Attached(ctx context.Context) ([]*config.NIC, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	st := &kernelState{tables: map[ruleset.Family]*xtables.Snapshot{}}
	for _, f := range ruleset.Families {
		s, _, err := e.readTable(ctx, f)
		if err != nil {
			return nil, err
		}
		st.tables[f] = s
	}
	return nicsFor(r, st.installed()), nil
}

// SyncSets brings the members of vmfw's ipsets to what the configuration
// (with its RemoteMembers) and attached, the interfaces whose chains are
// installed, make them, and cuts the flows the change denies: what a
// cluster membership change needs, without reading or writing a chain.
// When the sets themselves would change (one created or destroyed) it
// changes nothing and reports handled false; the caller then runs Sync.
func (e *Engine) SyncSets(ctx context.Context, attached []*config.NIC) (handled bool, ch *Change, err error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return false, nil, err
	}
	defer release()
	rs, err := layout.FromConfig(r.model, attached)
	if err != nil {
		return false, nil, err
	}
	have, err := e.kernel.Sets.List(ctx)
	if err != nil {
		return false, nil, err
	}
	if len(have) != len(rs.Sets) {
		return false, nil, nil
	}
	for _, s := range rs.Sets {
		if have[s.Name] == nil {
			return false, nil, nil
		}
	}
	ch = &Change{Plans: map[ruleset.Family]*layout.Plan{}}
	ch.SetsBefore, ch.SetsAfter = ipset.Plan(rs.Sets, have)
	if ch.SetsAfter != "" {
		return false, nil, nil
	}
	ch.Sets = setChanges(rs.Sets, have)
	if ch.SetsBefore == "" {
		return true, ch, nil
	}
	if err := e.kernel.Sets.Restore(ctx, ch.SetsBefore); err != nil {
		return true, nil, err
	}
	ch.FlowsCut, err = e.cutFlows(r.model, attached)
	return true, ch, err
}
