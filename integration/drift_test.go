package integration

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
)

// statusJSON mirrors the parts of "vmfw status -o json" the tests read.
type statusJSON struct {
	Base        string   `json:"base"`
	BaseDrifted []string `json:"base_drifted"`
	Taps        []struct {
		Tap       string   `json:"tap"`
		State     string   `json:"state"`
		Drifted   []string `json:"drifted"`
		Groups    []string `json:"groups"`
		DroppedIn uint64   `json:"dropped_in"`
	} `json:"taps"`
}

func (h *hv) status() statusJSON {
	h.t.Helper()
	var st statusJSON
	out := h.vmfw("status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		h.t.Fatalf("status -o json: %v\n%s", err, out)
	}
	return st
}

// TestDriftIsReportedAndRepaired: a chain flushed behind vmfw's back shows
// as drifted in status, apply rewrites exactly that chain, and after a
// "reboot" (empty kernel ruleset and no ipsets) apply restores everything.
func TestDriftIsReportedAndRepaired(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("groups/db.toml", dbGroup)
		h.write("groups/app.toml", appGroup)
		a := h.guest(291, "02:00:00:00:0a:91", "192.0.2.81", "2001:db8::81", "app", "db")
		b := h.guest(292, "02:00:00:00:0a:92", "192.0.2.82", "2001:db8::82", "app")
		h.firstV4Gone(290, "192.0.2.9")
		h.vmfw("ifup", "tap291i0")
		h.vmfw("ifup", "tap292i0")
		h.serve(a, "192.0.2.81", 22, 2222)

		st := h.status()
		if st.Base != "in-sync" || len(st.Taps) != 2 || st.Taps[0].State != "in-sync" || !slices.Equal(st.Taps[0].Groups, []string{"app", "db"}) {
			t.Fatalf("status after ifup: %+v", st)
		}
		if h.nft() {
			nftDrift(t, h, b)
			return
		}
		good4, good6, goodSets := h.save(false), h.save(true), h.ipsets()

		// Someone flushes a tap chain: with antispoof and policy gone, the
		// VM's in chain lets everything through.
		h.exec(h.tool("iptables"), "-F", "tap291i0-in")
		expectAll(t, []probe{{"flushed chain lets 2222 in", b, "192.0.2.81", 2222, true}})
		st = h.status()
		if st.Taps[0].Tap != "tap291i0" || st.Taps[0].State != "drifted" || !slices.Equal(st.Taps[0].Drifted, []string{"ipv4/tap291i0-in"}) {
			t.Errorf("status does not report the flushed chain: %+v", st.Taps[0])
		}
		if st.Taps[1].State != "in-sync" {
			t.Errorf("status reports the untouched tap as %s", st.Taps[1].State)
		}
		dry := h.vmfw("apply", "--dry-run")
		if strings.Count(dry, "\n:") != 1 || !strings.Contains(dry, ":tap291i0-in - [0:0]") {
			t.Errorf("repair would touch more than the flushed chain:\n%s", dry)
		}
		h.vmfw("apply")
		if h.save(false) != good4 || h.save(true) != good6 {
			t.Errorf("apply did not restore the flushed chain exactly: %v", changedChains(good4, h.save(false)))
		}
		expectAll(t, []probe{{"repaired chain blocks 2222", b, "192.0.2.81", 2222, false}})

		// The address tree for the hypervisor's own packets flushed: they
		// meet no in chain, and the layer-2 guard drops them, so drift
		// fails closed (docs/routing.md).
		expectAll(t, []probe{
			{"hypervisor to an allowed port", h.ns, "192.0.2.81", 22, true},
			{"hypervisor to a refused port", h.ns, "192.0.2.81", 2222, false},
		})
		h.exec(h.tool("iptables"), "-F", "vmfw-local")
		expectAll(t, []probe{{"hypervisor with vmfw-local flushed", h.ns, "192.0.2.81", 22, false}})
		st = h.status()
		if st.Base != "drifted" || !slices.Equal(st.BaseDrifted, []string{"ipv4/vmfw-local"}) {
			t.Errorf("status does not report the flushed address tree: %s %v", st.Base, st.BaseDrifted)
		}
		dry = h.vmfw("apply", "--dry-run")
		if strings.Count(dry, "\n:") != 1 || !strings.Contains(dry, ":vmfw-local - [0:0]") {
			t.Errorf("repair would touch more than the flushed tree:\n%s", dry)
		}
		h.vmfw("apply")
		if h.save(false) != good4 {
			t.Errorf("apply did not restore vmfw-local exactly: %v", changedChains(good4, h.save(false)))
		}
		expectAll(t, []probe{
			{"hypervisor to an allowed port after repair", h.ns, "192.0.2.81", 22, true},
			{"hypervisor to a refused port after repair", h.ns, "192.0.2.81", 2222, false},
		})

		// Reboot: the kernel starts with no rules and no sets.
		h.vmfw("flush")
		for _, ipt := range []string{"iptables", "ip6tables"} {
			h.exec(h.tool(ipt), "-F")
			h.exec(h.tool(ipt), "-X")
		}
		h.exec("ipset", "destroy")
		h.vmfw("apply")
		if h.save(false) != good4 || h.save(true) != good6 || h.ipsets() != goodSets {
			t.Errorf("apply after reboot did not restore the ruleset")
		}
		expectAll(t, []probe{
			{"after reboot: member ssh", b, "192.0.2.81", 22, true},
			{"after reboot: 2222 blocked", b, "192.0.2.81", 2222, false},
		})
	})
}

// nftDrift is TestDriftIsReportedAndRepaired on the nftables backend,
// whose chains are shared by every tap: a flushed in chain (every tap's
// in rules) and a flushed group chain show as drift of the base and of
// the group's taps, apply rewrites exactly the flushed chain, and after a
// "reboot" (nft flush ruleset) apply restores everything.
func nftDrift(t *testing.T, h *hv, b *labnet.NS) {
	good := h.snapshot()
	h.exec("nft", "flush", "chain", "bridge", "vmfw", "in")
	expectAll(t, []probe{{"flushed chain lets 2222 in", b, "192.0.2.81", 2222, true}})
	st := h.status()
	if st.Base != "drifted" || !slices.Equal(st.BaseDrifted, []string{"bridge/in"}) {
		t.Errorf("status does not report the flushed chain: %s %v", st.Base, st.BaseDrifted)
	}
	dry := h.vmfw("apply", "--dry-run")
	if strings.Count(dry, "flush chain ") != 1 || !strings.Contains(dry, "flush chain bridge vmfw in\n") || strings.Contains(dry, "element") {
		t.Errorf("repair would touch more than the flushed chain:\n%s", dry)
	}
	h.vmfw("apply")
	if got := h.snapshot(); got != good {
		t.Errorf("apply did not restore the flushed chain exactly:\nwant:\n%s\ngot:\n%s", good, got)
	}
	expectAll(t, []probe{{"repaired chain blocks 2222", b, "192.0.2.81", 2222, false}})

	// A group's chain flushed: its rules are gone for every tap that
	// lists it, which status says per tap.
	h.exec("nft", "flush", "chain", "bridge", "vmfw", "sg-app-in")
	expectAll(t, []probe{{"group chain flushed: ssh falls to the policy", b, "192.0.2.81", 22, false}})
	st = h.status()
	for _, tap := range st.Taps {
		if tap.State != "drifted" || !slices.Contains(tap.Drifted, "bridge/sg-app-in") {
			t.Errorf("status does not report %s's flushed group chain: %+v", tap.Tap, tap)
		}
	}
	h.vmfw("apply")
	if got := h.snapshot(); got != good {
		t.Errorf("apply did not restore the group chain exactly")
	}
	expectAll(t, []probe{{"repaired group chain opens ssh", b, "192.0.2.81", 22, true}})

	// Reboot: the kernel starts with no ruleset.
	h.exec("nft", "flush", "ruleset")
	h.vmfw("apply")
	if got := h.snapshot(); got != good {
		t.Errorf("apply after reboot did not restore the ruleset:\nwant:\n%s\ngot:\n%s", good, got)
	}
	expectAll(t, []probe{
		{"after reboot: member ssh", b, "192.0.2.81", 22, true},
		{"after reboot: 2222 blocked", b, "192.0.2.81", 2222, false},
	})
}
