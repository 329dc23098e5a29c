package explain

import (
	"errors"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// fakeKernel is a backend's read of the kernel that walks nothing: it
// answers every packet with what walk says and records what explain asked
// it, so that the tests below check explain's own part of a trace (the
// packets it hands the backend, the policies, the report it makes of the
// walks) whatever a backend's objects do.
type fakeKernel struct {
	walk func(p backend.Packet) (kernel, compiled backend.Walk)

	// traces are the Trace calls, packets the packets walked.
	traces          int
	installed, want *ruleset.Policy
	name            func(ruleset.Origin) string
	packets         []backend.Packet
}

func (f *fakeKernel) Installed() []string { return nil }
func (f *fakeKernel) Describe() string    { return "fake tools" }

func (f *fakeKernel) Trace(installed, want *ruleset.Policy, name func(ruleset.Origin) string) backend.KernelTrace {
	f.traces++
	f.installed, f.want, f.name = installed, want, name
	return f
}

func (f *fakeKernel) Walk(p backend.Packet) (kernel, compiled backend.Walk) {
	f.packets = append(f.packets, p)
	return f.walk(p)
}

// agree answers every packet the same in the kernel and the compiled
// rules.
func agree(w backend.Walk) func(backend.Packet) (backend.Walk, backend.Walk) {
	return func(backend.Packet) (backend.Walk, backend.Walk) { return w, w }
}

// fakeInput is the keys scenario, every interface attached but detached,
// over k.
func fakeInput(t *testing.T, k *fakeKernel, detached ...string) *Input {
	t.Helper()
	m, nics := loadModel(t, keysDir)
	nics = slices.DeleteFunc(nics, func(n *config.NIC) bool { return slices.Contains(detached, n.Tap) })
	return &Input{Model: m, Attached: nics, Kernel: k, HostAddrs: keysHost}
}

// admin1 is the first in rule of keys' group admin: tcp 22 from the
// members of clients, which 305 is; 301 lists admin.
var admin1 = ruleset.Origin{Group: "admin", Dir: config.In, Index: 0}

// TestKernelReport: the report carries the backend's walk of the kernel
// as it is (objects, rules with their configuration named, drift), takes
// its verdict, and says why it differs from the configuration's when it
// does; a walk the backend could not finish leaves the configuration's
// verdict standing.
func TestKernelReport(t *testing.T) {
	flow := q("305", "301", "tcp", 22) // the configuration accepts it by admin.toml:3
	accept := backend.Walk{Verdict: "accept", DecidedBy: "by the book", Objects: []string{"a", "b"},
		Rules: []backend.RuleHit{{Table: "t", Object: "b", Index: 2, Text: "take it", Origin: admin1}, {Table: "t", Object: "a", Index: 1, Text: "mine"}}}
	drop := backend.Walk{Verdict: "drop", DecidedBy: "the floor", Objects: []string{"a"}}
	for _, c := range []struct {
		name             string
		kernel, compiled backend.Walk
		verdict          string
		kernelVerdict    string
		errText          string
		drift            []string
		note             string
	}{
		{name: "agreeing", kernel: accept, compiled: accept, verdict: "accept", kernelVerdict: "accept", drift: []string{}},
		{name: "drift", kernel: withDrift(drop, "x differs"), compiled: accept, verdict: "drop", kernelVerdict: "drop", drift: []string{"x differs"},
			note: "the kernel's rules drop the packet, the configuration would accept it: drift"},
		{name: "no drift", kernel: drop, compiled: accept, verdict: "drop", kernelVerdict: "drop", drift: []string{},
			note: "the kernel's rules drop the packet, the configuration would accept it: an error in vmfw (please report it)"},
		{name: "walk stopped", kernel: backend.Walk{Objects: []string{"a"}, Err: errors.New("cannot read rule 3")}, compiled: accept, verdict: "accept", errText: "cannot read rule 3", drift: []string{}},
		{name: "compiled disagrees", kernel: accept, compiled: drop, verdict: "accept", kernelVerdict: "accept", drift: []string{},
			note: "internal error: the rules compiled from the configuration drop the packet, the configuration says accept (please report this)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := &fakeKernel{walk: func(backend.Packet) (backend.Walk, backend.Walk) { return c.kernel, c.compiled }}
			r, err := Trace(fakeInput(t, k), flow)
			if err != nil {
				t.Fatal(err)
			}
			if r.Config.Verdict != "accept" || r.Verdict != c.verdict || r.Kernel.Verdict != c.kernelVerdict || r.Kernel.Error != c.errText {
				t.Errorf("verdicts: configuration %s, kernel %q (error %q), report %s; want accept, %q (error %q), %s", r.Config.Verdict, r.Kernel.Verdict, r.Kernel.Error, r.Verdict, c.kernelVerdict, c.errText, c.verdict)
			}
			if r.Kernel.Backend != "fake tools" || !slices.Equal(r.Kernel.Chains, c.kernel.Objects) || r.Kernel.DecidedBy != c.kernel.DecidedBy {
				t.Errorf("kernel %+v, want the walk's objects and decision, and the tools", r.Kernel)
			}
			if !slices.Equal(r.Drift, c.drift) {
				t.Errorf("drift %q, want %q", r.Drift, c.drift)
			}
			notes := strings.Join(r.Notes, "\n")
			for _, n := range []string{"drift", "an error in vmfw", "internal error"} {
				if strings.Contains(notes, n) != strings.Contains(c.note, n) {
					t.Errorf("notes %q, want one saying %q", r.Notes, c.note)
				}
			}
			if c.note != "" && !slices.Contains(r.Notes, c.note) {
				t.Errorf("notes %q, want %q", r.Notes, c.note)
			}
			want := []RuleHit{}
			for _, h := range c.kernel.Rules {
				want = append(want, RuleHit{Table: h.Table, Chain: h.Object, Index: h.Index, Rule: h.Text})
			}
			if len(want) > 0 {
				want[0].Origin = "testdata/keys/groups/admin.toml:3"
			}
			if !slices.Equal(r.Kernel.Rules, want) {
				t.Errorf("rules %+v, want %+v", r.Kernel.Rules, want)
			}
		})
	}
}

func withDrift(w backend.Walk, d ...string) backend.Walk {
	w.Drift = d
	return w
}

// TestPackets checks what explain asks the backend: one Trace per query,
// over the policy of the attached interfaces and the one the
// configuration's answer is for, and one packet per value tried, with
// the path, the bridge ports of the VM ends, the connection state, the
// neighbour discovery target and no source MAC for what the hypervisor
// sends.
func TestPackets(t *testing.T) {
	ok := agree(backend.Walk{Verdict: "accept"})
	for _, c := range []struct {
		name     string
		q        Query
		detached []string
		want     backend.Packet
	}{
		{"bridged", withSport(q("305", "301", "tcp", 22), 40000), nil, backend.Packet{Family: ruleset.IPv4, Proto: config.ProtoTCP,
			Src: netip.MustParseAddr("192.0.2.35"), Dst: netip.MustParseAddr("192.0.2.31"), SPort: 40000, DPort: 22,
			SrcMAC: mac("02:00:00:00:00:35"), State: "NEW", Path: backend.PathBridged, InPort: "tap305i0", OutPort: "tap301i0"}},
		{"routed from a host", withSport(q("198.51.100.7", "301", "udp", 53), 1000), nil, backend.Packet{Family: ruleset.IPv4, Proto: config.ProtoUDP,
			Src: netip.MustParseAddr("198.51.100.7"), Dst: netip.MustParseAddr("192.0.2.31"), SPort: 1000, DPort: 53,
			SrcMAC: mac("02:00:5e:10:00:01"), State: "NEW", Path: backend.PathRouted, OutPort: "tap301i0"}},
		{"from the hypervisor", withSport(q("hypervisor", "302", "tcp", 5432), 40000), nil, backend.Packet{Family: ruleset.IPv4, Proto: config.ProtoTCP,
			Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("192.0.2.32"), SPort: 40000, DPort: 5432,
			State: "NEW", Path: backend.PathFromHypervisor, OutPort: "tap302i0"}},
		{"to the hypervisor, not attached", withSport(q("302", "hypervisor", "udp", 53), 40000), []string{"tap302i0"}, backend.Packet{Family: ruleset.IPv4, Proto: config.ProtoUDP,
			Src: netip.MustParseAddr("192.0.2.32"), Dst: netip.MustParseAddr("192.0.2.1"), SPort: 40000, DPort: 53,
			SrcMAC: mac("02:00:00:00:00:32"), State: "NEW", Path: backend.PathToHypervisor, InPort: "tap302i0"}},
		{"neighbour advertisement", withICMP(q("301", "2001:db8::200", "icmpv6", -1), "neighbour-advertisement"), nil, backend.Packet{Family: ruleset.IPv6, Proto: config.ProtoICMPv6,
			Src: netip.MustParseAddr("2001:db8::31"), Dst: netip.MustParseAddr("2001:db8::200"), ICMPType: 136,
			SrcMAC: mac("02:00:00:00:00:31"), NDTarget: netip.MustParseAddr("2001:db8::31"), State: "UNTRACKED", Path: backend.PathBridged, InPort: "tap301i0"}},
		{"echo reply", withICMP(q("192.0.2.200", "301", "icmp", -1), "echo-reply"), nil, backend.Packet{Family: ruleset.IPv4, Proto: config.ProtoICMP,
			Src: netip.MustParseAddr("192.0.2.200"), Dst: netip.MustParseAddr("192.0.2.31"),
			SrcMAC: mac("02:00:5e:10:00:01"), State: "INVALID", Path: backend.PathBridged, OutPort: "tap301i0"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := &fakeKernel{walk: ok}
			in := fakeInput(t, k, c.detached...)
			if _, err := Trace(in, c.q); err != nil {
				t.Fatal(err)
			}
			if k.traces != 1 || len(k.packets) == 0 {
				t.Fatalf("%d traces, %d packets; want one trace and its packets", k.traces, len(k.packets))
			}
			if got := k.packets[0]; !samePacket(got, c.want) {
				t.Errorf("packet\n%+v, want\n%+v", got, c.want)
			}
			if names := interfaces(k.installed); !slices.Equal(names, taps(in.Attached)) {
				t.Errorf("installed policy of %v, want the attached %v", names, taps(in.Attached))
			}
			wantWant := taps(in.Attached)
			for _, d := range c.detached {
				wantWant = append(wantWant, d)
				slices.Sort(wantWant)
			}
			if names := interfaces(k.want); !slices.Equal(names, wantWant) || (len(c.detached) == 0) != (k.want == k.installed) {
				t.Errorf("wanted policy of %v, want %v, the installed one itself when the ends are attached", names, wantWant)
			}
		})
	}
}

// TestOriginNames: the backend names the configuration of a rule it
// decided by with explain's names: a group rule's file and line, a
// policy's file.
func TestOriginNames(t *testing.T) {
	k := &fakeKernel{walk: agree(backend.Walk{Verdict: "accept"})}
	if _, err := Trace(fakeInput(t, k), q("305", "301", "tcp", 22)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		o    ruleset.Origin
		want string
	}{
		{admin1, "testdata/keys/groups/admin.toml:3"},
		{ruleset.Origin{Group: "admin", Dir: config.In, Index: 2}, "testdata/keys/groups/admin.toml:13"},
		{ruleset.Origin{Group: "admin", Dir: config.In, Index: 3}, ""},
		{ruleset.Origin{Group: "nosuch", Dir: config.In}, ""},
		{ruleset.Origin{Tap: "tap302i0", Dir: config.Out}, "testdata/keys/vms/302.toml: policy_out"},
		{ruleset.Origin{Tap: "veth0", Dir: config.In}, "policy_in"},
	} {
		if got := k.name(c.o); got != c.want {
			t.Errorf("%+v named %q, want %q", c.o, got, c.want)
		}
	}
}

// TestAlternativeVerdicts: the values the query leaves open that change
// the verdict are listed by the kernel's answer for them, grouped by what
// decided, or by the compiled rules' where the kernel's walk stopped.
func TestAlternativeVerdicts(t *testing.T) {
	k := &fakeKernel{walk: func(p backend.Packet) (backend.Walk, backend.Walk) {
		compiled := backend.Walk{Verdict: "accept"}
		switch p.DPort {
		case 80, 443:
			return backend.Walk{Verdict: "reject", DecidedBy: "web"}, compiled
		case 22:
			return backend.Walk{Err: errors.New("cannot tell")}, backend.Walk{Verdict: "drop", DecidedBy: "compiled ssh"}
		}
		return backend.Walk{Verdict: "accept"}, compiled
	}}
	r, err := Trace(fakeInput(t, k), withSport(q("305", "301", "tcp", -1), 40000))
	if err != nil {
		t.Fatal(err)
	}
	want := []Alternative{{When: "destination port 22 (compiled ssh)", Verdict: "drop"}, {When: "destination port 80, 443 (web)", Verdict: "reject"}}
	if r.Verdict != "accept" || !slices.Equal(r.Alternatives, want) {
		t.Errorf("verdict %s, alternatives %+v; want accept, %+v", r.Verdict, r.Alternatives, want)
	}
}

// TestWithoutKernel: an input without a kernel gets the configuration's
// answer alone.
func TestWithoutKernel(t *testing.T) {
	m, nics := loadModel(t, keysDir)
	r, err := Trace(&Input{Model: m, Attached: nics, HostAddrs: keysHost}, q("305", "301", "tcp", -1))
	if err != nil {
		t.Fatal(err)
	}
	if r.Kernel != nil || r.Verdict != r.Config.Verdict || r.Verdict != "drop" || len(r.Drift) != 0 || r.Drift == nil || len(r.Alternatives) != 0 {
		t.Errorf("report %+v, want the configuration's drop alone", r)
	}
}

func withSport(x Query, p int) Query   { x.SPort = p; return x }
func withICMP(x Query, t string) Query { x.ICMPType = t; return x }

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func samePacket(a, b backend.Packet) bool {
	return reflect.DeepEqual(a, b)
}

func interfaces(p *ruleset.Policy) []string {
	var out []string
	for _, n := range p.Interfaces {
		out = append(out, n.Name)
	}
	return out
}

func taps(nics []*config.NIC) []string {
	var out []string
	for _, n := range nics {
		out = append(out, n.Tap)
	}
	return out
}
