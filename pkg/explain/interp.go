package explain

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// An interpreter of the iptables rules vmfw writes.
//
// It runs one packet through vmfw's chains as the kernel would, taking the
// rules either from the compiled ruleset (layout.Rule.Spec) or from the
// kernel (the lines iptables-save prints, which spell the same rules
// differently: "-m tcp", numeric ICMP types, "--tcp-flags FIN,SYN,RST,ACK
// SYN" for "--syn"). It knows the matches and targets vmfw uses and nothing
// else: a rule with anything else in a chain vmfw owns cannot be evaluated,
// and the walk says so rather than guess. Every field of the packet is
// concrete; Trace enumerates the values a flow leaves open (ports, source
// MAC) and runs the interpreter once for each.

// packet is the first packet of a flow as the rules see it.
type packet struct {
	proto              uint8
	src, dst           netip.Addr
	sport, dport       uint16
	icmpType, icmpCode uint8
	// srcMAC is the frame's source MAC.
	srcMAC net.HardwareAddr
	// physIn and physOut are the bridge ports (physdev): "" when the
	// packet did not come in from / will not leave through a bridge port
	// as far as the IP hooks know.
	physIn, physOut string
	// bridged says the packet is bridged (physdev-is-bridged).
	bridged bool
	mark    uint32
	// state is the conntrack state: NEW, INVALID or UNTRACKED.
	state string
	// ndTarget is the target of a neighbour solicitation or advertisement.
	ndTarget netip.Addr
}

// bytes returns the start of the packet as the u32 match sees it: the IP
// header, then the transport header (ICMPv6 neighbour discovery with its
// target). Only what vmfw's u32 rules read is filled in.
func (p *packet) bytes() []byte {
	if !p.src.Is6() {
		b := make([]byte, 28)
		b[0] = 0x45
		b[9] = p.proto
		s, d := p.src.As4(), p.dst.As4()
		copy(b[12:], s[:])
		copy(b[16:], d[:])
		binary.BigEndian.PutUint16(b[20:], p.sport)
		binary.BigEndian.PutUint16(b[22:], p.dport)
		return b
	}
	b := make([]byte, 64)
	b[0] = 0x60
	b[6] = p.proto
	s, d := p.src.As16(), p.dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	switch p.proto {
	case protoICMPv6:
		b[40], b[41] = p.icmpType, p.icmpCode
		if p.ndTarget.IsValid() {
			t := p.ndTarget.As16()
			copy(b[48:], t[:])
		}
	case protoTCP, protoUDP, protoSCTP:
		binary.BigEndian.PutUint16(b[40:], p.sport)
		binary.BigEndian.PutUint16(b[42:], p.dport)
	}
	return b
}

// IP protocol numbers.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
	protoSCTP   = 132
)

// cond is one match of a rule.
type cond func(p *packet, m *machine) bool

// irule is one rule ready to run.
type irule struct {
	chain layout.Chain
	// index is the rule's position in its chain, from 1.
	index int
	// text is the rule as read (without "-A CHAIN").
	text string
	// hash is the rule's fingerprint, "" when it has none.
	hash  string
	conds []cond
	// target is ACCEPT, DROP, REJECT, RETURN, MARK, LOG, NFLOG or a chain.
	target string
	goTo   bool
	// markValue and markMask are the MARK target's --set-xmark.
	markValue, markMask uint32
	// reject is the REJECT target's --reject-with.
	reject string
	// err says why the rule cannot be evaluated.
	err error
}

// outcome is how a chain ends for a packet.
type outcome int

const (
	fallThrough outcome = iota // RETURN or the end of the chain
	accepted
	dropped
	rejected
)

func (o outcome) String() string {
	switch o {
	case accepted:
		return "accept"
	case dropped:
		return "drop"
	case rejected:
		return "reject"
	}
	return "continue"
}

// hit is one rule a packet matched.
type hit struct {
	rule *irule
}

// machine runs packets through one table's chains.
type machine struct {
	chains map[layout.Chain][]*irule
	sets   map[string]map[netip.Addr]bool
	// hits and entered record the last run: the rules that matched, and
	// the chains entered, in order.
	hits    []hit
	entered []layout.Chain
	// sets used by the last run's matching and non-matching set matches.
	setsUsed map[string]bool
}

// errOpaque is wrapped by every error about a rule the interpreter cannot
// evaluate.
var errOpaque = errors.New("cannot evaluate")

// run runs p through chain; it returns how the chain ended and the rule
// that decided (nil when none did).
func (m *machine) run(chain layout.Chain, p *packet) (outcome, *irule, error) {
	m.hits, m.entered, m.setsUsed = nil, nil, map[string]bool{}
	return m.exec(chain, p, 0)
}

func (m *machine) exec(chain layout.Chain, p *packet, depth int) (outcome, *irule, error) {
	if depth > 64 {
		return fallThrough, nil, fmt.Errorf("%w: chains nest deeper than 64 at %s", errOpaque, chain)
	}
	rules, ok := m.chains[chain]
	if !ok {
		return fallThrough, nil, fmt.Errorf("%w: chain %s does not exist", errOpaque, chain)
	}
	m.entered = append(m.entered, chain)
	for _, r := range rules {
		if r.err != nil {
			return fallThrough, r, fmt.Errorf("%w: rule %d of %s (%s): %v", errOpaque, r.index, chain, r.text, r.err)
		}
		matched := true
		for _, c := range r.conds {
			if !c(p, m) {
				matched = false
				break
			}
		}
		if !matched {
			continue
		}
		m.hits = append(m.hits, hit{rule: r})
		switch r.target {
		case "", "LOG", "NFLOG":
		case "ACCEPT":
			return accepted, r, nil
		case "DROP":
			return dropped, r, nil
		case "REJECT":
			return rejected, r, nil
		case "RETURN":
			return fallThrough, nil, nil
		case "MARK":
			p.mark = p.mark&^r.markMask ^ r.markValue
		default:
			o, by, err := m.exec(layout.Chain(r.target), p, depth+1)
			if err != nil {
				return o, by, err
			}
			if r.goTo || o != fallThrough {
				return o, by, nil
			}
		}
	}
	return fallThrough, nil, nil
}

// newMachine parses the chains of one table. lines maps a chain to its
// rules, each the arguments after "-A CHAIN" (compiled specs or kernel
// lines); hashes, when given, are their fingerprints.
func newMachine(lines map[layout.Chain][]string, hashes map[layout.Chain][]string, sets map[string]map[netip.Addr]bool) *machine {
	m := &machine{chains: map[layout.Chain][]*irule{}, sets: sets}
	for c := range hashes {
		m.chains[c] = nil // an empty chain has fingerprints but no lines
	}
	for c, ls := range lines {
		rules := make([]*irule, 0, len(ls))
		for i, l := range ls {
			r := parseRule(c, l)
			r.index = i + 1
			if h := hashes[c]; i < len(h) && r.hash == "" {
				r.hash = h[i]
			}
			rules = append(rules, r)
		}
		m.chains[c] = rules
	}
	return m
}

// parseRule parses one rule's arguments. A rule it cannot read gets err,
// which stops any walk that reaches it.
func parseRule(chain layout.Chain, text string) *irule {
	text = strings.TrimSpace(text)
	if rest, ok := strings.CutPrefix(text, "-A "); ok {
		_, text, _ = strings.Cut(rest, " ")
	}
	r := &irule{chain: chain, text: text}
	words, err := layout.SplitWords(text)
	if err != nil {
		r.err = err
		return r
	}
	r.err = r.parse(words)
	return r
}

func (r *irule) parse(w []string) error {
	inTarget := false
	for i := 0; i < len(w); i++ {
		neg := false
		if w[i] == "!" {
			neg = true
			i++
			if i >= len(w) {
				return errors.New("a trailing negation")
			}
		}
		opt := w[i]
		arg := func() (string, error) {
			if i+1 >= len(w) {
				return "", fmt.Errorf("%s needs an argument", opt)
			}
			i++
			return w[i], nil
		}
		add := func(c cond) {
			if neg {
				r.conds = append(r.conds, func(p *packet, m *machine) bool { return !c(p, m) })
			} else {
				r.conds = append(r.conds, c)
			}
		}
		var a string
		var err error
		switch opt {
		case "-m", "--match":
			if _, err = arg(); err != nil {
				return err
			}
			inTarget = false
			continue
		case "-j", "--jump", "-g", "--goto":
			if a, err = arg(); err != nil {
				return err
			}
			r.target, r.goTo, inTarget = a, opt == "-g" || opt == "--goto", true
			continue
		case "--comment":
			if a, err = arg(); err != nil {
				return err
			}
			if h, ok := strings.CutPrefix(a, layout.CommentPrefix); ok {
				r.hash, _, _ = strings.Cut(h, " ")
			}
			continue
		case "--limit", "--limit-burst":
			// The rate limit of LOG and NFLOG rules: while it holds the
			// packet back it only skips the log entry, not a verdict.
			_, err = arg()
			if err != nil {
				return err
			}
			continue
		}
		if inTarget {
			switch opt {
			case "--set-xmark", "--set-mark":
				if a, err = arg(); err != nil {
					return err
				}
				v, mask, err := parseMark(a)
				if err != nil {
					return err
				}
				if opt == "--set-mark" {
					mask = 0xffffffff
				}
				r.markValue, r.markMask = v, mask
			case "--reject-with":
				if r.reject, err = arg(); err != nil {
					return err
				}
			case "--log-prefix", "--log-level", "--nflog-prefix", "--nflog-group", "--nflog-range", "--nflog-size", "--nflog-threshold":
				if _, err = arg(); err != nil {
					return err
				}
			case "--log-uid", "--log-tcp-sequence", "--log-tcp-options", "--log-ip-options", "--log-macdecode":
			default:
				return fmt.Errorf("unknown target option %s", opt)
			}
			continue
		}
		switch opt {
		case "-p", "--protocol":
			if a, err = arg(); err != nil {
				return err
			}
			n, ok := protoNumber(a)
			if !ok {
				return fmt.Errorf("unknown protocol %q", a)
			}
			all := n < 0
			add(func(p *packet, _ *machine) bool { return all || int(p.proto) == n })
		case "-s", "--source", "-d", "--destination":
			if a, err = arg(); err != nil {
				return err
			}
			pfx, err := parsePrefix(a)
			if err != nil {
				return err
			}
			src := opt == "-s" || opt == "--source"
			add(func(p *packet, _ *machine) bool {
				if src {
					return pfx.Contains(p.src)
				}
				return pfx.Contains(p.dst)
			})
		case "--sport", "--source-port", "--dport", "--destination-port", "--sports", "--source-ports", "--dports", "--destination-ports":
			if a, err = arg(); err != nil {
				return err
			}
			ranges, err := parsePorts(a)
			if err != nil {
				return err
			}
			src := strings.HasPrefix(opt, "--s")
			add(func(p *packet, _ *machine) bool {
				port := p.dport
				if src {
					port = p.sport
				}
				for _, rg := range ranges {
					if port >= rg[0] && port <= rg[1] {
						return true
					}
				}
				return false
			})
		case "--syn":
			add(func(p *packet, _ *machine) bool { return true }) // a flow's first segment
		case "--tcp-flags":
			mask, err := arg()
			if err != nil {
				return err
			}
			set, err := arg()
			if err != nil {
				return err
			}
			if mask != "FIN,SYN,RST,ACK" || set != "SYN" {
				return fmt.Errorf("--tcp-flags %s %s: only the SYN test is known", mask, set)
			}
			add(func(p *packet, _ *machine) bool { return true })
		case "--icmp-type", "--icmpv6-type":
			if a, err = arg(); err != nil {
				return err
			}
			proto := "icmp"
			if opt == "--icmpv6-type" {
				proto = "icmpv6"
			}
			t, c, ok := parseICMP(proto, a)
			if !ok {
				return fmt.Errorf("unknown %s %q", opt, a)
			}
			add(func(p *packet, _ *machine) bool {
				return int(p.icmpType) == t && (c < 0 || int(p.icmpCode) == c)
			})
		case "--ctstate", "--state":
			if a, err = arg(); err != nil {
				return err
			}
			states := strings.Split(a, ",")
			add(func(p *packet, _ *machine) bool {
				for _, s := range states {
					if s == p.state {
						return true
					}
				}
				return false
			})
		case "--mark":
			if a, err = arg(); err != nil {
				return err
			}
			v, mask, err := parseMark(a)
			if err != nil {
				return err
			}
			add(func(p *packet, _ *machine) bool { return p.mark&mask == v })
		case "--physdev-in", "--physdev-out":
			if a, err = arg(); err != nil {
				return err
			}
			in := opt == "--physdev-in"
			add(func(p *packet, _ *machine) bool {
				if in {
					return ifMatch(a, p.physIn)
				}
				return ifMatch(a, p.physOut)
			})
		case "--physdev-is-in":
			add(func(p *packet, _ *machine) bool { return p.physIn != "" })
		case "--physdev-is-out":
			add(func(p *packet, _ *machine) bool { return p.physOut != "" })
		case "--physdev-is-bridged":
			add(func(p *packet, _ *machine) bool { return p.bridged })
		case "--match-set":
			name, err := arg()
			if err != nil {
				return err
			}
			dir, err := arg()
			if err != nil {
				return err
			}
			if dir != "src" && dir != "dst" {
				return fmt.Errorf("--match-set %s %s: only src or dst is known", name, dir)
			}
			add(func(p *packet, m *machine) bool {
				m.setsUsed[name] = true
				a := p.src
				if dir == "dst" {
					a = p.dst
				}
				return m.sets[name][a]
			})
		case "--mac-source":
			if a, err = arg(); err != nil {
				return err
			}
			mac, err := net.ParseMAC(a)
			if err != nil {
				return err
			}
			add(func(p *packet, _ *machine) bool { return p.srcMAC != nil && p.srcMAC.String() == mac.String() })
		case "--u32":
			if a, err = arg(); err != nil {
				return err
			}
			test, err := parseU32(a)
			if err != nil {
				return err
			}
			add(func(p *packet, _ *machine) bool { return test(p.bytes()) })
		default:
			return fmt.Errorf("unknown match %s", opt)
		}
	}
	return nil
}

// protoNumbers are the protocol names iptables-save prints (from
// /etc/protocols) and the ones vmfw writes.
var protoNumbers = map[string]int{
	"ip": 0, "hopopt": 0, "icmp": 1, "igmp": 2, "ggp": 3, "ipencap": 4, "st": 5, "tcp": 6,
	"egp": 8, "igp": 9, "pup": 12, "udp": 17, "hmp": 20, "xns-idp": 22, "rdp": 27,
	"iso-tp4": 29, "dccp": 33, "xtp": 36, "ddp": 37, "idpr-cmtp": 38, "ipv6": 41,
	"ipv6-route": 43, "ipv6-frag": 44, "idrp": 45, "rsvp": 46, "gre": 47, "esp": 50,
	"ah": 51, "skip": 57, "ipv6-icmp": 58, "icmpv6": 58, "ipv6-nonxt": 59, "ipv6-opts": 60,
	"rspf": 73, "vmtp": 81, "eigrp": 88, "ospf": 89, "ax.25": 93, "ipip": 94, "etherip": 97,
	"encap": 98, "pim": 103, "ipcomp": 108, "vrrp": 112, "l2tp": 115, "isis": 124,
	"sctp": 132, "fc": 133, "mobility-header": 135, "mh": 135, "udplite": 136,
	"mpls-in-ip": 137, "manet": 138, "hip": 139, "shim6": 140, "wesp": 141, "rohc": 142,
	"ethernet": 143,
}

// protoNumber returns the number of a protocol name or number; -1 for
// "all" (and 0, which iptables reads as every protocol).
func protoNumber(s string) (int, bool) {
	s = strings.ToLower(s)
	if s == "all" {
		return -1, true
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		var ok bool
		if n, ok = protoNumbers[s]; !ok {
			return 0, false
		}
	}
	if n == 0 {
		return -1, true
	}
	return n, n > 0 && n < 256
}

func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, err
	}
	return p.Masked(), nil
}

// parsePorts reads "22", "1000:2000", ":1024", "80,443,8000:8080".
func parsePorts(s string) ([][2]uint16, error) {
	var out [][2]uint16
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		if !isRange {
			hi = lo
		}
		if lo == "" {
			lo = "0"
		}
		if hi == "" {
			hi = "65535"
		}
		l, err1 := strconv.ParseUint(lo, 10, 16)
		h, err2 := strconv.ParseUint(hi, 10, 16)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("bad port %q", part)
		}
		out = append(out, [2]uint16{uint16(l), uint16(h)})
	}
	return out, nil
}

func parseMark(s string) (v, mask uint32, err error) {
	a, b, hasMask := strings.Cut(s, "/")
	x, err := strconv.ParseUint(a, 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("bad mark %q", s)
	}
	y := uint64(0xffffffff)
	if hasMask {
		if y, err = strconv.ParseUint(b, 0, 32); err != nil {
			return 0, 0, fmt.Errorf("bad mark %q", s)
		}
	}
	return uint32(x), uint32(y), nil
}

// ifMatch matches an interface name against a pattern with an optional
// trailing "+" wildcard, as physdev does.
func ifMatch(pattern, name string) bool {
	if name == "" {
		return false
	}
	if prefix, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(name, prefix)
	}
	return name == pattern
}

// parseU32 reads the u32 tests vmfw writes: "LOC=VALUE" or
// "LOC&MASK=VALUE" joined by "&&", LOC a byte offset from the IP header,
// VALUE a number or "LO:HI" range, all decimal or hex.
func parseU32(s string) (func([]byte) bool, error) {
	type test struct {
		off, mask, lo, hi uint32
	}
	var tests []test
	for _, part := range strings.Split(s, "&&") {
		loc, val, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("u32 %q: no =", part)
		}
		t := test{mask: 0xffffffff}
		offs, mask, hasMask := strings.Cut(loc, "&")
		off, err := strconv.ParseUint(offs, 0, 32)
		if err != nil {
			return nil, fmt.Errorf("u32 %q: only plain offsets are known", part)
		}
		t.off = uint32(off)
		if hasMask {
			m, err := strconv.ParseUint(mask, 0, 32)
			if err != nil {
				return nil, fmt.Errorf("u32 %q: bad mask", part)
			}
			t.mask = uint32(m)
		}
		lo, hi, isRange := strings.Cut(val, ":")
		if !isRange {
			hi = lo
		}
		l, err1 := strconv.ParseUint(lo, 0, 32)
		h, err2 := strconv.ParseUint(hi, 0, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("u32 %q: bad value", part)
		}
		t.lo, t.hi = uint32(l), uint32(h)
		tests = append(tests, t)
	}
	return func(b []byte) bool {
		for _, t := range tests {
			if int(t.off)+4 > len(b) {
				return false
			}
			v := binary.BigEndian.Uint32(b[t.off:]) & t.mask
			if v < t.lo || v > t.hi {
				return false
			}
		}
		return true
	}, nil
}

// parseICMP reads an ICMP type as iptables-save prints it ("8", "3/3") or
// vmfw writes it (a name).
func parseICMP(proto, s string) (typ, code int, ok bool) {
	return ruleset.ParseICMPType(proto, s)
}
