package cli

import (
	"context"
	"errors"
	"io"
	"os"

	"github.com/vmfw/vmfw/pkg/agent"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/hook"
)

// Stdin is what "vmfw hook libvirt" reads the domain XML from.
var Stdin io.Reader = os.Stdin

// hookCmd runs "vmfw hook proxmox VMID PHASE" and "vmfw hook libvirt GUEST
// OP SUBOP [EXTRA]": through a running agent when one answers (req carries
// the directories and backend to match), else here. Nothing is printed on
// success: libvirt reads a hook's standard output as replacement XML for
// some operations.
func hookCmd(ctx context.Context, newEngine func() (Engine, error), req agent.Request, args []string) error {
	var in io.Reader
	if len(args) > 0 && args[0] == "libvirt" {
		in = Stdin
	}
	inv, err := hook.ReadInvocation(args, in)
	var ue *hook.UsageError
	if errors.As(err, &ue) {
		return &usageError{ue.Msg}
	}
	if err != nil {
		return err
	}
	req.Op, req.Args, req.Stdin = agent.Hook, inv.Args, inv.Stdin
	if handled, err := viaAgent(ctx, req); handled {
		return err
	}
	e, err := newEngine()
	if err != nil {
		return err
	}
	_, err = inv.Run(ctx, e)
	return err
}

// hookJob is the agent's job for hook requests: the same invocation, run
// with the agent's engine.
func hookJob(ctx context.Context, e *engine.Engine, req agent.Request) ([]string, error) {
	inv := &hook.Invocation{Args: req.Args, Stdin: req.Stdin}
	return inv.Run(ctx, e)
}
