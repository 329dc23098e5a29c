package policy

import (
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables/interp/interptest"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// This file runs packets through the iptables backend's rules as it lays
// them out for the configuration, with the interpreter vmfw trace uses
// for that backend, and checks that the evaluator, which reads the
// configuration instead, comes to the same verdict. It catches the
// evaluator drifting from a backend as either changes.

// walkVerdict is the backend's verdict on p: Allow, Deny, or Unknown when
// the walk ended without one.
func walkVerdict(kt backend.KernelTrace, p backend.Packet) Verdict {
	w, _ := kt.Walk(p)
	switch w.Verdict {
	case "accept":
		return Allow
	case "drop", "reject":
		return Deny
	}
	return Unknown
}

// Addresses the differential test sends from and to besides the VMs'.
var (
	outsiders = []string{"192.0.2.200", "198.51.100.9", "203.0.113.5", "2001:db8::200", "2001:db8:1::5", "2001:db8:2::5"}
	hostAddrs = []string{"192.0.2.1", "2001:db8::1"}
)

const outsiderMAC = "02:ee:00:00:00:01"

type endpoint struct {
	addr netip.Addr
	nic  *config.NIC // nil for outsiders and the host
	host bool
}

// TestMatchesCompiledRules compares the evaluator with the interpreter on
// every combination of endpoints, protocols and ports that the rules of
// the golden scenarios distinguish.
func TestMatchesCompiledRules(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(featureDir, "*"))
	dirs = append(dirs, "../../conf/examples/reference")
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			m, nics := load(t, dir)
			p, err := ruleset.Compile(m, nics)
			if err != nil {
				t.Fatal(err)
			}
			kt := interptest.Applied(p).Trace(p, p, func(o ruleset.Origin) string { return o.Object() })
			local := map[netip.Addr]bool{}
			var ends []endpoint
			for _, n := range nics {
				for _, a := range n.IPs {
					ends = append(ends, endpoint{addr: a, nic: n})
				}
			}
			for _, s := range outsiders {
				ends = append(ends, endpoint{addr: netip.MustParseAddr(s)})
			}
			// Addresses the address sets single out: the first two of
			// each entry and except, where no VM has them.
			owned := map[netip.Addr]bool{}
			for _, e := range ends {
				owned[e.addr] = true
			}
			for _, set := range m.Sets {
				for _, e := range append(append([]config.SetEntry{}, set.Entries...), set.Except...) {
					for _, a := range []netip.Addr{e.Prefix.Addr(), e.Prefix.Addr().Next()} {
						if e.Prefix.Contains(a) && !owned[a] && !slices.Contains(hostAddrs, a.String()) {
							owned[a] = true
							ends = append(ends, endpoint{addr: a})
						}
					}
				}
			}
			for _, s := range hostAddrs {
				a := netip.MustParseAddr(s)
				local[a] = true
				ends = append(ends, endpoint{addr: a, host: true})
			}
			ev := New(m, nics, func(a netip.Addr) bool { return local[a] })
			// The MACs an outsider (or an interface configured without
			// one) may send from, as far as the rules can tell: any MAC a
			// rule names that no interface is configured with, or another.
			macs := []string{outsiderMAC}
			for _, g := range m.Groups {
				for _, r := range g.In {
					if r.SourceMAC != nil && !configuredMAC(m, r.SourceMAC.String()) {
						macs = append(macs, r.SourceMAC.String())
					}
				}
			}
			icmpTypes := hasICMPType(m)
			decided, total := 0, 0
			for _, from := range ends {
				for _, to := range ends {
					if from.addr.Is6() != to.addr.Is6() || from.host || from.nic != nil && from.nic == to.nic {
						continue // different families, the host's own, hairpin
					}
					for _, f := range flows(from.addr, to.addr) {
						p := backend.Packet{Family: ruleset.FamilyOf(f.Src), Proto: f.Proto, Src: f.Src, Dst: f.Dst, SPort: f.SPort, DPort: f.DPort,
							State: "NEW", Path: backend.PathBridged}
						if f.Proto == config.ProtoICMP || f.Proto == config.ProtoICMPv6 {
							p.ICMPType = 8 // echo-request
							if f.Proto == config.ProtoICMPv6 {
								p.ICMPType = 128
							}
						}
						senderMACs := macs
						if from.nic != nil {
							p.InPort = from.nic.Tap
							if from.nic.MAC != nil {
								senderMACs = []string{from.nic.MAC.String()}
							}
						}
						switch {
						case to.host:
							p.Path = backend.PathToHypervisor
						case to.nic != nil:
							p.OutPort = to.nic.Tap
						}
						// The compiled rules' verdict for each MAC the
						// sender may have: certain only if they agree.
						want := Unknown
						for i, mac := range senderMACs {
							q := p
							q.SrcMAC, _ = net.ParseMAC(mac)
							v := walkVerdict(kt, q)
							if i == 0 {
								want = v
							} else if v != want {
								want = Unknown
							}
						}
						got := ev.Check(f)
						total++
						if got != Unknown {
							decided++
						}
						if got == Unknown && want != Unknown && (f.Proto == config.ProtoICMP || f.Proto == config.ProtoICMPv6) && icmpTypes {
							continue // the evaluator does not know the ICMP type
						}
						if got != want {
							t.Errorf("%+v: evaluator says %v, the compiled rules %v", f, got, want)
						}
					}
				}
			}
			t.Logf("%d flows, %d decided", total, decided)
		})
	}
}

func configuredMAC(m *config.Model, mac string) bool {
	for _, vm := range m.VMs {
		for _, n := range vm.NICs {
			if n.MAC != nil && n.MAC.String() == mac {
				return true
			}
		}
	}
	return false
}

func hasICMPType(m *config.Model) bool {
	for _, g := range m.Groups {
		for _, r := range append(append([]config.Rule{}, g.In...), g.Out...) {
			if r.ICMPType != "" {
				return true
			}
		}
	}
	return false
}

// flows returns the flows between two addresses the test tries: every
// protocol the rules name with source and destination ports that the
// rules and the tap chains' exceptions single out.
func flows(src, dst netip.Addr) []Flow {
	sports := []uint16{67, 68, 546, 547, 1000, 40000}
	dports := []uint16{22, 25, 53, 67, 68, 80, 443, 546, 547, 8080, 8081, 9899}
	var out []Flow
	for _, proto := range []uint8{config.ProtoTCP, config.ProtoUDP, config.ProtoSCTP} {
		for _, sp := range sports {
			for _, dp := range dports {
				out = append(out, Flow{Proto: proto, Src: src, Dst: dst, SPort: sp, DPort: dp})
			}
		}
	}
	icmpProto := uint8(config.ProtoICMP)
	if src.Is6() {
		icmpProto = config.ProtoICMPv6
	}
	return append(out, Flow{Proto: icmpProto, Src: src, Dst: dst}, Flow{Proto: 47, Src: src, Dst: dst})
}
