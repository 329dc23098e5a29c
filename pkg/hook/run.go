package hook

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/vmfw/vmfw/pkg/engine"
)

// UsageError is a hook invocation with the wrong arguments.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Invocation is one hook call as the hypervisor made it: the arguments
// after "vmfw hook" and, for libvirt, the domain XML it wrote to stdin.
// It is read in full before anything runs, so that the same call can be
// handed to the agent or run here (docs/agent.md).
type Invocation struct {
	Args  []string
	Stdin []byte
}

// ReadInvocation checks args ("proxmox VMID PHASE" or "libvirt GUEST OP
// SUBOP [EXTRA]") and reads the domain XML of a libvirt call from stdin.
func ReadInvocation(args []string, stdin io.Reader) (*Invocation, error) {
	if len(args) == 0 {
		return nil, &UsageError{"hook: want proxmox VMID PHASE or libvirt GUEST OP SUBOP [EXTRA]"}
	}
	switch args[0] {
	case "proxmox":
		if len(args) != 3 {
			return nil, &UsageError{"hook proxmox takes VMID PHASE"}
		}
		return &Invocation{Args: args}, nil
	case "libvirt":
		if len(args) < 4 || len(args) > 5 {
			return nil, &UsageError{"hook libvirt takes GUEST OP SUBOP [EXTRA] and the domain XML on stdin"}
		}
		inv := &Invocation{Args: args}
		if stdin != nil {
			// One byte more than the hook accepts, so that it can
			// still say the XML is too large.
			data, err := io.ReadAll(io.LimitReader(stdin, maxDomainXML+1))
			if err != nil {
				return nil, fmt.Errorf("libvirt hook: reading domain XML: %w", err)
			}
			inv.Stdin = data
		}
		return inv, nil
	}
	return nil, &UsageError{"hook: unknown hypervisor " + args[0] + " (want proxmox or libvirt)"}
}

// Run carries out the invocation with e and returns the interfaces it
// changed.
func (inv *Invocation) Run(ctx context.Context, e Engine) ([]string, error) {
	if _, err := ReadInvocation(inv.Args, nil); err != nil {
		return nil, &engine.ConfigError{Err: err}
	}
	if inv.Args[0] == "proxmox" {
		return Proxmox(ctx, e, inv.Args[1], inv.Args[2])
	}
	var stdin io.Reader
	if inv.Stdin != nil {
		stdin = bytes.NewReader(inv.Stdin)
	}
	return Libvirt(ctx, e, inv.Args[1:], stdin)
}
