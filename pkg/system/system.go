// Package system assembles an engine that talks to the real kernel: the
// iptables and ebtables backends, ipset, netlink and the namespace lock.
// Every entry point (CLI, CNI plugin, hooks) builds its engine here, so all
// of them program exactly the same objects.
package system

import (
	"context"
	"os"

	"github.com/vmfw/vmfw/pkg/ebtables"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/ipset"
	"github.com/vmfw/vmfw/pkg/iptables"
	"github.com/vmfw/vmfw/pkg/link"
	"github.com/vmfw/vmfw/pkg/lock"
	"github.com/vmfw/vmfw/pkg/state"
)

// Options select the configuration, state and backend; empty fields take
// their defaults (environment variables, then built-in paths).
type Options struct {
	// ConfigDir is the configuration directory.
	ConfigDir string
	// StateDir holds attachment records (CNI, libvirt).
	StateDir string
	// IPTables is the iptables backend: nft, legacy, or "" to detect.
	IPTables iptables.Mode
}

// hostLinks adapts package link to engine.Host.
type hostLinks struct{}

func (hostLinks) Links() (map[string]bool, error) { return link.Names() }
func (hostLinks) Attach(tap, bridge string) error { return link.Attach(tap, bridge) }
func (hostLinks) EnableBridgeNetfilter() error    { return link.EnableBridgeNetfilter() }

var _ engine.Host = hostLinks{}

// NewEngine returns an engine for the current network namespace.
func NewEngine(ctx context.Context, o Options) (*engine.Engine, error) {
	if o.ConfigDir == "" {
		o.ConfigDir = engine.ConfigDirFromEnv()
	}
	if o.StateDir == "" {
		o.StateDir = state.DirFromEnv()
	}
	if o.IPTables == "" {
		o.IPTables = iptables.Mode(os.Getenv("VMFW_IPTABLES"))
	}
	ipt, err := iptables.New(ctx, o.IPTables, nil)
	if err != nil {
		return nil, err
	}
	ebt, err := ebtables.New(ctx, nil)
	if err != nil {
		return nil, err
	}
	runDir := os.Getenv("VMFW_RUN_DIR")
	return &engine.Engine{
		ConfigDir: o.ConfigDir,
		Backend:   string(ipt.Mode()) + ", " + ebt.Tool(),
		Firewall:  ipt,
		Sets:      ipset.New(nil),
		Bridge:    ebt,
		Host:      hostLinks{},
		State:     state.New(o.StateDir),
		Lock: func(ctx context.Context) (func(), error) {
			return lock.Acquire(ctx, runDir)
		},
	}, nil
}
