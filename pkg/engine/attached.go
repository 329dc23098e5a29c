package engine

import (
	"context"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Attached returns the interfaces whose filtering is installed, with
// their configuration: what cluster mode publishes as this host's
// members. Installed interfaces the configuration no longer names are
// left out.
func (e *Engine) Attached(ctx context.Context) ([]*config.NIC, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	_, installed, _, err := e.installed(ctx, r)
	if err != nil {
		return nil, err
	}
	return nicsFor(r, installed), nil
}

// SyncSets brings the members of vmfw's sets to what the configuration
// (with its RemoteMembers, and its address sets) and attached, the
// interfaces whose filtering is installed, make them, and cuts the flows
// the change denies: what a cluster membership change and an edit of
// address sets alone need. attached nil means the interfaces installed
// now, read under the lock. It tells the backend that only members changed
// (backend.Hint), so that it writes no rule unless a set itself must
// appear or go.
func (e *Engine) SyncSets(ctx context.Context, attached []*config.NIC) (*Change, error) {
	return e.syncSets(ctx, attached, nil)
}

// EditSets applies an edit of the named address sets' entries and
// excepts, and nothing else, from configuration was to the current one:
// the agent's path for an edit of sets/ alone. It is SyncSets for the
// interfaces installed now, with each set's configuration before and after
// the edit in the hint (backend.Hint.Sets), so that a backend whose kernel
// holds the sets as was has them writes only their difference; and it
// cuts only the flows whose addresses the edit moved in or out of a set.
func (e *Engine) EditSets(ctx context.Context, was *config.Model, sets []string) (*Change, error) {
	edits := make([]backend.SetEdit, 0, len(sets))
	for _, name := range sets {
		edits = append(edits, backend.SetEdit{Name: name, Was: was.Sets[name]})
	}
	return e.syncSets(ctx, nil, edits)
}

// syncSets is SyncSets, and EditSets with edits, whose Now it fills in
// from the configuration it loads.

func (e *Engine) syncSets(ctx context.Context, attached []*config.NIC, edits []backend.SetEdit) (*Change, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	st, err := e.kernel.Backend.Read(ctx, true)
	if err != nil {
		return nil, err
	}
	if attached == nil {
		installed := st.Installed()
		if attached = nicsFor(r, installed); len(attached) != len(installed) {
			// An installed interface the configuration no longer has:
			// only a full change removes it.
			return e.converge(ctx, r.model, attached, st, false)
		}
	}
	want, err := ruleset.Compile(r.model, attached)
	if err != nil {
		return nil, err
	}
	hint := &backend.Hint{Was: want, Members: true}
	if edits != nil {
		for i, ed := range edits {
			// The configuration begin loaded is the one planned for.
			edits[i].Now = r.model.Sets[ed.Name]
		}
		hint.Sets = edits
	}
	return e.apply(ctx, st, want, hint, false, r.model, attached, nil)
}
