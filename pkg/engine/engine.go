// Package engine is what every entry point (QEMU scripts, the CLI, later
// CNI and hypervisor hooks) calls: Attach, Detach, Sync, Flush and Status.
// Each operation loads the configuration, takes the namespace lock, reads
// vmfw's part of the kernel state, compiles the desired ruleset for the
// interfaces that should be attached, and applies only the difference:
// ipsets first (so new rules find their sets), then one iptables-restore
// per family, then removal of sets nothing references any more.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// Firewall reads and writes vmfw's part of the filter table. Restore is
// called for both families at once (restoreFamilies).
type Firewall interface {
	Save(ctx context.Context, f ruleset.Family) (*xtables.Snapshot, error)
	Restore(ctx context.Context, f ruleset.Family, text string) error
}

// SetStore reads and writes vmfw's ipsets.
type SetStore interface {
	List(ctx context.Context) (map[string]*ipset.Observed, error)
	Restore(ctx context.Context, script string) error
}

// BridgeFirewall reads and writes vmfw's part of the ebtables filter table.
type BridgeFirewall interface {
	Save(ctx context.Context) (layout.Observed, error)
	Restore(ctx context.Context, text string) error
}

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
// real one; tests build fakes. Entry points hand it to New and never use
// it beside the engine, so every change goes through the engine's lock,
// plan and revert (docs/design.md).
type Kernel struct {
	// Firewall, Sets and Host talk to the kernel.
	Firewall Firewall
	Sets     SetStore
	// Bridge programs L2 anti-spoofing; nil leaves ebtables alone.
	Bridge BridgeFirewall
	Host   Host
	// Lock serialises runs in the namespace; it returns the release function.
	Lock func(ctx context.Context) (func(), error)
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
	// Backend names the iptables backend, for status output.
	Backend string
	// LockTimeout bounds the wait for the lock (default one minute).
	LockTimeout time.Duration
	// State holds the records of attached interfaces the configuration
	// cannot name (CNI, libvirt); nil means there are none.
	State Attachments
	// Model, when set, supplies the configuration instead of loading
	// ConfigDir on every operation: the agent keeps the last valid model
	// in memory and reloads it only when a file changes.
	Model func() (*config.Model, error)
}

// ConfigError wraps an error in the configuration, which callers report
// with exit status 2: nothing on the host was changed.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Change summarises what an operation changed (or, in a dry run, would).
type Change struct {
	// Plans are the iptables changes per family.
	Plans map[ruleset.Family]*layout.Plan
	// Bridge is the ebtables change, nil when ebtables is not managed.
	Bridge *layout.Plan
	// SetsBefore and SetsAfter are the ipset scripts run before and after
	// the iptables changes.
	SetsBefore, SetsAfter string
	// Sets says what the scripts do to each set (report.go).
	Sets SetChanges
	// FlowsCut counts the tracked connections deleted because the new
	// rules deny them.
	FlowsCut int
}

// Empty reports whether nothing changed.
func (c *Change) Empty() bool {
	for _, p := range c.Plans {
		if !p.Empty() {
			return false
		}
	}
	if c.Bridge != nil && !c.Bridge.Empty() {
		return false
	}
	return c.SetsBefore == "" && c.SetsAfter == ""
}

// WriteTo prints the exact changes: the ipset scripts and the
// iptables-restore transactions, in the order they are applied.
func (c *Change) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	if c.Empty() {
		b.WriteString("# no changes\n")
	}
	if c.SetsBefore != "" {
		b.WriteString("# ipset restore\n" + c.SetsBefore)
	}
	for _, f := range ruleset.Families {
		if p := c.Plans[f]; p != nil && !p.Empty() {
			tool := "iptables-restore"
			if f == ruleset.IPv6 {
				tool = "ip6tables-restore"
			}
			b.WriteString("# " + tool + " --noflush\n" + p.Render())
		}
	}
	if c.Bridge != nil && !c.Bridge.Empty() {
		b.WriteString("# ebtables-restore --noflush\n" + c.Bridge.Render())
	}
	if c.SetsAfter != "" {
		b.WriteString("# ipset restore\n" + c.SetsAfter)
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// kernelState is vmfw's part of the kernel as read at the start of an operation.
type kernelState struct {
	tables map[ruleset.Family]*xtables.Snapshot
	// textless lists the families read without rule text (see
	// fingerprintReader); linesFor adds the text a change needs.
	textless map[ruleset.Family]bool
	bridge   layout.Observed
	sets     map[string]*ipset.Observed
}

// fingerprintReader is a Firewall that can read a whole table's
// fingerprints without its rule text (nf_tables, over netlink), and the
// text of a few chains when a change must be able to revert them.
type fingerprintReader interface {
	SaveFingerprints(ctx context.Context, f ruleset.Family) (*xtables.Snapshot, error)
	ChainLines(ctx context.Context, f ruleset.Family, names []layout.Chain) (map[layout.Chain][]string, error)
}

// maxChainLineReads is how many chains' text a change reads one by one;
// above it one whole-table read is cheaper.
const maxChainLineReads = 16

func (e *Engine) load() (*config.Model, error) {
	if e.Model != nil {
		return e.Model()
	}
	m, err := config.Load(e.ConfigDir)
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
	start := time.Now()
	m, err := e.load()
	if err != nil {
		return nil, nil, err
	}
	trace.Since(start, "load the configuration (%d VMs)", len(m.VMs))
	start = time.Now()
	if release, err = e.lock(ctx); err != nil {
		return nil, nil, err
	}
	trace.Since(start, "take the lock")
	start = time.Now()
	if r, err = e.resolver(m); err != nil {
		release()
		return nil, nil, err
	}
	trace.Since(start, "read attachment records")
	return r, release, nil
}

func (e *Engine) read(ctx context.Context) (*kernelState, error) {
	st := &kernelState{tables: map[ruleset.Family]*xtables.Snapshot{}, textless: map[ruleset.Family]bool{}}
	// The reads are independent and, at thousands of taps, each takes
	// about a second: they run side by side.
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(ruleset.Families)+1)
	for i, f := range ruleset.Families {
		wg.Go(func() {
			s, textless, err := e.readTable(ctx, f)
			mu.Lock()
			defer mu.Unlock()
			st.tables[f], st.textless[f], errs[i] = s, textless, err
		})
	}
	wg.Go(func() {
		var err error
		if st.sets, err = e.kernel.Sets.List(ctx); err == nil && e.kernel.Bridge != nil {
			st.bridge, err = e.kernel.Bridge.Save(ctx)
		}
		errs[len(errs)-1] = err
	})
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return st, nil
}

// readTable reads vmfw's part of family f's table: its fingerprints only
// where the firewall can (textless), else with the rules' text.
func (e *Engine) readTable(ctx context.Context, f ruleset.Family) (s *xtables.Snapshot, textless bool, err error) {
	start := time.Now()
	if fr, ok := e.kernel.Firewall.(fingerprintReader); ok {
		s, err := fr.SaveFingerprints(ctx, f)
		if err == nil {
			trace.Since(start, "read the %s table's fingerprints", f)
			return s, true, nil
		}
		if !errors.Is(err, xtables.ErrNotNFT) {
			return nil, false, err
		}
	}
	s, err = e.kernel.Firewall.Save(ctx, f)
	return s, false, err
}

// installed returns the interfaces whose chains are in the kernel.
func (st *kernelState) installed() []string {
	seen := map[string]bool{}
	for _, s := range st.tables {
		for c := range s.Chains {
			name := string(c)
			if tap, ok := layout.InstalledTap(layout.Chain(name)); ok {
				seen[tap] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for t := range seen {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// nicsFor maps interface names to their configuration, leaving out names
// the configuration no longer has (their chains are then removed).
func nicsFor(src nicSource, taps []string) []*config.NIC {
	var nics []*config.NIC
	for _, t := range taps {
		if n := src.NIC(t); n != nil {
			nics = append(nics, n)
		}
	}
	return nics
}

// converge applies the ruleset for nics; with dryRun it only computes the change.
func (e *Engine) converge(ctx context.Context, m *config.Model, nics []*config.NIC, st *kernelState, dryRun bool) (*Change, error) {
	start := time.Now()
	rs, err := layout.FromConfig(m, nics)
	if err != nil {
		return nil, err
	}
	trace.Since(start, "compile %d interfaces", len(nics))
	ch, err := e.applyRuleset(ctx, rs, st, dryRun)
	if err == nil && !dryRun {
		ch.FlowsCut, err = e.cutFlows(m, nics)
	}
	return ch, err
}

func (e *Engine) applyRuleset(ctx context.Context, rs *layout.Ruleset, st *kernelState, dryRun bool) (*Change, error) {
	return e.applyVia(ctx, e.kernel.Firewall, rs, st, dryRun)
}

// applyVia is applyRuleset writing each family's change through fw, which
// may rewrite the transaction (scoped.go's deletingFirewall); reads and
// reverts still go to e.kernel.Firewall.
func (e *Engine) applyVia(ctx context.Context, fw Firewall, rs *layout.Ruleset, st *kernelState, dryRun bool) (*Change, error) {
	start := time.Now()
	ch := &Change{Plans: map[ruleset.Family]*layout.Plan{}}
	for _, f := range ruleset.Families {
		want := rs.Tables[f]
		if want == nil {
			want = &layout.Table{Family: f}
		}
		ch.Plans[f] = layout.Diff(want, st.tables[f].Observed)
	}
	if e.kernel.Bridge != nil {
		want := rs.Bridge
		if want == nil {
			want = &layout.Table{Bridge: true}
		}
		ch.Bridge = layout.Diff(want, st.bridge)
	}
	ch.SetsBefore, ch.SetsAfter = ipset.Plan(rs.Sets, st.sets)
	ch.Sets = setChanges(rs.Sets, st.sets)
	trace.Since(start, "compare with the kernel")
	if dryRun || ch.Empty() {
		return ch, nil
	}
	if err := e.linesFor(ctx, ch, st); err != nil {
		return nil, err
	}
	if err := e.kernel.Sets.Restore(ctx, ch.SetsBefore); err != nil {
		return nil, err
	}
	if err := e.restoreFamilies(ctx, fw, ch, st); err != nil {
		return nil, err
	}
	if ch.Bridge != nil {
		if err := e.kernel.Bridge.Restore(ctx, ch.Bridge.Render()); err != nil {
			return nil, errors.Join(err, e.revert(ctx, ch, st, ruleset.Families))
		}
	}
	if err := e.kernel.Sets.Restore(ctx, ch.SetsAfter); err != nil {
		// The rules are in place; only unreferenced sets remain, and the
		// next run removes them.
		return ch, fmt.Errorf("removing unused ipsets: %w", err)
	}
	return ch, nil
}

// restoreFamilies writes each family's transaction of ch through fw, the
// families side by side: they are separate transactions, and what
// iptables-restore does before its commit (parsing, reading the cache)
// overlaps. That is most of a large transaction (a first apply at 5000
// taps: 26 s instead of 44). Small ones gain little: nf_tables commits one
// transaction at a time, and iptables-nft restarts a commit when the
// other family's moved the ruleset generation (docs/performance.md). When one
// fails (its table stays as it was), the families that succeeded are
// reverted, so the host never keeps one family's new rules beside the
// other's old ones: the same all-or-nothing as writing them one after the
// other and stopping at the first failure.
func (e *Engine) restoreFamilies(ctx context.Context, fw Firewall, ch *Change, st *kernelState) error {
	errs := make([]error, len(ruleset.Families))
	var wg sync.WaitGroup
	for i, f := range ruleset.Families {
		text := ch.Plans[f].Render()
		if text == "" {
			continue
		}
		wg.Go(func() {
			start := time.Now()
			errs[i] = fw.Restore(ctx, f, text)
			trace.Since(start, "write the %s table (%d bytes)", f, len(text))
		})
	}
	wg.Wait()
	var done []ruleset.Family
	var failed []error
	for i, f := range ruleset.Families {
		if errs[i] != nil {
			failed = append(failed, errs[i])
		} else {
			done = append(done, f)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return errors.Join(append(failed, e.revert(ctx, ch, st, done))...)
}

// linesFor reads the rule text of the chains ch rewrites or deletes in
// families read without it, so that a failure can put them back.
func (e *Engine) linesFor(ctx context.Context, ch *Change, st *kernelState) error {
	for _, f := range ruleset.Families {
		p := ch.Plans[f]
		if !st.textless[f] || p.Empty() {
			continue
		}
		need := append(slices.Clone(p.Rewrite), p.Delete...)
		if len(need) > maxChainLineReads {
			full, err := e.kernel.Firewall.Save(ctx, f)
			if err != nil {
				return err
			}
			st.tables[f].Lines = full.Lines
		} else if len(need) > 0 {
			lines, err := e.kernel.Firewall.(fingerprintReader).ChainLines(ctx, f, need)
			if err != nil {
				return err
			}
			for c, l := range lines {
				st.tables[f].Lines[c] = l
			}
		}
		st.textless[f] = false
	}
	return nil
}

// revert undoes the families already changed when a later one fails, so the
// host never keeps IPv4 rules from the new config and IPv6 from the old.
func (e *Engine) revert(ctx context.Context, ch *Change, st *kernelState, done []ruleset.Family) error {
	var errs []error
	for _, f := range done {
		if err := e.kernel.Firewall.Restore(ctx, f, ch.Plans[f].Revert(st.tables[f].Observed)); err != nil {
			errs = append(errs, fmt.Errorf("reverting %s after failure: %w", f, err))
		}
	}
	return errors.Join(errs...)
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
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
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
	if len(ups) > 0 {
		if err := e.kernel.Host.EnableBridgeNetfilter(); err != nil {
			return nil, err
		}
	}
	if res.Change, err = e.change(ctx, m, r, ups, downs); err != nil {
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
		if _, err := e.change(ctx, m, r, nil, undo); err != nil {
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

// change installs the chains of up and removes those of down, keeping
// every other installed interface as it is: by the scoped path where the
// backend allows it, else by reading and converging everything.
func (e *Engine) change(ctx context.Context, m *config.Model, r nicSource, up, down []string) (*Change, error) {
	if done, ch, err := e.changeScoped(ctx, m, r, up, down); done {
		return ch, err
	}
	st, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	taps := slices.DeleteFunc(st.installed(), func(t string) bool { return slices.Contains(down, t) })
	return e.converge(ctx, m, nicsFor(r, dedupe(append(taps, up...))), st, false)
}

// detach removes tap's chains and memberships, keeping every other
// installed interface as it is.
func (e *Engine) detach(ctx context.Context, m *config.Model, r nicSource, tap string) error {
	if _, err := e.change(ctx, m, r, nil, []string{tap}); err != nil {
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
	r, release, err := e.begin(ctx)
	if err != nil {
		return err
	}
	defer release()
	return e.detach(ctx, r.model, r, tap)
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
	st, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	links, err := e.kernel.Host.Links()
	if err != nil {
		return nil, err
	}
	ch, err := e.converge(ctx, r.model, r.present(links), st, dryRun)
	if err == nil && !dryRun {
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
	return e.applyRuleset(ctx, &layout.Ruleset{Tables: map[ruleset.Family]*layout.Table{}}, st, dryRun)
}
