package pveimport_test

import (
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/policy"
	"github.com/vmfw/vmfw/pkg/pveimport"
	"github.com/vmfw/vmfw/pkg/pveimport/internal/pveeval"
	"github.com/vmfw/vmfw/pkg/pveimport/pvefw"
)

// writeImport imports testdata/name/src into a new directory.
func writeImport(t *testing.T, name string) string {
	t.Helper()
	res, err := pveimport.Import(filepath.Join("testdata", name, "src"), pveimport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range res.Files {
		p := filepath.Join(dir, f.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// endpoint is a packet's sender or receiver: a guest interface or a host
// outside (nic nil).
type endpoint struct {
	id, index int
	nic       *config.NIC
}

// TestDifferential sends random first packets between the guests of the
// "plain" tree and hosts outside, and compares what pve-firewall does
// (package pveeval, on the Proxmox files) with what vmfw does (package
// policy, on the imported configuration). "plain" uses only what vmfw's
// configuration has today; the trees with IP sets, MAC-only anti-spoofing
// and log levels join once pkg/config and pkg/policy know them.
func TestDifferential(t *testing.T) {
	dir := writeImport(t, "plain")
	m, err := config.Load(dir)
	if err != nil {
		t.Fatalf("the imported configuration does not load: %v", err)
	}
	tree, err := pvefw.Load(filepath.Join("testdata", "plain", "src"), "")
	if err != nil {
		t.Fatal(err)
	}
	var attached []*config.NIC
	eps := []endpoint{{}}
	for _, vm := range m.VMs {
		for _, n := range vm.NICs {
			attached = append(attached, n)
			eps = append(eps, endpoint{id: vm.ID, index: n.Index, nic: n})
		}
	}
	ev := policy.New(m, attached, nil)
	pve := pveeval.New(tree)
	addrs4 := []string{"192.0.2.31", "192.0.2.20", "192.0.2.100", "198.51.100.7", "203.0.113.9", "224.0.0.251"}
	addrs6 := []string{"2001:db8::31", "2001:db8::99", "2001:db8:1::5", "fe80::1"}
	ports := []uint16{22, 25, 43, 53, 67, 68, 80, 135, 137, 443, 445, 546, 547, 1900, 7000, 8000, 8050, 8099, 8100, 9000, 9001, 40000}
	r := rand.New(rand.NewPCG(1, 2))
	pick := func(s []string) netip.Addr { return netip.MustParseAddr(s[r.IntN(len(s))]) }
	n := 20000
	if testing.Short() {
		n = 2000
	}
	compared := 0
	seen := map[pveeval.Verdict]int{}
	for range n {
		from, to := eps[r.IntN(len(eps))], eps[r.IntN(len(eps))]
		if from.nic == nil && to.nic == nil || from.nic != nil && from.nic == to.nic {
			continue
		}
		f := pveeval.Flow{SPort: ports[r.IntN(len(ports))], DPort: ports[r.IntN(len(ports))]}
		v6 := r.IntN(2) == 0
		if v6 {
			f.Src, f.Dst = pick(addrs6), pick(addrs6)
		} else {
			f.Src, f.Dst = pick(addrs4), pick(addrs4)
		}
		switch k := r.IntN(10); {
		case k < 4:
			f.Proto = pveeval.TCP
		case k < 7:
			f.Proto = pveeval.UDP
		case k < 9:
			f.Proto, f.ICMPType = pveeval.ICMP, 8
			if v6 {
				f.Proto = pveeval.ICMPv6
				f.ICMPType = []uint8{128, 133, 134, 135, 136}[r.IntN(5)]
			}
		default:
			f.Proto = 47
		}
		if from.nic != nil && f.Src.IsMulticast() {
			// A guest sending from a multicast address: pve-firewall's
			// REJECT drops it, vmfw's out rules cannot see the guest's
			// own source (docs/proxmox.md, "What differs").
			continue
		}
		if f.Proto != pveeval.TCP && f.Proto != pveeval.UDP {
			f.SPort, f.DPort = 0, 0
		}
		want, why := pveeval.Accept, "no filter"
		if from.nic != nil {
			want, why = pve.Out(from.id, from.index, f)
		}
		if want == pveeval.Accept && to.nic != nil {
			want, why = pve.In(to.id, to.index, f)
		}
		pf := policy.Flow{Proto: f.Proto, Src: f.Src, Dst: f.Dst, SPort: f.SPort, DPort: f.DPort, ICMPType: f.ICMPType, ICMPKnown: f.Proto == pveeval.ICMP || f.Proto == pveeval.ICMPv6}
		x := ev.Explain(pf, policy.Path{Sender: from.nic, Receiver: to.nic})
		got := pveeval.Verdict("unknown")
		switch x.Verdict {
		case policy.Allow:
			got = pveeval.Accept
		case policy.Deny:
			got = pveeval.Verdict(x.Action)
		}
		compared++
		seen[want]++
		if got != want {
			t.Errorf("%d:%d -> %d:%d proto %d %s:%d -> %s:%d type %d: pve-firewall %s (%s), vmfw %s", from.id, from.index, to.id, to.index, f.Proto, f.Src, f.SPort, f.Dst, f.DPort, f.ICMPType, want, why, got)
			if compared > 0 && t.Failed() && len(x.In)+len(x.Out) > 0 {
				for _, s := range append(x.Out, x.In...) {
					t.Logf("  %s %s %s %s:%d %s %s", s.Chain, s.What, s.Match, s.File, s.Line, s.Action, s.Note)
				}
			}
			if testing.Verbose() {
				continue
			}
			return
		}
	}
	if compared < n/2 || seen[pveeval.Accept] == 0 || seen[pveeval.Drop] == 0 || seen[pveeval.Reject] == 0 {
		t.Fatalf("%d flows compared, verdicts %v: the flows miss a kind of verdict", compared, seen)
	}
}
