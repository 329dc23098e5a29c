package policy

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// This file runs packets through the chains pkg/ruleset compiles, with a
// small interpreter of the iptables matches and targets vmfw uses, and
// checks that the evaluator, which reads the configuration instead, comes
// to the same verdict. It catches the evaluator drifting from the
// compiler as either changes.

// packet is the first packet of a flow as iptables sees it.
type packet struct {
	proto           uint8
	src, dst        netip.Addr
	sport, dport    uint16
	srcMAC          string
	physIn, physOut string // bridge ports; physOut is "" for the host itself
	mark            uint32
}

type outcome int

const (
	fallThrough outcome = iota // RETURN or end of chain
	accepted
	dropped
)

type interp struct {
	chains map[layout.Chain][][]string
	sets   map[string]map[netip.Addr]bool
	// nets are the hash:net sets (address sets): prefixes, with their
	// nomatch flag.
	nets map[string]map[netip.Prefix]bool
}

func newInterp(t *layout.Table, sets []layout.Set) *interp {
	it := &interp{chains: map[layout.Chain][][]string{}, sets: map[string]map[netip.Addr]bool{}, nets: map[string]map[netip.Prefix]bool{}}
	for _, c := range t.Chains {
		var rules [][]string
		for _, r := range c.Rules {
			rules = append(rules, strings.Fields(r.Spec))
		}
		it.chains[c.Name] = rules
	}
	for _, s := range sets {
		if s.Type == layout.HashNet {
			nm := map[netip.Prefix]bool{}
			for _, member := range s.Members {
				bare, nomatch := strings.CutSuffix(member, layout.NoMatch)
				p, err := netip.ParsePrefix(bare)
				if err != nil {
					a := netip.MustParseAddr(bare)
					p = netip.PrefixFrom(a, a.BitLen())
				}
				nm[p] = nomatch
			}
			it.nets[s.Name] = nm
			continue
		}
		m := map[netip.Addr]bool{}
		for _, a := range s.Members {
			m[netip.MustParseAddr(a)] = true
		}
		it.sets[s.Name] = m
	}
	return it
}

// verdict runs p through FORWARD (bridged) or, when physOut is empty,
// INPUT, whose policies accept.
func (it *interp) verdict(p *packet) Verdict {
	chain := layout.ChainForward
	if p.physOut == "" {
		chain = layout.ChainInput
	}
	if it.run(chain, p, 0) == dropped {
		return Deny
	}
	return Allow
}

func (it *interp) run(chain layout.Chain, p *packet, depth int) outcome {
	if depth > 10 {
		panic("chain loop at " + string(chain))
	}
	rules, ok := it.chains[chain]
	if !ok {
		panic("no chain " + string(chain))
	}
	for _, tok := range rules {
		target, arg, ok := it.matches(tok, p)
		if !ok {
			continue
		}
		switch target {
		case "LOG", "NFLOG":
		case "ACCEPT":
			return accepted
		case "DROP", "REJECT":
			return dropped
		case "RETURN":
			return fallThrough
		case "MARK":
			v, m := parseMark(arg)
			p.mark = p.mark&^m ^ v
		default:
			if arg == "goto" {
				return it.run(layout.Chain(target), p, depth+1)
			}
			if o := it.run(layout.Chain(target), p, depth+1); o != fallThrough {
				return o
			}
		}
	}
	return fallThrough
}

// matches evaluates a rule's matches; it returns the target and its
// argument (the mark of MARK, "goto" for -g).
func (it *interp) matches(tok []string, p *packet) (target, arg string, ok bool) {
	neg := false
	for i := 0; i < len(tok); i++ {
		var m bool
		next := func() string { i++; return tok[i] }
		switch tok[i] {
		case "!":
			neg = true
			continue
		case "-m":
			next()
			continue
		case "-j", "-g":
			target = next()
			if tok[i-1] == "-g" {
				arg = "goto"
			}
			if target == "MARK" {
				next() // --set-xmark
				arg = next()
			}
			if target == "LOG" || target == "NFLOG" {
				return target, "", true // the rest is the log prefix and group
			}
			continue
		case "--reject-with":
			next()
			continue
		case "--limit", "--limit-burst":
			next()
			continue
		case "-p":
			m = protoIs(next(), p)
		case "-s":
			m = netip.MustParsePrefix(next()).Contains(p.src)
		case "-d":
			m = netip.MustParsePrefix(next()).Contains(p.dst)
		case "--sport":
			m = inPorts(next(), p.sport)
		case "--dport":
			m = inPorts(next(), p.dport)
		case "--sports":
			m = inPorts(next(), p.sport)
		case "--dports":
			m = inPorts(next(), p.dport)
		case "--icmp-type", "--icmpv6-type":
			// Tracked ICMP flows are echo requests.
			v := next()
			m = v == "echo-request" || v == "8" && p.proto == protoICMP || v == "128" && p.proto == protoICMPv6
		case "--mac-source":
			m = next() == p.srcMAC
		case "--physdev-in":
			m = ifMatch(next(), p.physIn)
		case "--physdev-out":
			m = ifMatch(next(), p.physOut)
		case "--physdev-is-in":
			m = p.physIn != ""
		case "--physdev-is-out", "--physdev-is-bridged":
			m = p.physOut != ""
		case "--ctstate":
			m = strings.Contains(next(), "NEW")
		case "--syn":
			// A flow's first TCP segment opens the connection.
			m = true
		case "--mark":
			v, mask := parseMark(next())
			m = p.mark&mask == v
		case "--match-set":
			set, dir := next(), next()
			a := p.src
			if dir == "dst" {
				a = p.dst
			}
			if nets, ok := it.nets[set]; ok {
				// The kernel's hash:net lookup: the most specific
				// member decides, a nomatch one by not matching.
				m = false
				for bits := a.BitLen(); bits > 0; bits-- {
					p, _ := a.Prefix(bits)
					if nomatch, ok := nets[p]; ok {
						m = !nomatch
						break
					}
				}
			} else {
				m = it.sets[set][a]
			}
		default:
			panic(fmt.Sprintf("interpreter does not know %q in %q", tok[i], strings.Join(tok, " ")))
		}
		if m == neg {
			return "", "", false
		}
		neg = false
	}
	return target, arg, true
}

func protoIs(name string, p *packet) bool {
	switch name {
	case "tcp":
		return p.proto == protoTCP
	case "udp":
		return p.proto == protoUDP
	case "sctp":
		return p.proto == protoSCTP
	case "icmp":
		return p.proto == protoICMP
	case "ipv6-icmp":
		return p.proto == protoICMPv6
	case "0", "all":
		return true
	}
	n, err := strconv.Atoi(name)
	if err != nil {
		panic("unknown protocol " + name)
	}
	return int(p.proto) == n
}

func inPorts(list string, port uint16) bool {
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		if !isRange {
			hi = lo
		}
		l, _ := strconv.Atoi(lo)
		h, _ := strconv.Atoi(hi)
		if int(port) >= l && int(port) <= h {
			return true
		}
	}
	return false
}

func ifMatch(pattern, name string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "+"); ok {
		return name != "" && strings.HasPrefix(name, prefix)
	}
	return name == pattern
}

func parseMark(s string) (v, m uint32) {
	a, b, _ := strings.Cut(s, "/")
	x, _ := strconv.ParseUint(a, 0, 32)
	y, _ := strconv.ParseUint(b, 0, 32)
	return uint32(x), uint32(y)
}

// Addresses the differential test sends from and to besides the VMs'.
var (
	outsiders = []string{"192.0.2.200", "198.51.100.9", "203.0.113.5", "2001:db8::200", "2001:db8:1::5", "2001:db8:2::5"}
	hostAddrs = []string{"192.0.2.1", "2001:db8::1"}
)

const (
	outsiderMAC = "02:ee:00:00:00:01"
	uplink      = "uplink0"
)

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
			rs, err := layout.FromConfig(m, nics)
			if err != nil {
				t.Fatal(err)
			}
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
			interps := map[bool]*interp{
				false: newInterp(rs.Tables[ruleset.IPv4], rs.Sets),
				true:  newInterp(rs.Tables[ruleset.IPv6], rs.Sets),
			}
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
						p := packet{proto: f.Proto, src: f.Src, dst: f.Dst, sport: f.SPort, dport: f.DPort, physIn: uplink, physOut: uplink}
						senderMACs := macs
						if from.nic != nil {
							p.physIn = from.nic.Tap
							if from.nic.MAC != nil {
								senderMACs = []string{from.nic.MAC.String()}
							}
						}
						switch {
						case to.host:
							p.physOut = ""
						case to.nic != nil:
							p.physOut = to.nic.Tap
						}
						// The compiled rules' verdict for each MAC the
						// sender may have: certain only if they agree.
						want := Unknown
						for i, mac := range senderMACs {
							q := p
							q.srcMAC = mac
							v := interps[f.Src.Is6()].verdict(&q)
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
						if got == Unknown && want != Unknown && (f.Proto == protoICMP || f.Proto == protoICMPv6) && icmpTypes {
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
	for _, proto := range []uint8{protoTCP, protoUDP, protoSCTP} {
		for _, sp := range sports {
			for _, dp := range dports {
				out = append(out, Flow{Proto: proto, Src: src, Dst: dst, SPort: sp, DPort: dp})
			}
		}
	}
	icmpProto := uint8(protoICMP)
	if src.Is6() {
		icmpProto = protoICMPv6
	}
	return append(out, Flow{Proto: icmpProto, Src: src, Dst: dst}, Flow{Proto: 47, Src: src, Dst: dst})
}
