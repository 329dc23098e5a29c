package integration

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
)

// TestARPSpoofing: a VM with anti-spoofing cannot poison another host's ARP
// cache by claiming a victim's address; the same attack from a VM without
// anti-spoofing succeeds, which shows the probe would notice.
func TestARPSpoofing(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.guest(301, "02:00:00:00:0b:01", "192.0.2.131", "2001:db8::131")
		target := h.guest(302, "02:00:00:00:0b:02", "192.0.2.132", "2001:db8::132")
		spoofer := h.guest(303, "02:00:00:00:0b:03", "192.0.2.133", "2001:db8::133")
		h.write("vms/304.toml", vmFile("02:00:00:00:0b:04", "192.0.2.134", "2001:db8::134")+"antispoof = false\n")
		router := h.vm("tap304i0", "02:00:00:00:0b:04", "192.0.2.134", "2001:db8::134")
		h.firstV4(300, "192.0.2.9")
		for _, tap := range []string{"tap301i0", "tap302i0", "tap303i0", "tap304i0"} {
			h.vmfw("ifup", tap)
		}
		// The target learns the victim's real MAC.
		if r, err := labnet.Ping(context.Background(), target, "192.0.2.131", 2*time.Second); err != nil || r == labnet.Failed {
			t.Fatalf("ping victim: %v %v", r, err)
		}
		neigh := func() string {
			out, _ := target.Exec(context.Background(), "ip", "neigh", "show", "192.0.2.131", "dev", "eth0")
			return string(out)
		}
		if !strings.Contains(neigh(), "02:00:00:00:0b:01") {
			t.Fatalf("target does not know the victim's MAC: %q", neigh())
		}
		spoof := func(ns *labnet.NS) {
			t.Helper()
			// An ARP request to the target claiming the victim's address:
			// the target records the sender as the victim.
			// arping exits non-zero when no reply comes back, as when
			// filtered, so its status says nothing here.
			ns.Exec(context.Background(), "arping", "-q", "-c", "3", "-w", "100000", "-i", "eth0", "-S", "192.0.2.131", "192.0.2.132")
		}
		spoof(spoofer)
		if got := neigh(); !strings.Contains(got, "02:00:00:00:0b:01") {
			t.Errorf("ARP spoof from an anti-spoofing VM poisoned the target's cache: %q", got)
		}
		spoof(router)
		if got := neigh(); !strings.Contains(got, "02:00:00:00:0b:04") {
			t.Errorf("control: ARP spoof from a VM without anti-spoofing did not change the cache (%q); the probe cannot see poisoning", got)
		}
	})
}

// TestL2Protocols: an anti-spoofing VM may send only IPv4, IPv6, ARP and the
// ethertypes it lists in l2_protocols.
func TestL2Protocols(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		vm := h.guest(311, "02:00:00:00:0c:11", "192.0.2.141", "2001:db8::141")
		ext := h.external("02:00:00:00:0c:99", "192.0.2.200/24")
		h.firstV4(310, "192.0.2.9")
		h.vmfw("ifup", "tap311i0")
		send := func(etherType uint16) bool {
			t.Helper()
			marker := labnet.NewMarker()
			frame := make([]byte, 14, 14+len(marker)+46)
			copy(frame[0:6], mustMAC(t, "02:00:00:00:0c:99"))
			copy(frame[6:12], mustMAC(t, "02:00:00:00:0c:11"))
			binary.BigEndian.PutUint16(frame[12:14], etherType)
			frame = append(frame, marker...)
			frame = append(frame, make([]byte, 46)...)
			c, err := labnet.StartCapture(ext, "eth0", labnet.HasMarker(marker))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := labnet.SendFrame(vm, "eth0", frame); err != nil {
				t.Fatal(err)
			}
			got, err := c.Wait(probeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		if send(0x88b5) {
			t.Errorf("frame with ethertype 0x88b5 passed without l2_protocols")
		}
		h.write("vms/311.toml", vmFile("02:00:00:00:0c:11", "192.0.2.141", "2001:db8::141")+"l2_protocols = [\"0x88b5\", \"LLDP\"]\n")
		h.vmfw("apply")
		if !send(0x88b5) {
			t.Errorf("frame with ethertype 0x88b5 blocked although l2_protocols allows it")
		}
		if send(0x88b6) {
			t.Errorf("frame with ethertype 0x88b6 passed; only 0x88b5 and LLDP are listed")
		}
		if out := h.vmfw("apply", "--dry-run"); !strings.Contains(out, "# no changes") {
			t.Errorf("apply after apply is not a no-op with l2_protocols (ebtables prints rules differently?):\n%s", out)
		}
	})
}
