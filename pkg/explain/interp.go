package explain

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vmfw/vmfw/pkg/ruleset"
)

// An interpreter of the iptables rules vmfw writes.
//
// It runs one packet through vmfw's chains as the kernel would, taking the
// rules either from the compiled ruleset (ruleset.Rule.Spec) or from the
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
type cond func(p *packet) bool

// irule is one rule ready to run.
type irule struct {
	chain ruleset.Chain
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
	chains map[ruleset.Chain][]*irule
	sets   *ipsets
	// hits and entered record the last run: the rules that matched, and
	// the chains entered, in order.
	hits    []hit
	entered []ruleset.Chain
}

// ipsets are the members of the sets a machine's rules look up, shared by
// its --match-set matches.
type ipsets struct {
	members map[string]map[netip.Addr]bool
	// used are the sets the last run looked up, whether the address was
	// a member or not: drift compares their members.
	used map[string]bool
}

// errOpaque is wrapped by every error about a rule the interpreter cannot
// evaluate.
var errOpaque = errors.New("cannot evaluate")

// run runs p through chain; it returns how the chain ended and the rule
// that decided (nil when none did).
func (m *machine) run(chain ruleset.Chain, p *packet) (outcome, *irule, error) {
	m.hits, m.entered, m.sets.used = nil, nil, map[string]bool{}
	return m.exec(chain, p, 0)
}

func (m *machine) exec(chain ruleset.Chain, p *packet, depth int) (outcome, *irule, error) {
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
			if !c(p) {
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
			o, by, err := m.exec(ruleset.Chain(r.target), p, depth+1)
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
func newMachine(lines map[ruleset.Chain][]string, hashes map[ruleset.Chain][]string, sets map[string]map[netip.Addr]bool) *machine {
	m := &machine{chains: map[ruleset.Chain][]*irule{}, sets: &ipsets{members: sets}}
	for c := range hashes {
		m.chains[c] = nil // an empty chain has fingerprints but no lines
	}
	for c, ls := range lines {
		rules := make([]*irule, 0, len(ls))
		for i, l := range ls {
			r := parseRule(c, l, m.sets)
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

// parseRule parses one rule's arguments, its set matches looking in sets.
// A rule it cannot read gets err, which stops any walk that reaches it.
func parseRule(chain ruleset.Chain, text string, sets *ipsets) *irule {
	text = strings.TrimSpace(text)
	if rest, ok := strings.CutPrefix(text, "-A "); ok {
		_, text, _ = strings.Cut(rest, " ")
	}
	r := &irule{chain: chain, text: text}
	words, err := ruleset.SplitWords(text)
	if err != nil {
		r.err = err
		return r
	}
	r.err = r.parse(words, sets)
	return r
}
