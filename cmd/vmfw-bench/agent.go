package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// The agent part (--parts agent): what vmfw agent (docs/agent.md) changes,
// each row measured with the agent and, where the operation exists without
// it, without, in the same lab:
//
//   - edit-to-enforced latency of a group edit (a rewritten group file
//     renamed into groups/), p50 and p99, from the rename to the kernel
//     holding the new rule in both families; and of a VM edit, which the
//     agent applies in full; without the agent, the same edit and vmfw apply;
//   - a boot storm: stormTaps concurrent vmfw-ifup processes (what QEMU
//     runs, beside the vmfw measured) on a host with 1000 firewalled taps,
//     every tap checked afterwards (vmfw status) and two of them real VMs
//     whose traffic is checked with packets;
//   - one vmfw-ifup (and vmfw-ifdown) through the agent and without;
//   - the kernel's floor: the commit of a one-rule transaction (floor.go);
//   - agent start until "agent ready", with the ruleset in place and after
//     vmfw flush (a reboot); without the agent, vmfw apply from empty.
//
// Each lab's agent runs in the lab's hypervisor namespace with the lab's
// own VMFW_RUN_DIR, exactly as systemd would start it.

const (
	// agentEdits is the number of group edits the latency percentiles
	// are taken over.
	agentEdits = 20
	// stormTaps is the number of concurrent ifups of the boot storm;
	// stormAt is the number of installed taps it runs at.
	stormTaps = 500
	stormAt   = 1000
	// editGroup is the group the edits rewrite (one rule's port, 8000 +
	// variant, alternating), and joinGroup the group the VM edit adds to
	// and removes from scale tap joiner's VM.
	editGroup = 3
	joinGroup = "g02"
	joiner    = 1
	// pollEvery is the pause between two reads of the nf_tables
	// generation while waiting for an edit to reach the kernel.
	pollEvery = time.Millisecond
	// opTimeout bounds what should take seconds.
	opTimeout = 2 * time.Minute
)

// agentRow is one line of the agent table.
type agentRow struct {
	backend string
	taps    int
	what    string
	// agent and none are the samples with and without the agent.
	agent, none []time.Duration
	// percentiles shows p50 and p99 of agent instead of the median.
	percentiles bool
	// noneFailed says that some operations without the agent failed, so
	// that its time understates the work and the ratio is a lower bound.
	noneFailed bool
	// target and met are filled in by evaluate.
	target, met string
	note        string
	// launch is, for a boot storm, how long starting its processes took.
	launch time.Duration
}

type agentResults struct {
	rows  []agentRow
	notes []string
	// floor holds each nf_tables lab's kernel commit floor (floor.go).
	floor []floorRow
}

// agentLab is a lab with the agent's own state.
type agentLab struct {
	*lab
	r *agentResults
	// extraBase is the first extra (configured, absent) tap the ifup rows
	// use: the storm's taps come before it.
	extraBase int
	// groupEdits and joined say what the next edits write.
	groupEdits int
	joined     bool
	// probe is set where fewer than editGroup+1 scale taps are
	// installed: no scale tap then lists the edited group, so the edits
	// would change nothing in the kernel. One more tap is installed,
	// listing that group only, and the VM edits edit it.
	probe   bool
	logPath string
	// fingerprints holds, for each state an edit leaves ("group:1",
	// "vm:true"), the fingerprints of the edited chain in each family in
	// that state, learnt from the kernel after vmfw apply wrote it
	// (nf_tables only): what waitChain waits for.
	fingerprints map[string]map[ruleset.Family][]string
	fw           *xtables.Client
	// nftStates is fingerprints on the nftables backend (agentnft.go).
	nftStates map[string]nftState
}

// stormSize returns the tap count the boot storm runs at: stormAt when
// it is one of the sizes, else the largest.
func stormSize(o options) int {
	if slices.Contains(o.sizes, stormAt) {
		return stormAt
	}
	return o.sizes[len(o.sizes)-1]
}

// agentPart measures the agent rows for every backend and size.
func agentPart(ctx context.Context, o options, r *agentResults) error {
	for _, backend := range o.backends {
		if !o.agent {
			break // the worst case alone
		}
		for _, n := range o.sizes {
			if err := agentSize(ctx, o, backend, n, r); err != nil {
				return fmt.Errorf("agent, %s, %d taps: %w", backend, n, err)
			}
		}
	}
	if o.worst && slices.Contains(o.backends, nftablesBackend) {
		for _, n := range o.sizes {
			if err := worstCase(ctx, o, n, r); err != nil {
				return fmt.Errorf("worst case, %d taps: %w", n, err)
			}
		}
	}
	return nil
}

// agentSize sets up a lab as benchSize does and measures the agent rows in it.
func agentSize(ctx context.Context, o options, backend string, n int, r *agentResults) error {
	progress("agent, %s, %d taps: setting up", backend, n)
	l, err := newLab(ctx, o, backend, n, "vmfwbench-agent-")
	if err != nil {
		return err
	}
	defer l.close()
	a := &agentLab{lab: l, r: r}
	storm := n == stormSize(o)
	if storm {
		a.extraBase = stormTaps - len(dataVMs)
	}
	if err := writeScenario(l.dir, n, a.extraBase+o.runs+1); err != nil {
		return err
	}
	if a.probe = n <= editGroup; a.probe {
		id := a.probeVMID()
		if err := l.write(fmt.Sprintf("vms/%d.toml", id), vmFile(id, -1, []string{groupName(editGroup)})); err != nil {
			return err
		}
	}
	if backend == "legacy" {
		// On legacy every drift check is a full apply (seconds at
		// thousands of taps), which would land in the middle of the
		// measurements at random; the rows here are not about drift.
		if err := l.write("vmfw.toml", "repair_interval = \"1h\"\n"); err != nil {
			return err
		}
	}
	// The agent's log outlives the lab, for a look at where time went
	// (run the bench with VMFW_TRACE=1 to get the agent's trace in it).
	a.logPath = filepath.Join(os.TempDir(), fmt.Sprintf("vmfwbench-agent-%s-%d.log", backend, n))
	if err := l.start(); err != nil {
		return err
	}
	return a.run(storm)
}

// probeVMID is the VM of the probe tap: the extra tap after those of the
// storm and the ifup rows.
func (a *agentLab) probeVMID() int { return extraVMID(a.n, a.extraBase+a.o.runs) }

// editedVM returns the VM the VM edits edit, its index for vmFile and its
// groups before the first edit.
func (a *agentLab) editedVM() (id, k int, groups []string) {
	if a.probe {
		return a.probeVMID(), -1, []string{groupName(editGroup)}
	}
	return scaleVMID(joiner), joiner, groupsOf(joiner)
}

func (a *agentLab) add(what string, agent, none []time.Duration, note string) *agentRow {
	if a.probe && (strings.HasPrefix(what, "edit") || strings.HasPrefix(what, "agent start")) {
		note = strings.TrimPrefix(note+"; +1 tap listing the edited group", "; ")
	}
	a.r.rows = append(a.r.rows, agentRow{backend: a.backend, taps: a.n, what: what, agent: agent, none: none, note: note})
	progress("agent, %s, %d taps: %s: agent %v, no agent %v", a.backend, a.n, what, rounded(agent), rounded(none))
	return &a.r.rows[len(a.r.rows)-1]
}

// run measures the rows of one lab; the storm only at stormSize.
func (a *agentLab) run(storm bool) error {
	if a.probe {
		tap := tapName(a.probeVMID())
		if err := a.addLink(tap); err != nil {
			return err
		}
		if _, _, err := a.hv.timed(a.ctx, append(slices.Clone(a.env), "VMFW_NO_AGENT=1"), a.o.vmfw, "ifup", tap); err != nil {
			return err
		}
	}
	if err := a.checkScenario(); err != nil {
		return err
	}
	if err := a.floorNote(); err != nil {
		return err
	}

	progress("agent, %s, %d taps: without the agent: edits + apply, ifup, ifdown", a.backend, a.n)
	var editNone, vmNone, upNone, downNone []time.Duration
	groupChain := layout.GroupChain(groupName(editGroup), "in")
	id, _, _ := a.editedVM()
	vmChain := layout.TapChain(tapName(id), "in")
	if err := a.learn("group:0", groupChain); err != nil {
		return err
	}
	if err := a.learn("vm:false", vmChain); err != nil {
		return err
	}
	runs := a.runsFor(true)
	// At least two: the edits alternate between two variants, whose
	// fingerprints the agent rows wait for.
	for range max(runs, 2) {
		v, _, err := a.editGroup()
		if err != nil {
			return err
		}
		if err := a.sample(&editNone, "apply"); err != nil {
			return err
		}
		if err := a.learn(fmt.Sprintf("group:%d", v), groupChain); err != nil {
			return err
		}
	}
	for range runs {
		if _, err := a.editVM(); err != nil {
			return err
		}
		if err := a.sample(&vmNone, "apply"); err != nil {
			return err
		}
		if err := a.learn(fmt.Sprintf("vm:%v", a.joined), vmChain); err != nil {
			return err
		}
	}
	noAgent := append(slices.Clone(a.env), "VMFW_NO_AGENT=1")
	for i := range a.o.runs {
		tap := tapName(extraVMID(a.n, a.extraBase+i))
		if err := a.addLink(tap); err != nil {
			return err
		}
		d, _, err := a.hv.timed(a.ctx, noAgent, a.script("ifup"), tap)
		if err != nil {
			return err
		}
		upNone = append(upNone, d)
		if d, _, err = a.hv.timed(a.ctx, noAgent, a.script("ifdown"), tap); err != nil {
			return err
		}
		downNone = append(downNone, d)
		if err := a.delLink(tap); err != nil {
			return err
		}
	}

	progress("agent, %s, %d taps: agent start, %d group edits, VM edits, ifup, ifdown", a.backend, a.n, agentEdits)
	p, ready, err := a.startAgent(opTimeout)
	if err != nil {
		return err
	}
	defer p.stop()
	a.add("agent start, ruleset in place -> ready", []time.Duration{ready}, nil, "")

	var edit []time.Duration
	var loads, applies []time.Duration
	for range agentEdits {
		from := p.mark()
		v, start, err := a.editGroup()
		if err != nil {
			return err
		}
		port := fmt.Sprintf(",%d ", 8000+v)
		d, err := a.waitChain(start, groupChain, fmt.Sprintf("group:%d", v), func(s string) bool { return strings.Contains(s, port) })
		if err != nil {
			return fmt.Errorf("group edit: %w\nagent log:\n%s", err, p.tail(20))
		}
		edit = append(edit, d)
		// Wait until the agent is done (it cuts flows and reads the
		// generation after writing), so that the next edit finds it idle.
		to, _, err := p.wait("msg=applied", from, opTimeout)
		if err != nil {
			return fmt.Errorf("group edit: %w", err)
		}
		loads = append(loads, p.took(from, to, "configuration loaded")...)
		applies = append(applies, p.took(to, to+1, "msg=applied")...)
		time.Sleep(50 * time.Millisecond)
	}
	a.add("edit one group -> enforced", edit, editNone, "no agent: vmfw apply after the edit").percentiles = true
	if len(loads) > 0 && len(applies) > 0 {
		a.r.notes = append(a.r.notes, fmt.Sprintf("%s, %d taps: group edit through the agent, its own accounting (medians of %d): configuration reload %s, apply (engine.SyncGroups) %s; edit-to-enforced p50 %s",
			a.backend, a.n, len(applies), ms(median(loads)), ms(median(applies)), ms(percentile(edit, 50))))
	}

	var vmEdit []time.Duration
	for range runs {
		from := p.mark()
		start, err := a.editVM()
		if err != nil {
			return err
		}
		want := a.joined
		jump := string(layout.GroupChain(joinGroup, "in"))
		d, err := a.waitChain(start, vmChain, fmt.Sprintf("vm:%v", want), func(s string) bool { return strings.Contains(s, jump) == want })
		if err != nil {
			return fmt.Errorf("VM edit: %w\nagent log:\n%s", err, p.tail(20))
		}
		vmEdit = append(vmEdit, d)
		if _, _, err := p.wait("msg=applied", from, opTimeout); err != nil {
			return fmt.Errorf("VM edit: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.add("edit one VM's groups -> enforced (full apply)", vmEdit, vmNone, "no agent: vmfw apply after the edit").percentiles = true

	var up, down []time.Duration
	for i := range a.o.runs {
		tap := tapName(extraVMID(a.n, a.extraBase+i))
		if err := a.addLink(tap); err != nil {
			return err
		}
		from := p.mark()
		d, _, err := a.hv.timed(a.ctx, a.env, a.script("ifup"), tap)
		if err != nil {
			return err
		}
		up = append(up, d)
		if _, _, err := p.wait("up=["+tap+"]", from, 10*time.Second); err != nil {
			return fmt.Errorf("ifup did not go through the agent: %w", err)
		}
		from = p.mark()
		if d, _, err = a.hv.timed(a.ctx, a.env, a.script("ifdown"), tap); err != nil {
			return err
		}
		down = append(down, d)
		if _, _, err := p.wait("down=["+tap+"]", from, 10*time.Second); err != nil {
			return fmt.Errorf("ifdown did not go through the agent: %w", err)
		}
		if err := a.delLink(tap); err != nil {
			return err
		}
	}
	a.add("one ifup", up, upNone, "")
	a.add("one ifdown", down, downNone, "")

	if storm {
		if err := a.bootStorm(p, upNone); err != nil {
			return err
		}
	}
	p.stop()
	return a.fromEmpty()
}

// checkScenario checks that the rows' edits change what they are meant
// to: the group chain holds port 8000 before the first edit.
func (a *agentLab) checkScenario() error {
	chain := layout.GroupChain(groupName(editGroup), "in")
	if a.nftables() {
		out, err := a.hv.run(a.ctx, "nft", "list", "chain", "bridge", "vmfw", string(chain))
		if err != nil {
			return err
		}
		if !strings.Contains(string(out), ", 8000 ") && !strings.Contains(string(out), ", 8000}") {
			return fmt.Errorf("bridge %s does not hold port 8000 as groupFile(%d, 0) should:\n%s", chain, editGroup, out)
		}
		return nil
	}
	return a.hv.do(func() error {
		for _, f := range ruleset.Families {
			if s := a.chainText(f, chain); !strings.Contains(s, ",8000 ") {
				return fmt.Errorf("%s %s does not hold port 8000 as groupFile(%d, 0) should:\n%s", f, chain, editGroup, s)
			}
		}
		return nil
	})
}

// stage writes a file next to the configuration directory (whose parent
// the agent watches only for the directory itself) and renames it to rel
// inside it, as an editor or a configuration manager does. It returns
// the time of the rename.
func (a *agentLab) stage(rel, text string) (time.Time, error) {
	staged := filepath.Join(a.tmp, "staged.toml")
	if err := os.WriteFile(staged, []byte(text), 0o644); err != nil {
		return time.Time{}, err
	}
	start := time.Now()
	return start, os.Rename(staged, filepath.Join(a.dir, rel))
}

// editGroup rewrites the edited group with the other port and returns its
// variant and the time of the rename.
func (a *agentLab) editGroup() (int, time.Time, error) {
	v := 1 + a.groupEdits%2
	a.groupEdits++
	start, err := a.stage(filepath.Join("groups", groupName(editGroup)+".toml"), groupFile(editGroup, v))
	return v, start, err
}

// editVM adds joinGroup to the joiner's VM, or removes it again.
func (a *agentLab) editVM() (time.Time, error) {
	a.joined = !a.joined
	id, k, groups := a.editedVM()
	if a.joined {
		groups = append(groups, joinGroup)
	}
	return a.stage(fmt.Sprintf("vms/%d.toml", id), vmFile(id, k, groups))
}

// chainText returns "iptables -S chain" of family f, "" when the chain
// does not exist. It must run inside the lab's namespace (hv.do).
func (a *agentLab) chainText(f ruleset.Family, chain layout.Chain) string {
	args := []string{"-S", string(chain)}
	if a.backend == "legacy" {
		args = append([]string{"-w"}, args...)
	}
	out, err := runCmd(a.ctx, a.tool(f, ""), args...)
	if err != nil {
		return ""
	}
	return string(out)
}

// learn records the fingerprints of chain in both families as the state
// key (nf_tables only; on legacy the rows read the chains' text instead).
func (a *agentLab) learn(key string, chain layout.Chain) error {
	if a.nftables() {
		return a.learnNFT(key, chain)
	}
	if a.backend != "nft" {
		return nil
	}
	if a.fw == nil {
		var err error
		if a.fw, err = xtables.New(a.ctx, xtables.NFT, nil); err != nil {
			return err
		}
		a.fingerprints = map[string]map[ruleset.Family][]string{}
	}
	fp, err := a.readFingerprints(chain)
	if err != nil {
		return err
	}
	return recordState(a.fingerprints, key, chain, fp)
}

// recordState stores st, what chain reads in the state key, in states.
// It refuses a state that reads the same as another of the same kind:
// the edit between the two would change nothing for the rows to wait for.
func recordState[S any](states map[string]S, key string, chain layout.Chain, st S) error {
	for other, o := range states {
		if other != key && kind(other) == kind(key) && reflect.DeepEqual(o, st) {
			return fmt.Errorf("%s reads the same in states %s and %s: the edit changes nothing", chain, other, key)
		}
	}
	states[key] = st
	return nil
}

// kind is the edit a state key belongs to: "group" or "vm".
func kind(key string) string {
	k, _, _ := strings.Cut(key, ":")
	return k
}

// readFingerprints reads chain's rules' fingerprints in both families
// over netlink (xtables.Client.SaveChains), nil for a family without it.
func (a *agentLab) readFingerprints(chain layout.Chain) (map[ruleset.Family][]string, error) {
	fp := map[ruleset.Family][]string{}
	err := a.hv.do(func() error {
		for _, f := range ruleset.Families {
			snap, err := a.fw.SaveChains(a.ctx, f, []layout.Chain{chain})
			if err != nil {
				return err
			}
			fp[f] = snap.Chains[chain]
		}
		return nil
	})
	return fp, err
}

// waitChain waits until chain is in the state key in both families and
// returns the time from start until the kernel held it.
//
// On nf_tables it reads the ruleset generation over netlink every
// pollEvery (one request, no process), and when the generation moved the
// chain's fingerprints in both families (a few netlink requests, well
// under a millisecond whatever the table's size), comparing them with
// those learnt for the state. The time taken is that of the first read
// of the generation the chain was then found in that state, provided the
// generation had not moved again by the end of the check: it is late by
// at most one poll interval and a check.
//
// Legacy has neither a generation nor per-chain reads: "iptables -S"
// copies and parses the whole table, which at 1000 taps costs as much CPU
// as the agent's own work, so reading back to back would slow the agent
// down. Every write of the agent is an iptables-legacy-restore holding
// the xtables lock (XTABLES_LOCKFILE) from its start to its exit, and
// reads take no lock. So it tests the lock every pollEvery (flock
// LOCK_SH|LOCK_NB, released at once) and reads the chain (text accepts
// it or not) only when the lock was seen free after being held, and
// every half second in case a hold fell between two tests. The time is
// that of the first test that found the lock free after the write: late
// by at most one poll interval (or the half second, for a missed hold).
func (a *agentLab) waitChain(start time.Time, chain layout.Chain, key string, text func(string) bool) (time.Duration, error) {
	if a.nftables() {
		return a.waitNFT(start, chain, key)
	}
	var took time.Duration
	want, nft := a.fingerprints[key], a.backend == "nft"
	if nft && want == nil {
		return 0, fmt.Errorf("no fingerprints learnt for %s in state %s", chain, key)
	}
	if !nft {
		return a.waitChainLegacy(start, chain, key, text)
	}
	err := a.hv.do(func() error {
		var err error
		took, err = waitGeneration(start, chain, key, func() (uint32, error) { return xtables.Generation(a.ctx) }, func() (bool, error) {
			for _, f := range ruleset.Families {
				snap, err := a.fw.SaveChains(a.ctx, f, []layout.Chain{chain})
				if err != nil {
					return false, err
				}
				if !slices.Equal(snap.Chains[chain], want[f]) {
					return false, nil
				}
			}
			return true, nil
		})
		return err
	})
	return took, err
}

// waitGeneration is the poll of waitChain on nf_tables, run inside the
// lab's namespace: it reads the generation (gen) every pollEvery and, when
// it moved, tests whether chain is in the state key (reached). It returns
// the time from start to the first read of the generation the state was
// then found in, provided the generation had not moved again by the end of
// the test.
func waitGeneration(start time.Time, chain layout.Chain, key string, gen func() (uint32, error), reached func() (bool, error)) (time.Duration, error) {
	deadline := start.Add(opTimeout)
	var last uint32
	have := false
	for {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s did not reach state %s within %s", chain, key, opTimeout)
		}
		g, err := gen()
		if err != nil {
			return 0, err
		}
		if have && g == last {
			time.Sleep(pollEvery)
			continue
		}
		seen := time.Now()
		ok, err := reached()
		if err != nil {
			return 0, err
		}
		if ok {
			now, err := gen()
			if err != nil {
				return 0, err
			}
			if now == g {
				return seen.Sub(start), nil
			}
			// It moved while the state was read: look again.
		}
		last, have = g, true
	}
}

// waitChainLegacy is waitChain on legacy (see there).
func (a *agentLab) waitChainLegacy(start time.Time, chain layout.Chain, key string, text func(string) bool) (time.Duration, error) {
	lock, err := unix.Open(os.Getenv("XTABLES_LOCKFILE"), unix.O_RDONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("opening the xtables lock: %w", err)
	}
	defer unix.Close(lock)
	free := func() bool {
		if unix.Flock(lock, unix.LOCK_SH|unix.LOCK_NB) != nil {
			return false
		}
		unix.Flock(lock, unix.LOCK_UN)
		return true
	}
	var took time.Duration
	err = a.hv.do(func() error {
		deadline := start.Add(opTimeout)
		held := false
		var checked time.Time
		for {
			now := time.Now()
			if now.After(deadline) {
				return fmt.Errorf("%s did not reach state %s within %s", chain, key, opTimeout)
			}
			if !free() {
				held = true
				time.Sleep(pollEvery)
				continue
			}
			if held || checked.IsZero() || now.Sub(checked) >= 500*time.Millisecond {
				held, checked = false, now
				ok := true
				for _, f := range ruleset.Families {
					if !text(a.chainText(f, chain)) {
						ok = false
						break
					}
				}
				if ok {
					took = now.Sub(start)
					return nil
				}
			}
			time.Sleep(pollEvery)
		}
	})
	return took, err
}

// bootStorm measures stormTaps concurrent ifups with the agent p running
// and then without it (p stopped), on fresh veth taps: two of them are the
// data-plane VMs in namespaces of their own, the others' peers sit in a
// sink namespace. It checks every tap's state after each and the VMs'
// traffic after the agent's.
func (a *agentLab) bootStorm(p *agentProc, upNone []time.Duration) error {
	progress("agent, %s, %d taps: boot storm of %d concurrent ifups", a.backend, a.n, stormTaps)
	ctx := a.ctx
	sink, err := newNetns(ctx, "sink")
	if err != nil {
		return err
	}
	defer sink.remove()
	var taps []string
	var batch bytes.Buffer
	for k := range stormTaps - len(dataVMs) {
		tap := tapName(extraVMID(a.n, k))
		taps = append(taps, tap)
		fmt.Fprintf(&batch, "link add %s type veth peer name s%d netns %s\n", tap, k, sink.Name)
	}
	if _, err := a.hv.runIn(ctx, batch.Bytes(), "ip", "-batch", "-"); err != nil {
		return err
	}
	vms, removeVMs, err := addDataVMs(ctx, a.hv)
	if err != nil {
		return err
	}
	defer removeVMs()
	for _, v := range dataVMs {
		taps = append(taps, tapName(v.vmid))
	}

	// With the agent, where every call must succeed: agentStorm returns
	// the storm's times and the number of batches the agent took for it.
	agentStorm := func(op string) (wall, launch time.Duration, batches int, err error) {
		from := p.mark()
		wall, launch, failed, err := a.storm(op, taps, a.env)
		if err != nil {
			return 0, 0, 0, err
		}
		if len(failed) > 0 {
			return 0, 0, 0, fmt.Errorf("%d of %d %ss through the agent failed, e.g. %s", len(failed), len(taps), op, failed[0])
		}
		return wall, launch, p.count("msg=\"interfaces changed\"", from), nil
	}
	wall, launch, batches, err := agentStorm("ifup")
	if err != nil {
		return err
	}
	ok, bad, err := a.firewalled(taps)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("after the storm through the agent %d of %d taps are not in sync, e.g. %s", len(bad), len(taps), bad[0])
	}
	if err := a.checkVMs(vms); err != nil {
		return fmt.Errorf("after the storm through the agent: %w", err)
	}
	downWall, _, downBatches, err := agentStorm("ifdown")
	if err != nil {
		return err
	}
	p.stop()

	// Without: the agent is stopped, and the callers are told not to look.
	progress("agent, %s, %d taps: boot storm without the agent", a.backend, a.n)
	noneWall, _, noneFailed, err := a.storm("ifup", taps, append(slices.Clone(a.env), "VMFW_NO_AGENT=1"))
	if err != nil {
		return err
	}
	noneOK, _, err := a.firewalled(taps)
	if err != nil {
		return err
	}

	note := fmt.Sprintf("agent: %d batches", batches)
	detail := fmt.Sprintf("%s, %d taps: boot storm: %d vmfw-ifup processes (as QEMU runs them) started at once (launching them took %s) on veth taps, %s and %s VMs in namespaces of their own. With the agent: %d batches, then vmfw status: all %d in sync; ping both ways and UDP to an allowed port pass between the VMs, UDP to a port their policy drops does not. Without: ",
		a.backend, a.n, len(taps), ms(launch), tapName(dataVMs[0].vmid), tapName(dataVMs[1].vmid), batches, ok)
	if len(noneFailed) > 0 {
		note += fmt.Sprintf("; no agent: %d failed", len(noneFailed))
		detail += fmt.Sprintf("%d of %d failed (e.g. %s), then %d in sync", len(noneFailed), len(taps), firstLine(noneFailed[0]), noneOK)
	} else {
		detail += fmt.Sprintf("none failed, then %d in sync", noneOK)
	}
	if len(upNone) > 0 {
		detail += fmt.Sprintf(". For scale: %d ifups one after the other without the agent, at this lab's median for one (%s), would take %s",
			len(taps), ms(median(upNone)), ms(time.Duration(len(taps))*median(upNone)))
	}
	row := a.add(fmt.Sprintf("boot storm: %d concurrent ifups", len(taps)), []time.Duration{wall}, []time.Duration{noneWall}, note)
	row.noneFailed = len(noneFailed) > 0
	row.launch = launch
	a.add(fmt.Sprintf("%d concurrent ifdowns", len(taps)), []time.Duration{downWall}, nil, fmt.Sprintf("%d batches", downBatches))
	a.r.notes = append(a.r.notes, detail)
	return nil
}

// storm starts one vmfw process per tap at once, as QEMU does when a host
// starts its VMs, and returns the time from the first start to the last
// exit and the errors of those that failed.
func (a *agentLab) storm(op string, taps []string, env []string) (wall, launch time.Duration, failed []string, err error) {
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Minute)
	defer cancel()
	cmds := make([]*exec.Cmd, len(taps))
	outs := make([]*bytes.Buffer, len(taps))
	var start time.Time
	err = a.hv.do(func() error {
		start = time.Now()
		defer func() { launch = time.Since(start) }()
		for i, tap := range taps {
			cmd := exec.CommandContext(ctx, a.script(op), tap)
			cmd.Env = env
			outs[i] = &bytes.Buffer{}
			cmd.Stdout, cmd.Stderr = outs[i], outs[i]
			if err := cmd.Start(); err != nil {
				return err
			}
			cmds[i] = cmd
		}
		return nil
	})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var end time.Time
	for i, cmd := range cmds {
		if cmd == nil {
			continue
		}
		wg.Go(func() {
			werr := cmd.Wait()
			mu.Lock()
			defer mu.Unlock()
			if now := time.Now(); now.After(end) {
				end = now
			}
			if werr != nil {
				failed = append(failed, fmt.Sprintf("%s %s: %v: %s", op, taps[i], werr, strings.TrimSpace(outs[i].String())))
			}
		})
	}
	if err != nil {
		cancel() // kills those started
	}
	wg.Wait()
	if err != nil {
		return 0, 0, nil, err
	}
	slices.Sort(failed)
	return end.Sub(start), launch, failed, nil
}

// script returns the program QEMU runs for op ("ifup" or "ifdown") with the
// tap name as its only argument: vmfw-ifup or vmfw-ifdown beside the vmfw
// measured (docs/agent.md, "vmfw-ifup"), which the ifup, ifdown and storm
// rows run as QEMU does.
func (a *agentLab) script(op string) string {
	return filepath.Join(filepath.Dir(a.o.vmfw), "vmfw-"+op)
}

// firewalled asks vmfw status which of taps are in sync; it returns how
// many are and what the others are.
func (a *agentLab) firewalled(taps []string) (int, []string, error) {
	_, out, err := a.vmfw("status", "-o", "json")
	var st struct {
		Taps []struct {
			Tap   string `json:"tap"`
			State string `json:"state"`
		} `json:"taps"`
	}
	if jerr := json.Unmarshal(out, &st); jerr != nil {
		return 0, nil, errors.Join(err, jerr)
	}
	state := map[string]string{}
	for _, t := range st.Taps {
		state[t.Tap] = t.State
	}
	ok := 0
	var bad []string
	for _, tap := range taps {
		if state[tap] == "in-sync" {
			ok++
		} else {
			bad = append(bad, tap+": "+cmp(state[tap], "not reported"))
		}
	}
	return ok, bad, nil
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// checkVMs sends real packets between the two data VMs: ping both ways
// and UDP to a port their group allows pass, UDP to a port their policy
// drops does not.
func (a *agentLab) checkVMs(vms []*netns) error {
	for i, j := range []int{1, 0} {
		if _, err := vms[i].run(a.ctx, "ping", "-c", "2", "-i", "0.2", "-W", "2", dataVMs[j].ip); err != nil {
			return fmt.Errorf("VM %d cannot ping VM %d: %w", i+1, j+1, err)
		}
	}
	for _, c := range []struct {
		port int
		pass bool
	}{{5000, true}, {700, false}} {
		got, err := udpReaches(vms[0], vms[1], dataVMs[1].ip, c.port)
		if err != nil {
			return err
		}
		if got != c.pass {
			return fmt.Errorf("UDP from VM 1 to VM 2 port %d: got through %v, want %v", c.port, got, c.pass)
		}
	}
	return nil
}

// udpReaches sends a few datagrams from namespace from to dst:port, an
// address of namespace to, and reports whether any arrived.
func udpReaches(from, to *netns, dst string, port int) (bool, error) {
	socket := func(ns *netns, bind bool) (int, error) {
		var fd int
		err := ns.do(func() error {
			var err error
			if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
				return err
			}
			if bind {
				if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
					unix.Close(fd)
					return err
				}
				tv := unix.Timeval{Usec: 300_000}
				if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
					unix.Close(fd)
					return err
				}
			}
			return nil
		})
		return fd, err
	}
	rfd, err := socket(to, true)
	if err != nil {
		return false, err
	}
	defer unix.Close(rfd)
	sfd, err := socket(from, false)
	if err != nil {
		return false, err
	}
	defer unix.Close(sfd)
	addr, err := netip.ParseAddr(dst)
	if err != nil {
		return false, err
	}
	buf := make([]byte, 64)
	for range 3 {
		if err := unix.Sendto(sfd, []byte("vmfw-bench"), 0, &unix.SockaddrInet4{Port: port, Addr: addr.As4()}); err != nil {
			return false, err
		}
		if n, _, err := unix.Recvfrom(rfd, buf, 0); err == nil && n > 0 {
			return true, nil
		}
	}
	return false, nil
}

// fromEmpty measures the start of an agent on the lab's taps with an empty
// ruleset (vmfw flush, as after a reboot), and vmfw apply doing the same
// without it where that takes less than minutes.
func (a *agentLab) fromEmpty() error {
	var none []time.Duration
	note := ""
	if a.n <= a.o.fullApplyMax {
		progress("agent, %s, %d taps: vmfw apply from empty", a.backend, a.n)
		d, err := a.applyFromEmpty()
		if err != nil {
			return err
		}
		none = append(none, d)
	} else {
		note = fmt.Sprintf("no agent: vmfw apply, skipped above %d taps without --slow", a.o.fullApplyMax)
	}
	progress("agent, %s, %d taps: agent start on an empty ruleset", a.backend, a.n)
	if _, _, err := a.vmfw("flush"); err != nil {
		return err
	}
	p, ready, err := a.startAgent(a.o.fullApplyTimeout)
	if err != nil {
		if errors.Is(err, errNotReady) {
			a.add("agent start, empty ruleset -> ready", nil, none, fmt.Sprintf("not ready after %s", a.o.fullApplyTimeout))
			return nil
		}
		return err
	}
	defer p.stop()
	a.add("agent start, empty ruleset -> ready", []time.Duration{ready}, none, note)
	return a.expectNoChanges("after the agent started on an empty ruleset")
}

// agentProc is a running vmfw agent and what it logged.
type agentProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when its output ends
	exit chan error

	mu     sync.Mutex
	lines  []string
	stamps []time.Time
	log    *os.File
	once   sync.Once
}

var errNotReady = errors.New("the agent did not get ready")

// startAgent starts vmfw agent in the lab and waits up to timeout for its
// "agent ready"; it returns the time from its start. An agent that fails
// to become ready is stopped before the error is returned.
func (a *agentLab) startAgent(timeout time.Duration) (*agentProc, time.Duration, error) {
	env := a.env
	if os.Getenv("VMFW_TRACE") != "" {
		env = append(slices.Clone(env), "VMFW_TRACE=1")
	}
	logFile, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, err
	}
	fmt.Fprintf(logFile, "=== vmfw-bench: agent started %s\n", time.Now().Format(time.RFC3339Nano))
	pr, pw, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return nil, 0, err
	}
	p := &agentProc{done: make(chan struct{}), exit: make(chan error, 1), log: logFile}
	// Not CommandContext: stop ends it with SIGTERM, as systemd would.
	p.cmd = exec.Command(a.o.vmfw, "agent")
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	var start time.Time
	err = a.hv.do(func() error {
		start = time.Now()
		return p.cmd.Start()
	})
	pw.Close()
	if err != nil {
		pr.Close()
		logFile.Close()
		return nil, 0, err
	}
	go func() { p.exit <- p.cmd.Wait() }()
	go p.read(pr)
	_, at, err := p.wait("agent ready", 0, timeout)
	if err != nil {
		// An agent that did not become ready is stopped here, so that no
		// caller leaves it running into the next row.
		p.stop()
		return nil, 0, err
	}
	return p, at.Sub(start), nil
}

func (p *agentProc) read(r io.ReadCloser) {
	defer close(p.done)
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		now := time.Now()
		line := sc.Text()
		p.mu.Lock()
		p.lines = append(p.lines, line)
		p.stamps = append(p.stamps, now)
		fmt.Fprintln(p.log, line)
		p.mu.Unlock()
	}
}

// mark returns the number of lines logged so far.
func (p *agentProc) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// wait waits for a line containing s from line from on, and returns its
// index and the time it arrived.
func (p *agentProc) wait(s string, from int, timeout time.Duration) (int, time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		p.mu.Lock()
		for i := from; i < len(p.lines); i++ {
			if strings.Contains(p.lines[i], s) {
				at := p.stamps[i]
				p.mu.Unlock()
				return i, at, nil
			}
		}
		from = len(p.lines)
		p.mu.Unlock()
		select {
		case <-p.done:
			if p.mark() == from {
				return 0, time.Time{}, fmt.Errorf("%w: it exited before logging %q:\n%s", errNotReady, s, p.tail(20))
			}
			continue
		default:
		}
		if time.Now().After(deadline) {
			return 0, time.Time{}, fmt.Errorf("%w: no %q within %s:\n%s", errNotReady, s, timeout, p.tail(20))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// count counts the lines from line from on that contain s.
func (p *agentProc) count(s string, from int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.lines[from:] {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

var tookAttr = regexp.MustCompile(` took=([0-9.]+[µa-z]+)`)

// took returns the took= of the lines from..to (inclusive) containing s.
func (p *agentProc) took(from, to int, s string) []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []time.Duration
	for i := from; i <= to && i < len(p.lines); i++ {
		if !strings.Contains(p.lines[i], s) {
			continue
		}
		if m := tookAttr.FindStringSubmatch(p.lines[i]); m != nil {
			if d, err := time.ParseDuration(m[1]); err == nil {
				out = append(out, d)
			}
		}
	}
	return out
}

// tail returns the last n lines logged.
func (p *agentProc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines[max(0, len(p.lines)-n):], "\n")
}

// stop ends the agent with SIGTERM (SIGKILL after 30 s); a second call
// does nothing.
func (p *agentProc) stop() {
	p.once.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exit:
		case <-time.After(30 * time.Second):
			p.cmd.Process.Kill()
			<-p.exit
		}
		<-p.done
		p.log.Close()
	})
}

// rounded rounds samples for the progress output.
func rounded(xs []time.Duration) []time.Duration {
	out := make([]time.Duration, len(xs))
	for i, x := range xs {
		out[i] = x.Round(100 * time.Microsecond)
	}
	return out
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}

// percentile returns the nearest-rank percentile q of xs: of 20 samples,
// p50 is the 10th and p99 the 20th (the largest).
func percentile(xs []time.Duration, q int) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := (q*len(s) + 99) / 100
	return s[max(rank, 1)-1]
}

// evaluate sets each row's target and whether the run met it: the targets
// of issue 10, each at the tap count it names.
func (r *agentResults) evaluate() {
	find := func(backend, what string, taps int) *agentRow {
		for i := range r.rows {
			if x := &r.rows[i]; x.backend == backend && x.taps == taps && x.what == what {
				return x
			}
		}
		return nil
	}
	floor := func(backend string, taps int) (time.Duration, bool) {
		for _, f := range r.floor {
			if f.backend == backend && f.taps == taps {
				return f.v4 + f.v6, true
			}
		}
		return 0, false
	}
	for i := range r.rows {
		x := &r.rows[i]
		if x.backend == nftablesBackend {
			evaluateNFT(x, find)
			continue
		}
		switch {
		case x.what == "edit one group -> enforced" && x.taps == 1000 && len(x.agent) > 0:
			x.target, x.met = "p99 <= 100 ms", yesNo(percentile(x.agent, 99) <= 100*time.Millisecond)
			if fl, ok := floor(x.backend, x.taps); ok {
				x.target += fmt.Sprintf(" (kernel floor %s)", ms(fl))
			}
		case strings.HasPrefix(x.what, "boot storm") && len(x.agent) > 0 && len(x.none) > 0:
			x.target, x.met = ">= 10x", yesNo(float64(median(x.none)) >= 10*float64(median(x.agent)))
		case x.what == "one ifup" && x.taps == 5000 && len(x.agent) > 0:
			zero := find(x.backend, x.what, 0)
			if zero == nil || len(zero.agent) == 0 {
				continue
			}
			f := float64(median(x.agent)) / float64(median(zero.agent))
			x.target, x.met = fmt.Sprintf("<= 3x 0 taps (%.1fx)", f), yesNo(f <= 3)
			if fl, ok := floor(x.backend, x.taps); ok {
				x.target = fmt.Sprintf("<= 3x 0 taps (%.1fx; kernel floor alone %.1fx)", f, float64(fl)/float64(median(zero.agent)))
			}
		case x.what == "agent start, empty ruleset -> ready" && x.taps == 5000:
			x.target, x.met = "<= 2 s", yesNo(len(x.agent) > 0 && median(x.agent) <= 2*time.Second)
		}
	}
}

// evaluateNFT sets the nftables backend's targets (issue 20): each at
// the tap count it names.
func evaluateNFT(x *agentRow, find func(backend, what string, taps int) *agentRow) {
	switch {
	case x.what == "edit one group -> enforced" && (x.taps == 1000 || x.taps == 5000) && len(x.agent) > 0:
		limit := 30 * time.Millisecond
		if x.taps == 5000 {
			limit = 50 * time.Millisecond
		}
		x.target, x.met = "p99 <= "+ms(limit), yesNo(percentile(x.agent, 99) <= limit)
	case x.what == "one ifup" && x.taps == 5000 && len(x.agent) > 0:
		zero := find(x.backend, x.what, 0)
		if zero == nil || len(zero.agent) == 0 || len(zero.none) == 0 || len(x.none) == 0 {
			return
		}
		f := float64(median(x.agent)) / float64(median(zero.agent))
		fn := float64(median(x.none)) / float64(median(zero.none))
		x.target = fmt.Sprintf("<= 30 ms, <= 1.3x 0 taps (%.2fx); no agent <= 2x (%.2fx)", f, fn)
		x.met = yesNo(median(x.agent) <= 30*time.Millisecond && f <= 1.3 && fn <= 2)
	case strings.HasPrefix(x.what, "agent start") && x.taps == 5000 && len(x.agent) > 0:
		x.target, x.met = "<= 1 s", yesNo(median(x.agent) <= time.Second)
	case strings.HasPrefix(x.what, "boot storm") && len(x.agent) > 0 && x.launch > 0:
		x.target = fmt.Sprintf("<= launch + 1 s (%s)", ms(x.launch+time.Second))
		x.met = yesNo(median(x.agent) <= x.launch+time.Second)
	}
}

// print prints the agent table.
func (r *agentResults) print(w io.Writer, took time.Duration) {
	fmt.Fprintln(w, "vmfw-bench, agent: vmfw agent running in the lab (its own VMFW_RUN_DIR) against the same operation without it;")
	fmt.Fprintln(w, "edits: from the rename of the file into the configuration directory to both families' chain holding the new rule")
	fmt.Fprintln(w, "(nft: generation polled every 1 ms over netlink, the chain's fingerprints read over netlink when it moved; legacy:")
	fmt.Fprintln(w, "xtables lock tested every 1 ms, iptables -S when a write released it), p50/p99 with the agent, without it the wall")
	fmt.Fprintln(w, "time of vmfw apply run right after the edit;")
	fmt.Fprintln(w, "other rows: wall clock of the vmfw processes (storm: first start to last exit; agent start: to its \"agent ready\"), medians")
	tw := newTable(w, "backend\ttaps\toperation\tagent\tno agent\tno agent/agent\ttarget\tmet\truns\t")
	for _, x := range r.rows {
		ag, ratio := medianCell(x.agent), "-"
		if x.percentiles && len(x.agent) > 0 {
			ag = "p50 " + ms(percentile(x.agent, 50)) + ", p99 " + ms(percentile(x.agent, 99))
		}
		if len(x.none) > 0 && len(x.agent) > 0 {
			ref := median(x.agent)
			if x.percentiles {
				ref = percentile(x.agent, 50)
			}
			ratio = fmt.Sprintf("%.1fx", float64(median(x.none))/float64(ref))
			if x.noneFailed {
				ratio = ">= " + ratio
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n", x.backend, x.taps, withNote(x.what, x.note), ag, medianCell(x.none), ratio, cmp(x.target, "-"), cmp(x.met, "-"), len(x.agent))
	}
	tw.Flush()
	for _, n := range r.notes {
		fmt.Fprintln(w, strings.TrimSpace(n))
	}
	fmt.Fprintf(w, "total agent bench time %s\n", took.Round(time.Second))
}
