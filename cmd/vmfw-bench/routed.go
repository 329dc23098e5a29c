package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// The "routed new flows" rows (docs/routing.md, docs/performance.md): new
// UDP flows from a host the hypervisor reaches through an uplink that is
// not a bridge port, routed by the hypervisor into vmbr0 to data VM 2. They
// pass vmfw-FORWARD's third rule and vmfw-route, the prefix tree over the
// VMs' addresses that sends a packet to the in chain of the VM owning its
// destination. The rows run in IPv6, where every scale tap has an address
// (scaleV6), so the tree holds one leaf per installed tap.

const (
	// uplinkIf is the hypervisor's end of the uplink veth, not a bridge
	// port; uplinkHV and uplinkHost are the two ends' addresses.
	uplinkIf   = "uplink0"
	uplinkHV   = "2001:db8:ff::1"
	uplinkHost = "2001:db8:ff::2"
	// scaleNet is the /64 of the scale taps and the data VMs, on vmbr0.
	scaleNet = "2001:db8:1::/64"
	// openPort is a port the data VMs' bench group allows; closedPort one
	// their policy (drop) refuses.
	openPort, closedPort = 4000, 999
)

// Names of the routed rows in the data-plane table.
const (
	routedTree = "routed: vmfw address tree"
	routedFlat = "routed: flat -d list"
	// routedAlone has VM 2's leaf alone in vmfw-route (after the head):
	// what any dispatch costs at least, measured in the same lab, so the
	// tree against it is the tree's own cost with everything else (the
	// ruleset's size, the lab, the machine's load) nearly the same.
	routedAlone = "routed: VM 2's leaf only"
)

// routed measures new routed flows to data VM 2 with vmfw's address tree
// and with a flat list in its place, after checking that the path works
// and that VM 2's in chain decides it. vms are the data VMs, attached and
// firewalled by vmfw. Everything it adds to the hypervisor namespace (the
// uplink, vmbr0's address, IPv6 forwarding) is removed again.
func (l *lab) routed(r *results, vms []*netns) (err error) {
	progress("%s, %d taps: routed new flows", l.backend, l.n)
	ctx := l.ctx
	dst := dataV6(l.n, 1)

	undo, err := l.hv6Router()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, undo()) }()
	up, err := newNetns(ctx, "up")
	if err != nil {
		return err
	}
	defer up.remove()
	for _, cmd := range []struct {
		in   *netns
		args []string
	}{
		{l.hv, []string{"link", "add", uplinkIf, "type", "veth", "peer", "name", "eth0", "netns", up.Name}},
		{l.hv, []string{"-6", "addr", "add", uplinkHV + "/64", "dev", uplinkIf, "nodad"}},
		{l.hv, []string{"link", "set", uplinkIf, "up"}},
		{up, []string{"-6", "addr", "add", uplinkHost + "/64", "dev", "eth0", "nodad"}},
		{up, []string{"link", "set", "eth0", "up"}},
		{up, []string{"-6", "route", "add", scaleNet, "via", uplinkHV}},
	} {
		if _, err := cmd.in.run(ctx, "ip", cmd.args...); err != nil {
			return err
		}
	}
	for i, vm := range vms {
		for _, args := range [][]string{
			{"-6", "addr", "add", dataV6(l.n, i) + "/64", "dev", "eth0", "nodad"},
			{"-6", "route", "add", "default", "via", hvV6},
		} {
			if _, err := vm.run(ctx, "ip", args...); err != nil {
				return err
			}
		}
	}

	if l.nftables() {
		return l.routedNFT(r, up, vms[1], dst)
	}
	tree, err := l.routeTreeStats(dst)
	if err != nil {
		return err
	}
	if err := l.checkRouted(up, vms[1], dst); err != nil {
		return fmt.Errorf("vmfw's address tree: %w", err)
	}
	var flatPos, flatLen, alonePos int
	variants := []struct {
		name    string
		install func() error
	}{
		{routedTree, func() error { return nil }},
		{routedAlone, func() error {
			var err error
			if alonePos, _, err = l.flatRoute(dst, tapName(dataVMs[1].vmid)); err != nil {
				return err
			}
			if err := l.checkRouted(up, vms[1], dst); err != nil {
				return fmt.Errorf("VM 2 alone in %s: %w", layout.ChainRoute, err)
			}
			return nil
		}},
		{routedFlat, func() error {
			var err error
			if flatPos, flatLen, err = l.flatRoute(dst, ""); err != nil {
				return err
			}
			if err := l.checkRouted(up, vms[1], dst); err != nil {
				return fmt.Errorf("flat list: %w", err)
			}
			return nil
		}},
	}
	var load []string
	rate := map[string]float64{}
	for _, v := range variants {
		if err := v.install(); err != nil {
			return err
		}
		load = append(load, loadAverage())
		wall, cpu, err := l.newFlows(up, vms[1], dst)
		if err != nil {
			return err
		}
		rtt, err := ping(l, up, dst)
		if err != nil {
			return err
		}
		r.data = append(r.data, dataRow{backend: l.backend, taps: l.n, dispatch: v.name, wall: wall, cpu: cpu, rtt: rtt})
		progress("%s, %d taps: %s: k flows/s of CPU per burst %.0f", l.backend, l.n, v.name, cpu)
		rate[v.name] = median(cpu) * 1000
	}
	// Back to vmfw's own vmfw-route.
	if _, _, err := l.vmfw("apply"); err != nil {
		return err
	}
	r.notes = append(r.notes,
		fmt.Sprintf("%s, %d taps: routed from %s to VM 2 (%s): arrives on port %d and not on port %d, and VM 2's in chain counted both, with the tree and with the flat list",
			l.backend, l.n, uplinkHost, dst, openPort, closedPort),
		fmt.Sprintf("%s, %d taps: IPv6 vmfw-route: %s; flat list: VM 2's rule is number %d of %d; load average before the tree, leaf-only and flat bursts: %s",
			l.backend, l.n, tree, flatPos, flatLen, strings.Join(load, " / ")))
	// The flat list against the leaf alone gives the cost of one failed
	// "-d" rule, and so what the tree's rules should cost.
	alone, flat := rate[routedAlone], rate[routedFlat]
	if extra := flatPos - alonePos; extra >= 100 && alone > 0 && flat > 0 && flat < alone {
		perRule := (1/flat - 1/alone) / float64(extra)
		r.notes = append(r.notes, fmt.Sprintf("%s, %d taps: from the flat list, one failed -d rule costs %.1f ns of CPU; the tree's %d rules for VM 2 should so run at %.0f%% of the leaf-only rate",
			l.backend, l.n, perRule*1e9, tree.dstRules, 100/(1+float64(tree.dstRules-alonePos)*perRule*alone)))
	}
	return nil
}

// routedNFTName is the routed row of the nftables backend: routed packets
// meet the VM's in rules at bridge postrouting, by the port they leave
// through, with no address dispatch at all.
const routedNFTName = "routed: nftables by port"

// routedNFT measures new routed flows to data VM 2 on the nftables
// backend, after checking that a datagram reaches VM 2 on a port its
// groups open and not on one its policy refuses.
func (l *lab) routedNFT(r *results, up, vm2 *netns, dst string) error {
	for _, c := range []struct {
		port int
		want bool
	}{{openPort, true}, {closedPort, false}} {
		got, err := udpProbe(up, vm2, dst, c.port)
		if err != nil {
			return err
		}
		if got != c.want {
			return fmt.Errorf("a datagram routed from %s to [%s]:%d reaches VM 2: %v, want %v", uplinkHost, dst, c.port, got, c.want)
		}
	}
	wall, cpu, err := l.newFlows(up, vm2, dst)
	if err != nil {
		return err
	}
	rtt, err := ping(l, up, dst)
	if err != nil {
		return err
	}
	r.data = append(r.data, dataRow{backend: l.backend, taps: l.n, dispatch: routedNFTName, wall: wall, cpu: cpu, rtt: rtt})
	progress("%s, %d taps: %s: k flows/s of CPU per burst %.0f", l.backend, l.n, routedNFTName, median(cpu))
	r.notes = append(r.notes, fmt.Sprintf("%s, %d taps: routed from %s to VM 2 (%s): arrives on port %d and not on port %d",
		l.backend, l.n, uplinkHost, dst, openPort, closedPort))
	return nil
}

// hv6Router gives vmbr0 the data VMs' gateway address and turns IPv6
// forwarding on in the hypervisor namespace; the function it returns
// undoes both.
func (l *lab) hv6Router() (func() error, error) {
	const knob = "/proc/sys/net/ipv6/conf/all/forwarding"
	var was []byte
	err := l.hv.do(func() error {
		var err error
		if was, err = os.ReadFile(knob); err != nil {
			return err
		}
		return os.WriteFile(knob, []byte("1\n"), 0o644)
	})
	if err != nil {
		return nil, fmt.Errorf("turning IPv6 forwarding on: %w", err)
	}
	undo := func() error {
		_, err := l.hv.run(l.ctx, "ip", "-6", "addr", "del", hvV6+"/64", "dev", "vmbr0")
		return errors.Join(err, l.hv.do(func() error { return os.WriteFile(knob, was, 0o644) }))
	}
	if _, err := l.hv.run(l.ctx, "ip", "-6", "addr", "add", hvV6+"/64", "dev", "vmbr0", "nodad"); err != nil {
		return nil, errors.Join(err, l.hv.do(func() error { return os.WriteFile(knob, was, 0o644) }))
	}
	return undo, nil
}

// checkRouted fails unless a datagram routed from the uplink to dst (VM 2)
// arrives on a port VM 2's groups allow and not on one its policy refuses,
// and VM 2's in chain counted both: the in chain is what decides.
func (l *lab) checkRouted(up, vm2 *netns, dst string) error {
	in := layout.TapChain(tapName(dataVMs[1].vmid), "in")
	for _, c := range []struct {
		port int
		want bool
	}{{openPort, true}, {closedPort, false}} {
		before, err := l.chainCounters(ruleset.IPv6, in)
		if err != nil {
			return err
		}
		got, err := udpProbe(up, vm2, dst, c.port)
		if err != nil {
			return err
		}
		after, err := l.chainCounters(ruleset.IPv6, in)
		if err != nil {
			return err
		}
		switch {
		case got != c.want && c.want:
			return fmt.Errorf("a datagram routed from %s to [%s]:%d does not reach VM 2", uplinkHost, dst, c.port)
		case got != c.want:
			return fmt.Errorf("a datagram routed from %s to [%s]:%d reaches VM 2, whose policy refuses it", uplinkHost, dst, c.port)
		case len(after) == 0 || len(before) != len(after) || after[0] <= before[0]:
			return fmt.Errorf("a datagram routed to [%s]:%d did not pass %s (counters %v, then %v)", dst, c.port, in, before, after)
		case !c.want && after[len(after)-1] <= before[len(before)-1]:
			return fmt.Errorf("a datagram routed to [%s]:%d was not dropped by the last rule of %s, its policy (counters %v, then %v)", dst, c.port, in, before, after)
		}
	}
	return nil
}

// udpProbe sends up to three datagrams from the uplink to [dst]:port, a
// second apart, and reports whether one arrived in vm2 on a socket bound
// there.
func udpProbe(up, vm2 *netns, dst string, port int) (bool, error) {
	addr := netip.MustParseAddr(dst)
	rfd, sfd := -1, -1
	err := vm2.do(func() error {
		var err error
		if rfd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		return unix.Bind(rfd, &unix.SockaddrInet6{Addr: addr.As16(), Port: port})
	})
	if rfd >= 0 {
		defer unix.Close(rfd)
	}
	if err != nil {
		return false, fmt.Errorf("listening on [%s]:%d: %w", dst, port, err)
	}
	tv := unix.NsecToTimeval(time.Second.Nanoseconds())
	if err := unix.SetsockoptTimeval(rfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return false, err
	}
	err = up.do(func() error {
		var err error
		sfd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return false, err
	}
	defer unix.Close(sfd)
	marker := []byte(fmt.Sprintf("vmfw-bench routed probe %d", time.Now().UnixNano()))
	buf := make([]byte, 256)
	for range 3 {
		if err := unix.Sendto(sfd, marker, 0, &unix.SockaddrInet6{Addr: addr.As16(), Port: port}); err != nil {
			return false, err
		}
		for {
			n, _, err := unix.Recvfrom(rfd, buf, 0)
			if err == unix.EINTR {
				continue
			}
			if err == nil && string(buf[:n]) == string(marker) {
				return true, nil
			}
			if err != nil && err != unix.EAGAIN {
				return false, err
			}
			break
		}
	}
	return false, nil
}

// chainCounters returns the packet counters of the rules of chain in
// family f, in order.
func (l *lab) chainCounters(f ruleset.Family, chain layout.Chain) ([]uint64, error) {
	out, err := l.hv.run(l.ctx, l.tool(f, ""), "-w", "-n", "-v", "-x", "-L", string(chain))
	if err != nil {
		return nil, err
	}
	var counts []uint64
	for i, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if i < 2 || len(fields) == 0 {
			continue // "Chain NAME (...)" and the column titles
		}
		n, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: unexpected line %q", chain, line)
		}
		counts = append(counts, n)
	}
	return counts, nil
}

// installedNICs returns the interfaces installed in the lab: the scale taps
// and the data VMs' taps, in name order.
func (l *lab) installedNICs() ([]*config.NIC, error) {
	m, err := config.Load(l.dir)
	if err != nil {
		return nil, err
	}
	taps := []string{tapName(dataVMs[0].vmid), tapName(dataVMs[1].vmid)}
	for k := range l.n {
		taps = append(taps, tapName(scaleVMID(k)))
	}
	slices.Sort(taps)
	var nics []*config.NIC
	for _, t := range taps {
		nic := m.NIC(t)
		if nic == nil {
			return nil, fmt.Errorf("%s is not configured", t)
		}
		nics = append(nics, nic)
	}
	return nics, nil
}

// flatRoute replaces vmfw-route, in both families, by a flat list: the
// root's head rules as vmfw wrote them (read from the kernel), then one
// "-d ADDR -g TAP-in" per address of every installed tap, taps in name
// order as flatDispatch lists them; with only, of that tap alone. It
// returns the position of dst's rule (counting the head) and the length
// of the list in dst's family.
func (l *lab) flatRoute(dst, only string) (pos, total int, err error) {
	nics, err := l.installedNICs()
	if err != nil {
		return 0, 0, err
	}
	if only != "" {
		nics = slices.DeleteFunc(nics, func(n *config.NIC) bool { return n.Tap != only })
	}
	want := netip.MustParseAddr(dst)
	for _, f := range ruleset.Families {
		out, err := l.hv.run(l.ctx, l.tool(f, ""), "-w", "-S", string(layout.ChainRoute))
		if err != nil {
			return 0, 0, err
		}
		var b strings.Builder
		b.WriteString("*filter\n:" + string(layout.ChainRoute) + " - [0:0]\n")
		n := 0
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "-A ") && !strings.Contains(line, " -g ") {
				b.WriteString(line + "\n")
				n++
			}
		}
		for _, nic := range nics {
			for _, ip := range nic.IPs {
				if ip.Is4() != (f == ruleset.IPv4) {
					continue
				}
				rule := layout.Rule{Spec: "-d " + netip.PrefixFrom(ip, ip.BitLen()).String() + " -g " + string(layout.TapChain(nic.Tap, "in"))}
				b.WriteString(rule.Line(layout.ChainRoute) + "\n")
				n++
				if ip == want {
					pos = n
				}
			}
		}
		b.WriteString("COMMIT\n")
		if _, err := l.hv.runIn(l.ctx, []byte(b.String()), l.tool(f, "-restore"), "--noflush"); err != nil {
			return 0, 0, err
		}
		if want.Is4() == (f == ruleset.IPv4) {
			total = n
		}
	}
	return pos, total, nil
}

// routeTreeStats describes the IPv6 vmfw-route tree vmfw builds for the
// installed interfaces (the lab holds exactly that; the data plane checks
// it at the end): its chains, its depth, its longest chain, and how many
// rules a packet to dst and a packet to the worst-placed address evaluate
// before their leaf sends them to an in chain (the head rules included).
func (l *lab) routeTreeStats(dst string) (*treeStats, error) {
	nics, err := l.installedNICs()
	if err != nil {
		return nil, err
	}
	m, err := config.Load(l.dir)
	if err != nil {
		return nil, err
	}
	rs, err := layout.FromConfig(m, nics)
	if err != nil {
		return nil, err
	}
	chains := map[layout.Chain]*layout.ChainRules{}
	longest := 0
	for _, c := range rs.Tables[ruleset.IPv6].Chains {
		if c.Name == layout.ChainRoute || strings.HasSuffix(string(c.Name), "-rt") {
			chains[c.Name] = c
			longest = max(longest, len(c.Rules))
		}
	}
	if chains[layout.ChainRoute] == nil {
		return nil, fmt.Errorf("vmfw builds no IPv6 %s", layout.ChainRoute)
	}
	// walk returns the rules a packet to a evaluates and the chains it
	// passes, or ok false when no leaf takes it.
	walk := func(a netip.Addr) (rules, depth int, ok bool) {
		c := chains[layout.ChainRoute]
		for depth = 1; depth <= 64; depth++ {
			var next *layout.ChainRules
			for _, rule := range c.Rules {
				rules++
				f := strings.Fields(rule.Spec)
				if len(f) < 4 || f[0] != "-d" || f[2] != "-g" {
					continue // a head rule
				}
				p, err := netip.ParsePrefix(f[1])
				if err != nil || !p.Contains(a) {
					continue
				}
				if next = chains[layout.Chain(f[3])]; next == nil {
					return rules, depth, true // the leaf
				}
				break
			}
			if next == nil {
				return rules, depth, false
			}
			c = next
		}
		return rules, depth, false
	}
	st := &treeStats{chains: len(chains), longest: longest}
	var ok bool
	if st.dstRules, st.dstDepth, ok = walk(netip.MustParseAddr(dst)); !ok {
		return nil, fmt.Errorf("no leaf of the IPv6 %s takes %s", layout.ChainRoute, dst)
	}
	for _, n := range nics {
		for _, ip := range n.IPs {
			if !ip.Is6() {
				continue
			}
			rules, depth, ok := walk(ip)
			if !ok {
				return nil, fmt.Errorf("no leaf of the IPv6 %s takes %s (%s)", layout.ChainRoute, ip, n.Tap)
			}
			st.addrs++
			st.depth = max(st.depth, depth)
			if rules > st.worst {
				st.worst, st.worstAddr = rules, ip
			}
		}
	}
	return st, nil
}

// treeStats describes an address tree: how many addresses and chains, its
// depth in chains and its longest chain in rules, and the rules a packet
// evaluates to reach its leaf: to VM 2, and at worst.
type treeStats struct {
	addrs, chains, depth, longest int
	dstRules, dstDepth, worst     int
	worstAddr                     netip.Addr
}

func (t *treeStats) String() string {
	return fmt.Sprintf("%d addresses, %d chains, depth %d, longest chain %d rules; a packet to VM 2 evaluates %d rules in %d chains (at worst, to %s: %d)",
		t.addrs, t.chains, t.depth, t.longest, t.dstRules, t.dstDepth, t.worstAddr, t.worst)
}

// loadAverage returns the 1-minute load average of the machine.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}
