// Package hook runs vmfw from hypervisor hooks: the Proxmox VE hookscript
// ("vmfw hook proxmox VMID PHASE") and libvirt's qemu hook ("vmfw hook
// libvirt GUEST OP SUBOP [EXTRA]" with the domain XML on stdin). Both only
// translate the hypervisor's calling convention into engine calls; every
// firewall change is made by package engine.
package hook

import (
	"context"
	"fmt"
	"strconv"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/state"
)

// Engine is the part of *engine.Engine the hooks use.
type Engine interface {
	Config() (*config.Model, error)
	AttachVM(ctx context.Context, vmid int) ([]string, error)
	AttachRecords(ctx context.Context, recs ...*state.Attachment) error
	DetachWhere(ctx context.Context, sel engine.Selector) ([]string, error)
}

var _ Engine = (*engine.Engine)(nil)

// Proxmox phases, as Proxmox VE passes them to a hookscript.
const (
	PhasePreStart  = "pre-start"
	PhasePostStart = "post-start"
	PhasePreStop   = "pre-stop"
	PhasePostStop  = "post-stop"
)

// Proxmox runs one phase of the Proxmox VE hookscript for VM vmid.
// post-start firewalls every existing tap<VMID>i<N> (Proxmox has created
// them and put them on their bridges); post-stop removes their chains and
// group memberships; every other phase does nothing. It returns the taps
// it changed.
func Proxmox(ctx context.Context, e Engine, vmid, phase string) ([]string, error) {
	id, err := strconv.Atoi(vmid)
	if err != nil || id < 0 || strconv.Itoa(id) != vmid {
		return nil, &engine.ConfigError{Err: fmt.Errorf("proxmox hook: %q is not a VM id", vmid)}
	}
	switch phase {
	case PhasePostStart:
		taps, err := e.AttachVM(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("proxmox hook, VM %d post-start: %w", id, err)
		}
		return taps, nil
	case PhasePostStop:
		taps, err := e.DetachWhere(ctx, engine.Selector{Iface: func(name string) bool {
			got, _, ok := config.ParseTapName(name)
			return ok && got == id
		}})
		if err != nil {
			return nil, fmt.Errorf("proxmox hook, VM %d post-stop: %w", id, err)
		}
		return taps, nil
	}
	return nil, nil
}
