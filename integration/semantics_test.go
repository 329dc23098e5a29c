package integration

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
)

// semanticsGroups are the groups of the semantics lab's VMs
// (semanticsVMs).
var semanticsGroups = map[string]string{
	"web": `
[[in]]
proto = "tcp"
dport = "22,80"

[[in]]
proto = "udp"
dport = "53"
`,
	"egress": `
[[out]]
proto = "tcp"
dport = "80"
action = "drop"
`,
	"logdrop": `
[[in]]
proto = "udp"
dport = "9999"
action = "drop"
log = true
`,
}

// semanticsVMs are the semantics lab's four VMs; VM 200+n (tap20Ni0) has
// MAC 02:00:00:00:02:0N, 192.0.2.2N and 2001:db8::2N:
//
//	A (201) may not send to port 80 (out drop rule), accepts nothing inbound
//	B (202) accepts ssh, http and dns
//	R (203) rejects everything inbound and logs it
//	D (204) drops everything inbound; its group drops udp 9999 with logging
var semanticsVMs = []struct {
	head   string
	groups []string
}{
	{groups: []string{"egress"}},
	{groups: []string{"web"}},
	{head: "policy_in = \"reject\"\nlog = true\n"},
	{groups: []string{"logdrop"}},
}

type semanticsLab struct {
	*hv
	a, b, r, d, ext *labnet.NS
}

func newSemanticsLab(t *testing.T, backend string, forwardDrop bool) *semanticsLab {
	h := newHV(t, backend, "")
	for name, content := range semanticsGroups {
		h.write("groups/"+name+".toml", content)
	}
	if forwardDrop {
		// As Docker sets it: nothing is forwarded unless a rule accepts it.
		h.exec(h.tool("iptables"), "-P", "FORWARD", "DROP")
		h.exec(h.tool("ip6tables"), "-P", "FORWARD", "DROP")
	}
	l := &semanticsLab{hv: h}
	guests := []**labnet.NS{&l.a, &l.b, &l.r, &l.d}
	serve := map[*labnet.NS][]string{}
	var taps []string
	for i, vm := range semanticsVMs {
		n := i + 1
		tap, mac := fmt.Sprintf("tap20%di0", n), fmt.Sprintf("02:00:00:00:02:%02d", n)
		v4, v6 := fmt.Sprintf("192.0.2.2%d", n), fmt.Sprintf("2001:db8::2%d", n)
		h.write(fmt.Sprintf("vms/20%d.toml", n), vm.head+vmFile(mac, v4, v6, vm.groups...))
		*guests[i] = h.vm(tap, mac, v4, v6)
		serve[*guests[i]] = []string{v4, v6}
		taps = append(taps, tap)
	}
	ext := h.external("02:00:00:00:02:99", "192.0.2.200/24", "2001:db8::200/64")
	l.ext = ext
	serve[ext] = []string{"192.0.2.200", "2001:db8::200"}
	h.firstV4(200, "192.0.2.9")
	for _, tap := range taps {
		h.vmfw("ifup", tap)
	}
	for ns, addrs := range serve {
		for _, a := range addrs {
			h.serve(ns, a, 22, 80)
			stop, err := labnet.ServeUDP(ns, labnet.HostPort(a, 53))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
		}
	}
	return l
}

func udp(t *testing.T, ns *labnet.NS, addr string, port int) labnet.Result {
	t.Helper()
	r, err := labnet.UDPProbe(context.Background(), ns, labnet.HostPort(addr, port), probeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestVMToVMNeedsBothSides: a packet between two VMs passes the sender's
// out rules and the receiver's in rules; an out drop on A blocks A→B:80
// although B accepts http. Also stateful replies and unsolicited packets.
func TestVMToVMNeedsBothSides(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		l := newSemanticsLab(t, backend, false)
		var probes []probe
		for _, fam := range []struct{ b, a string }{{"192.0.2.22", "192.0.2.21"}, {"2001:db8::22", "2001:db8::21"}} {
			probes = append(probes,
				probe{"A->B ssh: both sides allow", l.a, fam.b, 22, true},
				probe{"A->B http: B allows, A's out rule drops", l.a, fam.b, 80, false},
				probe{"B->A ssh: A accepts nothing inbound", l.b, fam.a, 22, false},
				probe{"ext->B http", l.ext, fam.b, 80, true},
				probe{"ext->A ssh: unsolicited", l.ext, fam.a, 22, false},
				probe{"A->ext http: A's out rule drops", l.a, "192.0.2.200", 80, false},
				probe{"A->ext ssh: out policy accept, port unmanaged", l.a, "192.0.2.200", 22, true},
			)
		}
		expectAll(t, probes)
		// Stateful UDP: A's query to B gets its answer back through A's
		// in chain (which allows nothing); B's unsolicited packet to A does not.
		for _, fam := range [][2]string{{"192.0.2.22", "192.0.2.21"}, {"2001:db8::22", "2001:db8::21"}} {
			if r := udp(t, l.a, fam[0], 53); r != labnet.Connected {
				t.Errorf("udp A->B:53 reply should pass A's in chain as established, got %v", r)
			}
			if r := udp(t, l.b, fam[1], 53); r == labnet.Connected {
				t.Errorf("udp B->A:53 unsolicited should be dropped, got %v", r)
			}
		}
	})
}

// TestRejectDropAndLogging: reject answers TCP with a reset and UDP with
// ICMP port unreachable, drop is silent, and per-VM and per-rule logging
// count the packets they log.
func TestRejectDropAndLogging(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		l := newSemanticsLab(t, backend, false)
		for _, fam := range []struct {
			r, d string
			v6   bool
		}{{"192.0.2.23", "192.0.2.24", false}, {"2001:db8::23", "2001:db8::24", true}} {
			if r := tcp(t, l.a, fam.r, 22); r != labnet.Refused {
				t.Errorf("tcp to rejecting VM %s: got %v, want a reset (Refused)", fam.r, r)
			}
			if r := udp(t, l.a, fam.r, 53); r != labnet.Unreachable {
				t.Errorf("udp to rejecting VM %s: got %v, want ICMP port unreachable", fam.r, r)
			}
			if r := tcp(t, l.a, fam.d, 22); r != labnet.Timeout {
				t.Errorf("tcp to dropping VM %s: got %v, want silence (Timeout)", fam.d, r)
			}
			if r := udp(t, l.a, fam.d, 9999); r != labnet.Timeout {
				t.Errorf("udp 9999 to dropping VM %s: got %v, want silence (Timeout)", fam.d, r)
			}
			if l.nft() {
				// Logging rules are shared by family-less chains: one
				// check covers both families, after the IPv6 probes.
				if !fam.v6 {
					continue
				}
				if n := l.nftCounter("policy-in-reject", `log prefix "vmfw policy-in REJECT "`); n <= 0 {
					t.Errorf("the policy-in-reject log rule counted %d packets, want > 0", n)
				}
				if n := l.nftCounter("sg-logdrop-in", `log prefix "vmfw sg-logdrop-in DROP "`, "dport 9999"); n <= 0 {
					t.Errorf("group rule log counted %d packets, want > 0", n)
				}
				continue
			}
			if n := l.iptablesCounter(fam.v6, "-A tap203i0-in", `--log-prefix "vmfw tap203i0-in REJECT "`, "limit"); n <= 0 {
				t.Errorf("v6=%v: policy LOG rule of tap203i0-in counted %d packets, want > 0", fam.v6, n)
			}
			if n := l.iptablesCounter(fam.v6, "-A sg-logdrop-in", `--log-prefix "vmfw sg-logdrop-in DROP "`, "--dport 9999"); n <= 0 {
				t.Errorf("v6=%v: group rule LOG counted %d packets, want > 0", fam.v6, n)
			}
		}
		// D does not log (log = false): no LOG rule in its chain.
		if l.nft() {
			if slices.Contains(l.nftElements("bridge", "log-in"), "tap204i0") {
				t.Errorf("tap204i0 is in log-in although VM 204 does not log")
			}
		} else if n := l.iptablesCounter(false, "-A tap204i0-in", "-j LOG"); n != -1 {
			t.Errorf("tap204i0-in has a LOG rule although VM 204 does not log")
		}
	})
}

// TestForwardPolicyDrop: with FORWARD's policy DROP (as Docker sets it),
// allowed VM traffic still flows because vmfw accepts it itself, and
// forbidden traffic stays blocked.
func TestForwardPolicyDrop(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		l := newSemanticsLab(t, backend, true)
		expectAll(t, []probe{
			{"A->B ssh", l.a, "192.0.2.22", 22, true},
			{"A->B ssh v6", l.a, "2001:db8::22", 22, true},
			{"ext->B http", l.ext, "192.0.2.22", 80, true},
			{"A->ext ssh", l.a, "192.0.2.200", 22, true},
			{"A->B http (A's out drop)", l.a, "192.0.2.22", 80, false},
			{"ext->A ssh", l.ext, "192.0.2.21", 22, false},
		})
	})
}
