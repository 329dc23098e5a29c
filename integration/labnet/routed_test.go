package labnet

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// TestRoutedTopology builds, without any firewall, what the routed tests
// of the product need: a host behind a routed (non-bridge) veth, a second
// bridge with a VM, forwarding between them, probes bound to one of several
// source addresses, and UDP datagrams from a chosen port to global,
// link-local and broadcast destinations.
func TestRoutedTopology(t *testing.T) {
	lab := newLab(t)
	hv := lab.Hypervisor()
	if err := hv.Sysctl("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		t.Fatal(err)
	}
	up, err := lab.AddRoutedHost("uplink0", "", []string{"203.0.113.1/24", "2001:db8:203::1/64"},
		"203.0.113.2/24", "203.0.113.3/24", "2001:db8:203::2/64")
	if err != nil {
		t.Fatal(err)
	}
	if err := up.IP("route add 198.51.100.0/24 via 203.0.113.1", "route add 2001:db8:198::/64 via 2001:db8:203::1"); err != nil {
		t.Fatal(err)
	}
	if err := lab.AddBridge("vmbr1", "198.51.100.1/24", "2001:db8:198::1/64"); err != nil {
		t.Fatal(err)
	}
	if err := lab.AddBridge("vmbr1"); err == nil {
		t.Error("AddBridge accepted a name already in use")
	}
	vm, err := lab.AddVM("tap101i0", mac1, "198.51.100.101/24", "2001:db8:198::101/64")
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.IP("route add default via 198.51.100.1", "route add default via 2001:db8:198::1"); err != nil {
		t.Fatal(err)
	}
	if err := lab.AttachTo("tap101i0", "vmbr1"); err != nil {
		t.Fatal(err)
	}
	// Forwarded IPv6 waits for the router's link-local addresses (it
	// solicits neighbours from them).
	for _, c := range []struct {
		ns  *NS
		dev string
	}{{hv, "uplink0"}, {hv, "vmbr1"}, {up, "eth0"}, {vm, "eth0"}} {
		ll, err := c.ns.LinkLocal(c.dev)
		if err != nil {
			t.Fatal(err)
		}
		if !ll.IsLinkLocalUnicast() {
			t.Fatalf("LinkLocal(%s) = %v", c.dev, ll)
		}
	}
	for _, a := range []string{"198.51.100.101:22", "[2001:db8:198::101]:22"} {
		stop, err := ServeTCP(vm, a)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}

	ctx := context.Background()
	for _, c := range []struct {
		name, src, dst string
		want           Result
	}{
		{"routed v4", "", "198.51.100.101:22", Connected},
		{"routed v4 from the second address", "203.0.113.3", "198.51.100.101:22", Connected},
		{"routed v6", "2001:db8:203::2", "[2001:db8:198::101]:22", Connected},
		{"routed v4, closed port", "203.0.113.2", "198.51.100.101:23", Refused},
	} {
		got, err := TCPConnectFrom(ctx, up, c.src, c.dst, probeTimeout)
		wantResult(t, c.name, got, err, c.want)
	}
	for _, c := range []struct{ src, dst string }{
		{"203.0.113.9", "198.51.100.101:22"},       // not an address of the host
		{"8.8.8.8", "198.51.100.101:22"},           // not a documentation address
		{"2001:db8:203::2", "198.51.100.101:22"},   // families differ
		{"nonsense", "198.51.100.101:22"},          // not an address
		{"203.0.113.2", "[2001:4860::1]:22"},       // target outside the lab's ranges
		{"203.0.113.2", "198.51.100.101:nonsense"}, // not a port
	} {
		if got, err := TCPConnectFrom(ctx, up, c.src, c.dst, 100*time.Millisecond); err == nil || got != Failed {
			t.Errorf("TCPConnectFrom(%s, %s) = %v, %v; want Failed and an error", c.src, c.dst, got, err)
		}
	}

	vmLL, err := vm.LinkLocal("eth0")
	if err != nil {
		t.Fatal(err)
	}
	zoned := netip.AddrPortFrom(vmLL.WithZone("vmbr1"), 546).String()
	for _, c := range []struct{ name, src, dst string }{
		{"from port 67", "198.51.100.1:67", "198.51.100.101:68"},
		{"broadcast", "198.51.100.1:40000", "198.51.100.255:9999"},
		{"to a link-local address", "[::]:547", zoned},
		{"to all nodes", "[::]:40001", "[ff02::1%vmbr1]:9999"},
	} {
		marker := NewMarker()
		capture, err := StartCapture(vm, "eth0", HasMarker(marker))
		if err != nil {
			t.Fatal(err)
		}
		if err := SendUDP(hv, c.src, c.dst, marker); err != nil {
			capture.Close()
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got, err := capture.Wait(2 * time.Second); err != nil || !got {
			t.Errorf("%s: udp %s -> %s did not arrive (%v)", c.name, c.src, c.dst, err)
		}
	}
	for _, c := range []struct{ src, dst string }{
		{"198.51.100.1:40000", "8.8.8.8:53"},            // not a documentation address
		{"[::]:40000", "[fe80::1]:546"},                 // link-local without a zone
		{"198.51.100.1:40000", "[2001:db8:198::101]:9"}, // families differ
		{"10.0.0.1:40000", "198.51.100.101:9"},          // source outside the lab's ranges
	} {
		if err := SendUDP(hv, c.src, c.dst, []byte("x")); err == nil {
			t.Errorf("SendUDP(%s, %s) succeeded; want an error", c.src, c.dst)
		}
	}
}
