package interp

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/config"
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
// concrete; vmfw trace enumerates the values a flow leaves open (ports,
// source MAC) and runs the interpreter once for each.

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
	case config.ProtoICMPv6:
		b[40], b[41] = p.icmpType, p.icmpCode
		if p.ndTarget.IsValid() {
			t := p.ndTarget.As16()
			copy(b[48:], t[:])
		}
	case config.ProtoTCP, config.ProtoUDP, config.ProtoSCTP:
		binary.BigEndian.PutUint16(b[40:], p.sport)
		binary.BigEndian.PutUint16(b[42:], p.dport)
	}
	return b
}

// cond is one match of a rule.
type cond func(p *packet) bool

// irule is one rule ready to run.
type irule struct {
	ruleBase[*packet]
	// hash is the rule's fingerprint, "" when it has none.
	hash string
	// target is ACCEPT, DROP, REJECT, RETURN, MARK, LOG, NFLOG or a chain.
	target string
	goTo   bool
	// markValue and markMask are the MARK target's --set-xmark.
	markValue, markMask uint32
	// reject is the REJECT target's --reject-with.
	reject string
}

// machine runs packets through one table's chains.
type machine struct {
	walker[*packet, *irule]
	sets *ipsets
}

// ipsets are the members of the sets a machine's rules look up, shared by
// its --match-set matches.
type ipsets struct {
	members map[string]map[netip.Addr]bool
	// nets are the hash:net sets, looked up by prefix (sets.go).
	nets map[string]NetSet
	// used are the sets the last run looked up, whether the address was
	// a member or not: drift compares their members.
	used map[string]bool
}

// run runs p through chain; it returns how the chain ended and the rule
// that decided (nil when none did).
func (m *machine) run(chain layout.Chain, p *packet) (outcome, *irule, error) {
	m.sets.used = map[string]bool{}
	return m.walker.run(chain, p)
}

func (r *irule) fault() error { return r.faultAs("rule") }

// apply runs the target: the verdicts end the walk, MARK changes the
// packet's mark and the walk goes on, as it does after the log targets
// and a rule without a target; any other target is a chain.
func (r *irule) apply(p *packet) step {
	switch r.target {
	case "", "LOG", "NFLOG":
		return step{}
	case "ACCEPT":
		return step{verdict: accepted}
	case "DROP":
		return step{verdict: dropped}
	case "REJECT":
		return step{verdict: rejected}
	case "RETURN":
		return step{ret: true}
	case "MARK":
		p.mark = p.mark&^r.markMask ^ r.markValue
		return step{}
	}
	return step{jump: layout.Chain(r.target), goTo: r.goTo}
}

// newMachine parses the chains of one table. lines maps a chain to its
// rules, each the arguments after "-A CHAIN" (compiled specs or kernel
// lines); hashes, when given, are their fingerprints.
func newMachine(lines map[layout.Chain][]string, hashes map[layout.Chain][]string, sets map[string]map[netip.Addr]bool, nets map[string]NetSet) *machine {
	m := &machine{
		walker: walker[*packet, *irule]{
			chains:   map[layout.Chain][]*irule{},
			maxDepth: 64,
			tooDeep: func(c layout.Chain) error {
				return fmt.Errorf("%w: chains nest deeper than 64 at %s", errOpaque, c)
			},
			missing: func(c layout.Chain) error {
				return fmt.Errorf("%w: chain %s does not exist", errOpaque, c)
			},
		},
		sets: &ipsets{members: sets, nets: nets},
	}
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
func parseRule(chain layout.Chain, text string, sets *ipsets) *irule {
	text = strings.TrimSpace(text)
	if rest, ok := strings.CutPrefix(text, "-A "); ok {
		_, text, _ = strings.Cut(rest, " ")
	}
	r := &irule{ruleBase: ruleBase[*packet]{chain: chain, text: text}}
	words, err := layout.SplitWords(text)
	if err != nil {
		r.err = err
		return r
	}
	r.err = r.parse(words, sets)
	return r
}
