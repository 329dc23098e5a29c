package integration

import (
	"fmt"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
)

// refVM is one VM of the reference scenario (conf/examples/reference).
type refVM struct {
	name, tap, mac, v4, v6 string
}

var refVMs = []refVM{
	{"vm1", "tap101i0", "02:00:00:00:01:01", "192.0.2.101", "2001:db8::101"},
	{"vm2", "tap102i0", "02:00:00:00:01:02", "192.0.2.102", "2001:db8::102"},
	{"vm3", "tap103i0", "02:00:00:00:01:03", "192.0.2.103", "2001:db8::103"},
	{"vm4", "tap104i0", "02:00:00:00:01:04", "192.0.2.104", "2001:db8::104"},
	{"vm110", "tap110i0", "02:00:00:00:01:10", "192.0.2.110", "2001:db8::110"},
}

// refAllowed lists the flows the reference scenario allows, written from
// the scenario's description, not from the generated rules:
//
//	vm110: security1 (vm1 by MAC; ssh from security4 members = vm3; ssh from
//	       192.0.2.200 only) and security5 (http from anyone)
//	vm1, vm4: security2 (ssh from anyone)
//	vm2: security3 (vm3 and vm4 by MAC; ssh from security2 members = vm1, vm4)
//	vm3: security4 (vm2 by MAC)
//
// Keys are "source>destination:port"; family is "4" or "6".
func refAllowed(family string) map[string]bool {
	allowed := map[string]bool{}
	add := func(flows ...string) {
		for _, f := range flows {
			allowed[f] = true
		}
	}
	add("vm1>vm110:22", "vm1>vm110:80", "vm3>vm110:22")
	for _, src := range []string{"vm1", "vm2", "vm3", "vm4", "vm110", "ext"} {
		add(src + ">vm110:80")
		for _, dst := range []string{"vm1", "vm4"} {
			if src != dst {
				add(src + ">" + dst + ":22")
			}
		}
	}
	if family == "4" {
		add("ext>vm110:22") // the admin host is named by its IPv4 address only
	}
	add("vm3>vm2:22", "vm3>vm2:80", "vm4>vm2:22", "vm4>vm2:80", "vm1>vm2:22")
	add("vm2>vm3:22", "vm2>vm3:80")
	return allowed
}

// TestReferenceScenario runs the reference scenario: every allowed flow
// connects, every other flow is refused or times out, in IPv4 and IPv6.
// It also checks VM 110's drop logging counts the dropped probes.
func TestReferenceScenario(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		h := newHV(t, backend, "../conf/examples/reference")
		h.firstV4(199, "192.0.2.9")
		ns := map[string]*labnet.NS{}
		addr := map[string][2]string{}
		for _, v := range refVMs {
			ns[v.name] = h.vm(v.tap, v.mac, v.v4, v.v6)
			addr[v.name] = [2]string{v.v4, v.v6}
			h.vmfw("ifup", v.tap)
		}
		ext := h.external("02:00:00:00:02:00", "192.0.2.200/24", "2001:db8::200/64")
		ns["ext"] = ext
		for _, v := range refVMs {
			h.serve(ns[v.name], v.v4, 22, 80)
			h.serve(ns[v.name], v.v6, 22, 80)
		}
		var probes []probe
		for fi, family := range []string{"4", "6"} {
			allowed := refAllowed(family)
			for _, src := range []string{"vm1", "vm2", "vm3", "vm4", "vm110", "ext"} {
				for _, dst := range refVMs {
					if src == dst.name {
						continue
					}
					for _, port := range []int{22, 80} {
						key := fmt.Sprintf("%s>%s:%d", src, dst.name, port)
						probes = append(probes, probe{"IPv" + family + " " + key, ns[src], addr[dst.name][fi], port, allowed[key]})
					}
				}
			}
		}
		expectAll(t, probes)
		// VM 110 logs what its policy drops: the LOG rule sits before the
		// DROP in tap110i0-in and has counted the blocked probes.
		if h.nft() {
			// One policy log rule for every interface that logs
			// (docs/nftables.md, "Differences"): VM 110 is the only one.
			if n := h.nftCounter("policy-in", `log prefix "vmfw policy-in DROP "`); n <= 0 {
				t.Errorf("the policy-in log rule counted %d packets, want > 0", n)
			}
		} else {
			for _, v6 := range []bool{false, true} {
				if n := h.iptablesCounter(v6, "-A tap110i0-in", `--log-prefix "vmfw tap110i0-in DROP "`); n <= 0 {
					t.Errorf("v6=%v: LOG rule of tap110i0-in counted %d packets, want > 0", v6, n)
				}
			}
		}
		status := h.vmfw("status")
		for _, v := range refVMs {
			if !strings.Contains(status, v.tap) {
				t.Errorf("status lacks %s:\n%s", v.tap, status)
			}
		}
		if strings.Contains(status, "drifted") {
			t.Errorf("status reports drift right after ifup:\n%s", status)
		}
	})
}
