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
	return e.apply(ctx, st, want, &backend.Hint{Was: want, Members: true}, false, r.model, attached)
}
