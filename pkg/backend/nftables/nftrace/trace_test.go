package nftrace_test

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nftrace/nftracetest"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// policyOf compiles the configuration files (path: content) with every
// interface attached.
func policyOf(t *testing.T, files map[string]string) *ruleset.Policy {
	t.Helper()
	p, err := ruleset.Compile(scenario.Load(t, configtest.Dir(t, files)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// lab is two VMs: 101 lists group web, which rejects tcp 25 and accepts
// tcp 22 from addresses of set partners; 102 lists nothing.
var lab = map[string]string{
	"sets/partners.toml": "entries = [\"192.0.2.0/24\"]\nexcept = [\"192.0.2.128/25\"]\n",
	"groups/web.toml":    "[[in]]\nproto = \"tcp\"\ndport = \"25\"\naction = \"reject\"\n\n[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_set = \"partners\"\n",
	"vms/101.toml":       "[net0]\nmac = \"02:00:00:00:01:01\"\nips = [\"192.0.2.101\"]\ngroups = [\"web\"]\n",
	"vms/102.toml":       "[net0]\nmac = \"02:00:00:00:01:02\"\nips = [\"192.0.2.102\", \"192.0.2.200\"]\nantispoof = false\n",
}

func tcp(path backend.Path, src, dst string, dport uint16, in, out string) backend.Packet {
	p := backend.Packet{Family: ruleset.IPv4, Proto: 6, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst),
		SPort: 40500, DPort: dport, State: "NEW", Path: path, InPort: in, OutPort: out}
	if in != "" {
		p.SrcMAC = net.HardwareAddr{2, 0, 0, 0, 1, 2}
	}
	return p
}

func names(o ruleset.Origin) string {
	if o.Group != "" {
		return o.Group + " " + string(o.Dir) + " " + string(rune('1'+o.Index))
	}
	return o.Tap + " policy " + string(o.Dir)
}

// TestWalkPaths: on each path the walk takes the hooks the kernel runs,
// carries verdicts between tables in the mark, and names the rule of the
// configuration that decided last: a reject decided on the bridge's
// forward path is sent by the inet table; one decided at bridge
// postrouting for a routed packet is a drop, with the documented
// difference as the walk's note; an address set decides by its effective
// prefixes; the policy's rules name the interface of the packet's port.
func TestWalkPaths(t *testing.T) {
	p := policyOf(t, lab)
	k, err := nftracetest.Applied(p)
	if err != nil {
		t.Fatal(err)
	}
	tr := k.Trace(p, p, names)
	for _, c := range []struct {
		name    string
		pkt     backend.Packet
		verdict string
		last    string
		note    bool
	}{
		{"bridged, rejected", tcp(backend.PathBridged, "192.0.2.102", "192.0.2.101", 25, "tap102i0", "tap101i0"), "reject", "web in 1", false},
		{"bridged, in the set", tcp(backend.PathBridged, "192.0.2.102", "192.0.2.101", 22, "tap102i0", "tap101i0"), "accept", "web in 2", false},
		{"bridged, in the except", tcp(backend.PathBridged, "192.0.2.200", "192.0.2.101", 22, "tap102i0", "tap101i0"), "drop", "tap101i0 policy in", false},
		{"routed, rejected at postrouting", tcp(backend.PathRouted, "198.51.100.7", "192.0.2.101", 25, "", "tap101i0"), "drop", "web in 1", true},
		{"from the hypervisor, by the policy", tcp(backend.PathFromHypervisor, "192.0.2.1", "192.0.2.101", 80, "", "tap101i0"), "drop", "tap101i0 policy in", true},
		{"to the hypervisor", tcp(backend.PathToHypervisor, "192.0.2.102", "192.0.2.1", 80, "tap102i0", ""), "accept", "tap102i0 policy out", false},
	} {
		kw, cw := tr.Walk(c.pkt)
		for what, w := range map[string]backend.Walk{"kernel": kw, "compiled": cw} {
			if w.Err != nil || w.Verdict != c.verdict || len(w.Rules) == 0 {
				t.Errorf("%s, %s walk: verdict %q (%v), rules %d; want %s", c.name, what, w.Verdict, w.Err, len(w.Rules), c.verdict)
				continue
			}
			if last := w.Rules[len(w.Rules)-1]; names(last.Origin) != c.last {
				t.Errorf("%s, %s walk: last rule %s/%s %d (%s) implements %q, want %q", c.name, what, last.Table, last.Object, last.Index, last.Text, names(last.Origin), c.last)
			}
			if (w.Note != "") != c.note {
				t.Errorf("%s, %s walk: note %q", c.name, what, w.Note)
			}
		}
		if len(kw.Drift) > 0 {
			t.Errorf("%s: drift %v", c.name, kw.Drift)
		}
	}
	in := tcp(backend.PathBridged, "192.0.2.102", "192.0.2.101", 25, "tap102i0", "tap101i0")
	kw, _ := tr.Walk(in)
	for _, want := range []string{"bridge/prerouting", "inet/prerouting", "inet/state", "bridge/forward", "bridge/out", "bridge/in", "bridge/sg-web-in", "inet/forward", "inet/reject-marked"} {
		if !slices.Contains(kw.Objects, want) {
			t.Errorf("the bridged walk does not enter %s: %v", want, kw.Objects)
		}
	}
}

// TestWalkDrift: what differs from the layout on the packet's way is
// drift, each named once, and the kernel's verdict is what the changed
// tables decide: an element removed from an address set, a rule removed
// from a group's chain, a verdict map's elements jumping elsewhere, a
// missing table.
func TestWalkDrift(t *testing.T) {
	p := policyOf(t, lab)
	pkt := tcp(backend.PathBridged, "192.0.2.102", "192.0.2.101", 22, "tap102i0", "tap101i0")

	k, err := nftracetest.Applied(p)
	if err != nil {
		t.Fatal(err)
	}
	clear(k.Read.Tables[layout.Bridge].Sets["as-partners-v4"].Elements)
	kw, cw := k.Trace(p, p, names).Walk(pkt)
	if kw.Verdict != "drop" || cw.Verdict != "accept" || !slices.Contains(kw.Drift, "set bridge/as-partners-v4 differs: 1 elements missing, 0 unexpected") {
		t.Errorf("with the set emptied: kernel %s, compiled %s, drift %v", kw.Verdict, cw.Verdict, kw.Drift)
	}

	k, _ = nftracetest.Applied(p)
	c := k.Read.Tables[layout.Bridge].Chains["sg-web-in"]
	c.Rules, c.Hashes = c.Rules[:1], c.Hashes[:1]
	kw, _ = k.Trace(p, p, names).Walk(pkt)
	if kw.Verdict != "drop" || !slices.Contains(kw.Drift, "bridge/sg-web-in differs") {
		t.Errorf("with a rule deleted: kernel %s, drift %v", kw.Verdict, kw.Drift)
	}

	// The receiver's element of the group-list map made to accept.
	k, _ = nftracetest.Applied(p)
	gl := k.Read.Tables[layout.Bridge].Sets[layout.MapListsIn]
	for key := range gl.Data {
		gl.Data[key] = "accept"
	}
	kw, _ = k.Trace(p, p, names).Walk(pkt)
	if !slices.Contains(kw.Drift, "set bridge/"+layout.MapListsIn+" differs: 0 elements missing, 0 unexpected, "+strconv.Itoa(len(gl.Data))+" with another verdict") {
		t.Errorf("with the group-list map's elements accepting: kernel %s, drift %v", kw.Verdict, kw.Drift)
	}

	k, _ = nftracetest.Applied(p)
	delete(k.Read.Tables, layout.Inet)
	kw, _ = k.Trace(p, p, names).Walk(tcp(backend.PathBridged, "192.0.2.102", "192.0.2.101", 25, "tap102i0", "tap101i0"))
	if kw.Verdict != "drop" || !slices.ContainsFunc(kw.Drift, func(d string) bool { return strings.HasPrefix(d, "table inet vmfw missing") }) {
		t.Errorf("without the inet table a reject is not sent but dropped by the guard: kernel %s, drift %v", kw.Verdict, kw.Drift)
	}
}
