package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
)

// Routed, NATed and hypervisor-sent traffic (docs/routing.md, "every path into
// a VM meets its in rules"). The kernel picks the bridge port of a packet the
// hypervisor routes or sends only after the IP hooks, so "--physdev-out TAP"
// never sees it: vmfw must attribute such packets to a VM by destination
// address. These tests build hypervisors that route (ip_forward on, host
// addresses on the bridges, an uplink behind a veth that is not a bridge
// port) and prove with real packets that a VM's in rules decide on every path
// into it, in both families, whatever FORWARD's and OUTPUT's policies.
//
// Every test first runs all its flows before vmfw installs anything and
// requires each to connect: the lab routes, forwards and serves, so a flow
// blocked later was blocked by vmfw and by nothing else.

// routedPorts are served (dual stack) on every VM of a routed lab, so that a
// blocked probe means a filter and never a closed port.
var routedPorts = []int{22, 80, 8080}

// Addresses of the uplink: the hypervisor's end of the routed veth, and the
// host behind it with two addresses per family (rules may allow one source
// and not the other).
const (
	uplinkHV4  = "203.0.113.1"
	uplinkHV6  = "2001:db8:203::1"
	uplinkA4   = "203.0.113.2"
	uplinkB4   = "203.0.113.3"
	uplinkA6   = "2001:db8:203::2"
	uplinkB6   = "2001:db8:203::3"
	uplinkPort = 22 // served on the uplink host
)

// routedGroups are the groups the routed tests share.
var routedGroups = map[string]string{
	"ssh": `
[[in]]
proto = "tcp"
dport = "22"
`,
	"web": labtest.WebGroup,
	// fromtwo opens http to one uplink address per family only.
	"fromtwo": `
[[in]]
proto = "tcp"
dport = "80"
source = ["` + uplinkA4 + `", "` + uplinkA6 + `"]
`,
	"ping": `
[[in]]
proto = "icmp"

[[in]]
proto = "icmpv6"
`,
	// noweb: the VM may not open http anywhere.
	"noweb": `
[[out]]
proto = "tcp"
dport = "80"
action = "drop"
`,
	// nosmtp: the VM may not open smtp anywhere, the hypervisor included.
	"nosmtp": `
[[out]]
proto = "tcp"
dport = "25"
action = "drop"
`,
}

// routedVM is one VM of a routed lab: tap tap<id>i0 on bridge (vmbr0 when
// empty), eth0 with mac and addrs ("192.0.2.31/24"), default routes via gw4
// and gw6, and config file vms/<id>.toml with content toml.
type routedVM struct {
	id       int
	bridge   string
	mac      string
	addrs    []string
	gw4, gw6 string
	toml     string
}

func (v routedVM) tap() string { return fmt.Sprintf("tap%di0", v.id) }

// vmToml is the VM file of a VM with one interface: [net0] with bridge,
// mac, ips and groups, followed by extra (more [net0] keys).
func vmToml(head, bridge, mac string, ips, groups []string, extra string) string {
	q := func(ss []string) string {
		out := make([]string, len(ss))
		for i, s := range ss {
			out[i] = `"` + s + `"`
		}
		return "[" + strings.Join(out, ", ") + "]"
	}
	if bridge == "" {
		bridge = "vmbr0"
	}
	s := head + "\n[net0]\nbridge = \"" + bridge + "\"\nmac = \"" + mac + "\"\n"
	if ips != nil {
		s += "ips = " + q(ips) + "\n"
	}
	return s + "groups = " + q(groups) + "\n" + extra
}

// routedOpts says what a routed lab has besides its VMs.
type routedOpts struct {
	// uplinkRoutes gives the uplink host routes to the VM networks via
	// the hypervisor. Without them it knows only its own network, as the
	// world beyond a libvirt NAT network does.
	uplinkRoutes bool
	// vmbr1 adds a second bridge with 198.51.100.1/24 and
	// 2001:db8:198::1/64.
	vmbr1 bool
	// bridgedExt adds host "ext0" bridged on vmbr0 (192.0.2.200,
	// 2001:db8::200): the classic bridged path, for comparison.
	bridgedExt bool
	// hvPorts are served (dual stack) by the hypervisor itself.
	hvPorts []int
}

// routedLab is a hypervisor that routes: ip_forward on in both families,
// vmbr0 with 192.0.2.1/24 and 2001:db8::1/64, and an uplink host behind
// uplink0, a veth that is not a bridge port (hypervisor end 203.0.113.1/24,
// 2001:db8:203::1/64; host 203.0.113.2 and .3, 2001:db8:203::2 and ::3).
type routedLab struct {
	*hv
	uplink *labnet.NS
	ext    *labnet.NS
	vms    map[int]*labnet.NS
	specs  []routedVM
}

func newRoutedLab(t *testing.T, backend string, opts routedOpts, vms ...routedVM) *routedLab {
	t.Helper()
	h := newHV(t, backend, "")
	for name, g := range routedGroups {
		h.write("groups/"+name+".toml", g)
	}
	l := &routedLab{hv: h, vms: map[int]*labnet.NS{}, specs: vms}
	check := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	check("enabling forwarding", h.ns.Sysctl("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"))
	up, err := h.lab.AddRoutedHost("uplink0", "02:00:00:00:03:fe",
		[]string{uplinkHV4 + "/24", uplinkHV6 + "/64"},
		uplinkA4+"/24", uplinkB4+"/24", uplinkA6+"/64", uplinkB6+"/64")
	check("adding uplink", err)
	l.uplink = up
	if opts.uplinkRoutes {
		check("uplink routes", up.IP(
			"route add 192.0.2.0/24 via "+uplinkHV4,
			"route add 198.51.100.0/24 via "+uplinkHV4,
			"route add 2001:db8::/32 via "+uplinkHV6))
	}
	h.serve(up, "", uplinkPort)
	if opts.vmbr1 {
		check("adding vmbr1", h.lab.AddBridge("vmbr1", "198.51.100.1/24", "2001:db8:198::1/64"))
	}
	if opts.bridgedExt {
		l.ext, err = h.lab.AddExternal("ext0", "02:00:00:00:03:fd", "192.0.2.200/24", "2001:db8::200/64")
		check("adding bridged host", err)
	}
	if len(opts.hvPorts) > 0 {
		h.serve(h.ns, "", opts.hvPorts...)
	}
	for _, v := range vms {
		h.write(fmt.Sprintf("vms/%d.toml", v.id), v.toml)
		ns, err := h.lab.AddVM(v.tap(), v.mac, v.addrs...)
		check("adding VM "+v.tap(), err)
		l.vms[v.id] = ns
		// A VM whose peer is behind the same bridge but in another subnet
		// would take an ICMP redirect and then talk to it directly; the
		// routed path is what is under test, so the VMs ignore redirects.
		check("sysctls of "+v.tap(), ns.Sysctl(
			"net.ipv4.conf.all.accept_redirects=0", "net.ipv4.conf.eth0.accept_redirects=0",
			"net.ipv6.conf.all.accept_redirects=0", "net.ipv6.conf.eth0.accept_redirects=0"))
		var routes []string
		for _, gw := range []string{v.gw4, v.gw6} {
			if gw == "" {
				continue
			}
			// ip takes the family from the addresses (ip -batch has no
			// per-line -6).
			if !onLink(v.addrs, gw) {
				// Proxmox-style /32: the gateway is reached on-link.
				routes = append(routes, "route add "+gw+" dev eth0")
			}
			routes = append(routes, "route add default via "+gw+" dev eth0")
		}
		check("routes of "+v.tap(), ns.IP(routes...))
		h.serve(ns, "", routedPorts...)
		br := v.bridge
		if br == "" {
			br = "vmbr0"
		}
		// Attached now so that the lab can be checked before vmfw runs;
		// ifup finds the tap already on its bridge.
		check("attaching "+v.tap(), h.lab.AttachTo(v.tap(), br))
	}
	// A router solicits the neighbour a forwarded IPv6 packet goes to from
	// its link-local address, and sends no solicitation at all while that
	// address is still tentative (duplicate address detection, up to a
	// second or two after the link came up): until then forwarded IPv6
	// goes nowhere, and a probe's lost SYN would be resent only after its
	// timeout. So the lab waits for every link-local address on the way.
	type nsDev struct {
		ns  *labnet.NS
		dev string
	}
	lls := []nsDev{{h.ns, "vmbr0"}, {h.ns, "uplink0"}, {up, "eth0"}}
	if opts.vmbr1 {
		lls = append(lls, nsDev{h.ns, "vmbr1"})
	}
	for _, v := range vms {
		lls = append(lls, nsDev{l.vms[v.id], "eth0"})
	}
	for _, ll := range lls {
		_, err := ll.ns.LinkLocal(ll.dev)
		check("link-local address of "+ll.dev+" in "+ll.ns.Name, err)
	}
	return l
}

// onLink reports whether gw is inside the subnet of one of addrs.
func onLink(addrs []string, gw string) bool {
	g := netip.MustParseAddr(gw)
	for _, a := range addrs {
		if p := netip.MustParsePrefix(a); p.Bits() < p.Addr().BitLen() && p.Masked().Contains(g) {
			return true
		}
	}
	return false
}

// ifupAll firewalls every VM's tap as QEMU would, after an IPv4-only VM
// as vmfw's first act in the lab.
func (l *routedLab) ifupAll() {
	l.t.Helper()
	l.firstV4(300, "192.0.2.9")
	for _, v := range l.specs {
		l.vmfw("ifup", v.tap())
	}
}

// policy sets the policy of a built-in filter chain (FORWARD, OUTPUT) in
// both families.
func (l *routedLab) policy(chain, verdict string) {
	l.t.Helper()
	l.exec(l.tool("iptables"), "-P", chain, verdict)
	l.exec(l.tool("ip6tables"), "-P", chain, verdict)
}

// underForwardPolicies checks the flows in the lab before vmfw is
// involved, firewalls every VM, and then expects the flows with FORWARD's
// policy ACCEPT and with DROP, a subtest each that goes on with more
// (when it is set).
func (l *routedLab) underForwardPolicies(t *testing.T, flows []flow, more func(t *testing.T)) {
	t.Helper()
	checkLab(t, flows)
	l.ifupAll()
	for _, verdict := range []string{"ACCEPT", "DROP"} {
		t.Run("FORWARD-"+verdict, func(t *testing.T) {
			l.policy("FORWARD", verdict)
			expectFlows(t, flows)
			if more != nil {
				more(t)
			}
		})
	}
}

// flow is one expected connection: TCP from `from` (bound to src when set)
// to addr:port, or an ICMP/ICMPv6 echo when ping is set.
type flow struct {
	what string
	from *labnet.NS
	src  string
	addr string
	port int
	ping bool
	open bool
}

// runFlows runs the flows concurrently (a blocked probe waits for its
// timeout) and returns each result.
func runFlows(flows []flow) ([]labnet.Result, []error) {
	return labnet.ProbeAll(len(flows), func(ctx context.Context, i int) (labnet.Result, error) {
		f := flows[i]
		var r labnet.Result
		var err error
		if f.ping {
			r, err = labnet.Ping(ctx, f.from, f.addr, probeTimeout)
		} else {
			r, err = labnet.TCPConnectFrom(ctx, f.from, f.src, labnet.HostPort(f.addr, f.port), probeTimeout)
		}
		if errors.Is(err, syscall.EPERM) {
			// The sender's own netfilter dropped the packet (the
			// kernel reports a drop in OUTPUT to a raw socket as
			// EPERM): for a probe from the hypervisor that is a
			// block, as silent as a Timeout.
			return labnet.Timeout, nil
		}
		return r, err
	})
}

func (f flow) String() string {
	from := f.from.Name
	if f.src != "" {
		from += " (" + f.src + ")"
	}
	if f.ping {
		return fmt.Sprintf("%s: ping %s -> %s", f.what, from, f.addr)
	}
	return fmt.Sprintf("%s: tcp %s -> %s", f.what, from, labnet.HostPort(f.addr, f.port))
}

// expectFlows runs the flows and reports each whose outcome is not the
// expected one: open must connect, anything else must not.
func expectFlows(t *testing.T, flows []flow) {
	t.Helper()
	res, errs := runFlows(flows)
	for i, f := range flows {
		switch {
		case errs[i] != nil:
			t.Errorf("%v: %v", f, errs[i])
		case f.open && res[i] != labnet.Connected:
			t.Errorf("%v should connect, got %v", f, res[i])
		case !f.open && res[i] == labnet.Connected:
			t.Errorf("%v should be blocked, but it connected", f)
		}
	}
}

// checkLab runs the flows before vmfw is involved and stops the test unless
// every one connects: the lab itself (routes, forwarding, NAT, servers) must
// carry all of them, the ones vmfw will block included.
func checkLab(t *testing.T, flows []flow) {
	t.Helper()
	res, errs := runFlows(flows)
	bad := false
	for i, f := range flows {
		if errs[i] != nil || res[i] != labnet.Connected {
			t.Errorf("lab check (no firewall yet): %v: got %v %v", f, res[i], errs[i])
			bad = true
		}
	}
	if bad {
		t.FailNow()
	}
}

// family holds a lab's addresses of one family, for flows written once for
// both.
type family struct {
	name           string
	upA, upB, upHV string // the uplink host's two addresses, the hypervisor's uplink address
	bridgeHV       string // the hypervisor's address on vmbr0
	vm             func(last string) string
	vmbr1          func(last string) string
	proxmox        string // the Proxmox-style routed VM's address
}

var families = []family{
	{
		name: "IPv4", upA: uplinkA4, upB: uplinkB4, upHV: uplinkHV4, bridgeHV: "192.0.2.1",
		vm:      func(n string) string { return "192.0.2." + n },
		vmbr1:   func(n string) string { return "198.51.100." + n },
		proxmox: "198.51.100.50",
	},
	{
		name: "IPv6", upA: uplinkA6, upB: uplinkB6, upHV: uplinkHV6, bridgeHV: "2001:db8::1",
		vm:      func(n string) string { return "2001:db8::" + n },
		vmbr1:   func(n string) string { return "2001:db8:198::" + n },
		proxmox: "2001:db8:50::50",
	},
}

// stdVM is a VM on vmbr0 with 192.0.2.N/24 and 2001:db8::N/64 and MAC
// 02:00:00:00:03:N, default routes via the bridge's addresses, ips listing
// both, the given groups, and head (VM-level keys) and extra ([net0] keys)
// in its file.
func stdVM(id int, n string, head, extra string, groups ...string) routedVM {
	mac := "02:00:00:00:03:" + n
	v4, v6 := "192.0.2."+n, "2001:db8::"+n
	return routedVM{
		id: id, mac: mac,
		addrs: []string{v4 + "/24", v6 + "/64"},
		gw4:   "192.0.2.1", gw6: "2001:db8::1",
		toml: vmToml(head, "vmbr0", mac, []string{v4, v6}, groups, extra),
	}
}

// TestRoutedUplinkToVMs: traffic the hypervisor routes from an uplink (a
// veth that is no bridge port) into vmbr0 meets the destination VM's in
// rules, in both families and whether FORWARD's policy is ACCEPT or DROP:
// the allowed port connects, other ports do not, a rule restricted to one
// uplink source address admits that source and not the uplink's other
// address, and a VM that rejects everything gets nothing. Replies of flows
// the VMs start towards the uplink come back (stateful), and bridged
// traffic on the same host is filtered as before.
func TestRoutedUplinkToVMs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		a := stdVM(301, "31", "", "", "ssh", "fromtwo")
		b := stdVM(302, "32", `policy_in = "reject"`, "")
		l := newRoutedLab(t, backend, routedOpts{uplinkRoutes: true, bridgedExt: true}, a, b)
		A, B, up, ext := l.vms[301], l.vms[302], l.uplink, l.ext
		var flows []flow
		for _, f := range families {
			fa, fb := f.vm("31"), f.vm("32")
			flows = append(flows,
				flow{what: f.name + " routed, A's group opens ssh", from: up, src: f.upA, addr: fa, port: 22, open: true},
				flow{what: f.name + " routed, ssh from the uplink's other address", from: up, src: f.upB, addr: fa, port: 22, open: true},
				flow{what: f.name + " routed, http allowed from this source only", from: up, src: f.upA, addr: fa, port: 80, open: true},
				flow{what: f.name + " routed, http from a source the rule does not list", from: up, src: f.upB, addr: fa, port: 80},
				flow{what: f.name + " routed, port no rule opens (A's policy drops)", from: up, src: f.upA, addr: fa, port: 8080},
				flow{what: f.name + " routed, B rejects everything inbound", from: up, src: f.upA, addr: fb, port: 22},
				flow{what: f.name + " A's own flow to the uplink: the reply comes back", from: A, addr: f.upA, port: uplinkPort, open: true},
				flow{what: f.name + " B's own flow to the uplink: the reply passes B's in chain as established", from: B, addr: f.upA, port: uplinkPort, open: true},
				flow{what: f.name + " bridged, A opens ssh", from: ext, addr: fa, port: 22, open: true},
				flow{what: f.name + " bridged, A's policy drops", from: ext, addr: fa, port: 8080},
				flow{what: f.name + " bridged, B rejects", from: ext, addr: fb, port: 22},
				flow{what: f.name + " bridged VM to VM, B accepts nothing", from: A, addr: fb, port: 22},
				flow{what: f.name + " bridged VM to VM, A opens ssh", from: B, addr: fa, port: 22, open: true},
			)
		}
		l.underForwardPolicies(t, flows, func(t *testing.T) {
			// B's policy is reject: on the routed path too its answer
			// is a reset, which shows that its in chain decided. The
			// nftables backend decides routed packets at bridge
			// postrouting, where reject is a drop (docs/nftables.md,
			// "Differences").
			want := labnet.Refused
			if l.nft() {
				want = labnet.Timeout
			}
			for _, f := range families {
				if r, err := labnet.TCPConnectFrom(context.Background(), up, f.upA, labnet.HostPort(f.vm("32"), 22), probeTimeout); err != nil || r != want {
					t.Errorf("%s routed to B (policy_in reject): got %v %v, want %v", f.name, r, err, want)
				}
			}
		})
	})
}

// TestRoutedNATNetwork: a libvirt-style NAT network. The VMs reach the
// uplink through MASQUERADE and get their replies back (the uplink has no
// route to the VM network, so only the translated flow can work); port
// forwards (DNAT in nat PREROUTING from the uplink, and in nat OUTPUT for the
// hypervisor's own processes) into a VM meet that VM's in rules: forwarded
// to a port its group opens they connect, to a VM or port its rules do not
// open they are blocked. Both families, FORWARD policy ACCEPT and DROP.
func TestRoutedNATNetwork(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		a := stdVM(341, "41", "", "", "ssh")
		b := stdVM(342, "42", "", "")
		l := newRoutedLab(t, backend, routedOpts{}, a, b)
		A, B, up := l.vms[341], l.vms[342], l.uplink
		for _, f := range families {
			ipt, vmnet := l.tool("iptables"), "192.0.2.0/24"
			if f.name == "IPv6" {
				ipt, vmnet = l.tool("ip6tables"), "2001:db8::/64"
			}
			l.exec(ipt, "-t", "nat", "-A", "POSTROUTING", "-s", vmnet, "!", "-d", vmnet, "-j", "MASQUERADE")
			for _, fwd := range []struct {
				port int
				to   string
			}{{2222, labnet.HostPort(f.vm("41"), 22)}, {2223, labnet.HostPort(f.vm("42"), 22)}, {2224, labnet.HostPort(f.vm("41"), 8080)}} {
				for _, chain := range []string{"PREROUTING", "OUTPUT"} {
					l.exec(ipt, "-t", "nat", "-A", chain, "-d", f.upHV, "-p", "tcp", "--dport", fmt.Sprint(fwd.port),
						"-j", "DNAT", "--to-destination", fwd.to)
				}
			}
		}
		var flows []flow
		for _, f := range families {
			flows = append(flows,
				flow{what: f.name + " VM egress masqueraded, reply comes back", from: A, addr: f.upA, port: uplinkPort, open: true},
				flow{what: f.name + " VM egress of a VM that accepts nothing inbound", from: B, addr: f.upA, port: uplinkPort, open: true},
				flow{what: f.name + " port forward to A's ssh, which its group opens", from: up, src: f.upA, addr: f.upHV, port: 2222, open: true},
				flow{what: f.name + " port forward to B's ssh, which nothing opens", from: up, src: f.upA, addr: f.upHV, port: 2223},
				flow{what: f.name + " port forward to A's 8080, which A's policy drops", from: up, src: f.upA, addr: f.upHV, port: 2224},
				flow{what: f.name + " hypervisor's own port forward (nat OUTPUT) to A's ssh", from: l.ns, addr: f.upHV, port: 2222, open: true},
				flow{what: f.name + " hypervisor's own port forward (nat OUTPUT) to B's ssh", from: l.ns, addr: f.upHV, port: 2223},
				flow{what: f.name + " hypervisor's own port forward (nat OUTPUT) to A's 8080", from: l.ns, addr: f.upHV, port: 2224},
			)
		}
		l.underForwardPolicies(t, flows, nil)
	})
}

// TestRoutedHypervisorToVMs: connections the hypervisor's own processes
// open to a VM meet the VM's in rules, in both families: the allowed port
// connects, other ports and a VM that accepts nothing stay closed, ping
// works only where a group opens ICMP. With OUTPUT's policy DROP, vmfw
// accepts the allowed connections itself and the others stay blocked. The
// other direction is unchanged: a VM reaches the hypervisor as its out rules
// and the host's INPUT allow, whatever its in rules, and still resolves the
// hypervisor's IPv6 address by neighbour discovery.
func TestRoutedHypervisorToVMs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		a := stdVM(351, "51", "", "", "ssh", "ping", "nosmtp")
		b := stdVM(352, "52", "", "")
		l := newRoutedLab(t, backend, routedOpts{hvPorts: []int{22, 25}}, a, b)
		A, B, hv := l.vms[351], l.vms[352], l.ns
		var toVMs, toHV []flow
		for _, f := range families {
			fa, fb := f.vm("51"), f.vm("52")
			toVMs = append(toVMs,
				flow{what: f.name + " hypervisor to A's ssh, which its group opens", from: hv, addr: fa, port: 22, open: true},
				flow{what: f.name + " hypervisor to A's 8080, which A's policy drops", from: hv, addr: fa, port: 8080},
				flow{what: f.name + " hypervisor to B, which accepts nothing", from: hv, addr: fb, port: 22},
				flow{what: f.name + " hypervisor pings A, whose group opens ICMP", from: hv, addr: fa, ping: true, open: true},
				flow{what: f.name + " hypervisor pings B, which accepts nothing", from: hv, addr: fb, ping: true},
			)
			toHV = append(toHV,
				flow{what: f.name + " A to the hypervisor's ssh", from: A, addr: f.bridgeHV, port: 22, open: true},
				flow{what: f.name + " A to the hypervisor's uplink address", from: A, addr: f.upHV, port: 22, open: true},
				flow{what: f.name + " A to the hypervisor's smtp, which A's out rule drops", from: A, addr: f.bridgeHV, port: 25},
				flow{what: f.name + " B (accepts nothing inbound) to the hypervisor's ssh", from: B, addr: f.bridgeHV, port: 22, open: true},
				flow{what: f.name + " B to the hypervisor's smtp", from: B, addr: f.bridgeHV, port: 25, open: true},
			)
		}
		checkLab(t, append(slices.Clone(toVMs), toHV...))
		l.ifupAll()
		t.Run("OUTPUT-ACCEPT", func(t *testing.T) {
			expectFlows(t, append(slices.Clone(toVMs), toHV...))
			// The VMs forget the hypervisor's link-layer address: B, whose
			// in chain accepts nothing new, must still get the answers to
			// its neighbour solicitations, which the hypervisor sends.
			for _, vm := range []*labnet.NS{A, B} {
				if err := vm.IP("neigh flush dev eth0"); err != nil {
					t.Fatal(err)
				}
			}
			if err := hv.IP("neigh flush dev vmbr0"); err != nil {
				t.Fatal(err)
			}
			expectFlows(t, []flow{
				{what: "B resolves the hypervisor's IPv6 address", from: B, addr: "2001:db8::1", port: 22, open: true},
				{what: "A resolves the hypervisor's IPv6 address", from: A, addr: "2001:db8::1", port: 22, open: true},
				{what: "the hypervisor resolves A's IPv6 address and pings it", from: hv, addr: "2001:db8::51", ping: true, open: true},
			})
		})
		t.Run("OUTPUT-DROP", func(t *testing.T) {
			// OUTPUT DROP also drops the hypervisor's multicast neighbour
			// solicitations, which belong to no VM and which a real host
			// with this policy allows by a rule of its own; fixed
			// neighbour entries take address resolution out of the test.
			if err := hv.IP(
				"neigh replace 2001:db8::51 lladdr "+a.mac+" dev vmbr0 nud permanent",
				"neigh replace 2001:db8::52 lladdr "+b.mac+" dev vmbr0 nud permanent",
			); err != nil {
				t.Fatal(err)
			}
			l.policy("OUTPUT", "DROP")
			expectFlows(t, toVMs)
		})
	})
}

// TestRoutedBetweenBridges: a packet the hypervisor routes from a VM on
// vmbr0 to a VM on vmbr1 (another subnet, host addresses on both bridges)
// passes the sender's out rules and the receiver's in rules: allowed by the
// sender and refused by the receiver it is blocked, refused by the sender
// and allowed by the receiver it is blocked, allowed by both it connects;
// the same the other way round. Both families, FORWARD ACCEPT and DROP.
func TestRoutedBetweenBridges(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		x := stdVM(361, "61", "", "", "ssh")
		y := stdVM(362, "62", "", "", "ssh", "noweb")
		r := routedVM{
			id: 363, bridge: "vmbr1", mac: "02:00:00:00:03:63",
			addrs: []string{"198.51.100.63/24", "2001:db8:198::63/64"},
			gw4:   "198.51.100.1", gw6: "2001:db8:198::1",
			toml: vmToml("", "vmbr1", "02:00:00:00:03:63", []string{"198.51.100.63", "2001:db8:198::63"}, []string{"web"}, ""),
		}
		l := newRoutedLab(t, backend, routedOpts{uplinkRoutes: true, vmbr1: true}, x, y, r)
		X, Y, R, up := l.vms[361], l.vms[362], l.vms[363], l.uplink
		var flows []flow
		for _, f := range families {
			fx, fy, fr := f.vm("61"), f.vm("62"), f.vmbr1("63")
			flows = append(flows,
				flow{what: f.name + " X to R http: X's out and R's in allow", from: X, addr: fr, port: 80, open: true},
				flow{what: f.name + " X to R ssh: X's out allows, R's in refuses", from: X, addr: fr, port: 22},
				flow{what: f.name + " Y to R http: Y's out refuses, R's in allows", from: Y, addr: fr, port: 80},
				flow{what: f.name + " R to X ssh: both allow", from: R, addr: fx, port: 22, open: true},
				flow{what: f.name + " R to X http: X's in refuses", from: R, addr: fx, port: 80},
				flow{what: f.name + " R to Y ssh: both allow", from: R, addr: fy, port: 22, open: true},
				flow{what: f.name + " uplink to R http", from: up, src: f.upA, addr: fr, port: 80, open: true},
				flow{what: f.name + " uplink to R ssh, which R's in refuses", from: up, src: f.upA, addr: fr, port: 22},
			)
		}
		l.underForwardPolicies(t, flows, nil)
	})
}

// TestRoutedProxmoxStyle: the Proxmox routed setup. The host routes one
// address per family to a VM through the bridge (ip route add
// 198.51.100.50/32 dev vmbr0); the VM holds it as a /32 (/128) with an
// on-link default route via the bridge's address, and lists it in ips.
// From the uplink, and from a VM of vmbr0's own subnet (same bridge, routed
// by the host), the VM's in rules decide; the VM's own flows get their
// replies. Both families, FORWARD ACCEPT and DROP.
func TestRoutedProxmoxStyle(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		p := routedVM{
			id: 371, mac: "02:00:00:00:03:71",
			addrs: []string{"198.51.100.50/32", "2001:db8:50::50/128"},
			gw4:   "192.0.2.1", gw6: "2001:db8::1",
			toml: vmToml("", "vmbr0", "02:00:00:00:03:71", []string{"198.51.100.50", "2001:db8:50::50"}, []string{"ssh"}, ""),
		}
		a := stdVM(372, "72", "", "", "ssh")
		l := newRoutedLab(t, backend, routedOpts{uplinkRoutes: true}, p, a)
		if err := l.ns.IP("route add 198.51.100.50/32 dev vmbr0", "route add 2001:db8:50::50/128 dev vmbr0"); err != nil {
			t.Fatal(err)
		}
		P, A, up := l.vms[371], l.vms[372], l.uplink
		var flows []flow
		for _, f := range families {
			fp, fa := f.proxmox, f.vm("72")
			flows = append(flows,
				flow{what: f.name + " uplink to the routed VM's ssh", from: up, src: f.upA, addr: fp, port: 22, open: true},
				flow{what: f.name + " uplink to the routed VM's 8080, which its policy drops", from: up, src: f.upA, addr: fp, port: 8080},
				flow{what: f.name + " VM of vmbr0's subnet to the routed VM's ssh", from: A, addr: fp, port: 22, open: true},
				flow{what: f.name + " VM of vmbr0's subnet to the routed VM's 8080", from: A, addr: fp, port: 8080},
				flow{what: f.name + " routed VM to the other VM's ssh", from: P, addr: fa, port: 22, open: true},
				flow{what: f.name + " routed VM to the other VM's 8080", from: P, addr: fa, port: 8080},
				flow{what: f.name + " routed VM's own flow to the uplink: the reply comes back", from: P, addr: f.upA, port: uplinkPort, open: true},
			)
		}
		l.underForwardPolicies(t, flows, nil)
	})
}

// statusRouted returns tap → the "routed" field of `vmfw status -o json`.
func (l *routedLab) statusRouted() map[string]string {
	l.t.Helper()
	var st struct {
		Taps []struct {
			Tap    string `json:"tap"`
			Routed string `json:"routed"`
		} `json:"taps"`
	}
	out := l.vmfw("status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		l.t.Fatalf("vmfw status -o json: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, t := range st.Taps {
		m[t.Tap] = t.Routed
	}
	return m
}

// delivery is one UDP datagram the hypervisor sends towards a VM, and
// whether it must reach the VM's eth0.
type delivery struct {
	what     string
	src, dst string
	arrives  bool
}

// expectDeliveries sends each datagram from the hypervisor with a fresh
// marker while capturing on to's eth0, concurrently, and reports each that
// arrived where it must not or did not arrive where it must.
func expectDeliveries(t *testing.T, hv, to *labnet.NS, ds []delivery) {
	t.Helper()
	errs := make([]string, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			marker := labnet.NewMarker()
			c, err := labnet.StartCapture(to, "eth0", labnet.HasMarker(marker))
			if err != nil {
				errs[i] = err.Error()
				return
			}
			err = labnet.SendUDP(hv, d.src, d.dst, marker)
			if err != nil && !errors.Is(err, syscall.EPERM) {
				c.Close()
				errs[i] = err.Error()
				return
			}
			// EPERM: the hypervisor's own netfilter dropped the
			// datagram; the capture then sees nothing, as it should for
			// a datagram that must not arrive.
			got, err := c.Wait(time.Second)
			switch {
			case err != nil:
				errs[i] = fmt.Sprintf("%s: capture: %v", d.what, err)
			case d.arrives && !got:
				errs[i] = fmt.Sprintf("%s: udp %s -> %s from the hypervisor should reach %s, it did not", d.what, d.src, d.dst, to)
			case !d.arrives && got:
				errs[i] = fmt.Sprintf("%s: udp %s -> %s from the hypervisor should be dropped, it reached %s", d.what, d.src, d.dst, to)
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Error(e)
		}
	}
}

// TestRoutedUnattributableTaps: taps whose routed traffic cannot be tied to
// them by address. A VM with antispoof = false may hold addresses it does
// not list: routed and hypervisor-sent traffic to its listed address meets
// its in rules, to the unlisted one it is dropped. A VM without ips gets no
// routed or hypervisor-sent unicast, except DHCP server replies, while
// broadcast and link-local multicast still reach it. A disabled VM passes
// everything. Bridged traffic to all of them is filtered as before. The
// nftables backend checks routed and hypervisor-sent traffic at the bridge
// port it leaves through, so there the in rules of L and N decide for
// every address and status calls both "filtered" (docs/nftables.md,
// "Differences").
// `vmfw status -o json` says per tap how routed traffic is handled
// ("filtered", "listed-only", "dropped", "unfiltered"), and `vmfw check`
// names each tap that is not simply filtered, on one line, and exits 0.
func TestRoutedUnattributableTaps(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		f := stdVM(381, "81", "", "", "ssh")
		// L lists .76 but also holds .77 (a router or appliance VM).
		lMAC := "02:00:00:00:03:82"
		lv := routedVM{
			id: 382, mac: lMAC,
			addrs: []string{"192.0.2.76/24", "192.0.2.77/24", "2001:db8::76/64", "2001:db8::77/64"},
			gw4:   "192.0.2.1", gw6: "2001:db8::1",
			toml: vmToml("", "vmbr0", lMAC, []string{"192.0.2.76", "2001:db8::76"}, []string{"ssh"}, "antispoof = false\n"),
		}
		// N lists no address at all. Without anti-spoofing it answers ARP
		// and neighbour solicitations for what it holds, so only vmfw can
		// keep routed traffic from it.
		nMAC := "02:00:00:00:03:83"
		nv := routedVM{
			id: 383, mac: nMAC,
			addrs: []string{"192.0.2.78/24", "2001:db8::78/64"},
			gw4:   "192.0.2.1", gw6: "2001:db8::1",
			toml: vmToml("", "vmbr0", nMAC, nil, []string{"ssh"}, "antispoof = false\n"),
		}
		d := stdVM(384, "79", "enable = false", "")
		l := newRoutedLab(t, backend, routedOpts{uplinkRoutes: true, bridgedExt: true}, f, lv, nv, d)
		up, ext, hv, N := l.uplink, l.ext, l.ns, l.vms[383]
		var flows []flow
		for _, fam := range families {
			for _, src := range []struct {
				name string
				ns   *labnet.NS
				addr string
			}{{"routed", up, fam.upA}, {"hypervisor-sent", hv, ""}} {
				w := fam.name + " " + src.name + ", "
				flows = append(flows,
					flow{what: w + "filtered VM's ssh", from: src.ns, src: src.addr, addr: fam.vm("81"), port: 22, open: true},
					flow{what: w + "filtered VM's 8080", from: src.ns, src: src.addr, addr: fam.vm("81"), port: 8080},
					flow{what: w + "antispoof=false VM's listed address, ssh its group opens", from: src.ns, src: src.addr, addr: fam.vm("76"), port: 22, open: true},
					flow{what: w + "antispoof=false VM's listed address, 8080 its policy drops", from: src.ns, src: src.addr, addr: fam.vm("76"), port: 8080},
					// The nftables backend checks such traffic at the
					// port it leaves through: the VM's in rules decide
					// (docs/nftables.md, "Differences").
					flow{what: w + "antispoof=false VM's unlisted address", from: src.ns, src: src.addr, addr: fam.vm("77"), port: 22, open: l.nft()},
					flow{what: w + "antispoof=false VM's unlisted address, 8080 its policy drops", from: src.ns, src: src.addr, addr: fam.vm("77"), port: 8080},
					flow{what: w + "VM without ips", from: src.ns, src: src.addr, addr: fam.vm("78"), port: 22, open: l.nft()},
					flow{what: w + "VM without ips, 8080 its policy drops", from: src.ns, src: src.addr, addr: fam.vm("78"), port: 8080},
					flow{what: w + "disabled VM passes everything", from: src.ns, src: src.addr, addr: fam.vm("79"), port: 8080, open: true},
				)
			}
			w := fam.name + " bridged, "
			flows = append(flows,
				flow{what: w + "antispoof=false VM's unlisted address, ssh its group opens", from: ext, addr: fam.vm("77"), port: 22, open: true},
				flow{what: w + "antispoof=false VM's unlisted address, 8080", from: ext, addr: fam.vm("77"), port: 8080},
				flow{what: w + "VM without ips, ssh its group opens", from: ext, addr: fam.vm("78"), port: 22, open: true},
				flow{what: w + "VM without ips, 8080", from: ext, addr: fam.vm("78"), port: 8080},
				flow{what: w + "disabled VM", from: ext, addr: fam.vm("79"), port: 8080, open: true},
			)
		}
		// What the hypervisor must still deliver to the VM without ips, and
		// what it must not (seen by capture on N's eth0).
		hvLL, err := hv.LinkLocal("vmbr0")
		if err != nil {
			t.Fatal(err)
		}
		nLL, err := N.LinkLocal("eth0")
		if err != nil {
			t.Fatal(err)
		}
		zoned := func(a netip.Addr, port int) string {
			return netip.AddrPortFrom(a.WithZone("vmbr0"), uint16(port)).String()
		}
		deliveries := []delivery{
			{"DHCP server reply", "192.0.2.1:67", "192.0.2.78:68", true},
			{"DHCPv6 server reply to the link-local address", zoned(hvLL, 547), zoned(nLL, 546), true},
			{"broadcast", "192.0.2.1:40001", "192.0.2.255:9999", true},
			{"all-nodes multicast", zoned(hvLL, 40002), "[ff02::1%vmbr0]:9999", true},
			{"IPv4 unicast", "192.0.2.1:40003", "192.0.2.78:9999", false},
			{"IPv6 unicast", "[2001:db8::1]:40004", "[2001:db8::78]:9999", false},
		}

		checkLab(t, flows)
		// Without vmfw every datagram arrives, so one missing later was
		// dropped by vmfw.
		labDeliveries := slices.Clone(deliveries)
		for i := range labDeliveries {
			labDeliveries[i].what = "lab check (no firewall yet): " + labDeliveries[i].what
			labDeliveries[i].arrives = true
		}
		expectDeliveries(t, hv, N, labDeliveries)
		if t.Failed() {
			t.FailNow()
		}
		l.ifupAll()
		expectFlows(t, flows)
		expectDeliveries(t, hv, N, deliveries)

		want := map[string]string{
			f.tap():  "filtered",
			lv.tap(): "listed-only",
			nv.tap(): "dropped",
			d.tap():  "unfiltered",
		}
		unattributed := []string{lv.tap(), nv.tap()}
		if l.nft() {
			want[lv.tap()], want[nv.tap()] = "filtered", "filtered"
			unattributed = nil
		}
		got := l.statusRouted()
		for tap, w := range want {
			if got[tap] != w {
				t.Errorf("vmfw status -o json: %s has routed %q, want %q", tap, got[tap], w)
			}
		}
		out, errOut, code := l.run("check")
		if code != 0 {
			t.Errorf("vmfw check: exit %d, want 0 (a notice is not an error)\n%s%s", code, out, errOut)
		}
		// The notice may go to stdout or stderr; each tap whose routed
		// traffic is not simply filtered is named on exactly one line.
		lines := strings.Split(out+errOut, "\n")
		for _, tap := range []string{lv.tap(), nv.tap()} {
			wantLines := 0
			if slices.Contains(unattributed, tap) {
				wantLines = 1
			}
			n := 0
			for _, line := range lines {
				if strings.Contains(line, tap) {
					n++
				}
			}
			if n != wantLines {
				t.Errorf("vmfw check names %s on %d lines, want %d:\n%s%s", tap, n, wantLines, out, errOut)
			}
		}
	})
}
