// Package agent is vmfw's long-running process (vmfw agent, see
// docs/agent.md). It keeps the configuration in memory and enforces every
// valid edit of the configuration directory the moment inotify reports it,
// repairs drift on a timer, and takes ifup/ifdown requests over a unix
// socket, applying all requests that arrive while it works in one
// transaction per family (group commit). It is never needed for safety:
// fail-closed lives in the kernel, and every entry point does the work
// itself when no agent answers.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/vmfw/vmfw/pkg/agent/wire"
	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/cluster"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/droplog"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/rundir"
	"github.com/vmfw/vmfw/pkg/state"
)

// Agent runs one network namespace's agent.
type Agent struct {
	// ConfigDir is the configuration directory it watches.
	ConfigDir string
	// RunDir holds the socket (and the engine's lock files).
	RunDir string
	// Kernel is what the agent's engine reads and changes; Run builds the
	// engine on it, with the agent's model. A backend that can tell
	// cheaply whether the kernel changed (backend.Generationer) spares
	// the drift check and the next change their reads.
	Kernel engine.Kernel
	// Log receives one record per change.
	Log *slog.Logger
	// StateDir is where the engine keeps attachment records, absolute;
	// requests naming another are refused.
	StateDir string
	// Jobs run the requests of operations other than ifup and ifdown
	// (hooks, the CNI plugin); an operation without one is refused and
	// its caller does the work itself.
	Jobs map[Op]Job
	// Metrics counts what the agent does; nil counts nothing.
	Metrics *Metrics
	// Packets, when set and log_group is configured, receives every
	// packet vmfw's rules log to NFLOG as a JSON line (package droplog).
	// The agent then holds the group, so vmfw log cannot run beside it.
	Packets io.Writer
	// Lifecycle, when set, is told each Stage as Run enters it, from
	// Run's goroutine: what a service manager follows (the command
	// passes it on to systemd).
	Lifecycle func(Stage)

	// reloads holds a Reload not yet served.
	reloads    chan struct{}
	reloadOnce sync.Once

	engine *engine.Engine // built by Run

	mu       sync.Mutex
	model    *config.Model // the last valid configuration, nil before one loaded
	modelErr error         // why the configuration on disk is not in force
	// files keeps the parsed configuration files, so that an edit
	// parses only the files inotify named (config.Cache).
	files config.Cache

	// queue holds the requests waiting for the next batch (under mu).
	queue chan pending
	// queued reports work waiting for the main loop (requests, edits);
	// while there is, remember waits (unremembered says it owes one),
	// since the next write would make what it reads old at once.
	queued       func() bool
	unremembered bool
	// status is what /metrics serves of the kernel; statusOwed says a
	// scrape asked for a fresh read, which waits for an empty queue.
	status     statusView
	statusOwed bool

	// Cluster mode (cluster.go): nil in file mode.
	cluster  *cluster.Node
	remote   map[string][]netip.Addr // other hosts' members by group
	revision int64                   // the cluster revision of model
	attached []*config.NIC           // interfaces with chains, as last published
}

// After a change the agent waits for the directory to be quiet before it
// reloads, so that a tool writing many files (rsync, a directory swap)
// costs one reload: quiet for debounce while a file was created or
// modified and not yet closed (a writer that may not be done), for
// settled when every file named was closed or renamed into place (an
// editor's or a configuration manager's rename is complete at once).
// maxDebounce bounds the wait under a stream of writes.
const (
	debounce    = 20 * time.Millisecond
	settled     = 2 * time.Millisecond
	maxDebounce = 500 * time.Millisecond
)

// Stage is a point of the agent's life a service manager follows.
type Stage int

const (
	// Ready: the configuration is enforced and the socket listens. Run
	// enters it after starting and again after each reload.
	Ready Stage = iota + 1
	// Reloading: a reload (Reload) begins.
	Reloading
	// Stopping: Run's context is done; it lets go of everything and
	// leaves the ruleset in place.
	Stopping
)

// stage tells Lifecycle that Run enters s.
func (a *Agent) stage(s Stage) {
	if a.Lifecycle != nil {
		a.Lifecycle(s)
	}
}

// Reload asks the agent to read its whole configuration again and
// enforce it, as at start: how an operator makes it see what inotify
// cannot (a symlinked file's target, a file edited through a hard link).
// It does not wait. A Reload while one is pending is the same reload; one
// before Run is served once Run is ready. Safe from any goroutine.
func (a *Agent) Reload() {
	select {
	case a.reloadRequests() <- struct{}{}:
	default: // one is pending already
	}
}

// reloadRequests is where Reload leaves its requests, made on first use
// since Reload may come before Run.
func (a *Agent) reloadRequests() chan struct{} {
	a.reloadOnce.Do(func() { a.reloads = make(chan struct{}, 1) })
	return a.reloads
}

// pending is a request waiting for its batch.
type pending struct {
	req   Request
	reply chan Response
}

// Run loads the configuration, enforces it, listens, enters Ready and then
// serves until ctx is done, leaving the ruleset in place. Every goroutine
// Run starts has ended when it returns.
func (a *Agent) Run(ctx context.Context) error {
	a.build()
	w, err := newWatcher(a.ConfigDir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	var bg sync.WaitGroup
	// Deferred calls run last first: the goroutines are told to stop,
	// then waited for.
	defer a.waitCluster()
	defer bg.Wait()
	defer cancel()
	bg.Go(func() { w.run(ctx) })
	if err := a.startCluster(ctx); err != nil {
		return err
	}
	// The first load reads everything, so it covers whatever the watcher
	// noted until now, its own first watches included (each new watch
	// counts as a replaced directory): without this the first edit after
	// a start would parse every file again.
	w.take()
	a.reload(nil, true)
	if m, err := a.currentModel(); err == nil && m.Host.MetricsListen != "" {
		// The address is read once: changing it takes a restart.
		if err := a.serveMetrics(ctx, &bg, m.Host.MetricsListen); err != nil {
			return err
		}
	}
	a.followPackets(ctx, &bg)

	ln, err := listen(a.RunDir)
	if err != nil {
		return err
	}
	defer os.Remove(filepath.Join(a.RunDir, wire.SocketName))
	defer ln.Close() // ends serve, which waits for its connections
	reqs := make(chan pending, 4096)
	a.mu.Lock()
	a.queue = reqs
	a.mu.Unlock()
	bg.Go(func() { a.serve(ctx, ln, reqs) })
	a.queued = func() bool { return len(reqs) > 0 || len(w.Changed) > 0 }

	a.sync(ctx, "agent started")
	foreign := a.watchKernel(ctx, &bg)
	a.stage(Ready)
	a.Log.Info("agent ready", "config", a.ConfigDir, "socket", filepath.Join(a.RunDir, wire.SocketName), "repair_interval", a.interval().String())
	a.loop(ctx, w, reqs, foreign)
	return nil
}

// watchKernel returns a channel that signals when someone else changed
// the backend's objects, for a backend that can tell at once
// (backend.Watcher: a foreign "nft flush ruleset" deletes the nftables
// backend's tables, and VMs must not stay unfiltered until the next
// drift check). Signals coalesce. For any other backend, or when
// watching cannot start, the channel never signals and the periodic
// drift check repairs. The goroutine that forwards the signals ends when
// the backend closes its channel, which it does when ctx ends.
func (a *Agent) watchKernel(ctx context.Context, bg *sync.WaitGroup) <-chan struct{} {
	out := make(chan struct{}, 1)
	wt, ok := a.Kernel.Backend.(backend.Watcher)
	if !ok {
		return out
	}
	sig, err := wt.Watch(ctx)
	if err != nil {
		a.Log.Error("watching the kernel for foreign changes; the drift check repairs them", "error", err.Error())
		return out
	}
	bg.Go(func() {
		for range sig {
			select {
			case out <- struct{}{}:
			default:
			}
		}
		if ctx.Err() == nil {
			a.Log.Error("watching the kernel for foreign changes stopped; the drift check repairs them")
		}
	})
	return out
}

// build fills in the defaults and builds the agent's engine on its
// kernel, with the agent's model and, on nf_tables, the ipsets it
// remembers.
func (a *Agent) build() {
	if a.Log == nil {
		a.Log = slog.New(slog.DiscardHandler)
	}
	if a.Metrics == nil {
		a.Metrics = NewMetrics()
	}
	a.engine = engine.New(a.Kernel, a.ConfigDir)
	if a.StateDir == "" {
		a.StateDir = state.DirFromEnv()
	}
	if a.RunDir == "" {
		a.RunDir = rundir.FromEnv()
	}
	a.engine.State = state.New(a.StateDir)
	a.engine.Model = a.currentModel
}

// followPackets prints logged packets (Packets) when log_group is set,
// until ctx is done.
func (a *Agent) followPackets(ctx context.Context, bg *sync.WaitGroup) {
	m, err := a.currentModel()
	if err != nil || a.Packets == nil {
		return
	}
	if m.Host.LogGroup == 0 {
		a.Log.Warn("no log_group in vmfw.toml: logged packets go to the kernel log, not to the agent")
		return
	}
	bg.Go(func() {
		// The group is read once, like metrics_listen.
		if err := droplog.Follow(ctx, uint16(m.Host.LogGroup), a.currentModel, a.Packets, 0); err != nil && ctx.Err() == nil {
			a.Log.Error("following logged packets", "log_group", m.Host.LogGroup, "error", err.Error())
		}
	})
}

// loop is the agent's main loop: every change to the kernel is made here,
// one at a time, until ctx is done.
func (a *Agent) loop(ctx context.Context, w *watcher, reqs chan pending, foreign <-chan struct{}) {
	interval := a.interval()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		if a.unremembered && !a.queued() {
			a.remember(ctx)
		}
		if a.statusOwed && !a.queued() {
			a.readStatus(ctx)
		}
		select {
		case <-ctx.Done():
			a.stage(Stopping)
			a.Log.Info("agent stopping; the ruleset stays in place")
			return
		case <-w.Changed:
			a.settle(ctx, w)
			if err := w.rewatch(); err != nil {
				a.Log.Error("watching the configuration", "error", err)
			}
			if prev, ok := a.reload(w.take()); ok {
				a.applyEdit(ctx, prev, "configuration changed")
			}
		case <-a.reloadRequests():
			a.stage(Reloading)
			if prev, ok := a.reload(nil, true); ok {
				a.applyEdit(ctx, prev, "reload")
			}
			a.stage(Ready)
		case p := <-reqs:
			a.apply(ctx, drain(p, reqs))
		case <-ticker.C:
			a.repair(ctx)
		case <-foreign:
			a.repairForeign(ctx)
		case <-a.clusterConfig():
			if prev, ok := a.reload(nil, true); ok {
				a.applyEdit(ctx, prev, "cluster configuration pushed")
			}
		case <-a.clusterMembers():
			a.membersChanged(ctx)
		case <-a.status.wanted:
			a.statusOwed = true
		}
		if now := a.interval(); now != interval {
			interval = now
			ticker.Reset(interval)
		}
	}
}

// drain returns p and every request queued behind it: one batch.
func drain(p pending, reqs chan pending) []pending {
	batch := []pending{p}
	for {
		select {
		case q := <-reqs:
			batch = append(batch, q)
		default:
			return batch
		}
	}
}

// settle waits until the configuration directory has been quiet for
// debounce, or settled when no file is being written (at most
// maxDebounce).
func (a *Agent) settle(ctx context.Context, w *watcher) {
	deadline := time.After(maxDebounce)
	for {
		quiet := settled
		if w.busy() {
			quiet = debounce
		}
		select {
		case <-w.Changed:
		case <-time.After(quiet):
			return
		case <-deadline:
			return
		case <-ctx.Done():
			return
		}
	}
}

// currentModel is the engine's configuration source.
func (a *Agent) currentModel() (*config.Model, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.model == nil {
		return nil, &engine.ConfigError{Err: a.modelErr}
	}
	return a.withRemote(a.model), nil
}

// interval is the current drift-repair interval.
func (a *Agent) interval() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.model == nil || a.model.Host.RepairInterval <= 0 {
		return config.DefaultRepairInterval
	}
	return a.model.Host.RepairInterval
}

// reload reads the configuration directory: only the files in changed
// again, unless full (or in cluster mode, where each revision is another
// directory), and the others as the last load parsed them. A valid
// configuration replaces the model and reload reports true and the model
// it replaced; an invalid one is logged with its file and line and the
// last valid model stays in force.
func (a *Agent) reload(changed []string, full bool) (prev *config.Model, ok bool) {
	start := time.Now()
	dir, rev := a.loadDir()
	if full || a.cluster != nil {
		a.files.Reset()
	}
	m, err := a.files.Load(dir, changed)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		var fe *config.Error
		if errors.As(err, &fe) && !filepath.IsAbs(fe.File) {
			fe.File = filepath.Join(dir, fe.File) // as the operator opens it
		}
		a.modelErr = err
		if a.model != nil {
			a.Log.Error("configuration not applied; the last valid one stays in force", "error", err.Error())
		} else {
			a.Log.Error("configuration not applied; nothing is enforced by the agent until it is valid", "error", err.Error())
		}
		a.Metrics.configError()
		return nil, false
	}
	prev = a.model
	a.model, a.modelErr, a.revision = m, nil, rev
	a.Log.Info("configuration loaded", "vms", len(m.VMs), "groups", len(m.Groups), "revision", rev, "files_changed", len(changed), "full", full || a.cluster != nil, "took", time.Since(start).Round(time.Microsecond).String())
	return prev, true
}

// applyEdit enforces a newly loaded configuration. When only groups'
// rules changed (the most common edit), it rewrites just their chains
// (engine.SyncGroups), with the members of any address set edited at the
// same time; when only address sets changed, it changes their members and
// no chain (engine.EditSets); anything else, or anything those paths
// cannot vouch for, is a full apply.
func (a *Agent) applyEdit(ctx context.Context, prev *config.Model, reason string) {
	now, err := a.currentModel()
	if err != nil {
		return
	}
	e, ok := changedGroups(prev, now)
	switch {
	case !ok:
		a.sync(ctx, reason)
	case len(e.groups) > 0:
		start := time.Now()
		ch, err := a.engine.SyncGroups(ctx, prev, e.groups)
		a.record(ctx, time.Since(start), ch, err, "reason", reason, "groups", e.groups, "sets", e.sets)
	case len(e.sets) > 0:
		// The same rules refer to the same sets: a set's edit changes
		// its members only (README, "Address sets"), for the
		// interfaces installed now; the sets' configuration before the
		// edit lets the backend write just the difference.
		start := time.Now()
		ch, err := a.engine.EditSets(ctx, prev, e.sets)
		a.record(ctx, time.Since(start), ch, err, "reason", reason, "sets", e.sets)
	default:
		a.Log.Debug("nothing to change", "reason", reason)
	}
}

// edit is what changed between two configurations that changedGroups can
// name: the groups whose rules changed and the address sets added,
// removed or edited, each sorted.
type edit struct {
	groups, sets []string
}

// changedGroups compares two configurations. When they differ only in the
// rules of existing groups and in address sets it returns those and true;
// any other difference (host options, VMs, groups added or removed)
// returns false. A set whose entries and excepts are the same prefixes
// (a comment or the order edited) has not changed: the kernel holds the
// same members.
func changedGroups(prev, now *config.Model) (edit, bool) {
	var e edit
	if prev == nil || !reflect.DeepEqual(prev.Host, now.Host) || !reflect.DeepEqual(prev.VMs, now.VMs) || len(prev.Groups) != len(now.Groups) {
		return e, false
	}
	for name, g := range now.Groups {
		old := prev.Groups[name]
		if old == nil {
			return e, false
		}
		if !reflect.DeepEqual(old, g) {
			e.groups = append(e.groups, name)
		}
	}
	sort.Strings(e.groups)
	for name, s := range now.Sets {
		if !prev.Sets[name].SameMembers(s) {
			e.sets = append(e.sets, name)
		}
	}
	for name := range prev.Sets {
		if now.Sets[name] == nil {
			e.sets = append(e.sets, name)
		}
	}
	sort.Strings(e.sets)
	return e, true
}

// sync reconciles the kernel with the configuration, as vmfw apply does.
func (a *Agent) sync(ctx context.Context, reason string) *engine.Change {
	if _, err := a.currentModel(); err != nil {
		return nil
	}
	start := time.Now()
	ch, err := a.engine.Sync(ctx, false)
	return a.record(ctx, time.Since(start), ch, err, "reason", reason)
}

// record counts and logs an apply that took took, described by attrs
// (its reason, and what it covered), and remembers what the kernel then
// holds. It returns ch, nil when the apply failed.
func (a *Agent) record(ctx context.Context, took time.Duration, ch *engine.Change, err error, attrs ...any) *engine.Change {
	a.Metrics.applied(took, err)
	if err != nil {
		a.Log.Error("apply failed", append(attrs, "error", err.Error(), "took", took.String())...)
		return nil
	}
	a.remember(ctx)
	attrs = append(append(attrs, "took", took.Round(time.Microsecond).String()), changeAttrs(ch)...)
	if ch.Empty() {
		a.Log.Debug("nothing to change", attrs...)
	} else {
		a.Log.Info("applied", attrs...)
	}
	return ch
}

// remember tells the backend, when it can remember (backend.Generationer),
// that what the kernel holds after a write of the agent's is its own: the
// next change and the next drift check then read only what moved since.
// The backend reads to remember (the sets: 10-25 ms), so remember waits
// while work is queued, since the next write would make what it reads old
// at once. It also publishes the attached interfaces in cluster mode.
func (a *Agent) remember(ctx context.Context) {
	if a.queued != nil && a.queued() {
		// Seconds under a boot storm's load, and the next batch would
		// wait for it; after the last one the main loop remembers.
		// Until then drift checks wait (repair).
		a.unremembered = true
		return
	}
	a.unremembered = false
	if g, ok := a.Kernel.Backend.(backend.Generationer); ok {
		if err := g.Mark(ctx); err != nil {
			a.Log.Debug("remembering the kernel's state", "error", err.Error())
		}
	}
	a.publish(ctx)
}

// repair looks for drift and repairs it. Reading every chain at thousands
// of taps takes seconds, so it first asks the backend, when it can tell
// cheaply (backend.Generationer: the nf_tables generation and the sets'
// members for iptables-nft), whether anything moved since the agent's
// last write; otherwise every tick reads.
func (a *Agent) repair(ctx context.Context) {
	if _, err := a.currentModel(); err != nil {
		return
	}
	if a.unremembered {
		// Requests are queued and the agent has not read back what its
		// last batch left (remember): the generation has moved by its
		// own writes, which a check now would take for drift, and its
		// full apply would firewall the queued taps ahead of their
		// batch. The check waits for the next tick; the queue empties
		// between bursts and the main loop then remembers.
		a.Log.Debug("drift check deferred: requests queued")
		return
	}
	if g, ok := a.Kernel.Backend.(backend.Generationer); ok {
		if same, err := g.Unchanged(ctx); err == nil && same {
			return
		}
	}
	if ch := a.sync(ctx, "drift check"); ch != nil && !ch.Empty() {
		a.Metrics.driftRepaired()
		a.Log.Warn("repaired drift", changeAttrs(ch)...)
	}
}

// repairForeign repairs what another process changed of the backend's
// objects (watchKernel) at once: unlike the drift check it does not wait
// for queued requests, since VMs may be unfiltered until it is done.
func (a *Agent) repairForeign(ctx context.Context) {
	if _, err := a.currentModel(); err != nil {
		return
	}
	if ch := a.sync(ctx, "foreign change"); ch != nil && !ch.Empty() {
		a.Metrics.driftRepaired()
		a.Log.Warn("repaired drift", changeAttrs(ch)...)
	}
}

// apply runs one batch of requests: ifup and ifdown together (applyTaps),
// then every job in the order it arrived.
func (a *Agent) apply(ctx context.Context, batch []pending) {
	var taps, jobs []pending
	for _, p := range batch {
		if p.req.Op == Ifup || p.req.Op == Ifdown {
			taps = append(taps, p)
		} else {
			jobs = append(jobs, p)
		}
	}
	if len(taps) > 0 {
		a.applyTaps(ctx, taps)
	}
	for _, p := range jobs {
		a.runJob(ctx, p)
	}
}

// runJob runs one job and answers its caller. Jobs are not grouped: each
// is one hook or CNI invocation, with its own records and selection, and
// what grouping saves (loading the configuration) the agent's model
// already saves.
func (a *Agent) runJob(ctx context.Context, p pending) {
	start := time.Now()
	changed, err := a.Jobs[p.req.Op](ctx, a.engine, p.req)
	took := time.Since(start)
	a.Metrics.batch(1, took, err)
	resp := Response{OK: err == nil, Batch: 1}
	if err != nil {
		var cfgErr *engine.ConfigError
		var coded CodedError
		resp.Error = err.Error()
		resp.Config = errors.As(err, &cfgErr)
		if errors.As(err, &coded) {
			resp.Code, resp.Details = coded.ErrorCode()
		}
	}
	p.reply <- resp
	attrs := []any{"op", string(p.req.Op), "args", jobArgs(p.req), "took", took.Round(time.Microsecond).String()}
	if err != nil {
		a.Log.Error("request failed", append(attrs, "error", err.Error())...)
		return
	}
	a.remember(ctx)
	a.Log.Info("request applied", append(attrs, "interfaces", changed)...)
}

// jobArgs describes a job's request for its log record.
func jobArgs(req Request) []string {
	if req.Op != CNI {
		return req.Args
	}
	var args []string
	for _, k := range []string{"CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME"} {
		if v := req.Env[k]; v != "" {
			args = append(args, k+"="+v)
		}
	}
	return args
}

// applyTaps runs a batch of ifup and ifdown requests: the last request for
// a tap wins, and all of them go to the kernel in one transaction per
// family.
func (a *Agent) applyTaps(ctx context.Context, batch []pending) {
	last := map[string]Op{}
	for _, p := range batch {
		last[p.req.Tap] = p.req.Op
	}
	var up, down []string
	for tap, op := range last {
		if op == Ifup {
			up = append(up, tap)
		} else {
			down = append(down, tap)
		}
	}
	sort.Strings(up)
	sort.Strings(down)
	start := time.Now()
	res, err := a.engine.ApplyBatch(ctx, up, down)
	took := time.Since(start)
	a.Metrics.batch(len(batch), took, err)
	var cfgErr *engine.ConfigError
	for _, p := range batch {
		resp := Response{OK: true, Batch: len(batch)}
		switch {
		case err != nil:
			resp = Response{Error: err.Error(), Config: errors.As(err, &cfgErr), Batch: len(batch)}
		case last[p.req.Tap] != p.req.Op:
			// A later request for the tap in the same batch overrode
			// this one: it did happen, and was undone at once.
		case res.Failed[p.req.Tap] != nil:
			ferr := res.Failed[p.req.Tap]
			resp = Response{Error: ferr.Error(), Config: errors.As(ferr, &cfgErr), Batch: len(batch)}
		}
		p.reply <- resp
	}
	if err == nil {
		// After the answers: callers wait for nothing the kernel does
		// not need (reading the generation and the sets takes 10-25 ms).
		a.remember(ctx)
	}
	if err != nil {
		a.Log.Error("batch failed", "up", up, "down", down, "error", err.Error(), "took", took.String())
		return
	}
	attrs := []any{"up", up, "down", down, "requests", len(batch), "took", took.Round(time.Microsecond).String()}
	if res.Change != nil {
		attrs = append(attrs, changeAttrs(res.Change)...)
	}
	a.Log.Info("interfaces changed", attrs...)
	for tap, ferr := range res.Failed {
		a.Log.Error("interface not firewalled", "tap", tap, "error", ferr.Error())
	}
}

// changeAttrs describes a change for a log record: the objects written
// and removed per part of the kernel and the set members added and
// removed, as the backend summarised them.
func changeAttrs(ch *engine.Change) []any {
	if ch == nil {
		return nil
	}
	sum := ch.Summary()
	var written, removed []string
	for table, t := range sum.Tables {
		for _, c := range slices.Concat(t.Created, t.Rewritten) {
			written = append(written, table+"/"+c)
		}
		for _, c := range t.Deleted {
			removed = append(removed, table+"/"+c)
		}
	}
	sort.Strings(written)
	sort.Strings(removed)
	return []any{"chains_written", written, "chains_removed", removed, "set_members_added", sum.Sets.MembersAdded(), "set_members_removed", sum.Sets.MembersRemoved()}
}

// listen opens the agent's socket in runDir: root only, replacing a stale
// socket a killed agent left, refusing to start beside a live one.
//
// The socket is bound in a private directory, made 0600 there and only
// then renamed into place: no caller can find it with a looser mode,
// whatever the mode of a run directory that already existed, and the
// process's umask is left alone (it is process-wide, and other goroutines
// create files meanwhile: the cluster cache, the engine's lock).
func listen(runDir string) (*net.UnixListener, error) {
	if err := rundir.Ensure(runDir); err != nil {
		return nil, err
	}
	path := filepath.Join(runDir, wire.SocketName)
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another agent listens on %s", path)
	}
	private, err := os.MkdirTemp(runDir, ".agent-")
	if err != nil {
		return nil, fmt.Errorf("creating the socket: %w", err)
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, wire.SocketName)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	err = os.Chmod(tmp, 0o600)
	if err == nil {
		err = os.Rename(tmp, path) // a stale socket is replaced at once
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	return ln, nil
}
