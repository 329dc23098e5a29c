package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// lab is one hypervisor namespace with n scale taps installed.
type lab struct {
	o       options
	backend string
	n       int
	// tmp holds the lab's files: dir, the configuration directory, and
	// vmfw's run and state directories (labEnv).
	tmp string
	dir string
	hv  *netns
	env []string
	// linkKind is the interface type standing in for taps: dummy where
	// the kernel has it, ifb otherwise (both are cheap, unlike tuntap).
	linkKind string
	ctx      context.Context
}

// newLab makes a lab for backend at n taps, its files in a new temporary
// directory named after prefix. The caller writes the configuration into
// l.dir, then calls start, and calls close in any case.
func newLab(ctx context.Context, o options, backend string, n int, prefix string) (*lab, error) {
	tmp, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(tmp, "config")
	return &lab{o: o, backend: backend, n: n, tmp: tmp, dir: dir, env: labEnv(tmp, dir, backend), ctx: ctx}, nil
}

// start creates the lab's hypervisor namespace and sets it up (setup).
func (l *lab) start() error {
	var err error
	if l.hv, err = newNetns(l.ctx, "hv"); err != nil {
		return err
	}
	return l.setup()
}

// close removes the lab's namespace, with everything in it, and its files.
func (l *lab) close() {
	if l.hv != nil {
		l.hv.remove()
	}
	os.RemoveAll(l.tmp)
}

// vmfw runs vmfw in the lab and returns how long it took.
func (l *lab) vmfw(args ...string) (time.Duration, []byte, error) {
	return l.hv.timed(l.ctx, l.env, l.o.vmfw, args...)
}

// sample runs vmfw in the lab and adds how long it took to samples.
func (l *lab) sample(samples *[]time.Duration, args ...string) error {
	d, _, err := l.vmfw(args...)
	if err != nil {
		return err
	}
	*samples = append(*samples, d)
	return nil
}

// benchSize measures one backend at n installed taps.
func benchSize(ctx context.Context, o options, backend string, n int, r *results) error {
	progress("%s, %d taps: setting up", backend, n)
	l, err := newLab(ctx, o, backend, n, "vmfwbench-")
	if err != nil {
		return err
	}
	defer l.close()
	if err := writeScenario(l.dir, n, o.runs+1); err != nil {
		return err
	}
	if err := l.start(); err != nil {
		return err
	}
	if o.hold {
		fmt.Printf("lab ready: ip netns exec %s env %s %s ...\ninterrupt to remove it\n", l.hv.Name, strings.Join(l.env, " "), o.vmfw)
		<-ctx.Done()
		return ctx.Err()
	}
	// Others' rules are in place throughout and must come out unchanged.
	if err := l.addForeign(); err != nil {
		return err
	}
	foreign, err := l.foreign()
	if err != nil {
		return err
	}
	if o.control {
		if err := l.controlPlane(r); err != nil {
			return err
		}
	}
	if o.data && o.dataSizes[n] {
		if err := l.dataPlane(r); err != nil {
			return err
		}
	}
	if err := l.checkForeign(foreign); err != nil {
		return err
	}
	r.notes = append(r.notes, fmt.Sprintf("%s, %d taps: a foreign chain named %s, foreign FORWARD and INPUT rules, an ipset and an ebtables chain were identical after every row", backend, n, foreignChain))
	return nil
}

// setup creates the bridge, installs the state vmfw would install for the
// n scale taps, and only then creates their interfaces. Installing first
// is what keeps setup fast: iptables-restore resolves every UDP port
// through getaddrinfo, which dumps the addresses of every interface of the
// namespace (see docs/performance.md); the cost of that is measured by the
// "full apply from empty" row, once.
func (l *lab) setup() error {
	ctx := l.ctx
	for _, args := range [][]string{
		{"link", "add", "vmbr0", "type", "bridge"},
		{"link", "set", "vmbr0", "up"},
	} {
		if _, err := l.hv.run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	if err := l.probeLinkKind(); err != nil {
		return err
	}
	m, err := config.Load(l.dir)
	if err != nil {
		return err
	}
	if l.nftables() {
		return l.setupNFT(m)
	}
	var nics []*config.NIC
	var batch bytes.Buffer
	for k := range l.n {
		nic := m.NIC(tapName(scaleVMID(k)))
		nics = append(nics, nic)
		fmt.Fprintf(&batch, "link add %s type %s\n", nic.Tap, l.linkKind)
	}
	rs, err := layout.FromConfig(m, nics)
	if err != nil {
		return err
	}
	pre, _ := ipset.Plan(rs.Sets, nil)
	if pre != "" {
		if _, err := l.hv.runIn(ctx, []byte(pre), "ipset", "restore"); err != nil {
			return err
		}
	}
	// The namespace is new, so the restores may flush: iptables-nft-restore
	// --noflush keeps the chains it is told about in a sorted list, which
	// costs seconds at 17,000 chains (see docs/performance.md).
	for _, f := range ruleset.Families {
		if _, err := l.hv.runIn(ctx, []byte(rs.Tables[f].Render()), l.tool(f, "-restore")); err != nil {
			return err
		}
	}
	if _, err := l.hv.runIn(ctx, []byte(rs.Bridge.Render()), "ebtables-nft-restore"); err != nil {
		return err
	}
	if batch.Len() > 0 {
		if _, err := l.hv.runIn(ctx, batch.Bytes(), "ip", "-batch", "-"); err != nil {
			return err
		}
	}
	if l.n > 1000 {
		return nil // checked after the rows, where a check takes seconds
	}
	// What was installed must be exactly what vmfw wants.
	_, out, err := l.vmfw("apply", "--dry-run")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(out), "# no changes") {
		return fmt.Errorf("the installed state is not what vmfw would install:\n%.2000s", out)
	}
	return nil
}

// setupNFT is setup for the nftables backend: the taps first, then one
// vmfw apply installs them all (a second or less at 5000 taps: one
// transaction of set elements), and must leave nothing to change.
func (l *lab) setupNFT(m *config.Model) error {
	var batch bytes.Buffer
	for k := range l.n {
		fmt.Fprintf(&batch, "link add %s type %s\n", m.NIC(tapName(scaleVMID(k))).Tap, l.linkKind)
	}
	if batch.Len() > 0 {
		if _, err := l.hv.runIn(l.ctx, batch.Bytes(), "ip", "-batch", "-"); err != nil {
			return err
		}
	}
	if _, _, err := l.vmfw("apply"); err != nil {
		return err
	}
	return l.expectNoChanges("after the setup's apply")
}

// probeLinkKind sets linkKind: dummy where the kernel has it, ifb
// otherwise.
func (l *lab) probeLinkKind() error {
	l.linkKind = "dummy"
	if _, err := l.hv.run(l.ctx, "ip", "link", "add", "vmfwprobe0", "type", "dummy"); err != nil {
		l.linkKind = "ifb"
	} else if _, err := l.hv.run(l.ctx, "ip", "link", "del", "vmfwprobe0"); err != nil {
		return err
	}
	return nil
}

// nftables reports whether the lab runs the nftables backend.
func (l *lab) nftables() bool { return l.backend == nftablesBackend }

// tool names an iptables command of the lab's backend; for the nftables
// backend, iptables-nft's (the foreign rules beside it).
func (l *lab) tool(f ruleset.Family, suffix string) string {
	base := "iptables"
	if f == ruleset.IPv6 {
		base = "ip6tables"
	}
	flavour := l.backend
	if l.nftables() {
		flavour = "nft"
	}
	return base + "-" + flavour + suffix
}

// runsFor returns how many runs a row gets: rows that take seconds at
// 1000 taps and more (whole-table reads, the baseline) get fewer, and one
// on legacy at the largest size, where each takes many seconds.
func (l *lab) runsFor(slow bool) int {
	switch {
	case !slow || l.n < 1000:
		return l.o.runs
	case l.backend == "legacy" && l.n > 1000:
		return 1
	}
	return l.o.slowRuns
}

// baselineRuns returns how many times the baseline runs: on legacy every
// iptables command rewrites the whole table, so one add and remove takes
// minutes at 1000 taps and about twenty at 5000; it runs once at 1000,
// and above only with --slow.
func (l *lab) baselineRuns() int {
	switch {
	case l.nftables():
		return 0 // the baseline is one iptables command per rule
	case l.backend != "legacy" || l.n < 1000:
		return l.runsFor(true)
	case l.n > 1000 && !l.o.slow:
		return 0
	}
	return 1
}

func (l *lab) addLink(tap string) error {
	_, err := l.hv.run(l.ctx, "ip", "link", "add", tap, "type", l.linkKind)
	return err
}

func (l *lab) delLink(tap string) error {
	_, err := l.hv.run(l.ctx, "ip", "link", "del", tap)
	return err
}

// upDown adds tap, adds how long its ifup and its ifdown took to up and
// down, and deletes it again.
func (l *lab) upDown(tap string, up, down *[]time.Duration) error {
	if err := l.addLink(tap); err != nil {
		return err
	}
	if err := l.sample(up, "ifup", tap); err != nil {
		return err
	}
	if err := l.sample(down, "ifdown", tap); err != nil {
		return err
	}
	return l.delLink(tap)
}

func (l *lab) write(rel, text string) error {
	return os.WriteFile(filepath.Join(l.dir, rel), []byte(text), 0o644)
}

// controlPlane measures the control-plane rows.
func (l *lab) controlPlane(r *results) error {
	add := func(what string, vm, base []time.Duration, note string) {
		r.rows = append(r.rows, row{backend: l.backend, taps: l.n, what: what, vmfw: vm, base: base, note: note})
	}
	var check, up, down, baseUp, baseDown, edit, member, same, status, full []time.Duration

	progress("%s, %d taps: ifup, ifdown and the baseline", l.backend, l.n)
	m, err := config.Load(l.dir)
	if err != nil {
		return err
	}
	for i := range l.o.runs {
		if err := l.sample(&check, "check"); err != nil {
			return err
		}
		tap := tapName(extraVMID(l.n, i))
		if err := l.upDown(tap, &up, &down); err != nil {
			return err
		}
		if i < l.baselineRuns() {
			bu, bd, err := l.baseline(m, m.NIC(tap))
			if err != nil {
				return err
			}
			baseUp, baseDown = append(baseUp, bu), append(baseDown, bd)
		}
	}
	add("config load only (vmfw check)", check, nil, "")
	note := ""
	if len(baseUp) == 0 && !l.nftables() {
		note = "baseline skipped without --slow"
	}
	add("ifup of one more tap", up, baseUp, note)
	add("ifdown of one tap", down, baseDown, note)
	if l.n < 1000 { // the final check covers it where a check takes seconds
		if err := l.expectNoChanges("after ifup and ifdown"); err != nil {
			return err
		}
	}

	progress("%s, %d taps: group edits, member changes, unchanged applies, status", l.backend, l.n)
	for i := range l.runsFor(true) {
		if err := l.write("groups/g03.toml", groupFile(3, i+1)); err != nil {
			return err
		}
		if err := l.sample(&edit, "apply"); err != nil {
			return err
		}
	}
	// A VM with addresses joins one more group per run: its chains get the
	// jump, the group's sets its addresses.
	const joiner = 1
	id := scaleVMID(joiner)
	groups := groupsOf(joiner)
	for i := range l.runsFor(true) {
		if l.n <= joiner {
			break
		}
		for g := joiner + 3 + i; ; g++ {
			if !slices.Contains(groups, groupName(g)) {
				groups = append(groups, groupName(g))
				break
			}
		}
		if err := l.write(fmt.Sprintf("vms/%d.toml", id), vmFile(id, joiner, groups)); err != nil {
			return err
		}
		if err := l.sample(&member, "apply"); err != nil {
			return err
		}
	}
	wrote := false
	for range l.runsFor(true) {
		gen, err := l.generation()
		if err != nil {
			return err
		}
		if err := l.sample(&same, "apply"); err != nil {
			return err
		}
		after, err := l.generation()
		if err != nil {
			return err
		}
		wrote = wrote || after != gen
	}
	for range l.runsFor(true) {
		if err := l.sample(&status, "status"); err != nil {
			return err
		}
	}
	add("edit one group + apply", edit, nil, "")
	add("add one member + apply", member, nil, "")
	note = "no write"
	if wrote {
		note = "WROTE"
	}
	if l.backend == "legacy" {
		note = "" // legacy has no generation counter to tell
	}
	add("apply, nothing changed", same, nil, note)
	add("status", status, nil, "")

	runs := l.runsFor(true)
	if l.n > l.o.fullApplyMax && !l.nftables() {
		// Minutes at 5000 taps, nearly all of it in iptables-restore (see
		// docs/performance.md); --slow measures it.
		add("full apply from empty", nil, nil, fmt.Sprintf("skipped above %d taps without --slow", l.o.fullApplyMax))
		return l.expectNoChanges("after the control-plane rows")
	}
	if l.n >= 1000 {
		runs = 1
	}
	progress("%s, %d taps: full apply from empty (%d run(s))", l.backend, l.n, runs)
	for range runs {
		d, err := l.applyFromEmpty()
		if err != nil {
			return err
		}
		full = append(full, d)
	}
	add("full apply from empty", full, nil, "")
	return l.expectNoChanges("after the full apply")
}

// applyFromEmpty removes vmfw's rules from the lab (vmfw flush) and returns
// how long the vmfw apply that installs them all again takes (at most
// fullApplyTimeout).
func (l *lab) applyFromEmpty() (time.Duration, error) {
	if _, _, err := l.vmfw("flush"); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(l.ctx, l.o.fullApplyTimeout)
	defer cancel()
	d, _, err := l.hv.timed(ctx, l.env, l.o.vmfw, "apply")
	return d, err
}

// generation returns the nf_tables generation of the lab (0 on legacy).
func (l *lab) generation() (uint32, error) {
	if l.backend != "nft" && !l.nftables() {
		return 0, nil
	}
	var gen uint32
	err := l.hv.do(func() error {
		var err error
		gen, err = xtables.Generation(l.ctx)
		return err
	})
	return gen, err
}

// expectNoChanges checks that vmfw finds the lab as configured.
func (l *lab) expectNoChanges(when string) error {
	_, out, err := l.vmfw("apply", "--dry-run")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(out), "# no changes") {
		return fmt.Errorf("%s, apply would change:\n%.3000s", when, out)
	}
	return nil
}
