package labnet

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const probeTimeout = time.Second

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
}

func newLab(t *testing.T) *Lab {
	t.Helper()
	needRoot(t)
	lab, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("closing lab: %v", err)
		}
	})
	return lab
}

// twoVMs is a lab with two VMs attached to the bridge and no firewall.
type twoVMs struct {
	lab        *Lab
	vm1, vm2   *NS
	mac1, mac2 net.HardwareAddr
}

const (
	mac1 = "1e:0b:85:27:8d:65"
	mac2 = "1e:0b:85:27:8d:66"
)

func newTwoVMs(t *testing.T) *twoVMs {
	t.Helper()
	lab := newLab(t)
	vm1, err := lab.AddVM("tap101i0", mac1, "192.0.2.101/24", "2001:db8::101/64")
	if err != nil {
		t.Fatal(err)
	}
	vm2, err := lab.AddVM("tap102i0", mac2, "192.0.2.102/24", "2001:db8::102/64")
	if err != nil {
		t.Fatal(err)
	}
	for _, tap := range []string{"tap101i0", "tap102i0"} {
		if err := lab.AttachToBridge(tap); err != nil {
			t.Fatal(err)
		}
	}
	m1, _ := net.ParseMAC(mac1)
	m2, _ := net.ParseMAC(mac2)
	return &twoVMs{lab: lab, vm1: vm1, vm2: vm2, mac1: m1, mac2: m2}
}

func exec1(t *testing.T, ns *NS, args ...string) {
	t.Helper()
	if _, err := ns.Exec(context.Background(), args...); err != nil {
		t.Fatal(err)
	}
}

func wantResult(t *testing.T, what string, got Result, err error, want Result) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func TestProbesWithoutFirewall(t *testing.T) {
	l := newTwoVMs(t)
	ctx := context.Background()
	for _, addr := range []string{"192.0.2.102:80", "[2001:db8::102]:80"} {
		stop, err := ServeTCP(l.vm2, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	for _, addr := range []string{"192.0.2.102:53", "[2001:db8::102]:53"} {
		stop, err := ServeUDP(l.vm2, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	hv := l.lab.Hypervisor()
	stop, err := ServeTCP(hv, "[2001:db8::1]:22")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)

	for _, c := range []struct {
		name string
		run  func() (Result, error)
		want Result
	}{
		{"tcp v4 open", func() (Result, error) { return TCPConnect(ctx, l.vm1, "192.0.2.102:80", probeTimeout) }, Connected},
		{"tcp v6 open", func() (Result, error) { return TCPConnect(ctx, l.vm1, "[2001:db8::102]:80", probeTimeout) }, Connected},
		{"tcp v6 to hypervisor", func() (Result, error) { return TCPConnect(ctx, l.vm1, "[2001:db8::1]:22", probeTimeout) }, Connected},
		{"tcp v4 closed", func() (Result, error) { return TCPConnect(ctx, l.vm1, "192.0.2.102:81", probeTimeout) }, Refused},
		{"tcp v6 closed", func() (Result, error) { return TCPConnect(ctx, l.vm1, "[2001:db8::102]:81", probeTimeout) }, Refused},
		{"tcp v4 no host", func() (Result, error) { return TCPConnect(ctx, l.vm1, "192.0.2.199:80", probeTimeout) }, Unreachable},
		{"tcp v6 no host", func() (Result, error) { return TCPConnect(ctx, l.vm1, "[2001:db8::199]:80", probeTimeout) }, Unreachable},
		{"udp v4 no host", func() (Result, error) { return UDPProbe(ctx, l.vm1, "192.0.2.199:53", probeTimeout) }, Unreachable},
		{"udp v4 open", func() (Result, error) { return UDPProbe(ctx, l.vm1, "192.0.2.102:53", probeTimeout) }, Connected},
		{"udp v6 open", func() (Result, error) { return UDPProbe(ctx, l.vm1, "[2001:db8::102]:53", probeTimeout) }, Connected},
		{"udp v4 closed", func() (Result, error) { return UDPProbe(ctx, l.vm1, "192.0.2.102:54", probeTimeout) }, Unreachable},
		{"udp v6 closed", func() (Result, error) { return UDPProbe(ctx, l.vm1, "[2001:db8::102]:54", probeTimeout) }, Unreachable},
		{"ping v4", func() (Result, error) { return Ping(ctx, l.vm1, "192.0.2.102", probeTimeout) }, Connected},
		{"ping v6", func() (Result, error) { return Ping(ctx, l.vm1, "2001:db8::102", probeTimeout) }, Connected},
		{"ping v4 bridge", func() (Result, error) { return Ping(ctx, l.vm2, "192.0.2.1", probeTimeout) }, Connected},
		{"ping v6 bridge", func() (Result, error) { return Ping(ctx, l.vm2, "2001:db8::1", probeTimeout) }, Connected},
		{"ping v4 no host", func() (Result, error) { return Ping(ctx, l.vm1, "192.0.2.199", probeTimeout) }, Unreachable},
		{"ping v6 no host", func() (Result, error) { return Ping(ctx, l.vm1, "2001:db8::199", probeTimeout) }, Unreachable},
		{"ping v4 no host, short timeout", func() (Result, error) { return Ping(ctx, l.vm1, "192.0.2.198", 100*time.Millisecond) }, Timeout},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := c.run()
			wantResult(t, c.name, got, err, c.want)
		})
	}
}

// TestProbeClassification puts firewall rules in a VM's own namespace to
// check that each kind of answer is told apart. Every port has a listener,
// so only the rules make the probes fail.
func TestProbeClassification(t *testing.T) {
	l := newTwoVMs(t)
	ctx := context.Background()
	// vm2 serves each port and answers it per family as its row says:
	// with a reject of that type, or by dropping ("").
	serve := map[string]func(*NS, string) (func(), error){"tcp": ServeTCP, "udp": ServeUDP}
	for _, p := range []struct{ proto, port, reject4, reject6 string }{
		{"tcp", "81", "tcp-reset", "tcp-reset"},
		{"tcp", "82", "icmp-port-unreachable", "icmp6-port-unreachable"},
		{"tcp", "83", "icmp-admin-prohibited", "icmp6-adm-prohibited"},
		{"tcp", "84", "", ""},
		{"udp", "55", "", ""},
		{"udp", "56", "icmp-admin-prohibited", "icmp6-adm-prohibited"},
	} {
		stop, err := serve[p.proto](l.vm2, ":"+p.port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		for cmd, reject := range map[string]string{"iptables": p.reject4, "ip6tables": p.reject6} {
			verdict := []string{"-j", "DROP"}
			if reject != "" {
				verdict = []string{"-j", "REJECT", "--reject-with", reject}
			}
			exec1(t, l.vm2, append([]string{cmd, "-w", "-A", "INPUT", "-p", p.proto, "--dport", p.port}, verdict...)...)
		}
	}
	exec1(t, l.vm2, "iptables", "-w", "-A", "INPUT", "-p", "icmp", "-s", "192.0.2.101", "-j", "REJECT", "--reject-with", "icmp-host-prohibited")
	exec1(t, l.vm2, "iptables", "-w", "-A", "INPUT", "-p", "icmp", "-s", "192.0.2.1", "-j", "DROP")
	exec1(t, l.vm2, "ip6tables", "-w", "-A", "INPUT", "-p", "icmpv6", "--icmpv6-type", "echo-request", "-s", "2001:db8::101", "-j", "REJECT", "--reject-with", "icmp6-adm-prohibited")
	exec1(t, l.vm2, "ip6tables", "-w", "-A", "INPUT", "-p", "icmpv6", "--icmpv6-type", "echo-request", "-s", "2001:db8::1", "-j", "DROP")
	hv := l.lab.Hypervisor()
	short := 300 * time.Millisecond
	for _, fam := range []struct{ name, ip, host string }{
		{"v4", "192.0.2.102", "192.0.2.102"},
		{"v6", "[2001:db8::102]", "2001:db8::102"},
	} {
		for _, c := range []struct {
			name string
			run  func() (Result, error)
			want Result
		}{
			{"tcp reset", func() (Result, error) { return TCPConnect(ctx, l.vm1, fam.ip+":81", probeTimeout) }, Refused},
			{"tcp port-unreachable", func() (Result, error) { return TCPConnect(ctx, l.vm1, fam.ip+":82", probeTimeout) }, Unreachable},
			{"tcp admin-prohibited", func() (Result, error) { return TCPConnect(ctx, l.vm1, fam.ip+":83", probeTimeout) }, Unreachable},
			{"tcp drop", func() (Result, error) { return TCPConnect(ctx, l.vm1, fam.ip+":84", short) }, Timeout},
			{"udp drop", func() (Result, error) { return UDPProbe(ctx, l.vm1, fam.ip+":55", short) }, Timeout},
			{"udp admin-prohibited", func() (Result, error) { return UDPProbe(ctx, l.vm1, fam.ip+":56", probeTimeout) }, Unreachable},
			{"ping reject", func() (Result, error) { return Ping(ctx, l.vm1, fam.host, probeTimeout) }, Unreachable},
			{"ping drop", func() (Result, error) { return Ping(ctx, hv, fam.host, short) }, Timeout},
		} {
			t.Run(fam.name+" "+c.name, func(t *testing.T) {
				t.Parallel()
				got, err := c.run()
				wantResult(t, c.name, got, err, c.want)
			})
		}
	}
	// Repeated rejects must not be eaten by ICMP rate limiting.
	for i := range 20 {
		got, err := UDPProbe(ctx, l.vm1, "192.0.2.102:56", probeTimeout)
		if err != nil || got != Unreachable {
			t.Fatalf("reject #%d: %v, %v; want Unreachable", i, got, err)
		}
	}
}

func TestProbeArguments(t *testing.T) {
	ns := &NS{Name: "labnet-test-never-created"}
	ctx := context.Background()
	for _, addr := range []string{"8.8.8.8:53", "10.0.0.1:22", "[2001:4860::1]:80", "nonsense", "192.0.2.1"} {
		if got, err := TCPConnect(ctx, ns, addr, time.Millisecond); err == nil || got != Failed {
			t.Errorf("TCPConnect(%q) = %v, %v; want Failed and an error", addr, got, err)
		}
	}
	if got, err := Ping(ctx, ns, "8.8.8.8", time.Millisecond); err == nil || got != Failed {
		t.Errorf("Ping(8.8.8.8) = %v, %v; want Failed and an error", got, err)
	}
	// A namespace that does not exist is an error, never a silent result.
	if got, err := UDPProbe(ctx, ns, "192.0.2.1:53", time.Millisecond); err == nil || got != Failed {
		t.Errorf("UDPProbe in a missing namespace = %v, %v; want Failed and an error", got, err)
	}
}

func TestStream(t *testing.T) {
	l := newTwoVMs(t)
	stop, err := ServeTCP(l.vm2, "[2001:db8::102]:7")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	s, err := StartStream(l.vm1, "[2001:db8::102]:7")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	waitFor(t, "10 echoes", func() bool { return s.Stats().Echoed >= 10 }, s.Stats)

	// Dropping the flow in the server's namespace makes echoes stop.
	exec1(t, l.vm2, "ip6tables", "-w", "-I", "INPUT", "-p", "tcp", "--dport", "7", "-j", "DROP")
	waitFor(t, "losses", func() bool { st := s.Stats(); return st.Lost >= 5 && st.MaxGap >= 50*time.Millisecond }, s.Stats)
	exec1(t, l.vm2, "ip6tables", "-w", "-D", "INPUT", "-p", "tcp", "--dport", "7", "-j", "DROP")
	// TCP retransmits, so the flow recovers without losing messages.
	sent := s.Stats().Sent
	waitFor(t, "recovery", func() bool { return s.Stats().Echoed >= sent+5 }, s.Stats)
	st := s.Stop()
	if st.Err != nil || st.Lost != 0 || st.Sent < 15 {
		t.Errorf("after recovery: %+v; want no error, no loss", st)
	}
	t.Logf("stream: %+v", st)
}

// waitFor polls cond every 10 ms for at most 5 s; on timeout it reports
// state().
func waitFor(t *testing.T, what string, cond func() bool, state func() StreamStats) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s: %+v", what, state())
}

func TestFrames(t *testing.T) {
	l := newTwoVMs(t)
	lab := l.lab
	// vm3's tap is not a bridge port: nothing sent on the bridge reaches it.
	vm3, err := lab.AddVM("tap103i0", "", "192.0.2.103/24", "2001:db8::103/64")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("udp4 unicast reaches only its target", func(t *testing.T) {
		marker := NewMarker()
		c2, err := StartCapture(l.vm2, "eth0", HasMarker(marker))
		if err != nil {
			t.Fatal(err)
		}
		c3, err := StartCapture(vm3, "eth0", HasMarker(marker))
		if err != nil {
			t.Fatal(err)
		}
		c1, err := StartCapture(l.vm1, "eth0", HasMarker(marker))
		if err != nil {
			t.Fatal(err)
		}
		// To vm2's MAC but not its IP, so that vm2 drops it silently: an
		// ICMP error back to vm1 would quote the marker.
		f := UDP4Frame(l.mac1, l.mac2, netip.MustParseAddrPort("192.0.2.101:4000"), netip.MustParseAddrPort("192.0.2.199:4001"), marker)
		if err := SendFrame(l.vm1, "eth0", f); err != nil {
			t.Fatal(err)
		}
		if ok, err := c2.Wait(probeTimeout); err != nil || !ok {
			t.Errorf("frame not captured at vm2 (%v)", err)
		}
		if !bytes.Equal(c2.Frame()[:len(f)], f) {
			t.Errorf("captured frame differs from the one sent")
		}
		if ok, err := c3.Wait(200 * time.Millisecond); err != nil || ok {
			t.Errorf("frame captured at detached vm3 = %v (%v), want false", ok, err)
		}
		if ok, err := c1.Wait(0); err != nil || ok {
			t.Errorf("sender's own capture saw its outgoing frame = %v (%v), want false", ok, err)
		}
	})

	// The receiving kernel checks the checksums: a datagram that reaches
	// the socket proves the builder right.
	for _, c := range []struct {
		name     string
		src, dst string
	}{
		{"udp4 accepted by kernel", "192.0.2.101:4000", "192.0.2.102:4002"},
		{"udp6 accepted by kernel", "[2001:db8::101]:4000", "[2001:db8::102]:4002"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var pc net.PacketConn
			if err := l.vm2.Do(func() (err error) { pc, err = net.ListenPacket("udp", c.dst); return err }); err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			marker := NewMarker()
			src, dst := netip.MustParseAddrPort(c.src), netip.MustParseAddrPort(c.dst)
			var f []byte
			if dst.Addr().Is6() {
				f = UDP6Frame(l.mac1, l.mac2, src, dst, marker)
			} else {
				f = UDP4Frame(l.mac1, l.mac2, src, dst, marker)
			}
			if err := SendFrame(l.vm1, "eth0", f); err != nil {
				t.Fatal(err)
			}
			_ = pc.SetReadDeadline(time.Now().Add(probeTimeout))
			buf := make([]byte, 100)
			n, from, err := pc.ReadFrom(buf)
			if err != nil || !bytes.Equal(buf[:n], marker) || from.(*net.UDPAddr).AddrPort().String() != src.String() {
				t.Errorf("read %q from %v (%v), want %q from %v", buf[:n], from, err, marker, src)
			}
		})
	}

	t.Run("DAD solicitation is answered", func(t *testing.T) {
		// vm2 owns 2001:db8::102 and defends it with a neighbour
		// advertisement to all nodes.
		target := netip.MustParseAddr("2001:db8::102")
		c, err := StartCapture(l.vm1, "eth0", func(f []byte) bool {
			return len(f) >= 14+40+24 && binary.BigEndian.Uint16(f[12:]) == EtherTypeIPv6 &&
				f[14+6] == 58 && f[14+40] == 136 && netip.AddrFrom16([16]byte(f[14+40+8:14+40+24])) == target
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := SendFrame(l.vm1, "eth0", DADSolicitFrame(l.mac1, target, NewMarker())); err != nil {
			t.Fatal(err)
		}
		if ok, err := c.Wait(probeTimeout); err != nil || !ok {
			t.Errorf("no neighbour advertisement for %v (%v)", target, err)
		}
	})

	t.Run("ARP request is answered", func(t *testing.T) {
		c, err := StartCapture(l.vm1, "eth0", func(f []byte) bool {
			return len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == EtherTypeARP &&
				binary.BigEndian.Uint16(f[20:]) == 2 && bytes.Equal(f[22:28], l.mac2) &&
				bytes.Equal(f[28:32], []byte{192, 0, 2, 102})
		})
		if err != nil {
			t.Fatal(err)
		}
		f := ARPRequestFrame(l.mac1, netip.MustParseAddr("192.0.2.101"), netip.MustParseAddr("192.0.2.102"), NewMarker())
		if err := SendFrame(l.vm1, "eth0", f); err != nil {
			t.Fatal(err)
		}
		if ok, err := c.Wait(probeTimeout); err != nil || !ok {
			t.Errorf("no ARP reply from vm2 (%v)", err)
		}
	})

	lladdr := netip.MustParseAddr("fe80::1c0b:85ff:fe27:8d65")
	for _, c := range []struct {
		name  string
		build func(marker []byte) []byte
	}{
		{"router advertisement", func(m []byte) []byte { return RouterAdvertFrame(l.mac1, lladdr, m) }},
		{"dhcp discover", func(m []byte) []byte { return DHCPDiscoverFrame(l.mac1, m) }},
		{"dhcp offer", func(m []byte) []byte {
			return DHCPOfferFrame(l.mac1, netip.MustParseAddr("192.0.2.101"), l.mac2, netip.MustParseAddr("192.0.2.150"), m)
		}},
		{"arp reply", func(m []byte) []byte {
			return ARPReplyFrame(l.mac1, netip.MustParseAddr("192.0.2.101"), l.mac2, netip.MustParseAddr("192.0.2.102"), m)
		}},
	} {
		t.Run(c.name+" is forwarded", func(t *testing.T) {
			marker := NewMarker()
			cap2, err := StartCapture(l.vm2, "eth0", HasMarker(marker))
			if err != nil {
				t.Fatal(err)
			}
			if err := SendFrame(l.vm1, "eth0", c.build(marker)); err != nil {
				t.Fatal(err)
			}
			if ok, err := cap2.Wait(probeTimeout); err != nil || !ok {
				t.Errorf("not captured at vm2 (%v)", err)
			}
		})
	}
}

func TestFrameChecksums(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	m := NewMarker()
	frames := map[string][]byte{
		"udp4":     UDP4Frame(mac, Broadcast, netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("192.0.2.2:2"), m),
		"udp4 odd": UDP4Frame(mac, Broadcast, netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("192.0.2.2:2"), m[:7]),
		"udp6":     UDP6Frame(mac, Broadcast, netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[2001:db8::2]:2"), m),
		"ra":       RouterAdvertFrame(mac, netip.MustParseAddr("fe80::1"), m),
		"dad":      DADSolicitFrame(mac, netip.MustParseAddr("2001:db8::5"), m),
		"discover": DHCPDiscoverFrame(mac, m),
		"offer":    DHCPOfferFrame(mac, netip.MustParseAddr("192.0.2.1"), mac, netip.MustParseAddr("192.0.2.9"), m),
		"arp":      ARPRequestFrame(mac, netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), m),
	}
	for name, f := range frames {
		if len(f) < 60 {
			t.Errorf("%s: %d bytes, want at least 60", name, len(f))
		}
		if !HasMarker(m[:7])(f) {
			t.Errorf("%s: marker missing", name)
		}
		switch binary.BigEndian.Uint16(f[12:]) {
		case EtherTypeIPv4:
			ip := f[14:]
			ihl := int(ip[0]&0xf) * 4
			if checksum(ip[:ihl], 0) != 0 {
				t.Errorf("%s: bad IPv4 header checksum", name)
			}
			tot := int(binary.BigEndian.Uint16(ip[2:]))
			seg := ip[ihl:tot]
			if checksum(seg, pseudo4([4]byte(ip[12:16]), [4]byte(ip[16:20]), ip[9], len(seg))) != 0 {
				t.Errorf("%s: bad UDP checksum", name)
			}
		case EtherTypeIPv6:
			ip := f[14:]
			plen := int(binary.BigEndian.Uint16(ip[4:]))
			seg := ip[40 : 40+plen]
			if checksum(seg, pseudo6([16]byte(ip[8:24]), [16]byte(ip[24:40]), ip[6], plen)) != 0 {
				t.Errorf("%s: bad %d checksum", name, ip[6])
			}
		}
	}
	// DHCP ports and addresses.
	d := frames["discover"]
	if !bytes.Equal(d[0:6], Broadcast) || !bytes.Equal(d[14+12:14+20], []byte{0, 0, 0, 0, 255, 255, 255, 255}) ||
		binary.BigEndian.Uint16(d[34:]) != 68 || binary.BigEndian.Uint16(d[36:]) != 67 {
		t.Errorf("discover: wrong addresses or ports")
	}
	o := frames["offer"]
	if binary.BigEndian.Uint16(o[34:]) != 67 || binary.BigEndian.Uint16(o[36:]) != 68 {
		t.Errorf("offer: wrong ports")
	}
	// ND messages: hop limit 255, right type, right destinations.
	ra := frames["ra"]
	if ra[14+7] != 255 || ra[14+40] != 134 || !bytes.Equal(ra[0:6], []byte{0x33, 0x33, 0, 0, 0, 1}) {
		t.Errorf("ra: wrong hop limit, type or destination")
	}
	dad := frames["dad"]
	if dad[14+7] != 255 || dad[14+40] != 135 || !bytes.Equal(dad[0:6], []byte{0x33, 0x33, 0xff, 0, 0, 5}) ||
		netip.AddrFrom16([16]byte(dad[14+8:14+24])) != netip.IPv6Unspecified() ||
		netip.AddrFrom16([16]byte(dad[14+24:14+40])) != netip.MustParseAddr("ff02::1:ff00:5") {
		t.Errorf("dad: wrong hop limit, type or addresses")
	}
}

func TestLabSetup(t *testing.T) {
	lab := newLab(t)
	hv := lab.Hypervisor()
	out, err := hv.Exec(context.Background(), "sysctl", "-n", "net.ipv6.conf.all.forwarding")
	if err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Errorf("hypervisor ipv6 forwarding = %q (%v), want 0", out, err)
	}
	vm, err := lab.AddVM("tap101i0", mac1, "192.0.2.101/24", "2001:db8::101/64")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := vm.HardwareAddr("eth0"); err != nil || got.String() != mac1 {
		t.Errorf("vm eth0 MAC = %v (%v), want %s", got, err, mac1)
	}
	out, err = hv.Exec(context.Background(), "ip", "-o", "link", "show", "tap101i0")
	if err != nil || strings.Contains(string(out), "master") {
		t.Errorf("tap101i0 is a bridge port before ifup: %s (%v)", out, err)
	}
	ext, err := lab.AddExternal("uplink0", "", "192.0.2.200/24", "2001:db8::200/64")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Ping(context.Background(), ext, "2001:db8::1", probeTimeout); err != nil || got != Connected {
		t.Errorf("external -> bridge ping = %v (%v), want Connected", got, err)
	}
	// The detached VM is unreachable until its tap joins the bridge.
	if got, err := Ping(context.Background(), ext, "192.0.2.101", probeTimeout); err != nil || got != Unreachable {
		t.Errorf("external -> detached vm ping = %v (%v), want Unreachable", got, err)
	}
	if err := lab.AttachToBridge("tap101i0"); err != nil {
		t.Fatal(err)
	}
	if got, err := Ping(context.Background(), ext, "192.0.2.101", probeTimeout); err != nil || got != Connected {
		t.Errorf("external -> attached vm ping = %v (%v), want Connected", got, err)
	}

	// Removing a VM stops what runs in it and takes its tap away.
	if _, err := ServeUDP(vm, "192.0.2.101:53"); err != nil {
		t.Fatal(err)
	}
	if err := lab.Remove(vm); err != nil {
		t.Fatal(err)
	}
	if out, err := hv.Exec(context.Background(), "ip", "link", "show", "tap101i0"); err == nil {
		t.Errorf("tap101i0 still there after Remove: %s", out)
	}
	if got := labNamespaces(t, lab.ID()); len(got) != 2 {
		t.Errorf("namespaces after Remove: %v, want hv and uplink0", got)
	}
	if err := lab.Remove(vm); err == nil {
		t.Errorf("second Remove succeeded")
	}
	if _, err := lab.AddVM("tap101i0", mac1, "192.0.2.101/24"); err != nil {
		t.Fatalf("re-adding a removed VM: %v", err)
	}

	for _, bad := range [][]string{
		{"tap101i0", "", "192.0.2.9/24"},         // name in use
		{"tap109i0", "", "10.0.0.1/24"},          // not a documentation address
		{"tap109i0", "", "192.0.2.9"},            // no prefix length
		{"tap109i0", "zz", "192.0.2.9/24"},       // bad MAC
		{"tap1234567890123", "", "192.0.2.9/24"}, // name too long
	} {
		if _, err := lab.AddVM(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("AddVM(%q) succeeded, want an error", bad)
		}
	}
}

func TestClose(t *testing.T) {
	needRoot(t)
	labs := make([]*Lab, 2)
	vms := make([]*NS, 2)
	for i := range labs { // two labs at once get distinct names
		lab, err := New(Options{Bridge: "br-test"})
		if err != nil {
			t.Fatal(err)
		}
		defer lab.Close()
		if vms[i], err = lab.AddVM("tap101i0", "", "192.0.2.101/24"); err != nil {
			t.Fatal(err)
		}
		if _, err := lab.AddExternal("uplink0", "", "198.51.100.200/24"); err != nil {
			t.Fatal(err)
		}
		labs[i] = lab
	}
	if labs[0].ID() == labs[1].ID() {
		t.Fatalf("two labs share id %s", labs[0].ID())
	}
	if got := labNamespaces(t, labs[0].ID()); len(got) != 3 {
		t.Errorf("namespaces of lab %s: %v, want 3", labs[0].ID(), got)
	}
	// Running servers, streams and captures must not keep anything alive.
	vm := vms[0]
	if _, err := ServeTCP(vm, "192.0.2.101:80"); err != nil {
		t.Fatal(err)
	}
	if _, err := StartStream(vm, "192.0.2.101:80"); err != nil {
		t.Fatal(err)
	}
	if _, err := StartCapture(vm, "eth0", func([]byte) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if err := labs[0].Close(); err != nil {
		t.Fatal(err)
	}
	if err := labs[0].Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if got := labNamespaces(t, labs[0].ID()); len(got) != 0 {
		t.Errorf("namespaces left after Close: %v", got)
	}
	if _, err := labs[0].AddVM("tap105i0", "", "192.0.2.105/24"); err == nil {
		t.Errorf("AddVM on a closed lab succeeded")
	}
	if got := labNamespaces(t, labs[1].ID()); len(got) != 3 {
		t.Errorf("closing one lab touched another: %v", got)
	}
}

func labNamespaces(t *testing.T, id string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], id+"-") {
			names = append(names, f[0])
		}
	}
	return names
}
