package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

const (
	// burst is the most new flows per measurement: distinct destination
	// ports, each the first packet of its flow (conntrack is flushed
	// before every burst).
	burst = 20000
	// burstTime ends a burst early, so that slow variants (a flat list at
	// 5000 taps forwards a few thousand flows a second) stay short.
	burstTime = time.Second
	// bursts is the number of measurements per dispatch variant, after
	// one more that warms caches and is not counted.
	bursts = 9
)

// dataPlane attaches two VMs to the lab's bridge, firewalled by vmfw, and
// measures traffic between them with vmfw's dispatch trees and with flat
// lists of jumps in their place; then traffic the hypervisor routes to one
// of them, with vmfw's address tree and a flat list (routed.go).
func (l *lab) dataPlane(r *results) error {
	progress("%s, %d taps: data plane", l.backend, l.n)
	ctx := l.ctx
	vms, removeVMs, err := addDataVMs(ctx, l.hv)
	if err != nil {
		return err
	}
	defer removeVMs()
	for _, v := range dataVMs {
		if _, _, err := l.vmfw("ifup", tapName(v.vmid)); err != nil {
			return err
		}
	}
	dst := dataVMs[1].ip
	if _, err := vms[0].run(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst); err != nil {
		return fmt.Errorf("the two VMs cannot reach each other: %w", err)
	}
	if err := l.failClosed(r, vms); err != nil {
		return err
	}

	variants := []struct {
		name    string
		install func() error
	}{
		{"vmfw prefix trees", func() error { return nil }},
		{"flat physdev list", func() error { return l.flatDispatch(false) }},
		{"flat physdev + flat ebtables", func() error { return l.flatDispatch(true) }},
	}
	if l.nftables() {
		// One dispatch: set lookups by port name, which have no flat
		// variant to compare with.
		variants = variants[:1]
		variants[0].name = "nftables set lookups"
	}
	for _, v := range variants {
		if err := v.install(); err != nil {
			return err
		}
		wall, cpu, err := l.newFlows(vms[0], vms[1], dst)
		if err != nil {
			return err
		}
		rtt, err := ping(l, vms[0], dst)
		if err != nil {
			return err
		}
		r.data = append(r.data, dataRow{backend: l.backend, taps: l.n, dispatch: v.name, wall: wall, cpu: cpu, rtt: rtt})
	}
	// Back to vmfw's own dispatch.
	if _, _, err := l.vmfw("apply"); err != nil {
		return err
	}
	if err := l.routed(r, vms); err != nil {
		return err
	}
	return l.expectNoChanges("after the data plane")
}

// rogueTap is a bridge port named like a managed tap that vmfw has not
// firewalled (VM 9010 has no net1). Its name shares the prefix tap901 with
// installed taps, so at 5000 taps its packets go down the tree and must be
// dropped by the fail-closed rule of a node, not of the root.
const rogueTap, rogueIP = "tap9010i1", "192.0.2.13"

// failClosed attaches a third VM through rogueTap, without vmfw, and
// checks that no traffic passes between it and the firewalled VMs.
func (l *lab) failClosed(r *results, vms []*netns) error {
	ctx := l.ctx
	ns, err := newNetns(ctx, "vm3")
	if err != nil {
		return err
	}
	defer ns.remove()
	if _, err := l.hv.run(ctx, "ip", "link", "add", rogueTap, "type", "veth", "peer", "name", "eth0", "netns", ns.Name); err != nil {
		return err
	}
	for _, cmd := range []struct {
		in   *netns
		args []string
	}{
		{ns, []string{"addr", "add", rogueIP + "/24", "dev", "eth0"}},
		{ns, []string{"link", "set", "eth0", "up"}},
		{l.hv, []string{"link", "set", rogueTap, "master", "vmbr0", "up"}},
	} {
		if _, err := cmd.in.run(ctx, "ip", cmd.args...); err != nil {
			return err
		}
	}
	if _, err := ns.run(ctx, "ping", "-c", "2", "-i", "0.2", "-W", "1", dataVMs[1].ip); err == nil {
		return fmt.Errorf("fail-closed broken at %d taps: %s without chains reaches %s", l.n, rogueTap, dataVMs[1].ip)
	}
	if _, err := vms[0].run(ctx, "ping", "-c", "2", "-i", "0.2", "-W", "1", rogueIP); err == nil {
		return fmt.Errorf("fail-closed broken at %d taps: %s reaches %s without chains", l.n, dataVMs[0].ip, rogueTap)
	}
	if _, err := l.hv.run(ctx, "ip", "link", "del", rogueTap); err != nil {
		return err
	}
	r.notes = append(r.notes, fmt.Sprintf("%s, %d taps: VM to VM through the trees passes; %s, named like a managed tap but without chains, gets nothing through either way",
		l.backend, l.n, rogueTap))
	return nil
}

// flatDispatch replaces vmfw-out and vmfw-in (and with l2 vmfw-l2) by the
// flat lists vmfw wrote before the trees: one jump per installed tap, in
// name order, each rule with its comment first as vmfw writes them.
func (l *lab) flatDispatch(l2 bool) error {
	taps := []string{tapName(dataVMs[0].vmid), tapName(dataVMs[1].vmid)}
	for k := range l.n {
		taps = append(taps, tapName(scaleVMID(k)))
	}
	slices.Sort(taps)
	resetMark := layout.Rule{Spec: "-j MARK --set-xmark 0x0/0x1000"}
	for _, f := range ruleset.Families {
		var b strings.Builder
		b.WriteString("*filter\n:vmfw-out - [0:0]\n:vmfw-in - [0:0]\n")
		b.WriteString(resetMark.Line(layout.ChainOut) + "\n")
		for _, dir := range []struct {
			chain layout.Chain
			flag  string
			sfx   string
		}{{layout.ChainOut, "--physdev-in", "out"}, {layout.ChainIn, "--physdev-out", "in"}} {
			for _, t := range taps {
				rule := layout.Rule{Spec: "-m physdev " + dir.flag + " " + t + " -g " + string(layout.TapChain(t, dir.sfx))}
				b.WriteString(rule.Line(dir.chain) + "\n")
			}
			drop := layout.Rule{Spec: "-m physdev " + dir.flag + " tap+ -j DROP", Comment: "fail-closed"}
			b.WriteString(drop.Line(dir.chain) + "\n")
		}
		b.WriteString("COMMIT\n")
		if _, err := l.hv.runIn(l.ctx, []byte(b.String()), l.tool(f, "-restore"), "--noflush"); err != nil {
			return err
		}
	}
	if !l2 {
		return nil
	}
	var b strings.Builder
	b.WriteString("*filter\n:vmfw-l2 RETURN\n")
	for _, t := range taps {
		b.WriteString("-A vmfw-l2 -i " + t + " -j " + string(layout.L2Chain(t)) + "\n")
	}
	b.WriteString("COMMIT\n")
	_, err := l.hv.runIn(l.ctx, []byte(b.String()), "ebtables-nft-restore", "--noflush")
	return err
}

// newFlows sends bursts of UDP packets from the namespace from to dst (an
// address of vm2), each to another port so that each starts a new flow
// (conntrack is flushed before every burst), and returns the rates at which
// they arrive in vm2, in thousands per second: per second of wall clock,
// and per second of CPU time of the sending thread. The whole path (bridge
// or routing, netfilter, the receiver's stack) runs in that thread's
// softirq context, so the CPU rate is what a core gives and, unlike the
// wall rate, does not drop when other work shares the core. The receiver
// has no socket on those ports; its ICMP errors are rate limited by its
// kernel.
func (l *lab) newFlows(from, vm2 *netns, dst string) (wall, cpu []float64, err error) {
	addr := netip.MustParseAddr(dst)
	family := unix.AF_INET
	if addr.Is6() {
		family = unix.AF_INET6
	}
	var fd int
	if err := from.do(func() error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		return nil, nil, err
	}
	defer unix.Close(fd)
	to4, to6 := &unix.SockaddrInet4{}, &unix.SockaddrInet6{Addr: addr.As16()}
	var to unix.Sockaddr = to6
	if addr.Is4() {
		to4.Addr, to = addr.As4(), to4
	}
	payload := make([]byte, 18) // a 64-byte frame with the FCS over IPv4
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for b := range bursts + 1 {
		if _, err := l.hv.run(l.ctx, "conntrack", "-F"); err != nil {
			return nil, nil, err
		}
		rx0, err := rxPackets(vm2)
		if err != nil {
			return nil, nil, err
		}
		var ru0, ru1 unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru0); err != nil {
			return nil, nil, err
		}
		start := time.Now()
		for i := range burst {
			to4.Port, to6.Port = 1024+i, 1024+i
			unix.Sendto(fd, payload, 0, to) // a full queue drops, which the receiver's count shows
			if i%256 == 255 && time.Since(start) > burstTime {
				break
			}
		}
		took := time.Since(start)
		if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru1); err != nil {
			return nil, nil, err
		}
		used := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
		time.Sleep(100 * time.Millisecond) // let the last packets land
		rx1, err := rxPackets(vm2)
		if err != nil {
			return nil, nil, err
		}
		if b == 0 {
			continue // the warm-up
		}
		got := float64(rx1 - rx0)
		wall = append(wall, got/took.Seconds()/1000)
		if used > 0 {
			cpu = append(cpu, got/used.Seconds()/1000)
		}
	}
	return wall, cpu, nil
}

// rxPackets reads the receive counter of eth0 in ns.
func rxPackets(ns *netns) (uint64, error) {
	var n uint64
	err := ns.do(func() error {
		data, err := os.ReadFile("/proc/thread-self/net/dev")
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			name, rest, ok := strings.Cut(sc.Text(), ":")
			if ok && strings.TrimSpace(name) == "eth0" {
				f := strings.Fields(rest)
				if len(f) < 2 {
					break
				}
				n, err = strconv.ParseUint(f[1], 10, 64)
				return err
			}
		}
		return fmt.Errorf("no eth0 in %s", ns.Name)
	})
	return n, err
}

var rttLine = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/`)

// ping returns the mean round trip of 100 pings from vm to dst.
func ping(l *lab, vm *netns, dst string) (time.Duration, error) {
	out, err := vm.run(l.ctx, "ping", "-c", "100", "-i", "0.01", "-q", dst)
	if err != nil {
		return 0, err
	}
	m := rttLine.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no round trip in ping output: %s", out)
	}
	avg, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(avg * float64(time.Millisecond)), nil
}
