package interp_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/iptables/interp"
	"github.com/vmfw/vmfw/pkg/backend/iptables/interp/interptest"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/explain"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// The tests of this file trace flows end to end, vmfw trace's query
// through package explain over kernels of the iptables backend: the
// reference scenario as the save tools print it, and the keys scenario
// of package explain's tests (one group rule per rule key) with its
// kernel changed behind the configuration's back.
const (
	referenceDir = "../../../../conf/examples/reference"
	keysDir      = "../../../explain/testdata/keys"
)

// hostAddrs are the hypervisor's addresses in the reference scenario: on
// the bridge.
var hostAddrs = []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("2001:db8::1/64"), netip.MustParsePrefix("127.0.0.1/8")}

// keysHost are the hypervisor's addresses in the keys scenario: on both
// subnets of the bridge, and on a routed link.
var keysHost = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("2001:db8::1/64"),
	netip.MustParsePrefix("203.0.113.1/24"), netip.MustParsePrefix("2001:db8:3::1/64"),
	netip.MustParsePrefix("198.51.100.1/24"), netip.MustParsePrefix("2001:db8:2::1/64"),
}

// load loads the scenario in dir with every interface attached, and
// compiles its policy.
func load(t *testing.T, dir string) (*config.Model, []*config.NIC, *ruleset.Policy) {
	t.Helper()
	m, nics := scenario.Load(t, dir)
	p, err := ruleset.Compile(m, nics)
	if err != nil {
		t.Fatal(err)
	}
	return m, nics, p
}

// keysInput is the keys scenario with every interface attached and the
// kernel right after an apply, which the caller may change.
func keysInput(t *testing.T) (*explain.Input, *interp.Kernel) {
	t.Helper()
	m, nics, p := load(t, keysDir)
	k := interptest.Applied(p)
	return &explain.Input{Model: m, Attached: nics, Kernel: k, HostAddrs: keysHost}, k
}

// q builds a query; ports -1 unless given.
func q(from, to, proto string, dport int) explain.Query {
	return explain.Query{From: from, To: to, Proto: proto, DPort: dport, SPort: -1}
}

// TestSavedKernel traces every flow between the reference scenario's
// endpoints over the ruleset as iptables-nft-save and ebtables-nft-save
// print it (interptest.Reference): the kernel's spelling of vmfw's
// rules ("-m tcp", numeric ICMP types, "--tcp-flags", hex u32 tests) must
// give the configuration's verdicts, with no drift.
func TestSavedKernel(t *testing.T) {
	m, nics, p := load(t, referenceDir)
	in := &explain.Input{Model: m, Attached: nics, Kernel: interptest.Reference(t, p), HostAddrs: hostAddrs}
	ends := []string{"101", "102", "103", "104", "110", "192.0.2.200", "2001:db8::200", "198.51.100.7", "2001:db8:2::7", "hypervisor"}
	n := 0
	for _, from := range ends {
		for _, to := range ends {
			if from == to {
				continue
			}
			for _, fam := range []int{4, 6} {
				for _, p := range []struct {
					proto string
					dport int
				}{{"tcp", 22}, {"tcp", 80}, {"udp", 53}, {"icmp", -1}, {"icmpv6", -1}} {
					query := explain.Query{From: from, To: to, Proto: p.proto, DPort: p.dport, SPort: -1, Family: fam}
					r, err := explain.Trace(in, query)
					if explain.IsQueryError(err) {
						continue // two hosts that are not VMs, families that do not mix
					}
					if err != nil {
						t.Fatal(err)
					}
					n++
					if r.Kernel.Error != "" || r.Kernel.Verdict != r.Config.Verdict || len(r.Drift) > 0 {
						t.Errorf("%+v: configuration %s, kernel %s %s, drift %v", query, r.Config.Verdict, r.Kernel.Verdict, r.Kernel.Error, r.Drift)
					}
				}
			}
		}
	}
	if n < 300 {
		t.Errorf("only %d flows traced", n)
	}
}

// TestDrift changes the kernel behind the configuration's back, each
// way vmfw's objects can drift, and checks that trace names the drift and
// reports what the kernel does, not what the configuration says.
func TestDrift(t *testing.T) {
	flow := q("305", "301", "tcp", 22) // accepted by admin.toml's source_group rule
	cases := []struct {
		what    string
		change  func(k *interp.Kernel)
		drift   string
		verdict string
	}{
		{"a set member missing", func(k *interp.Kernel) {
			delete(k.Sets["sg-clients-v4"], netip.MustParseAddr("192.0.2.35"))
		}, "set sg-clients-v4 differs: missing 192.0.2.35", "drop"},
		{"a group chain edited by hand", func(k *interp.Kernel) {
			o := k.Tables[ruleset.IPv4]
			o.Lines["sg-admin-in"] = []string{"-A sg-admin-in -p tcp -m tcp --dport 22 -j DROP"}
			o.Chains["sg-admin-in"] = []string{""}
		}, "ipv4/sg-admin-in differs", "drop"},
		{"the FORWARD jump deleted", func(k *interp.Kernel) {
			o := k.Tables[ruleset.IPv4]
			delete(o.Hooks, layout.Hook{From: layout.Forward, To: layout.ChainForward})
		}, "ipv4/FORWARD jump to vmfw-FORWARD missing", "accept"},
		{"a destination MAC changed by hand", func(k *interp.Kernel) {
			// The bridge forwards 305's frames to 301's MAC; a TAP-l2d
			// naming another drops them before any in rule.
			k.Bridge.Chains["tap301i0-l2d"] = []string{"-d 02:00:00:00:00:99 -j RETURN", "-j DROP"}
		}, "bridge/tap301i0-l2d differs", "drop"},
		{"a tap chain flushed", func(k *interp.Kernel) {
			o := k.Tables[ruleset.IPv4]
			o.Lines["tap301i0-in"] = nil
			o.Chains["tap301i0-in"] = []string{}
		}, "ipv4/tap301i0-in differs", "accept"},
	}
	for _, c := range cases {
		t.Run(c.what, func(t *testing.T) {
			in, k := keysInput(t)
			c.change(k)
			r, err := explain.Trace(in, flow)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(r.Drift, c.drift) {
				t.Errorf("drift %q, want %q", r.Drift, c.drift)
			}
			if r.Config.Verdict != "accept" || r.Kernel.Verdict != c.verdict || r.Verdict != c.verdict {
				t.Errorf("verdicts: configuration %s, kernel %s, report %s; want accept, %s, %s", r.Config.Verdict, r.Kernel.Verdict, r.Verdict, c.verdict, c.verdict)
			}
			if c.verdict != "accept" && !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, "drift") }) {
				t.Errorf("notes do not say the verdicts differ by drift: %q", r.Notes)
			}
		})
	}

	// A rule the interpreter cannot read: the kernel's verdict is
	// unknown, the configuration's stands, and the chain is drift.
	in, k := keysInput(t)
	o := k.Tables[ruleset.IPv4]
	o.Lines["sg-admin-in"] = []string{"-A sg-admin-in -m time --timestart 08:00 -j ACCEPT"}
	o.Chains["sg-admin-in"] = []string{""}
	r, err := explain.Trace(in, flow)
	if err != nil {
		t.Fatal(err)
	}
	if r.Kernel.Error == "" || !strings.Contains(r.Kernel.Error, "--timestart") || r.Verdict != "accept" {
		t.Errorf("unreadable rule: kernel %+v, verdict %s", r.Kernel, r.Verdict)
	}
	if !slices.Contains(r.Drift, "ipv4/sg-admin-in differs") {
		t.Errorf("drift %q", r.Drift)
	}

	// A chain edited to jump to one the kernel lacks: the walk stops
	// there, and the chain it could not enter is drift too, though the
	// configuration's rules never take this packet there.
	in, k = keysInput(t)
	o = k.Tables[ruleset.IPv4]
	o.Lines["sg-admin-in"] = []string{"-A sg-admin-in -j sg-db-in"}
	o.Chains["sg-admin-in"] = []string{""}
	delete(o.Lines, "sg-db-in")
	delete(o.Chains, "sg-db-in")
	if r, err = explain.Trace(in, flow); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.Kernel.Error, "chain sg-db-in does not exist") || r.Verdict != "accept" {
		t.Errorf("jump to a missing chain: kernel %+v, verdict %s", r.Kernel, r.Verdict)
	}
	for _, d := range []string{"ipv4/sg-admin-in differs", "ipv4/sg-db-in is missing"} {
		if !slices.Contains(r.Drift, d) {
			t.Errorf("drift %q, want %q", r.Drift, d)
		}
	}
}

// TestBridgedFrameToVMMAC: a bridged frame to a VM carries the VM's MAC
// as its destination, so its way passes vmfw-l2d and the receiver's
// TAP-l2d, which return it, and the in rules decide as the configuration
// says.
func TestBridgedFrameToVMMAC(t *testing.T) {
	in, _ := keysInput(t)
	r, err := explain.Trace(in, q("305", "301", "tcp", 22))
	if err != nil {
		t.Fatal(err)
	}
	if r.Kernel == nil || r.Kernel.Verdict != "accept" || len(r.Drift) > 0 {
		t.Fatalf("kernel %+v, drift %q; want accept without drift", r.Kernel, r.Drift)
	}
	for _, want := range []string{"bridge/vmfw-l2d", "bridge/tap301i0-l2d"} {
		if !slices.Contains(r.Kernel.Chains, want) {
			t.Errorf("chains %q lack %s", r.Kernel.Chains, want)
		}
	}
}
