package integration

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/testbin"
)

// pveFlow is one connection of a Proxmox import lab and the result
// pve-firewall's semantics give it, worked out by hand from the source
// files of pkg/pveimport/testdata/TREE (the rule that decides is cited).
type pveFlow struct {
	why  string
	from *labnet.NS
	// src is the source address, one of from's ("" lets the kernel
	// choose); TCP only.
	src  string
	udp  bool
	addr string
	port int
	want labnet.Result
}

// importTree imports pkg/pveimport/testdata/TREE/src with the real binary
// into h's configuration directory.
func importTree(t *testing.T, h *hv, tree string) {
	t.Helper()
	dest := filepath.Join(t.TempDir(), "imported")
	src := filepath.Join("..", "pkg", "pveimport", "testdata", tree, "src")
	if out, err := exec.Command(testbin.VMFW, "import", "proxmox", src, dest).CombinedOutput(); err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	copyDir(t, dest, h.config)
}

// pveServe starts TCP echo servers on the ports of every address, and UDP
// echo servers on udpPorts.
func pveServe(t *testing.T, h *hv, ns *labnet.NS, addrs []string, tcpPorts, udpPorts []int) {
	t.Helper()
	for _, a := range addrs {
		h.serve(ns, a, tcpPorts...)
		for _, p := range udpPorts {
			stop, err := labnet.ServeUDP(ns, labnet.HostPort(a, p))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
		}
	}
}

// expectPVE probes every flow concurrently and reports each result that
// is not pve-firewall's.
func expectPVE(t *testing.T, flows []pveFlow) {
	t.Helper()
	results, errs := labnet.ProbeAll(len(flows), func(ctx context.Context, i int) (labnet.Result, error) {
		f := flows[i]
		if f.udp {
			return labnet.UDPProbe(ctx, f.from, labnet.HostPort(f.addr, f.port), probeTimeout)
		}
		return labnet.TCPConnectFrom(ctx, f.from, f.src, labnet.HostPort(f.addr, f.port), probeTimeout)
	})
	for i, f := range flows {
		switch {
		case errs[i] != nil:
			t.Errorf("%s: %v", f.why, errs[i])
		case results[i] != f.want:
			t.Errorf("%s: %s (from %q) -> %s:%d: got %v, pve-firewall gives %v", f.why, f.from, f.src, f.addr, f.port, results[i], f.want)
		}
	}
}

// addrsAndRoutes gives ns further addresses on eth0 and on-link routes to
// networks it has no address in, so that hosts of one bridge talk across
// the documentation networks the trees' sets and aliases name.
func addrsAndRoutes(t *testing.T, ns *labnet.NS, addrs, routes []string) {
	t.Helper()
	var lines []string
	for _, a := range addrs {
		l := "addr add " + a + " dev eth0"
		if netip.MustParsePrefix(a).Addr().Is6() {
			l += " nodad"
		}
		lines = append(lines, l)
	}
	for _, r := range routes {
		lines = append(lines, "route add "+r+" dev eth0")
	}
	if err := ns.IP(lines...); err != nil {
		t.Fatal(err)
	}
}

// TestProxmoxImportPackets imports the "plain" Proxmox tree (groups,
// macros, aliases, -i rules, disabled rules, two NICs, guests with the
// firewall off, DROP and REJECT policies, macfilter off) with the real
// binary, brings the guests up, and checks every flow with real packets
// against the verdict pve-firewall gives.
func TestProxmoxImportPackets(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		importTree(t, h, "plain")
		web0 := h.vm("tap201i0", "02:00:00:00:02:01", "192.0.2.21", "2001:db8::21")
		web1 := h.vm("tap201i1", "02:00:00:00:02:11", "192.0.2.22", "2001:db8::22")
		client := h.vm("tap202i0", "02:00:00:00:02:02", "192.0.2.31", "2001:db8::31")
		open := h.vm("tap203i0", "02:00:00:00:02:03", "192.0.2.23", "2001:db8::23")
		nofw := h.vm("tap204i0", "02:00:00:00:02:04", "192.0.2.24", "2001:db8::24")
		ext := h.external("02:00:00:00:02:99", "192.0.2.200/24", "2001:db8::200/64")
		for _, tap := range []string{"tap201i0", "tap201i1", "tap202i0", "tap203i0", "tap204i0"} {
			h.vmfw("ifup", tap)
		}
		for _, s := range []struct {
			ns    *labnet.NS
			addrs []string
		}{{web0, []string{"192.0.2.21", "2001:db8::21"}}, {web1, []string{"192.0.2.22"}}, {client, []string{"192.0.2.31", "2001:db8::31"}},
			{open, []string{"192.0.2.23"}}, {nofw, []string{"192.0.2.24"}}, {ext, []string{"192.0.2.200", "2001:db8::200"}}} {
			pveServe(t, h, s.ns, s.addrs, []int{22, 25, 43, 53, 80, 7000, 8050, 9000, 9001}, []int{53, 1900, 9999})
		}
		expectPVE(t, []pveFlow{
			{"HTTP macro of group web (cluster.fw:9); 202's OUT ACCEPT tcp 80 (202.fw:7)", client, "", false, "192.0.2.21", 80, labnet.Connected},
			{"HTTP macro of group web (cluster.fw:9)", ext, "", false, "192.0.2.21", 80, labnet.Connected},
			{"HTTP over IPv6, same rule", ext, "", false, "2001:db8::21", 80, labnet.Connected},
			{"8000:8099 from others dropped (cluster.fw:11)", ext, "", false, "192.0.2.21", 8050, labnet.Timeout},
			{"SSH from 192.0.2.0/27 (cluster.fw:14); 203's firewall is off", open, "", false, "192.0.2.21", 22, labnet.Connected},
			{"no rule for ssh from 192.0.2.200: policy REJECT resets tcp (201.fw:4)", ext, "", false, "192.0.2.21", 22, labnet.Refused},
			{"disabled rule (201.fw:11): policy REJECT", open, "", false, "192.0.2.21", 9000, labnet.Refused},
			{"-i net1 accept (201.fw:12) on net1", open, "", false, "192.0.2.22", 9001, labnet.Connected},
			{"-i net1 accept does not apply to net0: policy REJECT", open, "", false, "192.0.2.21", 9001, labnet.Refused},
			{"OUT DROP tcp 7000 (201.fw:13)", web0, "", false, "192.0.2.200", 7000, labnet.Timeout},
			{"OUT REJECT tcp 25 of group admin (cluster.fw:16): reset", web0, "", false, "192.0.2.200", 25, labnet.Refused},
			{"policy_out ACCEPT (default)", web0, "", false, "192.0.2.200", 80, labnet.Connected},
			{"DNS macro (201.fw:7); 202's OUT ACCEPT udp 53 (202.fw:8)", client, "", true, "192.0.2.21", 53, labnet.Connected},
			{"policy REJECT answers udp with port unreachable (PVEFW-reject)", ext, "", true, "192.0.2.21", 9999, labnet.Unreachable},
			{"policy REJECT drops UPnP (PVEFW-Reject: udp 1900)", ext, "", true, "192.0.2.21", 1900, labnet.Timeout},
			{"202's policy_out DROP (202.fw:4)", client, "", false, "192.0.2.200", 22, labnet.Timeout},
			{"IN ACCEPT tcp 22 (202.fw:9)", ext, "", false, "192.0.2.31", 22, labnet.Connected},
			{"policy_in DROP (default)", ext, "", false, "192.0.2.31", 80, labnet.Timeout},
			{"policy DROP still rejects IPv6 tcp 43 (PVEFW-Drop)", ext, "", false, "2001:db8::31", 43, labnet.Refused},
			{"policy DROP drops IPv4 tcp 43", ext, "", false, "192.0.2.31", 43, labnet.Timeout},
			{"203: the guest's firewall is off (203.fw:2)", ext, "", false, "192.0.2.23", 80, labnet.Connected},
			{"204: no firewall=1", ext, "", false, "192.0.2.24", 7000, labnet.Connected},
		})

		// PVEFW-FORWARD drops what conntrack finds INVALID of every
		// bridged packet, 204's too although nothing filters it
		// (drop_invalid = true): an echo reply without its request is
		// INVALID, an echo request opens a connection.
		extMAC := mustMAC(t, "02:00:00:00:02:99")
		echo := func(mac, dst string, typ uint8) func([]byte) []byte {
			return func(m []byte) []byte {
				body := append([]byte{0x12, 0x34, 0, 1}, m...)
				return labnet.ICMPv6Frame(extMAC, mustMAC(t, mac), netip.MustParseAddr("2001:db8::200"), netip.MustParseAddr(dst), typ, 0, body)
			}
		}
		for _, c := range []struct {
			to       *labnet.NS
			mac, dst string
			why      string
			typ      uint8
			through  bool
		}{
			{nofw, "02:00:00:00:02:04", "2001:db8::24", "an echo reply without request to 204 (no firewall=1): INVALID, dropped", 129, false},
			{nofw, "02:00:00:00:02:04", "2001:db8::24", "an echo request to 204: a new connection", 128, true},
			{open, "02:00:00:00:02:03", "2001:db8::23", "an echo reply without request to 203 (firewall off): INVALID, dropped", 129, false},
		} {
			expectFrames(t, c.to, []sentFrame{{c.why, ext, echo(c.mac, c.dst, c.typ), c.through}})
		}
	})
}

// TestProxmoxImportGuide imports the "guide" tree, shaped like the
// Proxmox VE administration guide's examples: an IP set with a ! entry in
// a security group's rule that logs at a level, a guest's own IP set, a
// blacklist with IPv4 and IPv6 entries, an alias, an address range,
// GROUP and rules limited to one interface (on two bridges), a policy
// logged at a level, a guest whose firewall is off behind firewall=1,
// and macfilter left at its default: MAC-only anti-spoofing. Every flow
// and frame is checked with real packets against pve-firewall's verdict.
func TestProxmoxImportGuide(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		importTree(t, h, "guide")
		if err := h.lab.AddBridge("vmbr1"); err != nil {
			t.Fatal(err)
		}
		web0 := h.vm("tap100i0", "bc:24:11:00:01:00", "192.0.2.50", "2001:db8::50")
		web1 := h.vm("tap100i1", "bc:24:11:00:01:01", "192.0.2.51", "")
		builder := h.vm("tap200i0", "bc:24:11:00:02:00", "192.0.2.60", "2001:db8::60")
		ext := h.external("02:00:00:00:01:99", "192.0.2.201/24", "2001:db8::201/64")
		// A host on vmbr1, where 100's net1 is.
		ext1 := h.vm("uplink1", "02:00:00:00:01:98", "192.0.2.10", "")
		if err := h.lab.AttachTo("uplink1", "vmbr1"); err != nil {
			t.Fatal(err)
		}
		// ext speaks from the addresses the tree names: the set's except
		// (192.0.2.200), the range (192.0.2.120), webserver-v4
		// (192.0.2.10), the guest's set admins (198.51.100.10), the
		// blacklist (203.0.113.66, 2001:db8:bad::1), the REJECT's
		// destination network (203.0.113.9) and ipset-name's IPv6 entry
		// (2001:db8:1::5).
		addrsAndRoutes(t, ext, []string{"192.0.2.200/24", "192.0.2.120/24", "192.0.2.10/24", "198.51.100.10/24", "203.0.113.66/24",
			"203.0.113.9/24", "2001:db8:1::5/64", "2001:db8:bad::1/64"}, nil)
		addrsAndRoutes(t, ext1, []string{"192.0.2.11/24"}, nil)
		for _, vm := range []*labnet.NS{web0, builder} {
			addrsAndRoutes(t, vm, nil, []string{"198.51.100.0/24", "203.0.113.0/24", "2001:db8:1::/64", "2001:db8:bad::/64"})
		}
		for _, tap := range []string{"tap100i0", "tap100i1", "tap200i0"} {
			h.vmfw("ifup", tap)
		}
		tcpPorts := []int{22, 25, 53, 80, 3306, 5432, 7000}
		pveServe(t, h, web0, []string{"192.0.2.50", "2001:db8::50"}, tcpPorts, nil)
		pveServe(t, h, web1, []string{"192.0.2.51"}, tcpPorts, nil)
		pveServe(t, h, builder, []string{"192.0.2.60"}, tcpPorts, nil)
		pveServe(t, h, ext, []string{"192.0.2.201", "203.0.113.9"}, tcpPorts, []int{5000})
		expectPVE(t, []pveFlow{
			{"SSH from +ipset-name, entry 192.0.2.0/24 (cluster.fw:32, 21)", ext, "192.0.2.201", false, "192.0.2.50", 22, labnet.Connected},
			{"SSH from 192.0.2.200: ipset-name's !192.0.2.200 (cluster.fw:22); policy_in DROP (100.fw:3)", ext, "192.0.2.200", false, "192.0.2.50", 22, labnet.Timeout},
			{"SSH over IPv6 from ipset-name's 2001:db8:1::/48 (cluster.fw:23)", ext, "2001:db8:1::5", false, "2001:db8::50", 22, labnet.Connected},
			{"SSH over IPv6 from outside ipset-name: policy_in DROP", ext, "2001:db8::201", false, "2001:db8::50", 22, labnet.Timeout},
			{"DNS (tcp) from the guest's +admins (100.fw:13, 8)", ext, "198.51.100.10", false, "192.0.2.50", 53, labnet.Connected},
			{"DNS (tcp) from outside admins: policy_in DROP", ext, "192.0.2.201", false, "192.0.2.50", 53, labnet.Timeout},
			{"HTTP of group webserver (cluster.fw:30)", ext, "192.0.2.201", false, "192.0.2.50", 80, labnet.Connected},
			{"HTTP from the blacklist's 203.0.113.66 (cluster.fw:16): dropped before the rules", ext, "203.0.113.66", false, "192.0.2.50", 80, labnet.Timeout},
			{"HTTP over IPv6 from the blacklist's 2001:db8:bad::/48 (cluster.fw:18)", ext, "2001:db8:bad::1", false, "2001:db8::50", 80, labnet.Timeout},
			{"the range 192.0.2.100-192.0.2.130 (100.fw:20)", ext, "192.0.2.120", false, "192.0.2.50", 7000, labnet.Connected},
			{"outside the range: policy_in DROP", ext, "192.0.2.201", false, "192.0.2.50", 7000, labnet.Timeout},
			{"PostgreSQL from 192.0.2.0/25 (cluster.fw:37; GROUP db-clients -i net0, 100.fw:19)", ext, "192.0.2.120", false, "192.0.2.50", 5432, labnet.Connected},
			{"tcp 5432 from elsewhere: REJECT of db-clients (cluster.fw:38)", ext, "192.0.2.201", false, "192.0.2.50", 5432, labnet.Refused},
			{"3306 from webserver-v4 on net1 (100.fw:15, -i net1)", ext1, "192.0.2.10", false, "192.0.2.51", 3306, labnet.Connected},
			{"3306 on net1 from another address: policy_in DROP", ext1, "192.0.2.11", false, "192.0.2.51", 3306, labnet.Timeout},
			{"3306 from webserver-v4 on net0: the rule is net1's; policy_in DROP", ext, "192.0.2.10", false, "192.0.2.50", 3306, labnet.Timeout},
			{"db-clients is net0's only: 5432 on net1 falls to policy_in DROP", ext1, "192.0.2.11", false, "192.0.2.51", 5432, labnet.Timeout},
			{"OUT REJECT -dest 203.0.113.0/24 (100.fw:16): reset", web0, "", false, "203.0.113.9", 80, labnet.Refused},
			{"OUT DROP smtp (100.fw:17)", web0, "", false, "192.0.2.201", 25, labnet.Timeout},
			{"policy_out ACCEPT (100.fw:4)", web0, "", false, "192.0.2.201", 80, labnet.Connected},
			{"200's firewall is off (200.fw:2): everything reaches it", ext, "192.0.2.201", false, "192.0.2.60", 3306, labnet.Connected},
			{"200 behind firewall=1 still meets the blacklist (PVEFW-FWBR-IN)", ext, "203.0.113.66", false, "192.0.2.60", 80, labnet.Timeout},
		})
		if h.nft() {
			// Group rules carry no counter on this backend (log rules
			// do): the blacklist's rules look the sets up, and the log
			// rules counted what they logged at their levels.
			chain := h.exec("nft", "list", "chain", "bridge", "vmfw", "sg-PVE_blacklist-in")
			for _, want := range []string{"ip saddr @as-blacklist-v4 drop", "ip6 saddr @as-blacklist-v6 drop"} {
				if !strings.Contains(chain, want) {
					t.Errorf("the blacklist chain lacks %q:\n%s", want, chain)
				}
			}
			if n := h.nftCounter("sg-webserver-in", "dport 22", "level info"); n <= 0 {
				t.Errorf("-log info of cluster.fw:32: its log rule counted %d packets\n%s", n, h.nftTable("bridge"))
			}
			if n := h.nftCounter("policy-in", "@log-in ", `log prefix "vmfw policy-in DROP "`); n <= 0 {
				t.Errorf("log_level_in of 100.fw:5: the policy's log rule counted %d packets", n)
			}
		}
		if !h.nft() {
			// The blacklist's own rule dropped those packets, in both
			// families: not a route the lab lacks.
			for _, v6 := range []bool{false, true} {
				set := "as-blacklist-v4"
				if v6 {
					set = "as-blacklist-v6"
				}
				if n := h.iptablesCounter(v6, "-A sg-PVE_blacklist-in", "--match-set "+set+" src", "-j DROP"); n <= 0 {
					t.Errorf("the blacklist rule (%s) counted %d packets", set, n)
				}
			}
			// The rule of cluster.fw:32 logs at info (syslog level 6),
			// the policy of 100.fw:3 at warning (the LOG target's
			// default).
			if n := h.iptablesCounter(false, "-A sg-webserver-in", "--dport 22", "-j LOG", "--log-level 6"); n <= 0 {
				t.Errorf("-log info of cluster.fw:32: LOG rule counted %d packets\n%s", n, h.save(false))
			}
			if n := h.iptablesCounter(false, "-A tap100i0-in", "-j LOG", `--log-prefix "vmfw tap100i0-in DROP "`); n <= 0 {
				t.Errorf("log_level_in of 100.fw:5: LOG rule counted %d packets", n)
			}
		}

		// macfilter (on by default) checks the source MAC and nothing
		// else: pve-firewall binds no address without ipfilter and has
		// no DHCP-server guard.
		own, other := mustMAC(t, "bc:24:11:00:01:00"), mustMAC(t, "02:00:00:00:01:66")
		extMAC := mustMAC(t, "02:00:00:00:01:99")
		expectFrames(t, ext, []sentFrame{
			{"100 sends from a foreign IPv4 source with its own MAC: no ipfilter, policy_out ACCEPT", web0, udpFrame(own, extMAC, "198.51.100.99", "192.0.2.201"), true},
			{"100 sends from a foreign IPv6 source with its own MAC", web0, udpFrame(own, extMAC, "2001:db8::99", "2001:db8::201"), true},
			{"100 sends with another source MAC: macfilter (ebtables -s ! MAC -j DROP)", web0, udpFrame(other, extMAC, "192.0.2.50", "192.0.2.201"), false},
			{"100 sends a DHCP offer: no DHCP-server guard in pve-firewall", web0, func(m []byte) []byte {
				return labnet.DHCPOfferFrame(own, netip.MustParseAddr("192.0.2.50"), extMAC, netip.MustParseAddr("192.0.2.77"), m)
			}, true},
			{"200's firewall is off: no MAC filter (compile_ebtables_filter skips it)", builder, udpFrame(other, extMAC, "192.0.2.60", "192.0.2.201"), true},
		})
		// Neighbour discovery meets the blacklist first: PVEFW-FWBR-IN
		// runs before the tap chain's ndp rules, so the import turns
		// vmfw's own exception off (ndp = false) and allows it in
		// PVE_ndp, after PVE_blacklist.
		bad, good := netip.MustParseAddr("2001:db8:bad::1"), netip.MustParseAddr("2001:db8::201")
		for _, to := range []*labnet.NS{web0, builder} {
			expectFrames(t, to, []sentFrame{
				{"a neighbour advertisement from the blacklist's 2001:db8:bad::/48 (cluster.fw:18)", ext, func(m []byte) []byte {
					return labnet.NeighborAdvertFrame(extMAC, bad, bad, m)
				}, false},
				{"a neighbour advertisement from outside the blacklist (100.fw ndp, on by default)", ext, func(m []byte) []byte {
					return labnet.NeighborAdvertFrame(extMAC, good, good, m)
				}, true},
			})
		}
	})
}

// TestProxmoxImportCluster imports the "cluster" tree: a cluster IP set
// whose ! entry carves a network out of an entry and whose later entry
// puts an address back, a guest's own IP set of the same name with a !
// entry (in rules by +guest/ and +dc/ scope, an out rule by +name), guest
// and cluster aliases of one name, dhcp: 0, radv: 1, a REJECT out
// policy, an interface without firewall=1 in a filtered VM, and a second
// guest on another node with rules on one of its two interfaces.
func TestProxmoxImportCluster(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		importTree(t, h, "cluster")
		for _, br := range []string{"vmbr1", "vmbr9"} {
			if err := h.lab.AddBridge(br); err != nil {
				t.Fatal(err)
			}
		}
		app0 := h.vm("tap110i0", "bc:24:11:00:11:00", "192.0.2.110", "2001:db8::110")
		app1 := h.vm("tap110i1", "bc:24:11:00:11:01", "192.0.2.111", "")
		gw0 := h.vm("tap120i0", "bc:24:11:00:12:00", "192.0.2.120", "2001:db8::120")
		gw1 := h.vm("tap120i1", "bc:24:11:00:12:01", "192.0.2.121", "")
		ext := h.external("02:00:00:00:11:99", "192.0.2.201/24", "2001:db8::201/64")
		ext1 := h.vm("uplink1", "02:00:00:00:11:98", "192.0.2.211", "")
		ext9 := h.vm("uplink9", "02:00:00:00:11:97", "192.0.2.209", "")
		for port, br := range map[string]string{"uplink1": "vmbr1", "uplink9": "vmbr9"} {
			if err := h.lab.AttachTo(port, br); err != nil {
				t.Fatal(err)
			}
		}
		// ext speaks from the guest's office set (192.0.2.5) and its
		// except (192.0.2.9), dns-a (192.0.2.53), the cluster's office
		// set (198.51.100.7), its except (198.51.100.150) and the entry
		// inside it (198.51.100.200), and both monitors (198.51.100.20
		// of cluster.fw, 198.51.100.21 of 110.fw).
		addrsAndRoutes(t, ext, []string{"192.0.2.5/24", "192.0.2.9/24", "192.0.2.53/24", "198.51.100.7/24", "198.51.100.150/24",
			"198.51.100.200/24", "198.51.100.20/24", "198.51.100.21/24"}, nil)
		addrsAndRoutes(t, app0, nil, []string{"198.51.100.0/24"})
		for _, tap := range []string{"tap110i0", "tap110i1", "tap120i0", "tap120i1"} {
			h.vmfw("ifup", tap)
		}
		tcpPorts := []int{22, 25, 80, 5900, 8080, 8443, 9100}
		pveServe(t, h, app0, []string{"192.0.2.110"}, tcpPorts, nil)
		pveServe(t, h, app1, []string{"192.0.2.111"}, tcpPorts, nil)
		pveServe(t, h, gw0, []string{"192.0.2.120"}, tcpPorts, nil)
		pveServe(t, h, gw1, []string{"192.0.2.121"}, tcpPorts, nil)
		pveServe(t, h, ext9, []string{"192.0.2.209"}, tcpPorts, nil)
		pveServe(t, h, ext, []string{"192.0.2.201", "192.0.2.5", "192.0.2.9", "198.51.100.7", "198.51.100.20", "198.51.100.21"}, tcpPorts, []int{53})
		pveServe(t, h, ext, []string{"192.0.2.53"}, nil, []int{53})
		expectPVE(t, []pveFlow{
			{"SSH from the cluster's +office, entry 198.51.100.0/24 (cluster.fw:18, 11)", ext, "198.51.100.7", false, "192.0.2.110", 22, labnet.Connected},
			{"SSH from office's !198.51.100.128/25 (cluster.fw:12): policy_in DROP (cluster default)", ext, "198.51.100.150", false, "192.0.2.110", 22, labnet.Timeout},
			{"SSH from 198.51.100.200, an entry inside the ! (cluster.fw:13)", ext, "198.51.100.200", false, "192.0.2.110", 22, labnet.Connected},
			{"8443 from +dc/office (110.fw:18): the cluster's set", ext, "198.51.100.7", false, "192.0.2.110", 8443, labnet.Connected},
			{"8443 from the cluster office's ! entry: policy_in DROP", ext, "198.51.100.150", false, "192.0.2.110", 8443, labnet.Timeout},
			{"8080 from +guest/office, entry 192.0.2.0/28 (110.fw:17, 11)", ext, "192.0.2.5", false, "192.0.2.110", 8080, labnet.Connected},
			{"8080 from the guest office's !192.0.2.8/29 (110.fw:12): policy_in DROP", ext, "192.0.2.9", false, "192.0.2.110", 8080, labnet.Timeout},
			{"9100 from dc/monitor, the cluster's alias (cluster.fw:25, 6)", ext, "198.51.100.20", false, "192.0.2.110", 9100, labnet.Connected},
			{"9100 from the guest's monitor: only dc/monitor matches; policy_in DROP", ext, "198.51.100.21", false, "192.0.2.110", 9100, labnet.Timeout},
			{"OUT DROP -dest +office: the guest's set, 192.0.2.5 in it (110.fw:21)", app0, "", false, "192.0.2.5", 5900, labnet.Timeout},
			{"5900 to the guest office's ! entry: policy_out REJECT (110.fw:3)", app0, "", false, "192.0.2.9", 5900, labnet.Refused},
			{"5900 to the cluster's office: +office is the guest's set; policy_out REJECT", app0, "", false, "198.51.100.7", 5900, labnet.Refused},
			{"OUT DROP tcp 25 of group base (cluster.fw:21)", app0, "", false, "192.0.2.201", 25, labnet.Timeout},
			{"OUT ACCEPT -dest dns-a udp 53 (110.fw:19, cluster.fw:7)", app0, "", true, "192.0.2.53", 53, labnet.Connected},
			{"OUT ACCEPT -dest guest/monitor (110.fw:20, 8)", app0, "", false, "198.51.100.21", 80, labnet.Connected},
			{"to the cluster's monitor: policy_out REJECT", app0, "", false, "198.51.100.20", 80, labnet.Refused},
			{"policy_out REJECT (110.fw:3)", app0, "", false, "192.0.2.201", 80, labnet.Refused},
			{"110's net1 has no firewall=1: everything reaches it", ext9, "", false, "192.0.2.111", 8080, labnet.Connected},
			{"110's net1 has no firewall=1: everything leaves it", app1, "", false, "192.0.2.209", 5900, labnet.Connected},
			{"120: IN DROP tcp 22 -i net0 (120.fw:7)", ext, "192.0.2.201", false, "192.0.2.120", 22, labnet.Timeout},
			{"120: IN REJECT -i net0 (120.fw:8)", ext, "192.0.2.201", false, "192.0.2.120", 80, labnet.Refused},
			{"120 net1: the -i net0 rules do not apply; policy_in ACCEPT (120.fw:3)", ext1, "", false, "192.0.2.121", 22, labnet.Connected},
		})

		// radv: 1 lets 110's router advertisements out; 120 has no
		// radv, so pve-firewall drops them (ruleset_create_vm_chain),
		// which antispoof = "mac" alone would not.
		ll := netip.MustParseAddr("fe80::110")
		expectFrames(t, ext, []sentFrame{
			{"router advertisement from 110 (radv: 1, 110.fw:5)", app0, func(m []byte) []byte {
				return labnet.RouterAdvertFrame(mustMAC(t, "bc:24:11:00:11:00"), ll, m)
			}, true},
			{"router advertisement from 120 (radv unset): dropped", gw0, func(m []byte) []byte {
				return labnet.RouterAdvertFrame(mustMAC(t, "bc:24:11:00:12:00"), netip.MustParseAddr("fe80::120"), m)
			}, false},
		})

		// ndp: 0 (120.fw:5) hands neighbour discovery to 120's rules:
		// on net0 IN REJECT -i net0 (120.fw:8) meets it, and
		// PVEFW-reject drops ICMPv6; on net1 policy_in ACCEPT lets it
		// in. 110 keeps the default, ndp on, whatever its policy_in DROP.
		for _, c := range []struct {
			from, to *labnet.NS
			mac      string
			why      string
			through  bool
		}{
			{ext, gw0, "02:00:00:00:11:99", "120 net0, ndp: 0: IN REJECT -i net0 drops ICMPv6 (PVEFW-reject)", false},
			{ext1, gw1, "02:00:00:00:11:98", "120 net1, ndp: 0: policy_in ACCEPT", true},
			{ext, app0, "02:00:00:00:11:99", "110, ndp on (default): allowed before policy_in DROP", true},
		} {
			na := func(m []byte) []byte {
				return labnet.NeighborAdvertFrame(mustMAC(t, c.mac), netip.MustParseAddr("fe80::99"), netip.MustParseAddr("fe80::99"), m)
			}
			expectFrames(t, c.to, []sentFrame{{"a neighbour advertisement to " + c.why, c.from, na, c.through}})
		}
	})
}
