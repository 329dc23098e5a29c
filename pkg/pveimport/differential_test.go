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

// diffCase is one flow of the differential test with both verdicts.
type diffCase struct {
	from, to endpoint
	f        pveeval.Flow
	// pve is pve-firewall's verdict, why the rule or filter that gave
	// it and side the chain it came from: forward (PVEFW-FORWARD), out
	// (the sender's tap chain) or in (the receiver's input filters and
	// tap chain); side is "" when nothing denied the packet.
	pve       pveeval.Verdict
	why, side string
	vmfw      pveeval.Verdict
}

var (
	multicast4 = netip.MustParsePrefix("224.0.0.0/4")
	multicast6 = netip.MustParsePrefix("ff00::/8")
	broadcast  = netip.MustParseAddr("255.255.255.255")
)

// knownDifference is one of docs/proxmox.md's "Known differences" as the
// differential test meets it: the flows it covers and the verdict each
// side gives them. A disagreement outside every known difference fails
// the test, and so does a known difference no flow shows: the document
// would then describe a difference that no longer exists.
type knownDifference struct {
	name      string
	pve, vmfw pveeval.Verdict
	covers    func(c diffCase) bool
}

var knownDifferences = []knownDifference{
	{
		// PVEFW-reject drops packets from IPv4 multicast sources; a
		// vmfw out rule cannot match the sending guest's own source.
		name: "a guest's packet from a multicast source meets a REJECT of its out chain",
		pve:  pveeval.Drop, vmfw: pveeval.Reject,
		covers: func(c diffCase) bool { return c.side == "out" && multicast4.Contains(c.f.Src) },
	},
	{
		// PVEFW-DropBroadcast and PVEFW-reject drop packets to
		// broadcast and multicast addresses; a vmfw in rule cannot
		// match the receiving guest's destination.
		name: "a packet to a broadcast or multicast address meets a REJECT of the receiver's in chain",
		pve:  pveeval.Drop, vmfw: pveeval.Reject,
		covers: func(c diffCase) bool {
			return c.side == "in" && (c.f.Dst == broadcast || multicast4.Contains(c.f.Dst) || multicast6.Contains(c.f.Dst))
		},
	},
}

// Addresses, ports and ICMP types the flows draw from: every address,
// set entry and except, alias, range and port the trees name, on both
// sides of each boundary, and broadcast, multicast, link-local and
// unspecified addresses.
var (
	diffAddrs4 = []string{
		"192.0.2.5", "192.0.2.9", "192.0.2.10", "192.0.2.20", "192.0.2.31", "192.0.2.53", "192.0.2.100", "192.0.2.131", "192.0.2.200",
		"198.51.100.7", "198.51.100.10", "198.51.100.20", "198.51.100.21", "198.51.100.150", "198.51.100.200",
		"203.0.113.9", "203.0.113.66", "203.0.113.200", "224.0.0.251", "255.255.255.255", "0.0.0.0",
	}
	diffAddrs6 = []string{
		"2001:db8::10", "2001:db8::31", "2001:db8::99", "2001:db8:1::5", "2001:db8:100::7", "2001:db8:bad::1", "fe80::1", "ff02::1",
	}
	diffPorts = []uint16{22, 25, 43, 53, 67, 68, 80, 135, 137, 161, 443, 445, 546, 547, 1900, 3306, 5432, 5900, 7000, 8000, 8006,
		8050, 8080, 8099, 8100, 8443, 9000, 9001, 9100, 33434, 40000}
	// diffICMP4 and diffICMP6 are queries (NEW), errors and replies
	// (INVALID without a connection) and neighbour and router discovery
	// (untracked).
	diffICMP4 = []uint8{8, 13, 0, 3}
	diffICMP6 = []uint8{128, 129, 1, 133, 134, 135, 136}
)

// TestDifferential sends random first packets between the guests of
// every imported tree and hosts outside, and compares what pve-firewall
// does (package pveeval, on the Proxmox files) with what vmfw does
// (package policy, on the imported configuration). They must agree but
// for the known differences, each of which must show.
func TestDifferential(t *testing.T) {
	n := 20000
	if testing.Short() {
		n = 3000
	}
	seen := map[pveeval.Verdict]int{}
	known := map[string]int{}
	for i, name := range importedTrees {
		t.Run(name, func(t *testing.T) {
			differential(t, name, n, rand.New(rand.NewPCG(1, uint64(i))), seen, known)
		})
	}
	if seen[pveeval.Accept] == 0 || seen[pveeval.Drop] == 0 || seen[pveeval.Reject] == 0 {
		t.Errorf("verdicts %v: the flows miss a kind of verdict", seen)
	}
	for _, k := range knownDifferences {
		if known[k.name] == 0 {
			t.Errorf("known difference %q: no flow shows it (has it gone? then docs/proxmox.md must say so)", k.name)
		} else {
			t.Logf("known difference %q: %d flows", k.name, known[k.name])
		}
	}
}

func differential(t *testing.T, name string, n int, r *rand.Rand, seen map[pveeval.Verdict]int, known map[string]int) {
	dir := writeImport(t, name)
	m, err := config.Load(dir)
	if err != nil {
		t.Fatalf("the imported configuration does not load: %v", err)
	}
	tree, err := pvefw.Load(filepath.Join("testdata", name, "src"), "")
	if err != nil {
		t.Fatal(err)
	}
	var attached []*config.NIC
	eps := []endpoint{{}}
	for _, vm := range m.VMs {
		for _, nic := range vm.NICs {
			attached = append(attached, nic)
			eps = append(eps, endpoint{id: vm.ID, index: nic.Index, nic: nic})
		}
	}
	if len(eps) < 2 {
		t.Fatal("the import has no guest interface")
	}
	ev := policy.New(m, attached, nil)
	pve := pveeval.New(tree)
	pick := func(s []string) netip.Addr { return netip.MustParseAddr(s[r.IntN(len(s))]) }
	compared, failures := 0, 0
	for tries := 0; compared < n; tries++ {
		if tries > 4*n {
			t.Fatalf("only %d flows compared in %d tries", compared, tries)
		}
		from, to := eps[r.IntN(len(eps))], eps[r.IntN(len(eps))]
		if from.nic == nil && to.nic == nil || from.nic != nil && from.nic == to.nic {
			continue
		}
		f := pveeval.Flow{SPort: diffPorts[r.IntN(len(diffPorts))], DPort: diffPorts[r.IntN(len(diffPorts))]}
		v6 := r.IntN(2) == 0
		if v6 {
			f.Src, f.Dst = pick(diffAddrs6), pick(diffAddrs6)
		} else {
			f.Src, f.Dst = pick(diffAddrs4), pick(diffAddrs4)
		}
		switch k := r.IntN(10); {
		case k < 4:
			f.Proto = pveeval.TCP
		case k < 7:
			f.Proto = pveeval.UDP
		case k < 9:
			f.Proto, f.ICMPType = pveeval.ICMP, diffICMP4[r.IntN(len(diffICMP4))]
			if v6 {
				f.Proto, f.ICMPType = pveeval.ICMPv6, diffICMP6[r.IntN(len(diffICMP6))]
			}
		default:
			f.Proto = 47
		}
		if f.Proto != pveeval.TCP && f.Proto != pveeval.UDP {
			f.SPort, f.DPort = 0, 0
		}
		c := diffCase{from: from, to: to, f: f, pve: pveeval.Accept, why: "no filter"}
		for _, e := range []endpoint{from, to} {
			if v, why, ok := pve.Forward(e.id, f); e.nic != nil && ok && c.side == "" {
				c.pve, c.why, c.side = v, why, "forward"
			}
		}
		if c.pve == pveeval.Accept && from.nic != nil {
			if c.pve, c.why = pve.Out(from.id, from.index, f); c.pve != pveeval.Accept {
				c.side = "out"
			}
		}
		if c.pve == pveeval.Accept && to.nic != nil {
			if c.pve, c.why = pve.In(to.id, to.index, f); c.pve != pveeval.Accept {
				c.side = "in"
			}
		}
		pf := policy.Flow{Proto: f.Proto, Src: f.Src, Dst: f.Dst, SPort: f.SPort, DPort: f.DPort, ICMPType: f.ICMPType, ICMPKnown: f.Proto == pveeval.ICMP || f.Proto == pveeval.ICMPv6}
		x := ev.Explain(pf, policy.Path{Sender: from.nic, Receiver: to.nic})
		c.vmfw = pveeval.Verdict("unknown")
		switch x.Verdict {
		case policy.Allow:
			c.vmfw = pveeval.Accept
		case policy.Deny:
			c.vmfw = pveeval.Verdict(x.Action)
		}
		compared++
		seen[c.pve]++
		if c.vmfw == c.pve {
			continue
		}
		if k := knownAs(c); k != nil {
			known[k.name]++
			continue
		}
		failures++
		t.Errorf("%d:%d -> %d:%d proto %d %s:%d -> %s:%d type %d: pve-firewall %s (%s, %s), vmfw %s", from.id, from.index, to.id, to.index, f.Proto, f.Src, f.SPort, f.Dst, f.DPort, f.ICMPType, c.pve, c.why, c.side, c.vmfw)
		for _, s := range append(x.Out, x.In...) {
			t.Logf("  %s %s %s %s:%d %s %s", s.Chain, s.What, s.Match, s.File, s.Line, s.Action, s.Note)
		}
		if failures >= 10 && !testing.Verbose() {
			t.FailNow()
		}
	}
}

// knownAs returns the known difference that covers c with the verdicts
// it has, nil if none does.
func knownAs(c diffCase) *knownDifference {
	for i, k := range knownDifferences {
		if k.pve == c.pve && k.vmfw == c.vmfw && k.covers(c) {
			return &knownDifferences[i]
		}
	}
	return nil
}
