package main

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
)

// options configure one backend's run.
type options struct {
	vmfw, backend string
	trials, taps  int
	seed          int64
}

// harness runs vmfw in one lab.
type harness struct {
	o   options
	lab *labnet.Lab
	hv  *labnet.NS
	// tmp holds config, runDir and stateDir.
	tmp                      string
	config, runDir, stateDir string
}

// newHarness creates a lab with the scenario's interfaces, which vmfw has
// not run in yet, and the harness's directories in a new temporary
// directory named after prefix. The caller closes it.
func newHarness(ctx context.Context, o options, prefix string) (*harness, error) {
	lab, err := labnet.New(labnet.Options{})
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", prefix)
	if err != nil {
		lab.Close()
		return nil, err
	}
	h := &harness{o: o, lab: lab, hv: lab.Hypervisor(), tmp: tmp, config: filepath.Join(tmp, "config"),
		runDir: filepath.Join(tmp, "run"), stateDir: filepath.Join(tmp, "state")}
	for _, d := range []string{h.config, h.runDir, h.stateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			h.close()
			return nil, err
		}
	}
	if err := h.addInterfaces(ctx); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

// close removes the harness's directories and its lab.
func (h *harness) close() {
	os.RemoveAll(h.tmp)
	h.lab.Close()
}

// command returns vmfw with args, run in the hypervisor namespace in a
// process group of its own, so that the children it leaves behind when
// killed can be waited for.
func (h *harness) command(ctx context.Context, args ...string) *exec.Cmd {
	choose := []string{"--iptables", h.o.backend}
	if h.o.backend == nftablesBackend {
		choose = []string{"--backend", nftablesBackend}
	}
	full := append(append(append([]string{"netns", "exec", h.hv.Name, h.o.vmfw}, choose...),
		"--config-dir", h.config, "--state-dir", h.stateDir), args...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	cmd.Env = append(os.Environ(), "VMFW_RUN_DIR="+h.runDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// vmfw runs vmfw to the end and returns its output.
func (h *harness) vmfw(ctx context.Context, args ...string) (string, error) {
	out, err := h.command(ctx, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("vmfw %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// configure writes configuration A or B.
func (h *harness) configure(b bool) error { return writeConfig(h.config, h.o.taps, b) }

// dryRun writes configuration b and returns what "vmfw apply --dry-run"
// says the apply would do.
func (h *harness) dryRun(ctx context.Context, b bool) (string, error) {
	if err := h.configure(b); err != nil {
		return "", err
	}
	return h.vmfw(ctx, "apply", "--dry-run")
}

// applyTo writes configuration b and applies it, returning how long the
// apply took and the state it left.
func (h *harness) applyTo(ctx context.Context, b bool) (time.Duration, *snapshot, error) {
	if err := h.configure(b); err != nil {
		return 0, nil, err
	}
	start := time.Now()
	if _, err := h.vmfw(ctx, "apply"); err != nil {
		return 0, nil, err
	}
	d := time.Since(start)
	s, err := read(ctx, h.hv, h.o.backend)
	return d, s, err
}

// change makes the change from the state from to configuration to: it
// asks for the dry run, applies, and returns the change as a direction
// (at the state the apply left) with how long the apply took.
func (h *harness) change(ctx context.Context, name string, to bool, from *snapshot) (*direction, time.Duration, error) {
	dry, err := h.dryRun(ctx, to)
	if err != nil {
		return nil, 0, err
	}
	took, at, err := h.applyTo(ctx, to)
	if err != nil {
		return nil, 0, err
	}
	return &direction{name: name, to: to, from: from, at: at, plan: parsePlan(dry)}, took, nil
}

// direction is one of the two changes the trials interrupt.
type direction struct {
	name     string
	to       bool // configuration B
	from, at *snapshot
	plan     plan
	stages   []string
}

// planStages sets d.stages, the states of the ipsets d's plan passes
// through, and checks that they end in the sets of d.at.
func (d *direction) planStages() error {
	var err error
	if d.stages, err = setStages(d.from.sets, d.plan); err != nil {
		return err
	}
	if d.stages[len(d.stages)-1] != d.at.sets.String() {
		return fmt.Errorf("%s: the dry run's ipset scripts do not lead to the applied sets", d.name)
	}
	return nil
}

func runBackend(ctx context.Context, o options) (*result, error) {
	h, err := newHarness(ctx, o, "vmfw-crashtest")
	if err != nil {
		return nil, err
	}
	defer h.close()

	// The two states, and the proof that the canonical form does not
	// depend on the way a state was reached.
	tA, snapA, err := h.applyTo(ctx, false)
	if err != nil {
		return nil, err
	}
	ab, tAB, err := h.change(ctx, "A→B", true, snapA)
	if err != nil {
		return nil, err
	}
	ba, tBA, err := h.change(ctx, "B→A", false, ab.at)
	if err != nil {
		return nil, err
	}
	if diff := compare(snapA, ba.at); diff != "" {
		return nil, fmt.Errorf("state A differs after A→B→A (%s): the comparison would be meaningless", diff)
	}
	for _, p := range snapA.parts {
		if snapA.part(p) == ab.at.part(p) && !strings.HasPrefix(p, "iptables-hooks") {
			return nil, fmt.Errorf("the scenario does not change %s", p)
		}
	}
	for _, d := range []*direction{ab, ba} {
		if err := d.planStages(); err != nil {
			return nil, err
		}
	}

	r := &result{backend: o.backend, taps: o.taps, applyTime: (tAB + tBA) / 2, outcomes: map[string]int{}}
	rng := rand.New(rand.NewSource(o.seed))
	recent := &durations{}
	recent.add(tAB)
	recent.add(tBA)
	// Applies from nothing, timed apart: they install everything.
	recentFresh := &durations{}
	recentFresh.add(tA)
	cur := ba // the host is in state A: the next change is A→B
	for i := range o.trials {
		if ctx.Err() != nil {
			return r, ctx.Err()
		}
		if i%freshEvery == 0 {
			// A host's first apply is a path of its own (nothing to read,
			// every table and set created), which a kernel vmfw has
			// already written to never takes.
			delay := recentFresh.killDelay(rng)
			outcome, violation, full, err := freshTrial(ctx, o, snapA, delay)
			if err != nil {
				return r, fmt.Errorf("trial %d (from an empty kernel): %w", i+1, err)
			}
			r.count(outcome, delay, full, recentFresh)
			r.fresh++
			// Each such trial has a lab of its own: nothing it left
			// carries over to the next trial.
			if violation != "" {
				r.violations = append(r.violations, fmt.Sprintf("trial %d (∅→A, from an empty kernel, killed after %v): %s", i+1, delay.Round(time.Millisecond), violation))
			} else {
				r.converged++
			}
			continue
		}
		d := ab
		if cur == ab {
			d = ba
		}
		delay := recent.killDelay(rng)
		outcome, violation, full, err := h.trial(ctx, d, delay)
		if err != nil {
			return r, fmt.Errorf("trial %d: %w", i+1, err)
		}
		outcome = r.count(outcome, delay, full, recent)
		if violation != "" {
			r.violations = append(r.violations, fmt.Sprintf("trial %d (%s, killed after %v): %s", i+1, d.name, delay.Round(time.Millisecond), violation))
		}
		// The next apply converges to exactly the new state.
		start := time.Now()
		if _, err := h.vmfw(ctx, "apply"); err != nil {
			r.violations = append(r.violations, fmt.Sprintf("trial %d: apply after the kill failed: %v", i+1, err))
			return r, nil
		}
		after, err := read(ctx, h.hv, o.backend)
		if err != nil {
			return r, err
		}
		if diff := compare(after, d.at); diff != "" {
			r.violations = append(r.violations, fmt.Sprintf("trial %d (%s, killed after %v, %s): the apply after the kill left %s different from a clean apply:\n%s",
				i+1, d.name, delay.Round(time.Millisecond), outcome, diff, explain(after, d.at)))
			return r, nil
		}
		r.converged++
		cur = d
		// A converging apply after a kill late in the change has little
		// left to do; only one after a kill before any change is a full
		// apply.
		if outcome == "killed before any change" {
			recent.add(time.Since(start))
		}
		if (i+1)%10 == 0 {
			fmt.Fprintf(os.Stderr, "vmfw-crashtest: %s: %d of %d trials\n", o.backend, i+1, o.trials)
		}
	}
	return r, nil
}

// freshEvery is how often a trial starts from a kernel vmfw never touched:
// the first trial and every freshEvery-th after it.
const freshEvery = 10

// freshTrial kills the first apply of configuration A on a fresh lab (a
// hypervisor namespace vmfw never ran in, with the scenario's interfaces)
// after delay, judges the state it left against that empty kernel and
// snapA, the state a clean apply of A left in the main lab, and checks
// that the next apply converges to snapA. It returns what trial does.
func freshTrial(ctx context.Context, o options, snapA *snapshot, delay time.Duration) (label, violation string, full time.Duration, err error) {
	h, err := newHarness(ctx, o, "vmfw-crashtest-fresh")
	if err != nil {
		return "", "", 0, err
	}
	defer h.close()
	empty, err := read(ctx, h.hv, o.backend)
	if err != nil {
		return "", "", 0, err
	}
	dry, err := h.dryRun(ctx, false)
	if err != nil {
		return "", "", 0, err
	}
	d := &direction{name: "∅→A", to: false, from: empty, at: snapA, plan: parsePlan(dry)}
	if err := d.planStages(); err != nil {
		return "", "", 0, err
	}
	label, violation, full, err = h.trial(ctx, d, delay)
	if err != nil || violation != "" {
		return label, violation, full, err
	}
	if _, err := h.vmfw(ctx, "apply"); err != nil {
		return label, fmt.Sprintf("apply after the kill failed: %v", err), full, nil
	}
	after, err := read(ctx, h.hv, o.backend)
	if err != nil {
		return "", "", 0, err
	}
	if diff := compare(after, snapA); diff != "" {
		return label, fmt.Sprintf("the apply after the kill (%s) left %s different from a clean apply:\n%s", label, diff, explain(after, snapA)), full, nil
	}
	return label, "", full, nil
}

// addInterfaces creates the scenario's interfaces with one ip -batch.
func (h *harness) addInterfaces(ctx context.Context) error {
	f, err := os.CreateTemp("", "vmfw-crashtest-links")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	for i := range h.o.taps {
		fmt.Fprintf(f, "link add %s type ifb\n", tapName(i))
	}
	if err := f.Close(); err != nil {
		return err
	}
	_, err = h.hv.Exec(ctx, "ip", "-batch", f.Name())
	return err
}

// trial writes d's target configuration, starts "vmfw apply", kills it
// with SIGKILL after delay, waits for what it left running, and judges
// the state. It returns the outcome's label, a violation if any, and the
// apply's duration if it finished before the kill (0 otherwise).
func (h *harness) trial(ctx context.Context, d *direction, delay time.Duration) (label, violation string, full time.Duration, err error) {
	if err := h.configure(d.to); err != nil {
		return "", "", 0, err
	}
	cmd := h.command(ctx, "apply")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return "", "", 0, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	select {
	case <-exited:
		// It finished first: a sample of how long an apply takes now.
		full = time.Since(start)
	case <-time.After(delay):
		// "ip netns exec" has become vmfw by now, or is about to: same pid.
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
	if err := waitGroupGone(cmd.Process.Pid); err != nil {
		return "", "", 0, err
	}
	s, err := read(ctx, h.hv, h.o.backend)
	if err != nil {
		return "", "", 0, err
	}
	label, violation = judge(d, s)
	return label, violation, full, nil
}

// waitGroupGone waits until no process of process group pgid is left: the
// iptables-restore or ipset a killed vmfw started finishes on its own
// (with the input it got), and the state is judged after it did.
func waitGroupGone(pgid int) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if !groupAlive(pgid) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("processes of the killed vmfw (group %d) still run after 2 minutes", pgid)
}

func groupAlive(pgid int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses and
		// may contain spaces: state, ppid, pgrp.
		s := string(stat)
		rest := s[strings.LastIndexByte(s, ')')+1:]
		f := strings.Fields(rest)
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) && pid != os.Getpid() && f[0] != "Z" {
			return true
		}
	}
	return false
}

// unstagedPart reports whether the nftables part got holds the ruleset
// old with a staged change's unreached additions (unstaged).
func unstagedPart(part, got, old string) bool {
	return part == "nftables" && strings.Contains(got, `"vmfw:staged"`) && unstaged(got, old) == unstaged(old, old)
}

// judge classifies the state a kill left: each rule table must be wholly
// old or wholly new (or, on the nftables backend, old with a staged
// change's new rules where no packet reaches them), the tables must have changed in the order an apply
// changes them (ipv4, ipv6, ebtables; for the nftables backend its one
// transaction), and the ipsets must be in a state
// the apply's ipset scripts pass through, consistent with the rules: all
// sets the new rules use are in place before any table changes, and sets
// are removed only after every table changed.
func judge(d *direction, s *snapshot) (label, violation string) {
	// Only the parts the change changes tell old from new; one it leaves
	// alone (the nftables backend's rules in iptables' chains) must stay.
	var parts []string
	for _, p := range d.at.parts {
		if d.at.part(p) != d.from.part(p) {
			parts = append(parts, p)
		} else if s.part(p) != d.at.part(p) {
			return "mixed", fmt.Sprintf("%s, which the change leaves alone, changed", p)
		}
	}
	newParts := 0
	var state []string
	for i, p := range parts {
		switch got := s.part(p); {
		case got == d.at.part(p):
			if newParts != i {
				return "out of order", fmt.Sprintf("%s is new but an earlier table is old", p)
			}
			newParts++
			state = append(state, p+" new")
		case got == d.from.part(p):
			state = append(state, p+" old")
		case unstagedPart(p, got, d.from.part(p)):
			state = append(state, p+" old, the new rules staged where no packet reaches them")
		default:
			return "mixed", fmt.Sprintf("%s is neither the old nor the new ruleset: a transaction was half applied", p)
		}
	}
	sets := s.sets.String()
	before := len(d.plan.setsBefore)
	last := len(d.stages) - 1
	stage := -1
	for k, st := range d.stages {
		if st != sets {
			continue
		}
		if newParts > 0 && k < before || k > before && newParts < len(parts) {
			continue
		}
		stage = k
		break
	}
	if stage < 0 {
		return "ipsets inconsistent", fmt.Sprintf("the ipsets are in no state the apply passes through with %s", strings.Join(state, ", "))
	}
	switch {
	case newParts == 0 && slices.ContainsFunc(state, func(s string) bool { return strings.Contains(s, "staged") }):
		return "killed between the two transactions of a staged change", ""
	case newParts == 0 && stage == 0:
		return "killed before any change", ""
	case newParts == 0 && stage < before:
		return "ipsets partly updated, rules old", ""
	case newParts == 0:
		return "ipsets updated, rules old", ""
	case newParts < len(parts):
		return strings.Join(state, ", "), ""
	case stage < last:
		return "rules new, unused ipsets not yet removed", ""
	}
	return "everything new, killed while finishing", ""
}

// compare names the parts in which two snapshots differ, "" if none.
func compare(a, b *snapshot) string {
	var diff []string
	for _, p := range a.parts {
		if a.part(p) != b.part(p) {
			diff = append(diff, p)
		}
	}
	if a.sets.String() != b.sets.String() {
		diff = append(diff, "ipsets")
	}
	return strings.Join(diff, ", ")
}

// durations keeps the last few apply durations.
type durations struct{ d []time.Duration }

func (ds *durations) add(d time.Duration) {
	ds.d = append(ds.d, d)
	if len(ds.d) > 9 {
		ds.d = ds.d[1:]
	}
}

func (ds *durations) median() time.Duration {
	s := slices.Clone(ds.d)
	slices.Sort(s)
	return s[len(s)/2]
}

// killDelay picks when a trial kills the apply: anywhere from before vmfw
// has started to after it has finished. How long an apply takes follows
// the machine's load, so the range follows the applies that ran last.
func (ds *durations) killDelay(rng *rand.Rand) time.Duration {
	return time.Duration(rng.Float64() * 1.2 * float64(ds.median()))
}

// count counts a trial whose apply was killed after delay, and returns
// its outcome: an apply that finished first (full, its duration) is an
// outcome of its own and joins recent.
func (r *result) count(outcome string, delay, full time.Duration, recent *durations) string {
	if full > 0 {
		recent.add(full)
		outcome = "apply finished before the kill"
	}
	r.trials++
	r.outcomes[outcome]++
	r.delays = append(r.delays, delay)
	return outcome
}

// explain lists, for each part that differs, the lines only one of the
// two snapshots has (at most a few of each).
func explain(got, want *snapshot) string {
	var out strings.Builder
	only := func(part, what string, a, b map[string]bool) {
		n := 0
		for l := range a {
			if b[l] {
				continue
			}
			if n < 8 {
				fmt.Fprintf(&out, "    %s %s: %s\n", part, what, l)
			}
			n++
		}
		if n > 8 {
			fmt.Fprintf(&out, "    %s %s: ... %d more\n", part, what, n-8)
		}
	}
	for _, p := range got.parts {
		g, w := lineSet(got.part(p)), lineSet(want.part(p))
		only(p, "unexpected", g, w)
		only(p, "missing", w, g)
	}
	if got.sets.String() != want.sets.String() {
		out.WriteString("    ipsets differ\n")
	}
	return out.String()
}

func lineSet(s string) map[string]bool {
	m := map[string]bool{}
	for _, l := range strings.Split(s, "\n") {
		m[l] = true
	}
	return m
}
