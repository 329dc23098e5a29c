package cli

import (
	"context"
	"io"
	"os"

	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/hook"
)

// Stdin is what "vmfw hook libvirt" reads the domain XML from.
var Stdin io.Reader = os.Stdin

// hookCmd runs "vmfw hook proxmox VMID PHASE" and "vmfw hook libvirt GUEST
// OP SUBOP [EXTRA]". Nothing is printed on success: libvirt reads a hook's
// standard output as replacement XML for some operations.
func hookCmd(ctx context.Context, newEngine func() (*engine.Engine, error), args []string) error {
	if len(args) == 0 {
		return &usageError{"hook: want proxmox VMID PHASE or libvirt GUEST OP SUBOP [EXTRA]"}
	}
	switch args[0] {
	case "proxmox":
		if len(args) != 3 {
			return &usageError{"hook proxmox takes VMID PHASE"}
		}
		e, err := newEngine()
		if err != nil {
			return err
		}
		_, err = hook.Proxmox(ctx, e, args[1], args[2])
		return err
	case "libvirt":
		if len(args) < 4 || len(args) > 5 {
			return &usageError{"hook libvirt takes GUEST OP SUBOP [EXTRA] and the domain XML on stdin"}
		}
		e, err := newEngine()
		if err != nil {
			return err
		}
		_, err = hook.Libvirt(ctx, e, args[1:], Stdin)
		return err
	}
	return &usageError{"hook: unknown hypervisor " + args[0] + " (want proxmox or libvirt)"}
}
