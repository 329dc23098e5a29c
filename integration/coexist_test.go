package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
	"github.com/vmfw/vmfw/integration/testbin"
)

// vmfwLine matches the lines of an iptables-save that belong to vmfw: its
// chains (declarations and rules) and its hook rules, for the taps of
// these tests.
var vmfwLine = regexp.MustCompile(`^(:|-A )(vmfw-|sg-|tap2[0-9]{2}i0-)|vmfw:|-j vmfw-l2(d|out)?$|"vmfw nftables: allowed"`)

// foreign returns the lines of a save that are not vmfw's.
func foreign(save string) string {
	var keep []string
	for _, l := range strings.Split(save, "\n") {
		if !vmfwLine.MatchString(l) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// TestCoexistence: chains, rules (filter FORWARD, INPUT and OUTPUT, and
// the nat table's port forwards and masquerading) and ipsets that exist
// before vmfw runs are byte-identical after ifup, ifdown, apply and flush,
// and flush leaves no vmfw object behind.
func TestCoexistence(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("groups/db.toml", dbGroup)
		h.write("groups/app.toml", appGroup)
		h.guest(251, "02:00:00:00:07:51", "192.0.2.71", "2001:db8::71", "app", "db")
		h.guest(252, "02:00:00:00:07:52", "192.0.2.72", "2001:db8::72", "app")

		h.exec("ipset", "create", "blocklist", "hash:net")
		h.exec("ipset", "add", "blocklist", "203.0.113.0/24")
		for _, fam := range []string{"iptables", "ip6tables"} {
			ipt := h.tool(fam)
			h.exec(ipt, "-N", "web-in") // named like a tap chain, not vmfw's
			h.exec(ipt, "-A", "web-in", "-p", "tcp", "--dport", "80", "-j", "ACCEPT")
			h.exec(ipt, "-N", "DOCKER-USER")
			h.exec(ipt, "-A", "DOCKER-USER", "-j", "RETURN")
			h.exec(ipt, "-A", "FORWARD", "-j", "DOCKER-USER")
			h.exec(ipt, "-A", "FORWARD", "-i", "eth9", "-m", "comment", "--comment", "host rule", "-j", "ACCEPT")
			h.exec(ipt, "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "web-in")
			h.exec(ipt, "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "ACCEPT")
			h.exec(ipt, "-P", "FORWARD", "DROP")
		}
		// A libvirt-style NAT network: a port forward into a VM and
		// masquerading of the VMs' egress.
		h.exec(h.tool("iptables"), "-t", "nat", "-A", "PREROUTING", "-d", "203.0.113.1", "-p", "tcp", "--dport", "2222", "-j", "DNAT", "--to-destination", "192.0.2.71:22")
		h.exec(h.tool("iptables"), "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "!", "-d", "192.0.2.0/24", "-j", "MASQUERADE")
		h.exec(h.tool("ip6tables"), "-t", "nat", "-A", "PREROUTING", "-d", "2001:db8:203::1", "-p", "tcp", "--dport", "2222", "-j", "DNAT", "--to-destination", "[2001:db8::71]:22")
		natSave := func() string { return h.tableSave(false, "nat") + h.tableSave(true, "nat") }
		origNAT := natSave()
		h.exec(h.tool("iptables"), "-A", "INPUT", "-m", "set", "--match-set", "blocklist", "src", "-j", "DROP")
		h.exec("ebtables-nft", "-N", "host-l2")
		h.exec("ebtables-nft", "-A", "host-l2", "-p", "IPX", "-j", "DROP")
		h.exec("ebtables-nft", "-A", "FORWARD", "-j", "host-l2")
		// The nftables backend beside foreign nf_tables tables of every
		// family it uses, with base chains on its hooks, a set and a map.
		foreignNFT := []string{"inet host", "bridge host", "ip host4"}
		if h.nft() {
			script := `table inet host {
	set block {
		type ipv4_addr
		elements = { 203.0.113.9 }
	}
	map ports {
		type inet_service : verdict
		elements = { 22 : accept }
	}
	chain hostfwd {
		type filter hook forward priority 0; policy accept;
		ip saddr @block drop
		tcp dport vmap @ports
	}
	chain hostout {
		type filter hook output priority 0; policy accept;
		counter
	}
}
table bridge host {
	chain hostfwd {
		type filter hook forward priority -300; policy accept;
		ether type 0x8137 drop
	}
}
table ip host4 {
	chain hostpre {
		type nat hook prerouting priority -100; policy accept;
		ip daddr 203.0.113.1 tcp dport 2223 dnat to 192.0.2.71:22
	}
}
`
			file := filepath.Join(t.TempDir(), "host.nft")
			if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
				t.Fatal(err)
			}
			h.exec("nft", "-f", file)
		}
		nftSave := func() string {
			var b strings.Builder
			for _, tbl := range foreignNFT {
				if out, err := h.ns.Exec(context.Background(), append([]string{"nft", "-s", "list", "table"}, strings.Fields(tbl)...)...); err == nil {
					b.Write(out)
				}
			}
			return b.String()
		}
		origNFT := nftSave()
		orig4, orig6, origSets, origBridge := h.save(false), h.save(true), h.ipsets(), h.bridgeSave()

		check := func(step string) {
			t.Helper()
			if got := nftSave(); got != origNFT {
				t.Errorf("after %s: foreign nf_tables tables changed:\nbefore:\n%s\nafter:\n%s", step, origNFT, got)
			}
			if got := foreign(h.save(false)); got != foreign(orig4) {
				t.Errorf("after %s: foreign IPv4 rules changed:\nbefore:\n%s\nafter:\n%s", step, foreign(orig4), got)
			}
			if got := foreign(h.save(true)); got != foreign(orig6) {
				t.Errorf("after %s: foreign IPv6 rules changed", step)
			}
			if got := foreign(h.bridgeSave()); got != foreign(origBridge) {
				t.Errorf("after %s: foreign ebtables rules changed:\nbefore:\n%s\nafter:\n%s", step, foreign(origBridge), got)
			}
			if got := natSave(); got != origNAT {
				t.Errorf("after %s: nat rules changed:\nbefore:\n%s\nafter:\n%s", step, origNAT, got)
			}
			if !strings.Contains(h.ipsets(), "add blocklist 203.0.113.0/24") {
				t.Errorf("after %s: foreign ipset changed:\n%s", step, h.ipsets())
			}
		}
		h.firstV4(250, "192.0.2.9")
		check("the first VM's ifup")
		h.vmfw("ifup", "tap251i0")
		check("ifup")
		h.vmfw("ifup", "tap252i0")
		h.vmfw("ifdown", "tap252i0")
		check("ifdown")
		h.vmfw("apply")
		check("apply")
		h.vmfw("flush")
		check("flush")
		if got := h.save(false); got != orig4 {
			t.Errorf("after flush the IPv4 table differs from before vmfw ran:\nbefore:\n%s\nafter:\n%s", orig4, got)
		}
		if got := h.save(true); got != orig6 {
			t.Errorf("after flush the IPv6 table differs from before vmfw ran")
		}
		if got := h.bridgeSave(); got != origBridge {
			t.Errorf("after flush ebtables differ:\nbefore:\n%s\nafter:\n%s", origBridge, got)
		}
		if got := h.ipsets(); got != origSets {
			t.Errorf("after flush ipsets differ:\nbefore:\n%s\nafter:\n%s", origSets, got)
		}
		if h.nft() && (h.nftTable("bridge") != "" || h.nftTable("inet") != "") {
			t.Errorf("flush left vmfw's tables:\n%s", h.snapshot())
		}
		h.vmfw("flush") // idempotent
	})
}

// TestConcurrentIfupIfdown: twenty concurrent ifup (QEMU starting twenty
// VMs at once) all succeed and give the same ruleset as twenty serial ones;
// twenty concurrent ifdown remove everything but the base chains.
func TestConcurrentIfupIfdown(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.firstV4Gone(259, "192.0.2.9")
		taps := h.twentyTaps(260, 0x08)
		parallel := func(cmd string) {
			for _, e := range h.concurrently(cmd, taps) {
				if e != "" {
					t.Error(e)
				}
			}
		}
		parallel("ifup")
		conc := h.snapshot()
		h.vmfw("flush")
		for _, tap := range taps {
			h.vmfw("ifup", tap)
		}
		if got := h.snapshot(); got != conc {
			t.Errorf("concurrent ifup gave another ruleset than serial ifup:\n%v", changedChains(conc, got))
		}
		parallel("ifdown")
		for _, tap := range taps {
			if h.installed(tap) {
				t.Errorf("%s still installed after concurrent ifdown", tap)
			}
		}
		if h.nft() {
			if br := h.nftTable("bridge"); strings.Contains(br, "chain sg-") {
				t.Errorf("group chains remain after concurrent ifdown:\n%s", br)
			}
		} else {
			for name := range chains(h.save(false)) {
				if strings.HasPrefix(name, "tap") || strings.HasPrefix(name, "sg-") {
					t.Errorf("chain %s remains after concurrent ifdown", name)
				}
			}
		}
	})
}

// TestQEMU starts a real QEMU with vmfw-ifup / vmfw-ifdown as its tap
// scripts, as the first thing on a host where vmfw never ran, for the VM
// of the report that a fresh host's first VM did not start: one group, one
// IPv4-only interface. While QEMU runs, the tap has its chains in both
// families, is on its bridge, and holds exactly what a full apply writes;
// real packets through QEMU's tap show it filters (the guest is played by
// the test: QEMU's tap and a datagram socket share a hub, no guest OS is
// needed). After QEMU exits the chains and memberships are gone.
func TestQEMU(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal("qemu-system-x86_64 is required (make deps installs it): ", err)
	}
	forEachBackend(t, func(t *testing.T, backend string) {
		const vmMAC, vmIP, extMAC, extIP = "52:54:00:12:34:56", "192.0.2.120", "02:00:00:00:12:99", "192.0.2.200"
		h := newHV(t, backend, "")
		h.write("groups/ssh.toml", appGroup)
		h.write("vms/120.toml", "[net0]\nmac = \""+vmMAC+"\"\nips = [\""+vmIP+"\"]\nbridge = \"vmbr0\"\ngroups = [\"ssh\"]\n")
		ext := h.external(extMAC, extIP+"/24")
		// QEMU passes only the tap name; the scripts carry the rest, as
		// conf/qemu/ shows for a real host.
		dir := t.TempDir()
		for _, name := range []string{"ifup", "ifdown"} {
			prog := filepath.Join(testbin.Dir, "vmfw-"+name)
			script := fmt.Sprintf("#!/bin/sh\nexport VMFW_CONFIG_DIR=%s %s\nexec %s \"$@\"\n", h.config, h.backendEnv(), prog)
			if err := os.WriteFile(filepath.Join(dir, name+".sh"), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		guest := newQEMUGuest(t, dir)
		if err := h.vmfwFree(); err != nil {
			t.Fatalf("the host is not empty before QEMU starts: %v", err)
		}
		qmp := filepath.Join(dir, "qmp.sock")
		q := labtest.Start(t, h.ns, nil, qemu, "-M", "none", "-nodefaults", "-display", "none",
			"-qmp", "unix:"+qmp+",server=on,wait=off",
			"-netdev", fmt.Sprintf("tap,id=n0,ifname=tap120i0,script=%s,downscript=%s", filepath.Join(dir, "ifup.sh"), filepath.Join(dir, "ifdown.sh")),
			"-netdev", "hubport,id=h0,hubid=0,netdev=n0",
			"-netdev", "dgram,id=g0,local.type=unix,local.path="+guest.qemu.Name+",remote.type=unix,remote.path="+guest.path,
			"-netdev", "hubport,id=h1,hubid=0,netdev=g0")
		onBridge := func() bool {
			out, err := h.ns.Exec(context.Background(), "ip", "link", "show", "tap120i0")
			return err == nil && strings.Contains(string(out), "master vmbr0")
		}
		if !eventually(onBridge) {
			t.Fatalf("tap120i0 never joined vmbr0; qemu output: %s", q.Output())
		}
		// QEMU sends the QMP greeting from its main loop, which it enters
		// only once the ifup script has returned and the netdev is set
		// up; stopped before that, it exits without running downscript.
		if !eventually(func() bool { return qmpGreets(qmp) }) {
			t.Fatalf("QEMU never finished starting; its output: %s", q.Output())
		}
		if !h.installed("tap120i0") {
			t.Errorf("tap120i0 is not firewalled while QEMU runs")
		}
		if !h.nft() {
			for _, v6 := range []bool{false, true} {
				if s := h.save(v6); !strings.Contains(s, "--physdev-in tap120i0") {
					t.Errorf("v6=%v: no physdev dispatch to tap120i0 while QEMU runs", v6)
				}
			}
		}
		h.applied("QEMU's ifup")

		// Into the VM: the external host knows the VM's MAC (the guest
		// answers no ARP); ssh reaches the guest, telnet does not.
		if err := ext.IP("neigh replace " + vmIP + " lladdr " + vmMAC + " dev eth0 nud permanent"); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			port    int
			arrives bool
		}{{22, true}, {23, false}} {
			labnet.TCPConnect(context.Background(), ext, labnet.HostPort(vmIP, c.port), probeTimeout)
			got := guest.saw(func(f []byte) bool { return isTCPSyn(f, extIP, vmIP, c.port) }, time.Second)
			if got != c.arrives {
				t.Errorf("tcp %s -> %s:%d reached the guest behind QEMU: %v, want %v", extIP, vmIP, c.port, got, c.arrives)
			}
		}
		// Out of the VM: from its own address a datagram reaches the
		// external host, from another address anti-spoofing drops it.
		vmHW, _ := net.ParseMAC(vmMAC)
		extHW, _ := net.ParseMAC(extMAC)
		for _, c := range []struct {
			src     string
			arrives bool
		}{{vmIP, true}, {"192.0.2.99", false}} {
			marker := labnet.NewMarker()
			capture, err := labnet.StartCapture(ext, "eth0", labnet.HasMarker(marker))
			if err != nil {
				t.Fatal(err)
			}
			guest.send(labnet.UDP4Frame(vmHW, extHW, netip.MustParseAddrPort(c.src+":40000"), netip.MustParseAddrPort(extIP+":9999"), marker))
			got, err := capture.Wait(time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.arrives {
				t.Errorf("udp from %s sent by the guest behind QEMU reached %s: %v, want %v", c.src, extIP, got, c.arrives)
			}
		}

		stop(t, q)
		if h.installed("tap120i0") {
			t.Errorf("tap120i0 is still firewalled after QEMU exited")
		}
		if h.member("ssh", vmIP) || strings.Contains(h.ipsets(), vmIP) {
			t.Errorf("VM 120's membership remains after QEMU exited")
		}
	})
}

// qemuGuest plays the guest of a QEMU without guest OS: QEMU's dgram
// netdev, on one hub with its tap, sends it every frame the tap receives
// and puts on the tap every frame it sends.
type qemuGuest struct {
	t    *testing.T
	path string        // the socket the guest receives on
	qemu *net.UnixAddr // the socket QEMU binds and receives on
	conn *net.UnixConn

	mu     sync.Mutex
	frames [][]byte
}

// newQEMUGuest binds the guest's socket in dir; QEMU's goes beside it.
func newQEMUGuest(t *testing.T, dir string) *qemuGuest {
	t.Helper()
	g := &qemuGuest{t: t, path: filepath.Join(dir, "guest.sock"), qemu: &net.UnixAddr{Name: filepath.Join(dir, "qemu.sock"), Net: "unixgram"}}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: g.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	g.conn = conn
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			g.mu.Lock()
			g.frames = append(g.frames, bytes.Clone(buf[:n]))
			g.mu.Unlock()
		}
	}()
	return g
}

// saw waits up to timeout for a frame match accepts and reports whether
// one came.
func (g *qemuGuest) saw(match func([]byte) bool, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		g.mu.Lock()
		found := slices.ContainsFunc(g.frames, match)
		g.mu.Unlock()
		if found || time.Now().After(deadline) {
			return found
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// send hands QEMU a frame the guest transmits.
func (g *qemuGuest) send(frame []byte) {
	g.t.Helper()
	if _, err := g.conn.WriteToUnix(frame, g.qemu); err != nil {
		g.t.Fatalf("sending a frame to QEMU: %v", err)
	}
}

// isTCPSyn reports whether frame is an IPv4 TCP SYN from src to dst:port.
func isTCPSyn(frame []byte, src, dst string, port int) bool {
	if len(frame) < 34 || frame[12] != 0x08 || frame[13] != 0x00 || frame[23] != 6 {
		return false
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if len(ip) < ihl+14 || netip.AddrFrom4([4]byte(ip[12:16])).String() != src || netip.AddrFrom4([4]byte(ip[16:20])).String() != dst {
		return false
	}
	tcp := ip[ihl:]
	return int(tcp[2])<<8|int(tcp[3]) == port && tcp[13]&0x12 == 0x02
}

// qmpGreets reports whether QEMU's QMP socket at path answers with its
// greeting.
func qmpGreets(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.Contains(line, "QMP")
}
