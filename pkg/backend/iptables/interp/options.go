package interp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// The options of the iptables rules the interpreter reads. Each option
// word maps to a function that takes the option's arguments and adds a
// match to the rule or sets its target, so that knowing one more option
// is one more entry, and an option with no entry is the error that stops
// a walk at a rule the interpreter cannot evaluate.

// ruleParser is the state of reading one rule's words, left to right.
type ruleParser struct {
	r     *irule
	words []string
	// i is the word being read: the option, then each of its arguments.
	i int
	// opt is the option being read, for the messages about it.
	opt string
	// neg says the option is negated ("! --dport 22").
	neg bool
	// inTarget says the words are the target's options: from -j or -g
	// to the next -m, as iptables-save and vmfw write them.
	inTarget bool
	// sets are where --match-set looks its sets up.
	sets *ipsets
}

// arg takes the option's next argument.
func (p *ruleParser) arg() (string, error) {
	if p.i+1 >= len(p.words) {
		return "", fmt.Errorf("%s needs an argument", p.opt)
	}
	p.i++
	return p.words[p.i], nil
}

// args2 takes the option's next two arguments.
func (p *ruleParser) args2() (string, string, error) {
	a, err := p.arg()
	if err != nil {
		return "", "", err
	}
	b, err := p.arg()
	return a, b, err
}

// add adds a match to the rule, negated when the option is.
func (p *ruleParser) add(c cond) {
	if p.neg {
		p.r.conds = append(p.r.conds, func(pkt *packet) bool { return !c(pkt) })
	} else {
		p.r.conds = append(p.r.conds, c)
	}
}

// option reads one option's arguments from p and adds what it says to
// the rule being read.
type option func(p *ruleParser) error

// oneArg is an option of one argument: read is given the argument.
func oneArg(read func(p *ruleParser, a string) error) option {
	return func(p *ruleParser) error {
		a, err := p.arg()
		if err != nil {
			return err
		}
		return read(p, a)
	}
}

// ruleOptions are read wherever they stand, ignoring a negation: they
// say where a match module or a target starts, or carry nothing that
// decides a verdict.
var ruleOptions = map[string]option{
	"-m":        matchModule,
	"--match":   matchModule,
	"-j":        jump(false),
	"--jump":    jump(false),
	"-g":        jump(true),
	"--goto":    jump(true),
	"--comment": comment,
	// The rate limit of LOG and NFLOG rules: while it holds the packet
	// back it only skips the log entry, not a verdict.
	"--limit":       skipArg,
	"--limit-burst": skipArg,
}

// targetOptions are the options of the targets vmfw writes, read after
// -j or -g; a negation before one is ignored.
var targetOptions = map[string]option{
	"--set-xmark":        setMark(false),
	"--set-mark":         setMark(true),
	"--reject-with":      rejectWith,
	"--log-prefix":       skipArg,
	"--log-level":        skipArg,
	"--nflog-prefix":     skipArg,
	"--nflog-group":      skipArg,
	"--nflog-range":      skipArg,
	"--nflog-size":       skipArg,
	"--nflog-threshold":  skipArg,
	"--log-uid":          noArg,
	"--log-tcp-sequence": noArg,
	"--log-tcp-options":  noArg,
	"--log-ip-options":   noArg,
	"--log-macdecode":    noArg,
}

// matchOptions are the matches vmfw writes, in both spellings where the
// kernel prints them differently.
var matchOptions = map[string]option{
	"-p":                  matchProto,
	"--protocol":          matchProto,
	"-s":                  matchAddr(true),
	"--source":            matchAddr(true),
	"-d":                  matchAddr(false),
	"--destination":       matchAddr(false),
	"--sport":             matchPorts(true),
	"--source-port":       matchPorts(true),
	"--sports":            matchPorts(true),
	"--source-ports":      matchPorts(true),
	"--dport":             matchPorts(false),
	"--destination-port":  matchPorts(false),
	"--dports":            matchPorts(false),
	"--destination-ports": matchPorts(false),
	// Every packet traced is its flow's first: a TCP one is a SYN.
	"--syn":                flagMatch(func(*packet) bool { return true }),
	"--tcp-flags":          matchTCPFlags,
	"--icmp-type":          matchICMP("icmp"),
	"--icmpv6-type":        matchICMP("icmpv6"),
	"--ctstate":            matchState,
	"--state":              matchState,
	"--mark":               matchMark,
	"--physdev-in":         matchPhysdev(true),
	"--physdev-out":        matchPhysdev(false),
	"--physdev-is-in":      flagMatch(func(p *packet) bool { return p.physIn != "" }),
	"--physdev-is-out":     flagMatch(func(p *packet) bool { return p.physOut != "" }),
	"--physdev-is-bridged": flagMatch(func(p *packet) bool { return p.bridged }),
	"--match-set":          matchSet,
	"--mac-source":         matchMAC,
	"--u32":                matchU32,
}

// parse reads the rule's words into its matches and target.
func (r *irule) parse(w []string, sets *ipsets) error {
	p := &ruleParser{r: r, words: w, sets: sets}
	for ; p.i < len(w); p.i++ {
		p.neg = false
		if w[p.i] == "!" {
			p.neg = true
			p.i++
			if p.i >= len(w) {
				return errors.New("a trailing negation")
			}
		}
		p.opt = w[p.i]
		read, ok := ruleOptions[p.opt]
		switch {
		case ok:
		case p.inTarget:
			if read, ok = targetOptions[p.opt]; !ok {
				return fmt.Errorf("unknown target option %s", p.opt)
			}
		default:
			if read, ok = matchOptions[p.opt]; !ok {
				return fmt.Errorf("unknown match %s", p.opt)
			}
		}
		if err := read(p); err != nil {
			return err
		}
	}
	return nil
}

// matchModule reads -m: the module's name says nothing the matches after
// it do not, but it ends a target's options.
func matchModule(p *ruleParser) error {
	if _, err := p.arg(); err != nil {
		return err
	}
	p.inTarget = false
	return nil
}

// jump reads -j (goTo false) or -g.
func jump(goTo bool) option {
	return oneArg(func(p *ruleParser, a string) error {
		p.r.target, p.r.goTo, p.inTarget = a, goTo, true
		return nil
	})
}

// comment reads --comment: vmfw's carries the rule's fingerprint.
var comment = oneArg(func(p *ruleParser, a string) error {
	if h, ok := strings.CutPrefix(a, layout.CommentPrefix); ok {
		p.r.hash, _, _ = strings.Cut(h, " ")
	}
	return nil
})

// skipArg reads an option whose argument changes no verdict.
func skipArg(p *ruleParser) error {
	_, err := p.arg()
	return err
}

// noArg reads a flag that changes no verdict.
func noArg(*ruleParser) error { return nil }

// setMark reads the MARK target's --set-xmark, or with all true its
// --set-mark, which sets every bit.
func setMark(all bool) option {
	return oneArg(func(p *ruleParser, a string) error {
		v, mask, err := parseMark(a)
		if err != nil {
			return err
		}
		if all {
			mask = 0xffffffff
		}
		p.r.markValue, p.r.markMask = v, mask
		return nil
	})
}

// rejectWith reads REJECT's --reject-with: whatever answer it names,
// the verdict is reject.
func rejectWith(p *ruleParser) error {
	var err error
	p.r.reject, err = p.arg()
	return err
}

var matchProto = oneArg(func(p *ruleParser, a string) error {
	n, ok := protoNumber(a)
	if !ok {
		return fmt.Errorf("unknown protocol %q", a)
	}
	all := n < 0
	p.add(func(pkt *packet) bool { return all || int(pkt.proto) == n })
	return nil
})

// parsedMatch is a match of one argument: parse reads the argument, and
// match makes the test of what it read.
func parsedMatch[T any](parse func(string) (T, error), match func(T) cond) option {
	return oneArg(func(p *ruleParser, a string) error {
		v, err := parse(a)
		if err != nil {
			return err
		}
		p.add(match(v))
		return nil
	})
}

// matchAddr reads -s (src true) or -d.
func matchAddr(src bool) option {
	return parsedMatch(parsePrefix, func(pfx netip.Prefix) cond {
		return func(pkt *packet) bool {
			if src {
				return pfx.Contains(pkt.src)
			}
			return pfx.Contains(pkt.dst)
		}
	})
}

// matchPorts reads the source (src true) or destination ports of the tcp,
// udp, sctp and multiport matches.
func matchPorts(src bool) option {
	return parsedMatch(parsePorts, func(ranges [][2]uint16) cond {
		return func(pkt *packet) bool {
			port := pkt.dport
			if src {
				port = pkt.sport
			}
			for _, rg := range ranges {
				if port >= rg[0] && port <= rg[1] {
					return true
				}
			}
			return false
		}
	})
}

// matchTCPFlags reads the kernel's spelling of --syn.
func matchTCPFlags(p *ruleParser) error {
	mask, set, err := p.args2()
	if err != nil {
		return err
	}
	if mask != "FIN,SYN,RST,ACK" || set != "SYN" {
		return fmt.Errorf("--tcp-flags %s %s: only the SYN test is known", mask, set)
	}
	p.add(func(*packet) bool { return true })
	return nil
}

// matchICMP reads --icmp-type or --icmpv6-type, proto naming the
// protocol whose type names it knows.
func matchICMP(proto string) option {
	return oneArg(func(p *ruleParser, a string) error {
		t, c, ok := parseICMP(proto, a)
		if !ok {
			return fmt.Errorf("unknown %s %q", p.opt, a)
		}
		p.add(func(pkt *packet) bool {
			return int(pkt.icmpType) == t && (c < 0 || int(pkt.icmpCode) == c)
		})
		return nil
	})
}

// matchState reads conntrack's --ctstate and state's --state.
var matchState = parsedMatch(
	func(s string) ([]string, error) { return strings.Split(s, ","), nil },
	func(states []string) cond {
		return func(pkt *packet) bool { return slices.Contains(states, pkt.state) }
	})

var matchMark = oneArg(func(p *ruleParser, a string) error {
	v, mask, err := parseMark(a)
	if err != nil {
		return err
	}
	p.add(func(pkt *packet) bool { return pkt.mark&mask == v })
	return nil
})

// matchPhysdev reads --physdev-in (in true) or --physdev-out.
func matchPhysdev(in bool) option {
	return parsedMatch(
		func(s string) (string, error) { return s, nil },
		func(pattern string) cond {
			return func(pkt *packet) bool {
				if in {
					return ifMatch(pattern, pkt.physIn)
				}
				return ifMatch(pattern, pkt.physOut)
			}
		})
}

// flagMatch is a match without an argument.
func flagMatch(c cond) option {
	return func(p *ruleParser) error {
		p.add(c)
		return nil
	}
}

// matchSet reads --match-set; the walk notes each set it looks up, for
// drift.
func matchSet(p *ruleParser) error {
	name, dir, err := p.args2()
	if err != nil {
		return err
	}
	if dir != "src" && dir != "dst" {
		return fmt.Errorf("--match-set %s %s: only src or dst is known", name, dir)
	}
	sets := p.sets
	p.add(func(pkt *packet) bool {
		sets.used[name] = true
		a := pkt.src
		if dir == "dst" {
			a = pkt.dst
		}
		if n, ok := sets.nets[name]; ok {
			return n.Has(a)
		}
		return sets.members[name][a]
	})
	return nil
}

// matchMAC reads mac's --mac-source.
var matchMAC = parsedMatch(net.ParseMAC, func(mac net.HardwareAddr) cond {
	return func(pkt *packet) bool { return pkt.srcMAC != nil && pkt.srcMAC.String() == mac.String() }
})

// matchU32 reads the u32 tests vmfw writes (parseU32).
var matchU32 = parsedMatch(parseU32, func(test func([]byte) bool) cond {
	return func(pkt *packet) bool { return test(pkt.bytes()) }
})

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
		lo, hi, ok := parseRange(val, 0, 32)
		if !ok {
			return nil, fmt.Errorf("u32 %q: bad value", part)
		}
		t.lo, t.hi = uint32(lo), uint32(hi)
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

// parseRange reads "LO:HI" or a single number (LO and HI both), each in
// base and of bits as strconv.ParseUint reads them; ok is false when
// either is not such a number.
func parseRange(s string, base, bits int) (lo, hi uint64, ok bool) {
	a, b, isRange := strings.Cut(s, ":")
	if !isRange {
		b = a
	}
	lo, err1 := strconv.ParseUint(a, base, bits)
	hi, err2 := strconv.ParseUint(b, base, bits)
	return lo, hi, err1 == nil && err2 == nil
}

// parseICMP reads an ICMP type as iptables-save prints it ("8", "3/3") or
// vmfw writes it (a name).
func parseICMP(proto, s string) (typ, code int, ok bool) {
	return ruleset.ParseICMPType(proto, s)
}
