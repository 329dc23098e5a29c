package integration

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
)

// The cross-backend differential test (docs/nftables.md, "Tests"): one
// random configuration — groups with rules over every key, address sets
// with excepts, VMs of every shape (anti-spoofing on, off and by MAC, no
// addresses, disabled, two interfaces, each policy, logging) — is applied
// to two alike labs, one per backend (the iptables backend on
// iptables-nft, and the nftables backend), and the same random flows are
// sent in both: bridged between VMs and from a host on the bridge, routed
// between the bridge's subnets and from a host behind the hypervisor's
// routing, from and to the hypervisor. Each flow must do the same in both
// labs, except for the nftables backend's documented differences, which
// are asserted as such: a reject decided for a routed or host-sent packet
// is a drop; such packets to an interface that does not list their
// destination meet its in rules instead of a drop; source_mac in rules
// see the bridge's MAC on them.
//
// make test runs 2 configurations × 150 flows; VMFW_LONG=1 (make
// crossbackend) runs 8 × 400, and VMFW_SEED=N replays one configuration.

// crossPlacement places the VMs of both labs on the same subnets.
const crossPlacement = 11

// crossLab is one backend's lab: the trace test's lab with a second
// interface for two of its VMs.
type crossLab struct {
	*diffLab
	// nics are the VMs' interfaces: the lab's VMs, then the second
	// interfaces (net1) of the first two.
	nics []*diffHost
}

func newCrossLab(t *testing.T, backend string) *crossLab {
	d := newDiffLabPlaced(t, backend, 6, crossPlacement)
	c := &crossLab{diffLab: d, nics: slices.Clone(d.vms)}
	ctx := context.Background()
	for i, vm := range d.vms[:2] {
		sub := 1 - vm.subnet
		second := &diffHost{name: vm.name + "-net1", id: vm.id, tap: fmt.Sprintf("tap%di1", vm.id), mac: fmt.Sprintf("02:00:00:00:05:%02x", i+1),
			v4: fmt.Sprintf("%s%d", diffSubnets[sub].v4, 50+i), v6: fmt.Sprintf("%s%x", diffSubnets[sub].v6, 0x50+i), subnet: sub,
			gw4: diffSubnets[sub].v4 + "1", gw6: diffSubnets[sub].v6 + "1"}
		ns, err := d.h.lab.AddVM(second.tap, second.mac, second.v4+"/24", second.v6+"/64")
		if err != nil {
			t.Fatalf("adding %s: %v", second.tap, err)
		}
		second.ns = ns
		// AddVM leaves the port off the bridge (vmfw ifup attaches a
		// tap); apply installs its filtering, so the lab attaches it.
		if err := d.h.lab.AttachToBridge(second.tap); err != nil {
			t.Fatal(err)
		}
		if err := d.h.lab.WaitForwarding(second.tap); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"ip", "route", "add", "default", "via", second.gw4}, {"ip", "-6", "route", "add", "default", "via", second.gw6}} {
			if out, err := ns.Exec(ctx, args...); err != nil {
				t.Fatalf("%s: %v: %v: %s", second.name, args, err, out)
			}
		}
		setSysctls(t, ns, "net/ipv4/ip_local_port_range=40000 40999",
			"net/ipv4/conf/all/accept_redirects=0", "net/ipv4/conf/eth0/accept_redirects=0",
			"net/ipv6/conf/all/accept_redirects=0", "net/ipv6/conf/eth0/accept_redirects=0")
		serveAll(t, ns)
		c.nics = append(c.nics, second)
	}
	return c
}

// crossVM is how a random configuration sets up one interface.
type crossVM struct {
	antispoof string // "true", "false", "\"mac\""
	noIPs     bool   // lists no addresses (with antispoof = false)
	disabled  bool
	sourceMAC bool // one of its groups has an in rule on source_mac
}

// writeCrossConfig writes a random configuration into the lab's
// directory and returns how each interface is set up, by tap.
func (c *crossLab) writeCrossConfig(r *rand.Rand) map[string]*crossVM {
	h := c.h
	for _, sub := range []string{"groups", "vms", "sets"} {
		os.RemoveAll(filepath.Join(h.config, sub))
		if err := os.MkdirAll(filepath.Join(h.config, sub), 0o755); err != nil {
			h.t.Fatal(err)
		}
	}
	h.write("vms/200.toml", c.first)
	// Sets over the lab's subnets, an except carving a part out and an
	// entry inside the except.
	h.write("sets/s0.toml", "entries = [\"192.0.2.0/24\", \"2001:db8::/64\", \"198.51.100.2\"]\nexcept = [\"192.0.2.0/28\", \"2001:db8::/124\"]\n")
	h.write("sets/s1.toml", "entries = [\"203.0.113.0/24\", \"2001:db8:3::/64\", \"192.0.2.12\", \"192.0.2.200\"]\nexcept = [\"203.0.113.0/28\"]\n")
	groups := []string{"g0", "g1", "g2", "g3"}
	macRule := map[string]bool{}
	for _, g := range groups {
		h.write("groups/"+g+".toml", randomGroup(r, g, func(dir string) string {
			rule := c.randomRule(r, dir, groups)
			if r.Intn(5) == 0 && !strings.Contains(rule, "source_mac") {
				key := "source_set"
				if dir == "out" {
					key = "dest_set"
				}
				rule = fmt.Sprintf("%s = %q\n", key, pick(r, "s0", "s1")) + rule
			}
			if dir == "in" && strings.Contains(rule, "source_mac") {
				macRule[g] = true
			}
			return rule
		}))
	}
	shapes := map[string]*crossVM{}
	byVM := map[int][]*diffHost{}
	for _, n := range c.nics {
		byVM[n.id] = append(byVM[n.id], n)
	}
	for _, id := range slices.Sorted(maps.Keys(byVM)) {
		var b strings.Builder
		fmt.Fprintf(&b, "name = \"vm%d\"\n", id)
		enabled := r.Intn(12) != 0
		fmt.Fprintf(&b, "enable = %v\n", enabled)
		fmt.Fprintf(&b, "policy_in = %q\n", pick(r, "drop", "drop", "reject", "accept"))
		fmt.Fprintf(&b, "policy_out = %q\n", pick(r, "accept", "accept", "accept", "drop", "reject"))
		if r.Intn(4) == 0 {
			fmt.Fprintf(&b, "log_in = %q\nlog_out = %q\n", pick(r, "info", "debug", "warning"), pick(r, "notice", "err"))
		}
		for i, n := range byVM[id] {
			s := &crossVM{antispoof: pick(r, "true", "true", "false", `"mac"`), disabled: !enabled}
			ips := fmt.Sprintf("[%q, %q]", n.v4, n.v6)
			if s.antispoof == "false" && r.Intn(2) == 0 {
				s.noIPs, ips = true, "[]"
			}
			var gs []string
			for _, k := range r.Perm(len(groups))[:r.Intn(4)] {
				gs = append(gs, strconv.Quote(groups[k]))
				s.sourceMAC = s.sourceMAC || macRule[groups[k]]
			}
			fmt.Fprintf(&b, "\n[net%d]\nmac = %q\nips = %s\nbridge = %q\ngroups = [%s]\nantispoof = %s\ndhcp = %v\n",
				i, n.mac, ips, h.lab.Bridge(), strings.Join(gs, ", "), s.antispoof, r.Intn(2) == 0)
			shapes[n.tap] = s
		}
		h.write(fmt.Sprintf("vms/%d.toml", id), b.String())
	}
	return shapes
}

// crossFlow is one flow, by the index of its ends among the lab's
// endpoints (crossLab.ends).
type crossFlow struct {
	src, dst int
	v6       bool
	proto    string
	port     int
}

// ends are the lab's endpoints: its VM interfaces, the host on the
// bridge, the routed host, and the hypervisor (nil).
func (c *crossLab) ends() []*diffHost {
	return append(slices.Clone(c.nics), c.extB, c.extR, nil)
}

// randomCrossFlow picks a flow with a VM interface at one end at least.
func randomCrossFlow(r *rand.Rand, nics, ends int) crossFlow {
	f := crossFlow{v6: r.Intn(2) == 0}
	for {
		f.src, f.dst = r.Intn(ends), r.Intn(ends)
		if f.src != f.dst && (f.src < nics || f.dst < nics) {
			break
		}
	}
	f.proto, f.port = randomProto(r)
	return f
}

// path is the way a flow takes in lab c, as trace names it.
func (c *crossLab) path(f crossFlow) string {
	e := c.ends()
	src, dst := e[f.src], e[f.dst]
	switch {
	case src == nil:
		return "from-hypervisor"
	case dst == nil:
		return "to-hypervisor"
	case src == c.extR || dst == c.extR:
		return "routed"
	case src.subnet != dst.subnet:
		return "routed"
	}
	return "bridged"
}

// send sends the flows in lab c and returns what each did.
func (c *crossLab) send(t *testing.T, flows []crossFlow) []string {
	e := c.ends()
	results, errs := labnet.ProbeAll(len(flows), func(ctx context.Context, i int) (labnet.Result, error) {
		f := flows[i]
		from, to := c.h.ns, e[f.dst]
		if s := e[f.src]; s != nil {
			from = s.ns
		}
		dst := ""
		if to == nil {
			// The hypervisor's address on the sender's subnet.
			dst = e[f.src].gw4
			if f.v6 {
				dst = e[f.src].gw6
			}
		} else {
			dst = to.addr(f.v6)
		}
		switch f.proto {
		case "tcp":
			return labnet.TCPConnect(ctx, from, labnet.HostPort(dst, f.port), probeTimeout)
		case "udp":
			return labnet.UDPProbe(ctx, from, labnet.HostPort(dst, f.port), probeTimeout)
		}
		return labnet.Ping(ctx, from, dst, probeTimeout)
	})
	out := make([]string, len(flows))
	for i, f := range flows {
		switch {
		case errs[i] != nil && e[f.src] == nil && errors.Is(errs[i], unix.EPERM):
			// The hypervisor's own packet refused on its way out: the
			// sender cannot tell drop from reject.
			out[i] = "refused"
		case errs[i] != nil:
			t.Errorf("%s: probe %s failed: %v", c.h.backend, c.describe(f), errs[i])
			out[i] = "error"
		default:
			out[i] = observed(f.proto, results[i])
		}
	}
	return out
}

func (c *crossLab) describe(f crossFlow) string {
	e := c.ends()
	name := func(x *diffHost) string {
		if x == nil {
			return "hypervisor"
		}
		return x.name
	}
	fam := 4
	if f.v6 {
		fam = 6
	}
	s := fmt.Sprintf("IPv%d %s %s > %s", fam, f.proto, name(e[f.src]), name(e[f.dst]))
	if f.port != 0 {
		s += ":" + strconv.Itoa(f.port)
	}
	return s
}

// same reports whether two results are one verdict: a refused send is
// a drop or a reject.
func same(a, b string) bool {
	denied := func(x string) bool { return x == "drop" || x == "reject" || x == "refused" }
	return a == b || (a == "refused" && denied(b)) || (b == "refused" && denied(a))
}

func TestCrossBackend(t *testing.T) {
	configs, flows := 2, 150
	if os.Getenv("VMFW_LONG") != "" {
		configs, flows = 8, 400
	}
	seeds := make([]int64, configs)
	for i := range seeds {
		seeds[i] = int64(7001 + i)
	}
	if s := os.Getenv("VMFW_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("VMFW_SEED=%q: %v", s, err)
		}
		seeds = []int64{n}
	}
	ipt, nft := newCrossLab(t, "nft"), newCrossLab(t, labtest.NftablesBackend)
	documented := map[string]int{}
	total := 0
	for _, seed := range seeds {
		var shapes map[string]*crossVM
		for _, c := range []*crossLab{ipt, nft} {
			shapes = c.writeCrossConfig(rand.New(rand.NewSource(seed)))
			c.h.vmfw("apply")
		}
		r := rand.New(rand.NewSource(seed * 31))
		list := make([]crossFlow, flows)
		for i := range list {
			list[i] = randomCrossFlow(r, len(ipt.nics), len(ipt.ends()))
		}
		got := map[string][]string{}
		done := make(chan struct{})
		go func() {
			defer close(done)
			got["nft"] = ipt.send(t, list)
		}()
		nftResults := nft.send(t, list)
		<-done
		got[labtest.NftablesBackend] = nftResults
		for i, f := range list {
			a, b := got["nft"][i], got[labtest.NftablesBackend][i]
			total++
			if a == "error" || b == "error" {
				continue
			}
			if same(a, b) {
				continue
			}
			why := ipt.difference(f, shapes, a, b)
			if why == "" {
				t.Errorf("seed %d: %s (%s): iptables %s (trace: %s), nftables %s (trace: %s)", seed, ipt.describe(f), ipt.path(f), a, ipt.explain(f), b, nft.explain(f))
				continue
			}
			documented[why]++
		}
	}
	t.Logf("%d flows on %d configurations; documented differences: %v", total, len(seeds), documented)
}

// difference names the documented difference of the nftables backend
// that explains iptables' result a and nftables' b for flow f, "" when
// none does (docs/nftables.md, "Differences from the iptables backend").
// Each applies to routed and host-sent packets to a VM interface (the
// flow's own, or its replies), which the nftables backend checks at
// bridge postrouting by the port they leave through.
func (c *crossLab) difference(f crossFlow, shapes map[string]*crossVM, a, b string) string {
	path := c.path(f)
	src, dst := c.ends()[f.src], c.ends()[f.dst]
	if src != nil && shapes[src.tap] != nil && shapes[src.tap].noIPs && a == "drop" && (path != "bridged" || b == "reject") {
		// The reply, or the ICMP error the hypervisor sends for a
		// reject, is routed or host-sent to the sender, which lists no
		// address: the iptables backend cannot attribute it and drops
		// it.
		return "replies to an interface without addresses meet its in rules instead of a drop"
	}
	if dst == nil || dst == c.extB || dst == c.extR || (path != "routed" && path != "from-hypervisor") {
		return ""
	}
	s := shapes[dst.tap]
	switch {
	case a == "reject" && b == "drop":
		return "a reject at postrouting is a drop"
	case s != nil && s.noIPs && (a == "drop" || a == "refused"):
		return "in rules for an interface without addresses instead of a drop"
	case s != nil && s.sourceMAC:
		return "source_mac sees the bridge's MAC"
	}
	return ""
}

// explain traces f in lab c, for the message of a flow the two backends
// decide differently: the verdict and what decided it.
func (c *crossLab) explain(f crossFlow) string {
	e := c.ends()
	spec := func(x *diffHost, other *diffHost) string {
		if x == nil {
			return "hypervisor"
		}
		if slices.Contains(c.nics, x) {
			return x.tap
		}
		return x.addr(f.v6)
	}
	fam := 4
	if f.v6 {
		fam = 6
	}
	q := map[string]any{"from": spec(e[f.src], e[f.dst]), "to": spec(e[f.dst], e[f.src]), "family": fam}
	if f.proto == "ping" {
		q["proto"] = map[bool]string{false: "icmp", true: "icmpv6"}[f.v6]
	} else {
		q["proto"], q["dport"], q["sport"] = f.proto, f.port, 40500
	}
	rep := c.h.traceBatch([]map[string]any{q})[0]
	if rep.Kernel == nil {
		return rep.Verdict + " " + rep.Error
	}
	return rep.Verdict + " by " + rep.Kernel.DecidedBy
}
