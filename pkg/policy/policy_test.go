package policy

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
)

// featureDir is where pkg/ruleset keeps one config per rule feature; the
// evaluator is tested against the same scenarios its golden files cover.
const featureDir = "../ruleset/testdata/features"

func load(t *testing.T, dir string) (*config.Model, []*config.NIC) {
	t.Helper()
	return scenario.Load(t, dir)
}

// hypervisor is the address the tests give the host itself.
var hypervisor = netip.MustParseAddr("192.0.2.1")

func isHypervisor(a netip.Addr) bool { return a == hypervisor }

func tcp(src, dst string, sport, dport uint16) Flow {
	return Flow{Proto: config.ProtoTCP, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SPort: sport, DPort: dport}
}

func udp(src, dst string, sport, dport uint16) Flow {
	f := tcp(src, dst, sport, dport)
	f.Proto = config.ProtoUDP
	return f
}

func sctp(src, dst string, sport, dport uint16) Flow {
	f := tcp(src, dst, sport, dport)
	f.Proto = config.ProtoSCTP
	return f
}

func icmp(src, dst string) Flow {
	f := Flow{Proto: config.ProtoICMP, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst)}
	if f.Src.Is6() {
		f.Proto = config.ProtoICMPv6
	}
	return f
}

func portsUnknown(f Flow) Flow {
	f.PortsUnknown = true
	f.SPort, f.DPort = 0, 0
	return f
}

type verdictCase struct {
	what string
	flow Flow
	want Verdict
}

func checkAll(t *testing.T, e *Evaluator, cases []verdictCase) {
	t.Helper()
	for _, c := range cases {
		if got := e.Check(c.flow); got != c.want {
			t.Errorf("%s: %+v: got %v, want %v", c.what, c.flow, got, c.want)
		}
	}
}

// TestFeatures checks flows against feature scenarios of the golden
// tests: what the compiled chains do with the flow's first packet.
// TestMatchesCompiledRules covers every scenario, these cases say why.
func TestFeatures(t *testing.T) {
	scenarios := map[string][]verdictCase{
		// VM 101 (192.0.2.11): policy_in reject, policy_out drop; group
		// mixed rejects ssh, drops udp, rejects the rest inbound; drops
		// smtp and accepts https outbound.
		"actions": {
			{"inbound ssh is rejected", tcp("198.51.100.7", "192.0.2.11", 40000, 22), Deny},
			{"inbound udp is dropped", udp("198.51.100.7", "192.0.2.11", 40000, 53), Deny},
			{"inbound anything else is rejected", tcp("198.51.100.7", "192.0.2.11", 40000, 80), Deny},
			{"dhcp replies pass before the groups", udp("192.0.2.254", "192.0.2.11", 67, 68), Allow},
			{"https out is accepted", tcp("192.0.2.11", "198.51.100.7", 40000, 443), Allow},
			{"smtp out is dropped", tcp("192.0.2.11", "198.51.100.7", 40000, 25), Deny},
			{"other tcp out meets policy_out drop", tcp("192.0.2.11", "198.51.100.7", 40000, 80), Deny},
			{"dhcp client traffic passes", udp("192.0.2.11", "192.0.2.254", 68, 67), Allow},
			{"a dhcp server in the VM is dropped by anti-spoofing", udp("192.0.2.11", "192.0.2.254", 67, 68), Deny},
			{"sctp out: no rule can match, policy drops", portsUnknown(sctp("192.0.2.11", "198.51.100.7", 0, 0)), Deny},
			{"the hypervisor's own traffic meets the receiver's in rules", tcp("192.0.2.1", "192.0.2.11", 40000, 80), Deny},
			{"traffic to the hypervisor passes the out chain only", tcp("192.0.2.11", "192.0.2.1", 40000, 443), Allow},
			{"traffic to the hypervisor still meets policy_out", tcp("192.0.2.11", "192.0.2.1", 40000, 80), Deny},
			{"flows between other hosts are not vmfw's", tcp("198.51.100.7", "198.51.100.8", 40000, 80), Allow},
		},
		// VM 102: net0 (192.0.2.12, 192.0.2.13, 2001:db8::12) and net1 (no
		// addresses) in group admins: sources by prefix, by MAC, ssh from
		// admins; out to admins, icmpv6 echo to 2001:db8::/32, icmp echo.
		"addresses": {
			{"source prefix, v4", tcp("198.51.100.9", "192.0.2.12", 40000, 80), Allow},
			{"source prefix, v6", tcp("2001:db8:1::5", "2001:db8::12", 40000, 443), Allow},
			{"source address", udp("192.0.2.55", "192.0.2.13", 40000, 53), Allow},
			{"an unknown host may carry the rule's MAC", tcp("203.0.113.5", "192.0.2.12", 40000, 80), Unknown},
			{"an unknown v6 host may carry the rule's MAC", tcp("2001:db8:2::5", "2001:db8::12", 40000, 22), Unknown},
			{"ssh between members: source_group and dest_group", tcp("192.0.2.13", "192.0.2.12", 40000, 22), Allow},
			{"a member with a configured MAC is not the rule's MAC", tcp("192.0.2.13", "192.0.2.12", 40000, 80), Deny},
			{"icmp echo out: policy_out accept either way", icmp("192.0.2.12", "198.51.100.1"), Allow},
		},
		// VM 103 is disabled: its taps pass everything, both ways.
		"disabled": {
			{"inbound", tcp("198.51.100.7", "192.0.2.14", 40000, 22), Allow},
			{"outbound despite policy_out drop", tcp("192.0.2.14", "198.51.100.7", 40000, 25), Allow},
		},
		// VM 100 (192.0.2.10, 2001:db8::10): group web accepts tcp
		// 80,443,8000:8080, udp 53 from ports 1024:65535, sctp 9899.
		"ports": {
			{"a listed port", tcp("198.51.100.7", "192.0.2.10", 40000, 443), Allow},
			{"the top of a range", tcp("198.51.100.7", "192.0.2.10", 40000, 8080), Allow},
			{"above the range", tcp("198.51.100.7", "192.0.2.10", 40000, 8081), Deny},
			{"below the range", tcp("198.51.100.7", "192.0.2.10", 40000, 7999), Deny},
			{"v6", tcp("2001:db8::99", "2001:db8::10", 40000, 80), Allow},
			{"dns from a high port", udp("198.51.100.7", "192.0.2.10", 5353, 53), Allow},
			{"dns from a low port", udp("198.51.100.7", "192.0.2.10", 1000, 53), Deny},
			{"sctp with known ports", sctp("198.51.100.7", "192.0.2.10", 5000, 9899), Allow},
			{"sctp to another port", sctp("198.51.100.7", "192.0.2.10", 5000, 9898), Deny},
			{"sctp whose ports are not known", portsUnknown(sctp("198.51.100.7", "192.0.2.10", 0, 0)), Unknown},
			{"tcp whose ports are not known", portsUnknown(tcp("198.51.100.7", "192.0.2.10", 0, 0)), Unknown},
			{"icmp matches no rule", icmp("198.51.100.7", "192.0.2.10"), Deny},
			{"outbound: policy_out accept", tcp("192.0.2.10", "198.51.100.7", 40000, 25), Allow},
		},
	}
	for name, cases := range scenarios {
		t.Run(name, func(t *testing.T) {
			m, nics := load(t, filepath.Join(featureDir, name))
			checkAll(t, New(m, nics, isHypervisor), cases)
		})
	}
}

// TestReference checks the reference scenario: MAC rules decide between
// VMs, and a MAC configured for a VM is not an outside host's.
func TestReference(t *testing.T) {
	m, nics := load(t, "../../conf/examples/reference")
	checkAll(t, New(m, nics, isHypervisor), []verdictCase{
		{"vm1 to VM 110 by MAC, any port", tcp("192.0.2.101", "192.0.2.110", 40000, 5000), Allow},
		{"vm3 ssh to VM 110 as a security4 member", tcp("192.0.2.103", "192.0.2.110", 40000, 22), Allow},
		{"vm3 to another port of VM 110", tcp("192.0.2.103", "192.0.2.110", 40000, 23), Deny},
		{"http to VM 110 from anywhere", tcp("198.51.100.9", "192.0.2.110", 40000, 80), Allow},
		{"the admin host's ssh to VM 110", tcp("192.0.2.200", "192.0.2.110", 40000, 22), Allow},
		{"the admin host is not vm1, whatever its MAC", tcp("192.0.2.200", "192.0.2.110", 40000, 23), Deny},
		{"vm2 to vm3 by MAC", udp("192.0.2.102", "192.0.2.103", 40000, 53), Allow},
		{"vm1 ssh to vm2 as a security2 member", tcp("192.0.2.101", "192.0.2.102", 40000, 22), Allow},
		{"vm1 http to vm2", tcp("192.0.2.101", "192.0.2.102", 40000, 80), Deny},
		{"v6 ssh vm3 to VM 110", tcp("2001:db8::103", "2001:db8::110", 40000, 22), Allow},
		{"v6 vm4 to vm2 by MAC", icmp("2001:db8::104", "2001:db8::102"), Allow},
		{"v6 from outside to vm1 ssh", tcp("2001:db8::200", "2001:db8::101", 40000, 22), Allow},
		{"v6 from outside to vm1 http", tcp("2001:db8::200", "2001:db8::101", 40000, 80), Deny},
		{"the hypervisor to VM 110 meets its in rules", tcp("192.0.2.1", "192.0.2.110", 40000, 23), Deny},
		{"the hypervisor to VM 110's http", tcp("192.0.2.1", "192.0.2.110", 40000, 80), Allow},
	})
}

// TestEdits checks the verdict changes the engine cuts connections for: a
// rule removed, a VM leaving a group, a member leaving a source_group, a
// policy tightened — and that flows still allowed keep their verdict.
func TestEdits(t *testing.T) {
	m, nics := load(t, "../../conf/examples/reference")
	vm3ssh := tcp("192.0.2.103", "192.0.2.110", 40000, 22)
	vm1any := tcp("192.0.2.101", "192.0.2.110", 40000, 5000)
	http := tcp("198.51.100.9", "192.0.2.110", 40000, 80)
	reply := tcp("192.0.2.110", "198.51.100.9", 40000, 443)

	before := New(m, nics, nil)
	for _, f := range []Flow{vm3ssh, vm1any, http, reply} {
		if v := before.Check(f); v != Allow {
			t.Fatalf("before the edits %+v is %v, want allow", f, v)
		}
	}

	// vm3 leaves security4: its ssh to VM 110 loses its source_group.
	vm3 := m.VMs[103].NICs[0]
	vm3.Groups = nil
	// VM 110 leaves security5: http is no longer accepted.
	vm110 := m.VMs[110].NICs[0]
	vm110.Groups = []string{"security1"}
	after := New(m, nics, nil)
	checkAll(t, after, []verdictCase{
		{"member left the source_group", vm3ssh, Deny},
		{"VM left the group", http, Deny},
		{"still allowed by MAC", vm1any, Allow},
		{"VM 110's own outbound connection", reply, Allow},
	})

	// A rule removed: security1 loses its MAC rule.
	g := m.Groups["security1"]
	g.In = g.In[1:]
	// policy_out tightened: VM 110 may no longer open connections.
	m.VMs[110].PolicyOut = config.Drop
	after = New(m, nics, nil)
	checkAll(t, after, []verdictCase{
		{"rule removed", vm1any, Deny},
		{"policy_out tightened", reply, Deny},
	})
}

// TestSharedAddress: when two attached interfaces list one address, whose
// chain a packet passes cannot be told.
func TestSharedAddress(t *testing.T) {
	m, nics := load(t, filepath.Join(featureDir, "ports"))
	twin := *nics[0]
	twin.Tap = "veth0"
	e := New(m, append(nics, &twin), nil)
	if v := e.Check(tcp("198.51.100.7", "192.0.2.10", 40000, 22)); v != Unknown {
		t.Errorf("flow to a shared address: %v, want unknown", v)
	}
}

// TestSetSteps: Explain names the address set a rule looked the packet up
// in and the prefix that decided, with its line: an entry inside an except
// matches, an address in the except does not (so the rule is not a step),
// and a MAC-only interface sends from a foreign address past no
// anti-spoofing step.
func TestSetSteps(t *testing.T) {
	m, nics := load(t, filepath.Join(featureDir, "sets"))
	ev := New(m, nics, isHypervisor)
	vm := m.NIC("tap104i0")
	in := func(src string) []Step {
		return ev.Explain(tcp(src, "192.0.2.14", 40000, 22), Path{Receiver: vm}).In
	}
	var found bool
	for _, s := range in("10.1.2.9") {
		if s.What == "rule" && s.Rule == 1 {
			found = true
			if s.Set != "blocked" || s.SetEntry != "10.1.2.0/24" || s.SetLine != 4 || s.SetFile != m.Sets["blocked"].File || s.Action != config.Drop {
				t.Errorf("10.1.2.9: step %+v, want set blocked, entry 10.1.2.0/24 at line 4", s)
			}
		}
	}
	if !found {
		t.Error("10.1.2.9, in an entry inside an except, did not meet the set's drop rule")
	}
	for _, s := range in("10.1.3.9") {
		if s.What == "rule" && s.Rule == 1 {
			t.Errorf("10.1.3.9, in the except, matched the set's rule: %+v", s)
		}
	}

	m, nics = load(t, filepath.Join(featureDir, "antispoofmac"))
	ev = New(m, nics, isHypervisor)
	x := ev.Explain(tcp("203.0.113.9", "192.0.2.19", 40000, 22), Path{Sender: m.NIC("tap107i0"), Receiver: m.NIC("tap108i0")})
	if x.Verdict != Allow {
		t.Errorf("a foreign source from a MAC-only interface: %v, want allow", x.Verdict)
	}
	for _, s := range x.Out {
		if s.What == "antispoof" {
			t.Errorf("a MAC-only interface met an anti-spoofing step: %+v", s)
		}
	}
}
