package integration

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
)

// TestAntispoof: a VM may send only with its own MAC and addresses, never
// as a DHCP server or IPv6 router, and may advertise only its own IPv6
// addresses as neighbour advertisement targets; DHCP discovery (from 0.0.0.0) and IPv6
// duplicate address detection and neighbour discovery work. Each case
// sends a raw frame from the VM and looks for it on the external host.
func TestAntispoof(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		vm := h.guest(211, "02:00:00:00:03:11", "192.0.2.31", "2001:db8::31")
		ext := h.external("02:00:00:00:03:99", "192.0.2.200/24", "2001:db8::200/64")
		h.firstV4(210, "192.0.2.9")
		h.vmfw("ifup", "tap211i0")
		h.serve(ext, "192.0.2.200", 22)

		own := mustMAC(t, "02:00:00:00:03:11")
		other := mustMAC(t, "02:00:00:00:03:66")
		extMAC := mustMAC(t, "02:00:00:00:03:99")
		linkLocal := netip.MustParseAddr("fe80::ff:fe00:311")

		expectFrames(t, ext, []sentFrame{
			{"own MAC and IPv4", vm, udpFrame(own, extMAC, "192.0.2.31", "192.0.2.200"), true},
			{"own MAC and IPv6", vm, udpFrame(own, extMAC, "2001:db8::31", "2001:db8::200"), true},
			{"spoofed MAC", vm, udpFrame(other, extMAC, "192.0.2.31", "192.0.2.200"), false},
			{"spoofed IPv4 source", vm, udpFrame(own, extMAC, "192.0.2.99", "192.0.2.200"), false},
			{"spoofed IPv6 source", vm, udpFrame(own, extMAC, "2001:db8::99", "2001:db8::200"), false},
			{"DHCP server offer", vm, func(m []byte) []byte {
				return labnet.DHCPOfferFrame(own, netip.MustParseAddr("192.0.2.31"), extMAC, netip.MustParseAddr("192.0.2.77"), m)
			}, false},
			{"IPv6 router advertisement", vm, func(m []byte) []byte {
				return labnet.RouterAdvertFrame(own, linkLocal, m)
			}, false},
			{"DHCP discover from 0.0.0.0", vm, func(m []byte) []byte {
				return labnet.DHCPDiscoverFrame(own, m)
			}, true},
			{"IPv6 duplicate address detection", vm, func(m []byte) []byte {
				return labnet.DADSolicitFrame(own, netip.MustParseAddr("2001:db8::31"), m)
			}, true},
			{"neighbour advertisement for its own address", vm, func(m []byte) []byte {
				return labnet.NeighborAdvertFrame(own, linkLocal, netip.MustParseAddr("2001:db8::31"), m)
			}, true},
			{"neighbour advertisement for its link-local address", vm, func(m []byte) []byte {
				return labnet.NeighborAdvertFrame(own, linkLocal, linkLocal, m)
			}, true},
			{"neighbour advertisement claiming another's address", vm, func(m []byte) []byte {
				return labnet.NeighborAdvertFrame(own, linkLocal, netip.MustParseAddr("2001:db8::200"), m)
			}, false},
			{"neighbour advertisement from its own address claiming another's", vm, func(m []byte) []byte {
				return labnet.NeighborAdvertFrame(own, netip.MustParseAddr("2001:db8::31"), netip.MustParseAddr("2001:db8::200"), m)
			}, false},
		})

		// Neighbour discovery works: an IPv6 ping needs NS/NA both ways.
		if r, err := labnet.Ping(context.Background(), vm, "2001:db8::200", 2*time.Second); err != nil || r != labnet.Connected {
			t.Errorf("IPv6 ping from the VM (needs NDP): %v %v", r, err)
		}
		if r := tcp(t, vm, "192.0.2.200", 22); r != labnet.Connected {
			t.Fatalf("control connection before the MAC change: %v", r)
		}
		// A VM that changes its MAC gets nothing through.
		if out, err := vm.Exec(context.Background(), "ip", "link", "set", "eth0", "address", "02:00:00:00:03:66"); err != nil {
			t.Fatalf("changing MAC: %v %s", err, out)
		}
		if r := tcp(t, vm, "192.0.2.200", 22); r == labnet.Connected {
			t.Errorf("VM with a changed MAC still connects")
		}
	})
}
