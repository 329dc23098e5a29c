package engine

import (
	"context"
	"fmt"
	"slices"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
)

// Inspection is what vmfw trace evaluates: the configuration, the
// interfaces whose filtering is installed, and what the backend read of
// the kernel, which the backend alone can walk.
type Inspection struct {
	// Model is the configuration.
	Model *config.Model
	// Resolve maps an interface name to its settings: configured taps
	// and attachment records.
	Resolve func(name string) *config.NIC
	// Attached are the installed interfaces the configuration or an
	// attachment record describes.
	Attached []*config.NIC
	// Kernel is the backend's read of the kernel.
	Kernel backend.Inspection
}

// Inspect reads what vmfw trace evaluates. It changes nothing; it takes
// the lock so that it never reads a table another vmfw run is halfway
// through changing.
func (e *Engine) Inspect(ctx context.Context) (*Inspection, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	tr, ok := e.kernel.Backend.(backend.Tracer)
	if !ok {
		return nil, fmt.Errorf("the %s backend cannot be traced", e.kernel.Backend.Name())
	}
	k, err := tr.Inspect(ctx)
	if err != nil {
		return nil, err
	}
	return &Inspection{Model: r.model, Resolve: r.NIC, Attached: nicsFor(r, dedupe(slices.Clone(k.Installed()))), Kernel: k}, nil
}
