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
// (with its RemoteMembers) and attached, the interfaces whose filtering is
// installed, make them, and cuts the flows the change denies: what a
// cluster membership change needs. It tells the backend that only members
// changed (backend.Hint), so that it writes no rule unless a set itself
// must appear or go.
func (e *Engine) SyncSets(ctx context.Context, attached []*config.NIC) (*Change, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	want, err := ruleset.Compile(r.model, attached)
	if err != nil {
		return nil, err
	}
	st, err := e.kernel.Backend.Read(ctx, true)
	if err != nil {
		return nil, err
	}
	return e.apply(ctx, st, want, &backend.Hint{Was: want, Members: true}, false, r.model, attached)
}
