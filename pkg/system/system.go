// Package system assembles an engine that talks to the real kernel: the
// iptables and ebtables backends, ipset, netlink and the namespace lock.
// Every entry point (CLI, CNI plugin, hooks) builds its engine here, so all
// of them program exactly the same objects.
package system

import (
	"context"
	"os"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables"
	"github.com/vmfw/vmfw/pkg/backend/iptables/ebtables"
	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/backend/nftables"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/conntrack"
	"github.com/vmfw/vmfw/pkg/engine"
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
	IPTables xtables.Mode
}

// hostLinks adapts package link to engine.Host.
type hostLinks struct{}

func (hostLinks) Links() (map[string]bool, error) { return link.Names() }
func (hostLinks) Attach(tap, bridge string) error { return link.Attach(tap, bridge) }
func (hostLinks) EnableBridgeNetfilter() error    { return link.EnableBridgeNetfilter() }

var _ engine.Host = hostLinks{}

// NewEngine returns an engine for the current network namespace.
func NewEngine(ctx context.Context, o Options) (*engine.Engine, error) {
	k, err := NewKernel(ctx, o)
	if err != nil {
		return nil, err
	}
	if o.ConfigDir == "" {
		o.ConfigDir = config.DirFromEnv()
	}
	if o.StateDir == "" {
		o.StateDir = state.DirFromEnv()
	}
	e := engine.New(k, o.ConfigDir)
	e.State = state.New(o.StateDir)
	return e, nil
}

// NewKernel returns the kernel interface of the current network namespace
// for o's backend: what NewEngine builds its engine on, for a caller that
// keeps the backend too (the agent).
func NewKernel(ctx context.Context, o Options) (engine.Kernel, error) {
	var be backend.Backend
	var err error
	if backend.Name(os.Getenv("VMFW_BACKEND")) == backend.NFTables {
		be, err = nftables.New(nftables.Options{})
	} else {
		be, err = newIPTables(ctx, o.IPTables)
	}
	if err != nil {
		return engine.Kernel{}, err
	}
	return engine.Kernel{
		Backend: be,
		Host:    hostLinks{},
		Lock: func(ctx context.Context) (func(), error) {
			return lock.Acquire(ctx, "") // the run directory of $VMFW_RUN_DIR (package rundir)
		},
		Flows: conntrack.Table{},
	}, nil
}

// newIPTables returns the iptables backend on the host's tools: mode's
// iptables ("" detects it, after $VMFW_IPTABLES), ipset, and the
// ebtables that works here.
func newIPTables(ctx context.Context, mode xtables.Mode) (*iptables.Backend, error) {
	if mode == "" {
		mode = xtables.Mode(os.Getenv("VMFW_IPTABLES"))
	}
	ipt, err := xtables.New(ctx, mode, nil)
	if err != nil {
		return nil, err
	}
	ebt, err := ebtables.New(ctx, nil)
	if err != nil {
		return nil, err
	}
	return iptables.New(iptables.Options{
		Tables:   ipt,
		Sets:     ipset.New(nil),
		Bridge:   ebt,
		Flavour:  ipt.Mode(),
		Describe: string(ipt.Mode()) + ", " + ebt.Tool(),
	}), nil
}
