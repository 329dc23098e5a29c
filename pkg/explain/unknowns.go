package explain

import (
	"fmt"
	"net"
	"slices"
	"strconv"

	"github.com/vmfw/vmfw/pkg/config"
)

// unknowns are the values a flow may leave open, and the values worth
// trying for each: those where some rule's answer changes.
type unknowns struct {
	sports, dports []uint16
	macs           []net.HardwareAddr
	// typical values: a port and MAC no rule names, what a flow from an
	// ephemeral port of an ordinary host uses.
	sport, dport uint16
	mac          net.HardwareAddr
}

// builtinPorts are the ports the tap chains single out (DHCP, DHCPv6).
var builtinPorts = []uint16{67, 68, 546, 547}

func (t *tracer) unknowns() *unknowns {
	u := &unknowns{}
	var ranges []config.PortRange
	var macs []net.HardwareAddr
	for _, g := range t.in.Model.Groups {
		for _, r := range append(slices.Clone(g.In), g.Out...) {
			ranges = append(append(ranges, r.SPort...), r.DPort...)
			if r.SourceMAC != nil {
				macs = append(macs, r.SourceMAC)
			}
		}
	}
	candidates := map[uint16]bool{}
	for _, p := range builtinPorts {
		candidates[p] = true
	}
	for _, r := range ranges {
		for _, p := range []int{int(r.Lo) - 1, int(r.Lo), int(r.Hi), int(r.Hi) + 1} {
			if p > 0 && p <= 65535 {
				candidates[uint16(p)] = true
			}
		}
	}
	typical := func() uint16 {
		for p := 40000; p <= 65535; p++ {
			named := slices.Contains(builtinPorts, uint16(p))
			for _, r := range ranges {
				named = named || uint16(p) >= r.Lo && uint16(p) <= r.Hi
			}
			if !named {
				return uint16(p)
			}
		}
		return 40000
	}()
	candidates[typical] = true
	list := make([]uint16, 0, len(candidates))
	for p := range candidates {
		list = append(list, p)
	}
	slices.Sort(list)
	u.sport, u.dport = typical, typical
	if t.q.SPort >= 0 {
		u.sport = uint16(t.q.SPort)
	} else {
		u.sports = list
	}
	if t.q.DPort >= 0 {
		u.dport = uint16(t.q.DPort)
	} else {
		u.dports = list
	}
	hasPorts := t.proto == config.ProtoTCP || t.proto == config.ProtoUDP || t.proto == config.ProtoSCTP
	if !hasPorts {
		u.sport, u.dport, u.sports, u.dports = 0, 0, nil, nil
	}
	u.mac = net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x00, 0x01}
	for slices.ContainsFunc(macs, func(m net.HardwareAddr) bool { return m.String() == u.mac.String() }) {
		u.mac[5]++
	}
	switch {
	case t.q.MAC != "":
		u.mac, _ = net.ParseMAC(t.q.MAC)
	case t.path == PathFromHypervisor:
		// OUTPUT reaches no MAC match (sg-NAME-lin).
	case t.from.nic != nil && t.from.nic.MAC != nil:
		u.mac = t.from.nic.MAC
	default:
		seen := map[string]bool{}
		for _, m := range macs {
			if !seen[m.String()] {
				seen[m.String()] = true
				u.macs = append(u.macs, m)
			}
		}
		if len(u.macs) > 0 {
			u.macs = append(u.macs, u.mac)
		}
	}
	return u
}

// candidate is one concrete packet: the unknowns set to values.
type candidate struct {
	sport, dport uint16
	mac          net.HardwareAddr
	// when names the value that differs from the typical packet, "" for
	// the typical packet itself.
	when string
	// dim groups candidates that vary the same unknown.
	dim string
}

// candidates returns the typical packet first, then one candidate per
// value of each unknown, the others kept typical: every boundary of a
// rule is tried for each unknown on its own (not their combinations,
// which would grow with the product of the rules' ports).
func (u *unknowns) candidates() []candidate {
	out := []candidate{{sport: u.sport, dport: u.dport, mac: u.mac}}
	for _, p := range u.sports {
		if p != u.sport {
			out = append(out, candidate{sport: p, dport: u.dport, mac: u.mac, when: "source port", dim: "s" + strconv.Itoa(int(p))})
		}
	}
	for _, p := range u.dports {
		if p != u.dport {
			out = append(out, candidate{sport: u.sport, dport: p, mac: u.mac, when: "destination port", dim: "d" + strconv.Itoa(int(p))})
		}
	}
	for _, m := range u.macs {
		if m.String() != u.mac.String() {
			out = append(out, candidate{sport: u.sport, dport: u.dport, mac: m, when: "source MAC", dim: m.String()})
		}
	}
	return out
}

// assumptions say which values the trace chose for what the query left
// open.
func (t *tracer) assumptions(u *unknowns) []string {
	var out []string
	hasPorts := t.proto == config.ProtoTCP || t.proto == config.ProtoUDP || t.proto == config.ProtoSCTP
	if hasPorts && t.q.SPort < 0 {
		out = append(out, fmt.Sprintf("source port not given: %d assumed, a port no rule names", u.sport))
	}
	if hasPorts && t.q.DPort < 0 {
		out = append(out, fmt.Sprintf("destination port not given: %d assumed, a port no rule names", u.dport))
	}
	if (t.proto == config.ProtoICMP || t.proto == config.ProtoICMPv6) && t.q.ICMPType == "" {
		out = append(out, "ICMP type not given: echo-request assumed")
	}
	if len(u.macs) > 0 && t.q.MAC == "" {
		out = append(out, fmt.Sprintf("the sender's MAC is not known: %s assumed, one no rule names", u.mac))
	}
	if t.proto == config.ProtoTCP {
		out = append(out, "the packet is the connection's first (SYN); later packets of an accepted connection pass as ESTABLISHED")
	}
	return out
}
