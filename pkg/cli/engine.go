package cli

import (
	"context"

	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/hook"
)

// Engine is what the CLI's commands ask of the engine: its operations,
// never its kernel (docs/design.md).
type Engine interface {
	hook.Engine
	Attach(ctx context.Context, tap string) error
	Detach(ctx context.Context, tap string) error
	Sync(ctx context.Context, dryRun bool) (*engine.Change, error)
	Flush(ctx context.Context, dryRun bool) (*engine.Change, error)
	Status(ctx context.Context, tap string) (*engine.Status, error)
	Inspect(ctx context.Context) (*engine.Inspection, error)
	Warnings(ctx context.Context) ([]string, error)
}

var _ Engine = (*engine.Engine)(nil)
