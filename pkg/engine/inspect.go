package engine

import (
	"context"
	"fmt"

	"github.com/vmfw/vmfw/pkg/explain"
)

// Inspector is a backend that hands vmfw trace its view of the kernel.
type Inspector interface {
	// Inspect reads the kernel's rules as trace interprets them, and the
	// interfaces whose filtering is installed.
	Inspect(ctx context.Context) (k *explain.Kernel, installed []string, err error)
}

// Inspect reads what vmfw trace evaluates: the configuration, the
// interfaces whose filtering is installed, and the backend's view of the
// kernel (a trace interprets the rules the kernel holds). It changes
// nothing; it takes the lock so that it never reads a table another vmfw
// run is halfway through changing.
func (e *Engine) Inspect(ctx context.Context) (*explain.Input, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	in, ok := e.kernel.Backend.(Inspector)
	if !ok {
		return nil, fmt.Errorf("the %s backend cannot be traced", e.kernel.Backend.Name())
	}
	k, installed, err := in.Inspect(ctx)
	if err != nil {
		return nil, err
	}
	return &explain.Input{Model: r.model, Resolve: r.NIC, Attached: nicsFor(r, dedupe(installed)), Kernel: k}, nil
}
