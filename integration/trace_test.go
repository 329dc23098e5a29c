package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/testbin"
)

// The differential test of vmfw trace: on randomly generated
// configurations (seeded, so a failure can be replayed), random flows —
// bridged and routed between VMs, from hosts on the bridge and behind the
// hypervisor's routing, from and to the hypervisor itself, IPv4 and IPv6,
// TCP, UDP and ICMP — are traced and then sent as real packets; trace's
// verdict must be what the packets do, every time.
//
// The lab: a bridge with two subnets (A: 192.0.2.0/24 and 2001:db8::/64,
// B: 203.0.113.0/24 and 2001:db8:3::/64), the hypervisor routing between
// them and to a host behind a veth of its own (198.51.100.0/24,
// 2001:db8:2::/64); VMs on either subnet; an external host on the bridge
// (subnet A). Every sender's ephemeral ports are 40000-40999, so rules
// with source ports either match every probe or none, and trace is asked
// for source port 40500.
//
// VMFW_LONG=1 runs the long version: more configurations, more flows.

// diffPorts are the ports every host serves TCP and UDP echo on.
var diffPorts = []int{22, 80, 443, 5000, 8080}

// diffSubnet is one of the bridge's subnets.
type diffSubnet struct {
	v4, v6 string // prefixes without the host part: "192.0.2.", "2001:db8::"
}

var diffSubnets = []diffSubnet{{"192.0.2.", "2001:db8::"}, {"203.0.113.", "2001:db8:3::"}}

// diffHost is a VM or an external host of the lab.
type diffHost struct {
	name   string
	id     int    // VM id, 0 for the others
	tap    string // VM tap
	mac    string
	v4, v6 string
	subnet int
	ns     *labnet.NS
	// gw4 and gw6 are the hypervisor's addresses its traffic is routed by.
	gw4, gw6 string
}

func (d *diffHost) addr(v6 bool) string {
	if v6 {
		return d.v6
	}
	return d.v4
}

// diffLab is the lab of one backend.
type diffLab struct {
	h          *hv
	vms        []*diffHost
	extB, extR *diffHost
	// first is the file of the IPv4-only VM the lab starts with, which
	// every random configuration keeps.
	first string
}

func TestTraceMatchesPackets(t *testing.T) {
	configs, flows := 3, 200
	if os.Getenv("VMFW_LONG") != "" {
		configs, flows = 10, 400
	}
	forEachBackend(t, func(t *testing.T, backend string) {
		d := newDiffLab(t, backend, 6)
		total, mismatches := 0, 0
		seen := map[string]int{}
		for c := range configs {
			seed := int64(1000*c + 7)
			if backend == "legacy" {
				seed += 500
			}
			r := rand.New(rand.NewSource(seed))
			d.writeConfig(r)
			d.h.vmfw("apply")
			n, bad := d.checkFlows(t, r, flows, seed, seen)
			total += n
			mismatches += bad
		}
		t.Logf("%s: %d flows on %d configurations, %d mismatches; by path and verdict: %v", backend, total, configs, mismatches, seen)
	})
}

// newDiffLab builds the lab with n VMs and firewalls them.
func newDiffLab(t *testing.T, backend string, n int) *diffLab {
	return newDiffLabPlaced(t, backend, n, int64(len(backend)))
}

// newDiffLabPlaced is newDiffLab with the VMs' subnets drawn from
// placement: labs with one placement are alike.
func newDiffLabPlaced(t *testing.T, backend string, n int, placement int64) *diffLab {
	h := newHV(t, backend, "")
	d := &diffLab{h: h}
	ctx := context.Background()
	hvExec := func(args ...string) {
		t.Helper()
		if out, err := h.ns.Exec(ctx, args...); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	hvExec("ip", "addr", "add", "203.0.113.1/24", "dev", h.lab.Bridge())
	hvExec("ip", "addr", "add", "2001:db8:3::1/64", "dev", h.lab.Bridge(), "nodad")
	setSysctls(t, h.ns, "net/ipv4/ip_forward=1", "net/ipv6/conf/all/forwarding=1", "net/ipv4/ip_local_port_range=40000 40999")

	// VMs on random subnets (fixed per backend, so each backend has both).
	r := rand.New(rand.NewSource(placement))
	for i := range n {
		id := 201 + i
		sub := i % 2
		if i >= 2 {
			sub = r.Intn(2)
		}
		vm := &diffHost{name: fmt.Sprintf("vm%d", id), id: id, tap: fmt.Sprintf("tap%di0", id), mac: fmt.Sprintf("02:00:00:00:03:%02x", i+1),
			v4: fmt.Sprintf("%s%d", diffSubnets[sub].v4, 10+i), v6: fmt.Sprintf("%s%x", diffSubnets[sub].v6, 0x10+i), subnet: sub,
			gw4: diffSubnets[sub].v4 + "1", gw6: diffSubnets[sub].v6 + "1"}
		ns, err := h.lab.AddVM(vm.tap, vm.mac, vm.v4+"/24", vm.v6+"/64")
		if err != nil {
			t.Fatalf("adding %s: %v", vm.tap, err)
		}
		vm.ns = ns
		d.vms = append(d.vms, vm)
	}
	ext := h.external("02:00:00:00:04:01", "192.0.2.200/24", "2001:db8::200/64")
	d.extB = &diffHost{name: "ext-bridged", mac: "02:00:00:00:04:01", v4: "192.0.2.200", v6: "2001:db8::200", ns: ext, gw4: "192.0.2.1", gw6: "2001:db8::1"}
	// The routed host sits behind a veth of the hypervisor that is no
	// bridge port (AddVM leaves the hypervisor end unattached).
	rt, err := h.lab.AddVM("rt0", "02:00:00:00:04:02", "198.51.100.2/24", "2001:db8:2::2/64")
	if err != nil {
		t.Fatal(err)
	}
	hvExec("ip", "addr", "add", "198.51.100.1/24", "dev", "rt0")
	hvExec("ip", "addr", "add", "2001:db8:2::1/64", "dev", "rt0", "nodad")
	d.extR = &diffHost{name: "ext-routed", mac: "02:00:00:00:04:02", v4: "198.51.100.2", v6: "2001:db8:2::2", ns: rt, gw4: "198.51.100.1", gw6: "2001:db8:2::1"}

	// Default routes through the hypervisor, narrow ephemeral ports, and
	// echo servers everywhere (the hypervisor too).
	for _, host := range append(slices.Clone(d.vms), d.extB, d.extR) {
		for _, args := range [][]string{{"ip", "route", "add", "default", "via", host.gw4}, {"ip", "-6", "route", "add", "default", "via", host.gw6}} {
			if out, err := host.ns.Exec(ctx, args...); err != nil {
				t.Fatalf("%s: %v: %v: %s", host.name, args, err, out)
			}
		}
		// Redirects are refused so that a routed flow stays routed: the
		// hypervisor redirects a sender to a receiver on its own bridge
		// (same interface in and out), which would bridge the flow's
		// later packets, and the nftables backend decides bridged and
		// routed packets differently (docs/nftables.md).
		setSysctls(t, host.ns, "net/ipv4/ip_local_port_range=40000 40999",
			"net/ipv4/conf/all/accept_redirects=0", "net/ipv4/conf/eth0/accept_redirects=0",
			"net/ipv6/conf/all/accept_redirects=0", "net/ipv6/conf/eth0/accept_redirects=0")
		serveAll(t, host.ns)
	}
	serveAll(t, h.ns)
	h.firstV4(200, "192.0.2.9")
	first, err := os.ReadFile(filepath.Join(h.config, "vms", "200.toml"))
	if err != nil {
		t.Fatal(err)
	}
	d.first = string(first)
	// A first configuration so that ifup finds the VM files.
	d.writeConfig(rand.New(rand.NewSource(1)))
	for _, vm := range d.vms {
		h.vmfw("ifup", vm.tap)
	}
	return d
}

// setSysctls writes /proc/sys keys ("net/ipv4/ip_forward=1") inside ns.
func setSysctls(t *testing.T, ns *labnet.NS, kv ...string) {
	t.Helper()
	err := ns.Do(func() error {
		for _, s := range kv {
			k, v, _ := strings.Cut(s, "=")
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("sysctl in %s: %v", ns, err)
	}
}

func serveAll(t *testing.T, ns *labnet.NS) {
	t.Helper()
	for _, p := range diffPorts {
		stop, err := labnet.ServeTCP(ns, fmt.Sprintf(":%d", p))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		stop, err = labnet.ServeUDP(ns, fmt.Sprintf(":%d", p))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
}

// pick returns one of list at random.
func pick[T any](r *rand.Rand, list ...T) T { return list[r.Intn(len(list))] }

// randomProto picks a random flow's protocol: tcp (45%) or udp (35%) to
// one of diffPorts, or a ping (port 0).
func randomProto(r *rand.Rand) (proto string, port int) {
	switch p := r.Intn(100); {
	case p < 45:
		return "tcp", pick(r, diffPorts...)
	case p < 80:
		return "udp", pick(r, diffPorts...)
	}
	return "ping", 0
}

// randomGroup is the file of a random group g: up to five in rules and up
// to three out rules, each as rule writes one for its direction.
func randomGroup(r *rand.Rand, g string, rule func(dir string) string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "description = \"random group %s\"\n", g)
	for _, dir := range []string{"in", "out"} {
		n := r.Intn(6)
		if dir == "out" {
			n = r.Intn(4)
		}
		for range n {
			b.WriteString("\n[[" + dir + "]]\n" + rule(dir))
		}
	}
	return b.String()
}

// writeConfig replaces the configuration with a random one: four groups
// of random rules, the lab's VMs with random policies and groups.
func (d *diffLab) writeConfig(r *rand.Rand) {
	h := d.h
	for _, sub := range []string{"groups", "vms"} {
		os.RemoveAll(filepath.Join(h.config, sub))
		if err := os.MkdirAll(filepath.Join(h.config, sub), 0o755); err != nil {
			h.t.Fatal(err)
		}
	}
	if d.first != "" {
		h.write("vms/200.toml", d.first)
	}
	groups := []string{"g0", "g1", "g2", "g3"}
	for _, g := range groups {
		h.write("groups/"+g+".toml", randomGroup(r, g, func(dir string) string { return d.randomRule(r, dir, groups) }))
	}
	for _, vm := range d.vms {
		var b strings.Builder
		fmt.Fprintf(&b, "name = %q\n", vm.name)
		fmt.Fprintf(&b, "policy_in = %q\n", pick(r, "drop", "drop", "reject", "accept"))
		fmt.Fprintf(&b, "policy_out = %q\n", pick(r, "accept", "accept", "accept", "drop", "reject"))
		fmt.Fprintf(&b, "log = %v\n", r.Intn(5) == 0)
		var gs []string
		for _, i := range r.Perm(len(groups))[:r.Intn(4)] {
			gs = append(gs, strconv.Quote(groups[i]))
		}
		fmt.Fprintf(&b, "\n[net0]\nmac = %q\nips = [%q, %q]\nbridge = %q\ngroups = [%s]\ndhcp = %v\n",
			vm.mac, vm.v4, vm.v6, h.lab.Bridge(), strings.Join(gs, ", "), r.Intn(2) == 0)
		h.write(fmt.Sprintf("vms/%d.toml", vm.id), b.String())
	}
}

// randomRule writes the keys of one rule.
func (d *diffLab) randomRule(r *rand.Rand, dir string, groups []string) string {
	var b strings.Builder
	proto := pick(r, "tcp", "tcp", "tcp", "udp", "udp", "icmp", "icmpv6", "", "", "")
	if proto != "" {
		fmt.Fprintf(&b, "proto = %q\n", proto)
	}
	switch proto {
	case "tcp", "udp":
		if r.Intn(10) < 6 {
			fmt.Fprintf(&b, "dport = %q\n", pick(r, "22", "80", "443", "22,80", "5000:9000", "1:1024", "8080"))
		}
		if r.Intn(7) == 0 {
			// Whole or none of the senders' ephemeral ports 40000-40999.
			fmt.Fprintf(&b, "sport = %q\n", pick(r, "40000:40999", "1024:39999", "41000:65535", "30000:50000"))
		}
	case "icmp", "icmpv6":
		if r.Intn(2) == 0 {
			fmt.Fprintf(&b, "icmp_type = %q\n", pick(r, "echo-request", "echo-request", "echo-reply", "destination-unreachable"))
		}
	}
	addrs := []string{"192.0.2.0/25", "192.0.2.128/25", "203.0.113.0/24", "198.51.100.0/24", "2001:db8::/64", "2001:db8:3::/64", "2001:db8:2::/48",
		"192.0.2.1", "2001:db8::1", d.extB.v4, d.extB.v6, d.extR.v4}
	for _, vm := range d.vms {
		addrs = append(addrs, vm.v4, vm.v6)
	}
	addrKey, groupKey := "source", "source_group"
	if dir == "out" {
		addrKey, groupKey = "dest", "dest_group"
	}
	switch r.Intn(10) {
	case 0, 1, 2:
		var list []string
		for range 1 + r.Intn(2) {
			list = append(list, strconv.Quote(pick(r, addrs...)))
		}
		fmt.Fprintf(&b, "%s = [%s]\n", addrKey, strings.Join(list, ", "))
	case 3, 4:
		fmt.Fprintf(&b, "%s = %q\n", groupKey, pick(r, groups...))
	case 5:
		if dir == "in" {
			macs := []string{d.extB.mac, d.extR.mac}
			for _, vm := range d.vms {
				macs = append(macs, vm.mac)
			}
			fmt.Fprintf(&b, "source_mac = %q\n", pick(r, macs...))
		}
	}
	fmt.Fprintf(&b, "action = %q\n", pick(r, "accept", "accept", "accept", "drop", "drop", "reject"))
	if r.Intn(8) == 0 {
		b.WriteString("log = true\n")
	}
	if r.Intn(4) == 0 {
		fmt.Fprintf(&b, "comment = %q\n", fmt.Sprintf("rule %d", r.Intn(1000)))
	}
	return b.String()
}

// diffFlow is one random flow: how trace is asked, how the probe goes.
type diffFlow struct {
	what  string
	query map[string]any
	from  *labnet.NS
	// dst is the address probed, proto tcp, udp or ping.
	dst   string
	proto string
	port  int
}

// randomFlow picks a sender, a receiver, a family and a protocol, and
// names the ends in one of the ways trace accepts.
func (d *diffLab) randomFlow(r *rand.Rand) diffFlow {
	v6 := r.Intn(2) == 0
	fam := 4
	if v6 {
		fam = 6
	}
	vm := func() *diffHost { return d.vms[r.Intn(len(d.vms))] }
	vmSpec := func(x *diffHost) string {
		return pick(r, strconv.Itoa(x.id), x.tap, x.addr(v6), x.name)
	}
	var f diffFlow
	q := map[string]any{"family": fam, "sport": 40500}
	var src, dst *diffHost
	var fromSpec, toSpec string
	switch k := r.Intn(100); {
	case k < 35:
		src, dst = vm(), vm()
		for dst == src {
			dst = vm()
		}
		fromSpec, toSpec = vmSpec(src), vmSpec(dst)
	case k < 47:
		src, dst = d.extB, vm()
		fromSpec, toSpec = src.addr(v6), vmSpec(dst)
		q["mac"] = src.mac
	case k < 59:
		src, dst = d.extR, vm()
		fromSpec, toSpec = src.addr(v6), vmSpec(dst)
		q["mac"] = src.mac
	case k < 71:
		dst = vm()
		fromSpec, toSpec = "hypervisor", vmSpec(dst)
		f.from = d.h.ns
	case k < 80:
		src = vm()
		gw := &diffHost{name: "hypervisor", v4: src.gw4, v6: src.gw6}
		dst = gw
		fromSpec, toSpec = vmSpec(src), pick(r, "hypervisor", gw.addr(v6))
	case k < 90:
		src, dst = vm(), d.extB
		fromSpec, toSpec = vmSpec(src), dst.addr(v6)
	default:
		src, dst = vm(), d.extR
		fromSpec, toSpec = vmSpec(src), dst.addr(v6)
	}
	if src != nil {
		f.from = src.ns
	}
	f.dst = dst.addr(v6)
	q["from"], q["to"] = fromSpec, toSpec
	f.proto, f.port = randomProto(r)
	switch f.proto {
	case "ping":
		q["proto"] = map[bool]string{false: "icmp", true: "icmpv6"}[v6]
		delete(q, "sport")
	default:
		q["proto"], q["dport"] = f.proto, f.port
	}
	f.query = q
	srcName := "hypervisor"
	if src != nil {
		srcName = src.name
	}
	f.what = fmt.Sprintf("IPv%d %s %s > %s", fam, f.proto, srcName, dst.name)
	if f.port != 0 {
		f.what += ":" + strconv.Itoa(f.port)
	}
	return f
}

// traceReport is the part of vmfw trace's JSON the test reads.
type traceReport struct {
	Verdict string `json:"verdict"`
	Error   string `json:"error"`
	Path    string `json:"path"`
	Config  struct {
		Verdict string `json:"verdict"`
	} `json:"config"`
	Kernel *struct {
		Verdict   string `json:"verdict"`
		DecidedBy string `json:"decided_by"`
		Error     string `json:"error"`
	} `json:"kernel"`
	Drift []string `json:"drift"`
	Notes []string `json:"notes"`
}

// documented reports whether the report says that the backend's verdict
// differs from the configuration's by a documented difference (the
// nftables backend's in rules at bridge postrouting, docs/nftables.md).
func (r traceReport) documented() bool {
	return slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, "Differences from the iptables backend") })
}

// traceBatch runs vmfw trace --batch with the queries and returns the
// reports in order.
func (h *hv) traceBatch(queries []map[string]any) []traceReport {
	h.t.Helper()
	var in bytes.Buffer
	enc := json.NewEncoder(&in)
	for _, q := range queries {
		if err := enc.Encode(q); err != nil {
			h.t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.ns.Name, testbin.VMFW, h.backendFlags()[0], h.backendFlags()[1], "--config-dir", h.config, "trace", "--batch", "-")
	cmd.Stdin = &in
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		h.t.Fatalf("vmfw trace --batch: %v\n%s", err, errOut.String())
	}
	var reps []traceReport
	dec := json.NewDecoder(&out)
	for dec.More() {
		var r traceReport
		if err := dec.Decode(&r); err != nil {
			h.t.Fatalf("decoding trace output: %v", err)
		}
		reps = append(reps, r)
	}
	if len(reps) != len(queries) {
		h.t.Fatalf("trace --batch answered %d of %d queries", len(reps), len(queries))
	}
	return reps
}

// observed maps a probe's result to the verdict that causes it.
func observed(proto string, r labnet.Result) string {
	switch r {
	case labnet.Connected:
		return "accept"
	case labnet.Timeout:
		return "drop"
	case labnet.Refused:
		if proto == "tcp" {
			return "reject"
		}
	case labnet.Unreachable:
		if proto != "tcp" {
			return "reject"
		}
	}
	return "unexpected " + r.String()
}

// checkFlows traces n random flows, sends them, and reports every flow
// whose packets did not do what trace said.
func (d *diffLab) checkFlows(t *testing.T, r *rand.Rand, n int, seed int64, seen map[string]int) (total, mismatches int) {
	t.Helper()
	flows := make([]diffFlow, n)
	queries := make([]map[string]any, n)
	for i := range flows {
		flows[i] = d.randomFlow(r)
		queries[i] = flows[i].query
	}
	reps := d.h.traceBatch(queries)
	results, errs := labnet.ProbeAll(n, func(ctx context.Context, i int) (labnet.Result, error) {
		f := flows[i]
		switch f.proto {
		case "tcp":
			return labnet.TCPConnect(ctx, f.from, labnet.HostPort(f.dst, f.port), probeTimeout)
		case "udp":
			return labnet.UDPProbe(ctx, f.from, labnet.HostPort(f.dst, f.port), probeTimeout)
		default:
			return labnet.Ping(ctx, f.from, f.dst, probeTimeout)
		}
	})
	for i, f := range flows {
		rep := reps[i]
		q, _ := json.Marshal(f.query)
		denied := false
		if errs[i] != nil && f.from == d.h.ns && errors.Is(errs[i], unix.EPERM) {
			// A packet the hypervisor sends that OUTPUT drops or rejects
			// fails the sending call with EPERM before any ICMP error
			// can arrive: a local sender cannot tell drop from reject
			// (TCP retransmits instead, and times out or is reset).
			denied, errs[i] = true, nil
		}
		switch {
		case errs[i] != nil:
			t.Errorf("seed %d: %s: probe failed: %v", seed, f.what, errs[i])
			continue
		case rep.Error != "":
			t.Errorf("seed %d: %s: trace %s: %s", seed, f.what, q, rep.Error)
			mismatches++
			continue
		}
		total++
		seen[rep.Path+" "+rep.Verdict]++
		got := observed(f.proto, results[i])
		if denied {
			got = "drop or reject"
		}
		var problems []string
		if rep.Verdict != got && !(denied && (rep.Verdict == "drop" || rep.Verdict == "reject")) {
			problems = append(problems, fmt.Sprintf("trace says %s, packets were %s (%v)", rep.Verdict, got, results[i]))
		}
		if rep.Kernel == nil || rep.Kernel.Error != "" {
			problems = append(problems, fmt.Sprintf("kernel rules not evaluated: %+v", rep.Kernel))
		} else if rep.Config.Verdict != rep.Kernel.Verdict && !(d.h.nft() && rep.documented()) {
			problems = append(problems, fmt.Sprintf("configuration says %s, kernel %s", rep.Config.Verdict, rep.Kernel.Verdict))
		}
		if len(rep.Drift) > 0 {
			problems = append(problems, fmt.Sprintf("drift right after apply: %v", rep.Drift))
		}
		if len(problems) > 0 {
			mismatches++
			by := ""
			if rep.Kernel != nil {
				by = rep.Kernel.DecidedBy
			}
			t.Errorf("seed %d: %s (%s path, decided by %s): %s\n  vmfw trace query: %s",
				seed, f.what, rep.Path, by, strings.Join(problems, "; "), q)
		}
	}
	return total, mismatches
}
