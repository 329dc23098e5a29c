// Package system assembles an engine that talks to the real kernel: the
// backend chosen (iptables with ebtables and ipset, or nftables), the
// other backend for a host that switches, netlink and the namespace lock.
// Every entry point (CLI, CNI plugin, hooks) builds its engine here, so all
// of them program exactly the same objects.
package system

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables"
	"github.com/vmfw/vmfw/pkg/backend/iptables/ebtables"
	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/backend/nftables"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/conntrack"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/link"
	"github.com/vmfw/vmfw/pkg/lock"
	"github.com/vmfw/vmfw/pkg/rundir"
	"github.com/vmfw/vmfw/pkg/state"
)

// Options select the configuration, state and backend; empty fields take
// their defaults (environment variables, then built-in paths).
type Options struct {
	// ConfigDir is the configuration directory.
	ConfigDir string
	// StateDir holds attachment records (CNI, libvirt).
	StateDir string
	// Backend is the backend --backend names; "" takes $VMFW_BACKEND,
	// then vmfw.toml's backend, then iptables (ChooseBackend).
	Backend backend.Name
	// IPTables is the iptables flavour: nft, legacy, or "" to detect.
	IPTables string
	// LongLived says the caller runs until stopped (the agent): the
	// backend keeps its kernel sockets open from change to change.
	LongLived bool
}

// ChooseBackend returns the backend to use: flag (--backend), then
// $VMFW_BACKEND, then host's backend (vmfw.toml), then iptables. A name
// that is neither backend is a *engine.ConfigError.
func ChooseBackend(flag backend.Name, host *config.Host) (backend.Name, error) {
	for _, c := range []struct {
		name  backend.Name
		where string
	}{{flag, "--backend"}, {backend.Name(os.Getenv("VMFW_BACKEND")), "$VMFW_BACKEND"}, {backend.Name(host.Backend), "vmfw.toml backend"}} {
		switch c.name {
		case "":
			continue
		case backend.IPTables, backend.NFTables:
			return c.name, nil
		}
		return "", &engine.ConfigError{Err: fmt.Errorf("%s %q: must be iptables or nftables", c.where, c.name)}
	}
	return backend.IPTables, nil
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
	e.ConfigIndex = configIndex(o.ConfigDir)
	e.State = state.New(o.StateDir)
	return e, nil
}

// NewKernel returns the kernel interface of the current network namespace
// for o's backend: what NewEngine builds its engine on, for a caller that
// keeps the backend too (the agent).
func NewKernel(ctx context.Context, o Options) (engine.Kernel, error) {
	if o.ConfigDir == "" {
		o.ConfigDir = config.DirFromEnv()
	}
	host, err := config.LoadHost(o.ConfigDir)
	if err != nil {
		return engine.Kernel{}, err
	}
	name, err := ChooseBackend(o.Backend, host)
	if err != nil {
		return engine.Kernel{}, err
	}
	openNFT := func(context.Context) (backend.Backend, error) {
		return nftables.New(nftables.Options{Mark: host.MarkMask, IPTables: xtables.Mode(o.IPTables), KeepSocket: o.LongLived})
	}
	openIPT := func(ctx context.Context) (backend.Backend, error) {
		return newIPTables(ctx, xtables.Mode(o.IPTables))
	}
	var be backend.Backend
	var other *engine.OtherBackend
	if name == backend.NFTables {
		be, err = openNFT(ctx)
		other = &engine.OtherBackend{Name: backend.IPTables, Installed: xtables.Installed, Open: openIPT}
	} else {
		be, err = openIPT(ctx)
		other = &engine.OtherBackend{Name: backend.NFTables, Open: openNFT,
			Installed: func(context.Context) (bool, error) { return nlnft.Client{}.Present() }}
	}
	if err != nil {
		return engine.Kernel{}, err
	}
	return engine.Kernel{
		Backend: be,
		Other:   other,
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

// configIndex names the file the engine keeps the parsed configuration of
// dir in (config.LoadIndexed): in the run directory, which is root's alone
// and empty after a reboot, one file per configuration directory. "" when
// the run directory cannot be made: every load then parses the files.
func configIndex(dir string) string {
	run := rundir.FromEnv()
	abs, err := filepath.Abs(dir)
	if err != nil || rundir.Ensure(run) != nil {
		return ""
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(run, "config-"+hex.EncodeToString(sum[:8])+".index")
}
