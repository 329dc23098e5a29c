// Package engine is what every entry point (QEMU scripts, the CLI, CNI,
// the hypervisor hooks, the agent) calls: Attach, Detach, Sync, Flush,
// Status and the rest. Each operation loads the configuration, takes the
// namespace lock, resolves which interfaces are to be attached, compiles
// their policy (package ruleset) and hands it to the backend, which reads
// the kernel, plans the difference and writes it all or nothing
// (docs/design.md, "The backend seam").
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// Host is the part of the host that is not the firewall: interfaces and
// the bridge-netfilter switches.
type Host interface {
	// Links returns the names of the interfaces that exist.
	Links() (map[string]bool, error)
	// Attach puts tap on bridge (if not empty) and sets it up.
	Attach(tap, bridge string) error
	// EnableBridgeNetfilter makes bridged packets pass iptables.
	EnableBridgeNetfilter() error
}

// Kernel is what an engine reads and changes. Package system builds the
// real one; tests build one on backend.Fake. Entry points hand it to New
// and never use it beside the engine, so every change goes through the
// engine's lock, plan and apply (docs/design.md).
type Kernel struct {
	// Backend lays the policy out in the kernel and owns its reads and
	// writes.
	Backend backend.Backend
	// Host is the interfaces and the bridge netfilter switches.
	Host Host
	// Lock serialises runs in the namespace; it returns the release function.
	Lock func(ctx context.Context) (func(), error)
	// Flows is the connection tracking table an edit cuts denied flows
	// from; nil leaves connections alone.
	Flows FlowTable
	// Other is the backend not in use, whose ruleset may still be
	// installed on a host switching backends; nil when there is none.
	Other *OtherBackend
}

// OtherBackend is the backend an engine does not use. Sync installs its
// own ruleset and then removes the other's, so that while both are
// installed a packet passes only what both allow (their mark bits are
// disjoint: pkg/config); Flush removes both; an interface's change
// refuses to write while the other is installed (ConflictError).
type OtherBackend struct {
	// Name names it.
	Name backend.Name
	// Installed reports cheaply whether any of its ruleset is installed.
	Installed func(ctx context.Context) (bool, error)
	// Open builds it, to remove its ruleset.
	Open func(ctx context.Context) (backend.Backend, error)
}

// ConflictError is what a change of one interface (ifup, ifdown, the
// hooks, CNI) returns while the other backend's ruleset is installed: an
// interface attached by one backend alone would meet the other's
// fail-closed drop, and one detached by one alone would stay filtered by
// the other, so the entry point refuses (exit status 2, nothing changed)
// until apply or the agent switches the host.
type ConflictError struct {
	// Using is the backend the command uses, Installed the one found.
	Using, Installed backend.Name
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("the %s backend's ruleset is installed here but this command uses the %s backend: "+
		"switch the host with \"vmfw apply\" on the backend wanted, or choose %s (--backend, $VMFW_BACKEND or vmfw.toml backend)",
		e.Installed, e.Using, e.Installed)
}

// New returns an engine on k for the configuration directory configDir;
// the other settings are its exported fields.
func New(k Kernel, configDir string) *Engine {
	return &Engine{kernel: k, ConfigDir: configDir}
}

// Engine applies configuration to one network namespace. Build one with
// New; its exported fields are settings, read and set before use.
type Engine struct {
	kernel Kernel
	// ConfigDir is the configuration directory.
	ConfigDir string
	// LockTimeout bounds the wait for the lock (default one minute).
	LockTimeout time.Duration
	// State holds the records of attached interfaces the configuration
	// cannot name (CNI, libvirt); nil means there are none.
	State Attachments
	// Model, when set, supplies the configuration instead of loading
	// ConfigDir on every operation: the agent keeps the last valid model
	// in memory and reloads it only when a file changes.
	Model func() (*config.Model, error)
	// ConfigIndex, when set, is the file config.LoadIndexed keeps the
	// parsed configuration in, so that a process that runs without the
	// agent does not parse every VM file while none changed.
	ConfigIndex string

	// last is the policy the last change installed, for the next one to
	// derive its policies from (ruleset.Policy.With) instead of
	// compiling every interface: what a long-lived engine (the agent's)
	// keeps between changes.
	last *installedPolicy
}

// installedPolicy is a policy an engine installed and the configuration
// it was compiled from.
type installedPolicy struct {
	model  *config.Model
	policy *ruleset.Policy
}

// keep remembers p, compiled from m, as installed when err is nil, and
// forgets any policy otherwise (the kernel may hold either).
func (e *Engine) keep(m *config.Model, p *ruleset.Policy, err error) {
	if err != nil || p == nil || m == nil {
		e.last = nil
		return
	}
	e.last = &installedPolicy{model: m, policy: p}
}

// lastFor returns the policy the last change installed when it is m's
// for the interfaces names (sorted), each with the settings r gives it
// now, else nil.
func (e *Engine) lastFor(m *config.Model, r nicSource, names []string) *ruleset.Policy {
	l := e.last
	switch {
	case l == nil:
		return nil
	case l.model != m && !reflect.DeepEqual(l.model, m):
		// Equal configurations are told apart by content: every reload
		// of the agent's makes a new Model (one with nothing changed
		// too), which shares the unchanged groups and VMs with the one
		// before, so the comparison is of pointers (0.3 ms at 5000).
		trace.Printf("the last change's policy is of another configuration")
		return nil
	case len(l.policy.Interfaces) != len(names):
		trace.Printf("the last change installed %d interfaces, the backend has %d", len(l.policy.Interfaces), len(names))
		return nil
	}
	for i, n := range l.policy.Interfaces {
		if n.Name != names[i] {
			trace.Printf("the last change installed %s, the backend has %s", n.Name, names[i])
			return nil
		}
		// An interface's settings come from m or from its attachment
		// record, which another process may have written since (the
		// interface detached and attached again): the configuration's
		// are the same pointers while m shares its VMs, a record's are
		// resolved again for every change and compared by content.
		if configured(m, n) {
			continue
		}
		if now := r.NIC(n.Name); now != n.Config && !reflect.DeepEqual(now, n.Config) {
			trace.Printf("the settings of %s changed since the last change", n.Name)
			return nil
		}
	}
	return l.policy
}

// configured reports whether n's settings are those m gives its tap: the
// NIC of a VM that m holds (the very VM: a reload shares the VMs whose
// files did not change), under its tap's name, which r.NIC would return
// as the model's before any record. It spares lastFor the name's parsing
// for each of 5000 interfaces (1 ms of every ifup through the agent).
func configured(m *config.Model, n *ruleset.Interface) bool {
	c := n.Config
	return c != nil && c.VM != nil && c.Tap == n.Name && m.VMs[c.VM.ID] == c.VM && slices.Contains(c.VM.NICs, c)
}

// nicsOf returns the configuration p's interfaces were compiled from.
func nicsOf(p *ruleset.Policy) []*config.NIC {
	out := make([]*config.NIC, len(p.Interfaces))
	for i, n := range p.Interfaces {
		out[i] = n.Config
	}
	return out
}

// ConfigError wraps an error in the configuration, which callers report
// with exit status 2: nothing on the host was changed.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Change is what an operation changed (or, in a dry run, would).
type Change struct {
	// Backend names the backend that made Plan.
	Backend backend.Name
	// Plan is the backend's change; nil when none was planned.
	Plan backend.Plan
	// Removed is the removal of the other backend's ruleset, made after
	// Plan (a host switching backends, or flush); nil when it is not
	// installed.
	Removed *Removal
	// FlowsCut counts the tracked connections deleted because the new
	// rules deny them.
	FlowsCut int
}

// Removal is the removal of the other backend's ruleset.
type Removal struct {
	// Backend names the backend removed.
	Backend backend.Name
	// Plan is its change.
	Plan backend.Plan
}

// Empty reports whether nothing changed.
func (c *Change) Empty() bool {
	return (c.Plan == nil || c.Plan.Empty()) && (c.Removed == nil || c.Removed.Plan.Empty())
}

// Summary says what changed, as the backend computed it once.
func (c *Change) Summary() *backend.Summary {
	if c.Plan == nil {
		return &backend.Summary{Tables: map[string]backend.TableChanges{}, Sets: backend.NewSetChanges()}
	}
	return c.Plan.Summary()
}

// WriteTo prints the exact changes as the backend writes them, then the
// other backend's removal.
func (c *Change) WriteTo(w io.Writer) (int64, error) {
	var n int64
	if c.Plan == nil {
		k, err := io.WriteString(w, "# no changes\n")
		n += int64(k)
		if err != nil {
			return n, err
		}
	} else {
		k, err := c.Plan.WriteTo(w)
		n += k
		if err != nil {
			return n, err
		}
	}
	if c.Removed == nil {
		return n, nil
	}
	k, err := fmt.Fprintf(w, "# then remove the %s backend's ruleset\n", c.Removed.Backend)
	n += int64(k)
	if err != nil {
		return n, err
	}
	m, err := c.Removed.Plan.WriteTo(w)
	return n + m, err
}

// refuseConflict returns a *ConflictError, as a *ConfigError (exit status
// 2 at every entry point), when the other backend's ruleset is installed.
func (e *Engine) refuseConflict(ctx context.Context) error {
	o := e.kernel.Other
	if o == nil {
		return nil
	}
	start := time.Now()
	have, err := o.Installed(ctx)
	trace.Since(start, "look for the %s backend's ruleset", o.Name)
	if err != nil {
		return fmt.Errorf("looking for the %s backend's ruleset: %w", o.Name, err)
	}
	if have {
		return &ConfigError{Err: &ConflictError{Using: e.kernel.Backend.Name(), Installed: o.Name}}
	}
	return nil
}

// removeOther plans (and, unless dryRun, applies) the removal of the
// other backend's ruleset when it is installed; nil when it is not.
func (e *Engine) removeOther(ctx context.Context, dryRun bool) (*Removal, error) {
	o := e.kernel.Other
	if o == nil {
		return nil, nil
	}
	have, err := o.Installed(ctx)
	if err != nil {
		return nil, fmt.Errorf("looking for the %s backend's ruleset: %w", o.Name, err)
	}
	if !have {
		return nil, nil
	}
	be, err := o.Open(ctx)
	if err != nil {
		return nil, fmt.Errorf("opening the %s backend to remove its ruleset: %w", o.Name, err)
	}
	st, err := be.Read(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("reading the %s backend's ruleset: %w", o.Name, err)
	}
	p, err := be.Plan(ctx, st, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("planning the removal of the %s backend's ruleset: %w", o.Name, err)
	}
	if !dryRun {
		if err := be.Apply(ctx, p); err != nil {
			return nil, fmt.Errorf("removing the %s backend's ruleset: %w", o.Name, err)
		}
	}
	return &Removal{Backend: o.Name, Plan: p}, nil
}

func (e *Engine) load() (*config.Model, error) {
	if e.Model != nil {
		return e.Model()
	}
	load := config.Load
	if e.ConfigIndex != "" {
		load = func(dir string) (*config.Model, error) { return config.LoadIndexed(dir, e.ConfigIndex) }
	}
	m, err := load(e.ConfigDir)
	if err != nil {
		return nil, &ConfigError{Err: err}
	}
	return m, nil
}

func (e *Engine) lock(ctx context.Context) (func(), error) {
	timeout := e.LockTimeout
	if timeout == 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return e.kernel.Lock(ctx)
}

// begin starts an operation that needs the configuration: it loads it (a
// broken one is a *ConfigError, returned before anything is locked), takes
// the namespace lock and reads the attachment records under it, resolved
// against the configuration (r.model). The caller must call release.
func (e *Engine) begin(ctx context.Context) (r *resolver, release func(), err error) {
	r, release, _, err = e.beginWith(ctx, false)
	return r, release, err
}

// beginChange is begin for a change of interfaces (an attach, a detach).
// A backend that can tell whether a read is still current
// (backend.Rechecker) makes the change's narrow read beside the
// configuration's load, before the lock, instead of after it: at 5000
// taps the load (the index and 5008 stats, 10 to 14 ms) and the read
// (the ports set's 5000 elements, about 7 ms) then share two cores
// instead of following each other (docs/performance.md, "An ifup
// without the agent: what 2x takes"). early is that read when nothing
// committed between it and the lock, nil otherwise. An engine given its
// Model (the agent's) loads nothing and its backend reads from memory,
// and the agent's other work uses the backend under the lock alone: it
// reads after the lock as always. The configuration may come from its
// index before the index's files are checked (loadLater): the change
// must settle r before it writes, and run under settled.
func (e *Engine) beginChange(ctx context.Context) (r *resolver, release func(), early backend.State, err error) {
	return e.beginWith(ctx, true)
}

func (e *Engine) beginWith(ctx context.Context, change bool) (r *resolver, release func(), early backend.State, err error) {
	start := time.Now()
	var read sync.WaitGroup
	var readErr error
	if _, ok := e.kernel.Backend.(backend.Rechecker); ok && change && e.Model == nil {
		read.Go(func() { early, readErr = e.kernel.Backend.Read(ctx, true) })
	}
	var m *config.Model
	var confirm func() (*config.Model, error)
	defer func() {
		if err != nil && confirm != nil {
			confirm() // joins the check's threads
		}
	}()
	if change {
		m, confirm, err = e.loadLater()
	} else {
		m, err = e.load()
	}
	read.Wait()
	if readErr != nil {
		early = nil // the read under the lock says what failed
	}
	if err != nil {
		return nil, nil, nil, err
	}
	trace.Since(start, "load the configuration (%d VMs)", len(m.VMs))
	start = time.Now()
	if release, err = e.lock(ctx); err != nil {
		return nil, nil, nil, err
	}
	trace.Since(start, "take the lock")
	if early != nil {
		// Read before the lock: current only if nothing committed since.
		if ok, err := e.kernel.Backend.(backend.Rechecker).Current(ctx, early); err != nil || !ok {
			trace.Printf("the early read is not current, reading again")
			early = nil
		}
	}
	start = time.Now()
	if r, err = e.resolver(m); err != nil {
		release()
		return nil, nil, nil, err
	}
	r.confirm = confirm
	trace.Since(start, "read attachment records")
	return r, release, early, nil
}

// loadLater is load for a change of interfaces: from the configuration
// index, the Model comes before the check of its files, which confirm
// waits for (config.LoadIndexedLater); the change computes from the Model
// meanwhile and settles it (resolver.settle) before it writes. At 5000 VM
// files the check is 5 ms of an ifup on two cores, run while the installed
// policy is compiled and the change planned (docs/performance.md, "The
// check beside the plan"). confirm is nil when the Model is checked
// already.
func (e *Engine) loadLater() (m *config.Model, confirm func() (*config.Model, error), err error) {
	if e.Model != nil || e.ConfigIndex == "" {
		m, err = e.load()
		return m, nil, err
	}
	m, confirm, err = config.LoadIndexedLater(e.ConfigDir, e.ConfigIndex)
	if err != nil {
		return nil, nil, &ConfigError{Err: err}
	}
	return m, confirm, nil
}

// errConfigMoved is what resolver.settle returns when the files changed
// since the configuration index its Model came from was written.
var errConfigMoved = errors.New("the configuration changed since its index was written")

// settle waits, once, for the check of the files behind r's Model when it
// came from the configuration index unchecked (beginChange). It returns
// errConfigMoved, every time, when they changed: r.fresh then holds what
// they say, or r.freshErr why they do not load.
func (r *resolver) settle() error {
	if r.confirm != nil {
		start := time.Now()
		m, err := r.confirm()
		r.confirm = nil
		trace.Since(start, "wait for the check of the configuration's files")
		if err != nil || m != r.model {
			r.moved, r.fresh, r.freshErr = true, m, err
		}
	}
	if r.moved {
		return errConfigMoved
	}
	return nil
}

// settled runs op on r and early and, when r's Model came from the
// configuration index unchecked and the files changed since
// (resolver.settle), once more on what they hold, reading the kernel
// again: op's first run wrote nothing, as op settles r before it writes.
func (e *Engine) settled(r *resolver, early backend.State, op func(r *resolver, early backend.State) error) error {
	err := op(r, early)
	if r.settle() == nil {
		return err
	}
	trace.Printf("the configuration changed since its index was written: loading it again")
	if r.freshErr != nil {
		return &ConfigError{Err: r.freshErr}
	}
	fresh, err := e.resolver(r.fresh)
	if err != nil {
		return err
	}
	return op(fresh, nil)
}

// read reads everything the backend installed.
func (e *Engine) read(ctx context.Context) (backend.State, error) {
	return e.kernel.Backend.Read(ctx, false)
}

// readWithLinks reads everything the backend installed, and the names of
// the host's interfaces.
func (e *Engine) readWithLinks(ctx context.Context) (backend.State, map[string]bool, error) {
	st, err := e.read(ctx)
	if err != nil {
		return nil, nil, err
	}
	links, err := e.kernel.Host.Links()
	if err != nil {
		return nil, nil, err
	}
	return st, links, nil
}

// nicsFor maps interface names to their configuration, leaving out names
// the configuration no longer has (their chains are then removed).
func nicsFor(src nicSource, taps []string) []*config.NIC {
	nics := make([]*config.NIC, 0, len(taps))
	for _, t := range taps {
		if n := src.NIC(t); n != nil {
			nics = append(nics, n)
		}
	}
	return nics
}

// converge applies the policy for nics; with dryRun it only plans.
func (e *Engine) converge(ctx context.Context, m *config.Model, nics []*config.NIC, st backend.State, dryRun bool) (*Change, error) {
	start := time.Now()
	p, err := ruleset.Compile(m, nics)
	if err != nil {
		return nil, err
	}
	trace.Since(start, "compile %d interfaces", len(nics))
	ch, err := e.apply(ctx, st, p, nil, dryRun, m, nics, nil)
	if !dryRun {
		e.keep(m, p, err)
	}
	return ch, err
}

// apply plans want (with hint) from st and, unless dryRun, writes it and
// cuts the flows it denies; m and nics are what want was compiled from.
// A plan the backend made from remembered state and could not write is
// made once more from a fresh read (backend.StaleError). settle, when not
// nil, runs between the plan and the write, and an error from it stops
// the change before anything is written (resolver.settle: the plan runs
// while the configuration's files are checked).
func (e *Engine) apply(ctx context.Context, st backend.State, want *ruleset.Policy, hint *backend.Hint, dryRun bool, m *config.Model, nics []*config.NIC, settle func() error) (*Change, error) {
	be := e.kernel.Backend
	plan, err := be.Plan(ctx, st, want, hint)
	if err != nil {
		return nil, err
	}
	ch := &Change{Backend: be.Name(), Plan: plan}
	if dryRun || plan.Empty() {
		return ch, nil
	}
	if settle != nil {
		if err := settle(); err != nil {
			return nil, err
		}
	}
	err = be.Apply(ctx, plan)
	var stale *backend.StaleError
	if errors.As(err, &stale) {
		trace.Printf("planned from remembered state, which failed (%v): planning again", stale.Err)
		if st, err = be.Read(ctx, hint != nil); err != nil {
			return nil, err
		}
		if ch.Plan, err = be.Plan(ctx, st, want, hint); err != nil {
			return nil, err
		}
		err = be.Apply(ctx, ch.Plan)
	}
	if err != nil {
		return nil, err
	}
	if want != nil {
		start := time.Now()
		if touched, asked, none := flowFilter(hint, want); !none {
			ch.FlowsCut, err = e.cutFlows(m, nics, touched, asked)
		}
		trace.Since(start, "cut flows")
	}
	return ch, err
}

// flowScope returns the addresses whose flows a change described by hint
// can deny: for interfaces attached or detached, theirs before and after
// (their own rules, their membership of groups, which flows to them are
// attributed to); for groups edited, those of the interfaces listing them
// (only their rules changed); nil, every flow, for any other change.
func flowScope(hint *backend.Hint, want *ruleset.Policy) map[netip.Addr]bool {
	if hint == nil || hint.Was == nil || hint.Interfaces == nil && hint.Groups == nil {
		return nil
	}
	only := map[netip.Addr]bool{}
	if hint.Groups != nil {
		for _, n := range want.Interfaces {
			if slices.ContainsFunc(n.Groups, func(g string) bool { return slices.Contains(hint.Groups, g) }) {
				for _, a := range n.IPs {
					only[a.Unmap()] = true
				}
			}
		}
		return only
	}
	for _, name := range hint.Interfaces {
		for _, p := range []*ruleset.Policy{hint.Was, want} {
			if n := p.Interface(name); n != nil {
				for _, a := range n.IPs {
					only[a.Unmap()] = true
				}
			}
		}
	}
	return only
}

// Attach firewalls tap and then attaches it to its bridge: QEMU's script=.
func (e *Engine) Attach(ctx context.Context, tap string) error {
	res, err := e.ApplyBatch(ctx, []string{tap}, nil)
	if err != nil {
		return err
	}
	return res.Failed[tap]
}

// BatchResult is what ApplyBatch did.
type BatchResult struct {
	// Failed holds the taps to attach that could not be firewalled or
	// attached, each left without chains.
	Failed map[string]error
	// Change is what was written (nil when nothing was to do).
	Change *Change
}

// ApplyBatch firewalls the taps of up and removes the chains and
// memberships of those of down, all in one transaction per family, then
// attaches each tap of up to its bridge. It is what the agent does with
// the requests that arrived while it applied the previous batch (group
// commit): one configuration load, one read and one write for them all.
// A tap named in both lists is attached. The error is for the batch as a
// whole (nothing of it was applied); the result's Failed holds the taps of
// up that could not be firewalled or attached, each left without chains,
// as QEMU refuses to start the VM and runs no downscript.
func (e *Engine) ApplyBatch(ctx context.Context, up, down []string) (*BatchResult, error) {
	r, release, early, err := e.beginChange(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	var res *BatchResult
	err = e.settled(r, early, func(r *resolver, early backend.State) (err error) {
		res, err = e.applyBatch(ctx, r, early, up, down)
		return err
	})
	return res, err
}

// applyBatch is ApplyBatch under the lock.
func (e *Engine) applyBatch(ctx context.Context, r *resolver, early backend.State, up, down []string) (*BatchResult, error) {
	var err error
	m := r.model
	failed := map[string]error{}
	res := &BatchResult{Failed: failed}
	nics := map[string]*config.NIC{}
	var ups []string
	for _, tap := range dedupe(slices.Clone(up)) {
		nic, err := lookupNIC(m, tap)
		if err != nil {
			failed[tap] = err
			continue
		}
		nics[tap] = nic
		ups = append(ups, tap)
	}
	downs := slices.DeleteFunc(dedupe(slices.Clone(down)), func(t string) bool { return slices.Contains(up, t) })
	if len(ups) == 0 && len(downs) == 0 {
		return res, nil
	}
	if err := e.refuseConflict(ctx); err != nil {
		return nil, err
	}
	if len(ups) > 0 {
		if err := e.kernel.Host.EnableBridgeNetfilter(); err != nil {
			return nil, err
		}
	}
	if res.Change, err = e.change(ctx, early, m, r, ups, downs); err != nil {
		return nil, fmt.Errorf("%s: %w", describeBatch(ups, downs), err)
	}
	var undo []string
	for _, tap := range ups {
		if err := e.kernel.Host.Attach(tap, nics[tap].Bridge); err != nil {
			failed[tap] = err
			undo = append(undo, tap)
		}
	}
	if len(undo) > 0 {
		// The tap's chains and memberships must not outlive the failure.
		if _, err := e.change(ctx, nil, m, r, nil, undo); err != nil {
			for _, tap := range undo {
				failed[tap] = errors.Join(failed[tap], fmt.Errorf("removing %s: %w", tap, err))
			}
		}
	}
	return res, nil
}

// describeBatch names what a batch does, for errors.
func describeBatch(up, down []string) string {
	var parts []string
	if len(up) > 0 {
		parts = append(parts, "firewalling "+strings.Join(up, ", "))
	}
	if len(down) > 0 {
		parts = append(parts, "removing "+strings.Join(down, ", "))
	}
	return strings.Join(parts, "; ")
}

// change installs the filtering of up and removes that of down, keeping
// every other installed interface as it is. It tells the backend which
// interfaces change (backend.Hint), so that it can read and write only
// what they touch, when every installed interface is configured; an
// installed interface the configuration no longer has is removed by a
// full change. The policies before and after are compiled once: the one
// before is the last change's when it is still installed, the one after
// is derived from it (ruleset.Policy.With). early, when not nil, is the
// backend's narrow read made before the lock and still current
// (beginChange).
func (e *Engine) change(ctx context.Context, early backend.State, m *config.Model, r *resolver, up, down []string) (*Change, error) {
	st, installed, was, err := e.installedPolicy(ctx, early, m, r)
	if err != nil {
		return nil, err
	}
	var want *ruleset.Policy
	var hint *backend.Hint
	var nics []*config.NIC
	if was == nil {
		nics = nicsFor(r, dedupe(append(slices.DeleteFunc(installed, func(t string) bool { return slices.Contains(down, t) }), up...)))
		if want, err = ruleset.Compile(m, nics); err != nil {
			return nil, err
		}
	} else {
		start := time.Now()
		if want, err = was.With(m, nicsFor(r, dedupe(slices.Clone(up))), down); err != nil {
			return nil, err
		}
		trace.Since(start, "derive the policy of %d interfaces", len(want.Interfaces))
		hint = &backend.Hint{Was: was, Interfaces: append(slices.Clone(up), down...)}
		nics = nicsOf(want)
	}
	ch, err := e.apply(ctx, st, want, hint, false, m, nics, r.settle)
	if err == nil {
		// An empty plan wrote nothing and did not wait for the check;
		// the caller's next step (attaching the tap to its bridge)
		// writes what m says.
		err = r.settle()
	}
	e.keep(m, want, err)
	return ch, err
}

// installed reads, narrowly, which interfaces the backend installed and
// resolves them; before is nil when the configuration no longer names
// some of them, whose removal then takes a full change.
func (e *Engine) installed(ctx context.Context, r nicSource) (st backend.State, names []string, before []*config.NIC, err error) {
	if st, err = e.kernel.Backend.Read(ctx, true); err != nil {
		return nil, nil, nil, err
	}
	names = st.Installed()
	if before = nicsFor(r, names); len(before) != len(names) {
		trace.Printf("full change: %d installed interfaces are no longer configured", len(names)-len(before))
		return st, names, nil, nil
	}
	if before == nil {
		before = []*config.NIC{} // none installed, all known
	}
	return st, names, before, nil
}

// installedPolicy reads, narrowly, which interfaces the backend installed
// and returns the policy of m for them: the last change's when it is
// that, else compiled. It is nil when the configuration no longer names
// some of them, whose removal then takes a full change. A narrow read
// already made (early) is used instead of reading.
func (e *Engine) installedPolicy(ctx context.Context, early backend.State, m *config.Model, r nicSource) (st backend.State, names []string, p *ruleset.Policy, err error) {
	start := time.Now()
	if st = early; st == nil {
		if st, err = e.kernel.Backend.Read(ctx, true); err != nil {
			return nil, nil, nil, err
		}
	}
	names = st.Installed()
	if p = e.lastFor(m, r, names); p != nil {
		trace.Since(start, "the installed policy is the last change's (%d interfaces)", len(names))
		return st, names, p, nil
	}
	before := nicsFor(r, names)
	if len(before) != len(names) {
		trace.Printf("full change: %d installed interfaces are no longer configured", len(names)-len(before))
		return st, names, nil, nil
	}
	start = time.Now()
	if p, err = ruleset.Compile(m, before); err != nil {
		trace.Printf("full change: the installed interfaces do not compile: %v", err)
		return st, names, nil, nil
	}
	trace.Since(start, "compile the installed policy (%d interfaces)", len(names))
	return st, names, p, nil
}

// detach removes tap's chains and memberships, keeping every other
// installed interface as it is.
func (e *Engine) detach(ctx context.Context, early backend.State, m *config.Model, r *resolver, tap string) error {
	if _, err := e.change(ctx, early, m, r, nil, []string{tap}); err != nil {
		return fmt.Errorf("removing %s: %w", tap, err)
	}
	return nil
}

// lookupNIC finds tap's configuration or says which file it looked for.
func lookupNIC(m *config.Model, tap string) (*config.NIC, error) {
	vmid, index, ok := config.ParseTapName(tap)
	if !ok {
		return nil, &ConfigError{Err: fmt.Errorf("%s: not a VM tap name (want tap<VMID>i<N>, e.g. tap110i0)", tap)}
	}
	file := filepath.Join(m.Dir, "vms", strconv.Itoa(vmid)+".toml")
	if m.VMs[vmid] == nil {
		return nil, &ConfigError{Err: fmt.Errorf("%s: no configuration for VM %d: %s does not exist", tap, vmid, file)}
	}
	nic := m.NIC(tap)
	if nic == nil {
		return nil, &ConfigError{Err: fmt.Errorf("%s: %s has no [net%d] table", tap, file, index)}
	}
	return nic, nil
}

func dedupe(list []string) []string {
	sort.Strings(list)
	out := list[:0]
	for i, s := range list {
		if i == 0 || s != list[i-1] {
			out = append(out, s)
		}
	}
	return out
}

// Detach removes tap's chains and memberships: QEMU's downscript=. It
// succeeds for a tap that is unknown or already removed.
func (e *Engine) Detach(ctx context.Context, tap string) error {
	r, release, early, err := e.beginChange(ctx)
	if err != nil {
		return err
	}
	defer release()
	if err := e.refuseConflict(ctx); err != nil {
		return err
	}
	return e.settled(r, early, func(r *resolver, early backend.State) error {
		return e.detach(ctx, early, r.model, r, tap)
	})
}

// Sync reconciles the host with the configuration: every configured tap that
// exists is firewalled, chains of taps that are gone or no longer configured
// are removed. With dryRun it changes nothing and returns what it would do.
func (e *Engine) Sync(ctx context.Context, dryRun bool) (*Change, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	if !dryRun {
		if err := e.kernel.Host.EnableBridgeNetfilter(); err != nil {
			return nil, err
		}
	}
	st, links, err := e.readWithLinks(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := e.converge(ctx, r.model, r.present(links), st, dryRun)
	if err != nil {
		return nil, err
	}
	// A host switching backends: the new ruleset is in place (both now
	// filter every packet), so the old one can go.
	if ch.Removed, err = e.removeOther(ctx, dryRun); err != nil {
		return ch, err
	}
	if !dryRun {
		err = e.prune(r, links)
	}
	return ch, err
}

// Flush removes everything vmfw installed and nothing else. It needs no
// configuration, so it works even when the configuration is broken.
func (e *Engine) Flush(ctx context.Context, dryRun bool) (*Change, error) {
	release, err := e.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	st, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := e.apply(ctx, st, nil, nil, dryRun, nil, nil, nil)
	if !dryRun {
		e.keep(nil, nil, nil)
	}
	if err != nil {
		return nil, err
	}
	ch.Removed, err = e.removeOther(ctx, dryRun)
	return ch, err
}

// SyncGroups applies an edit of the named groups' rules, and nothing else,
// from configuration was to the current one: the agent's path for the most
// common edit. It tells the backend which groups changed (backend.Hint),
// so that it rewrites only their objects when the kernel holds what was
// describes, and everything otherwise.
func (e *Engine) SyncGroups(ctx context.Context, was *config.Model, groups []string) (*Change, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	if !reflect.DeepEqual(was.RemoteMembers, r.model.RemoteMembers) {
		// The policy of was is derived from (Regroup) for r.model's:
		// they must differ in the groups' rules alone. The other hosts'
		// members are r.model's, those SyncSets enforced as they came.
		w := *was
		w.RemoteMembers = r.model.RemoteMembers
		was = &w
	}
	st, installed, prev, err := e.installedPolicy(ctx, nil, was, r)
	if err != nil {
		return nil, err
	}
	var want *ruleset.Policy
	var hint *backend.Hint
	if prev != nil {
		if want, err = prev.Regroup(r.model, groups); err != nil {
			return nil, err
		}
		hint = &backend.Hint{Was: prev, Groups: groups}
	} else if want, err = ruleset.Compile(r.model, nicsFor(r, installed)); err != nil {
		return nil, err
	}
	ch, err := e.apply(ctx, st, want, hint, false, r.model, nicsOf(want), nil)
	e.keep(r.model, want, err)
	return ch, err
}
