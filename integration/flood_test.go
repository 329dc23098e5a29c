package integration

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
)

// TestFloodedUnicast: the bridge floods a unicast frame whose destination
// it has not learnt (fdb ageing, a VM that moved) to every port. The copy
// that reaches the port of a VM with a MAC and anti-spoofing is dropped
// before its in rules see it: otherwise a VM whose in rules reject has the
// host answer the copy with a reset in the real destination's name, and
// connections to another VM fail at random. A VM without anti-spoofing,
// which may use other MACs, still receives the copy.
//
// The bridge runs in hub mode (ageing_time 0: it learns nothing and floods
// every unicast frame), so every frame to A also goes to B.
func TestFloodedUnicast(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		ext := h.external("02:00:00:00:04:99", "192.0.2.200/24")
		h.firstV4(210, "192.0.2.9")
		h.write("vms/221.toml", "policy_in = \"accept\"\n"+vmFile("02:00:00:00:04:21", "192.0.2.41", ""))
		// B rejects what its rules do not accept; they accept the UDP
		// frames the test floods, so that on its own a copy would arrive.
		h.write("groups/flood.toml", `
[[in]]
proto = "udp"
dport = "5000"
`)
		vmB := func(antispoof bool) {
			text := "policy_in = \"reject\"\n" + vmFile("02:00:00:00:04:22", "192.0.2.42", "", "flood")
			if !antispoof {
				text += "antispoof = false\n"
			}
			h.write("vms/222.toml", text)
		}
		vmB(true)
		a := h.vm("tap221i0", "02:00:00:00:04:21", "192.0.2.41", "")
		b := h.vm("tap222i0", "02:00:00:00:04:22", "192.0.2.42", "")
		h.vmfw("ifup", "tap221i0")
		h.vmfw("ifup", "tap222i0")
		for _, tap := range []string{"tap221i0", "tap222i0"} {
			if err := h.lab.WaitForwarding(tap); err != nil {
				t.Fatal(err)
			}
		}
		h.serve(a, "192.0.2.41", 22)
		h.exec("ip", "link", "set", h.lab.Bridge(), "type", "bridge", "ageing_time", "0")

		aMAC, extMAC := mustMAC(t, "02:00:00:00:04:21"), mustMAC(t, "02:00:00:00:04:99")
		toA := func(marker []byte) []byte {
			return labnet.UDP4Frame(extMAC, aMAC,
				netip.MustParseAddrPort("192.0.2.200:4000"), netip.MustParseAddrPort("192.0.2.41:5000"), marker)
		}
		// flooded sends a frame to A's MAC from the uplink and reports
		// whether it arrived at A and at B. Only the frame itself counts:
		// an ICMP error about it quotes the marker too.
		flooded := func() (atA, atB bool) {
			t.Helper()
			marker := labnet.NewMarker()
			isFrame := func(f []byte) bool { return len(f) > 6 && bytes.Equal(f[:6], aMAC) && labnet.HasMarker(marker)(f) }
			capA, err := labnet.StartCapture(a, "eth0", isFrame)
			if err != nil {
				t.Fatal(err)
			}
			defer capA.Close()
			capB, err := labnet.StartCapture(b, "eth0", isFrame)
			if err != nil {
				t.Fatal(err)
			}
			defer capB.Close()
			if err := labnet.SendFrame(ext, "eth0", toA(marker)); err != nil {
				t.Fatalf("sending: %v", err)
			}
			if atA, err = capA.Wait(2 * time.Second); err != nil {
				t.Fatalf("capturing at A: %v", err)
			}
			if atB, err = capB.Wait(probeTimeout); err != nil {
				t.Fatalf("capturing at B: %v", err)
			}
			return atA, atB
		}

		if atA, atB := flooded(); !atA || atB {
			t.Errorf("a frame to A's MAC, flooded: arrived at A = %v, at B = %v; want true, false", atA, atB)
		}
		// Every connect to A succeeds: no reset from B's in rules.
		for i := range 20 {
			if r, err := labnet.TCPConnect(context.Background(), ext, "192.0.2.41:22", 2*time.Second); err != nil || r != labnet.Connected {
				t.Errorf("connect %d to A while B rejects: %v %v, want connected", i, r, err)
			}
		}

		// Without anti-spoofing B may use other MACs: the flooded copy
		// reaches it, as documented, and meets its in rules.
		vmB(false)
		h.vmfw("apply")
		if atA, atB := flooded(); !atA || !atB {
			t.Errorf("antispoof = false: a frame to A's MAC, flooded: arrived at A = %v, at B = %v; want true, true", atA, atB)
		}
	})
}
