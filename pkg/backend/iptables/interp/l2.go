package interp

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/config"
)

// The layer-2 part: vmfw's ebtables chains, which an IP frame meets when
// it comes from a VM's port (vmfw-l2 and the port's TAP-l2: the frame must
// carry the VM's MAC), when the bridge forwards it to a VM's port
// (vmfw-l2d and the port's TAP-l2d: a unicast frame must be addressed to
// the VM's MAC) and when the hypervisor puts it on a port (vmfw-l2out: it
// must carry the mark an in chain sets). The rules are
// read as ebtables-save prints them, which is also how vmfw writes them
// (layout.Table.Bridge), and only the matches vmfw uses are known.

// frame is an IP frame as ebtables sees it.
type frame struct {
	pkt *packet
	// in and out are the bridge ports it comes in from and goes out of.
	in, out string
	// dstMAC is its destination MAC when the path knows it (the receiving
	// VM's), nil for a unicast MAC no rule names.
	dstMAC net.HardwareAddr
	// multicast says the destination is a group address (broadcast
	// included); vmfw traces unicast flows only.
	multicast bool
}

// l2rule is one ebtables rule ready to run.
type l2rule struct {
	ruleBase[*frame]
	target string
}

// l2machine runs frames through vmfw's ebtables chains.
type l2machine struct {
	walker[*frame, *l2rule]
}

func newL2Machine(specs map[layout.Chain][]string) *l2machine {
	missing := func(c layout.Chain) error {
		return fmt.Errorf("%w: ebtables chain %s does not exist", errOpaque, c)
	}
	m := &l2machine{walker[*frame, *l2rule]{
		chains: map[layout.Chain][]*l2rule{},
		// The kernel refuses loops among ebtables chains, so only
		// hand-made rules nest this deep; the walk reports the chain it
		// did not enter.
		maxDepth: 32,
		tooDeep:  missing,
		missing:  missing,
	}}
	for c, list := range specs {
		m.chains[c] = nil // an empty chain (vmfw-l2 when no VM has anti-spoofing) exists
		for i, s := range list {
			r := parseL2Rule(s)
			r.chain, r.index = c, i+1
			m.chains[c] = append(m.chains[c], r)
		}
	}
	return m
}

// run runs f through chain; it reports whether the frame is dropped and
// by which rule.
func (m *l2machine) run(chain layout.Chain, f *frame) (drop bool, by *l2rule, err error) {
	o, by, err := m.walker.run(chain, f)
	return o == dropped, by, err
}

func (r *l2rule) fault() error { return r.faultAs("ebtables rule") }

// apply runs the target. ebtables has no goto, and vmfw writes no target
// but the verdicts, RETURN and CONTINUE: any other is a chain.
func (r *l2rule) apply(*frame) step {
	switch r.target {
	case "ACCEPT":
		return step{verdict: accepted}
	case "DROP":
		return step{verdict: dropped}
	case "RETURN":
		return step{ret: true}
	case "CONTINUE", "":
		return step{}
	}
	return step{jump: layout.Chain(r.target)}
}

// parseL2Rule parses one ebtables rule (the text after "-A CHAIN").
func parseL2Rule(text string) *l2rule {
	r := &l2rule{ruleBase: ruleBase[*frame]{text: text}}
	w := strings.Fields(text)
	for i := 0; i < len(w); i++ {
		neg := false
		if w[i] == "!" {
			neg, i = true, i+1
		}
		if i >= len(w) {
			r.err = errors.New("a trailing negation")
			return r
		}
		opt := w[i]
		arg := func() string {
			if i+1 < len(w) && w[i+1] == "!" {
				neg = true
				i++
			}
			if i+1 >= len(w) {
				r.err = fmt.Errorf("%s needs an argument", opt)
				return ""
			}
			i++
			return w[i]
		}
		if opt == "-j" {
			r.target = arg()
			continue
		}
		if strings.HasPrefix(opt, "--arp-") {
			// ARP matches: an IP frame is not ARP, and the rule's "-p
			// ARP" already fails for it.
			arg()
			continue
		}
		c, err := l2Match(opt, arg)
		if err != nil {
			r.err = err
			return r
		}
		if r.err != nil {
			return r
		}
		if neg {
			inner := c
			c = func(f *frame) bool { return !inner(f) }
		}
		r.conds = append(r.conds, c)
	}
	return r
}

// l2Match returns the match of ebtables option opt, reading its argument
// with arg; the match is not to be used when err is set.
func l2Match(opt string, arg func() string) (c func(*frame) bool, err error) {
	switch opt {
	case "-p", "--protocol":
		p := strings.ToLower(arg())
		return func(f *frame) bool {
			switch p {
			case "ipv4", "0x0800":
				return !f.pkt.src.Is6()
			case "ipv6", "0x86dd":
				return f.pkt.src.Is6()
			}
			return false // ARP and every other ethertype: not an IP frame
		}, nil
	case "-s", "--source":
		mac := arg()
		return func(f *frame) bool { return macMatch(mac, f.pkt.srcMAC, false) }, nil
	case "-d", "--destination":
		mac := arg()
		return func(f *frame) bool { return macMatch(mac, f.dstMAC, f.multicast) }, nil
	case "-i", "--in-interface", "--logical-in":
		name := arg()
		return func(f *frame) bool { return ifMatch(name, f.in) }, nil
	case "-o", "--out-interface", "--logical-out":
		name := arg()
		return func(f *frame) bool { return ifMatch(name, f.out) }, nil
	case "--mark":
		v, mask, err := parseMark(arg())
		return func(f *frame) bool { return f.pkt.mark&mask == v }, err
	case "--ip-proto", "--ip6-proto":
		n, ok := protoNumber(arg())
		if !ok || n < 0 {
			return nil, fmt.Errorf("unknown protocol in %s", opt)
		}
		return func(f *frame) bool { return int(f.pkt.proto) == n }, nil
	case "--ip-sport", "--ip-dport", "--ip6-sport", "--ip6-dport":
		ranges, err := parsePorts(arg())
		src := strings.HasSuffix(opt, "sport")
		return func(f *frame) bool {
			port := f.pkt.dport
			if src {
				port = f.pkt.sport
			}
			return port >= ranges[0][0] && port <= ranges[0][1]
		}, err
	case "--ip-src", "--ip-dst", "--ip6-src", "--ip6-dst":
		pfx, err := parsePrefix(arg())
		src := strings.HasSuffix(opt, "src")
		return func(f *frame) bool {
			if src {
				return pfx.Contains(f.pkt.src)
			}
			return pfx.Contains(f.pkt.dst)
		}, err
	case "--ip6-icmp-type":
		lo, hi, clo, chi, err := parseL2ICMP(arg())
		return func(f *frame) bool {
			return f.pkt.proto == config.ProtoICMPv6 && f.pkt.icmpType >= lo && f.pkt.icmpType <= hi &&
				f.pkt.icmpCode >= clo && f.pkt.icmpCode <= chi
		}, err
	}
	return nil, fmt.Errorf("unknown ebtables match %s", opt)
}

// macMatch matches an ebtables MAC argument: an address, Multicast,
// Broadcast, Unicast (with an optional /mask, not used by vmfw).
func macMatch(arg string, mac net.HardwareAddr, multicast bool) bool {
	switch strings.ToLower(arg) {
	case "multicast":
		return multicast
	case "broadcast":
		return false
	case "unicast":
		return !multicast
	}
	want, err := net.ParseMAC(arg)
	if err != nil || mac == nil {
		return false
	}
	return want.String() == mac.String()
}

// parseL2ICMP reads "133:137/0:255" (types and codes, each a number or range).
func parseL2ICMP(s string) (lo, hi, clo, chi uint8, err error) {
	types, codes, hasCodes := strings.Cut(s, "/")
	rng := func(s string) (uint8, uint8, error) {
		x, y, ok := parseRange(s, 10, 8)
		if !ok {
			return 0, 0, fmt.Errorf("bad icmp type %q", s)
		}
		return uint8(x), uint8(y), nil
	}
	if lo, hi, err = rng(types); err != nil {
		return
	}
	clo, chi = 0, 255
	if hasCodes {
		clo, chi, err = rng(codes)
	}
	return
}
