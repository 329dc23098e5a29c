package xtables

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/internal/nlmsg"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Narrow reads.
//
// iptables-save prints the whole table: at 5000 taps that is 155,000 rules
// and about two seconds per family on nf_tables, far more than attaching
// one tap changes. On nf_tables the kernel answers narrower questions over
// netlink: the names of the chains (one small message per chain), and the
// rules of one chain. The fingerprint of a rule is in its comment, which
// iptables-nft stores as an xt "comment" match (or, in some versions, in
// the rule's user data), so reading it needs no translation of the rule's
// expressions back into iptables syntax. What cannot be read this way is a
// rule's text: callers that need it for a revert rebuild it from the
// fingerprint (see engine), and fall back to iptables-save when they cannot.
//
// Legacy x_tables has no such interface (the kernel hands out the whole
// table as one blob), so these reads are for nf_tables only.

// ErrNotNFT is returned by the narrow reads on the legacy backend.
var ErrNotNFT = errors.New("narrow reads need the nf_tables backend")

// nf_tables netlink constants (linux/netfilter/nf_tables.h, nfnetlink.h).
const (
	nfnlSubsysNFTables = 10
	nftMsgGetChain     = 4
	nftMsgGetRule      = 7
	nftMsgGetGen       = 16

	nfprotoUnspec = 0
	nfprotoIPv4   = 2
	nfprotoBridge = 7
	nfprotoIPv6   = 10

	nftaGenID = 1

	nftaChainTable = 1
	nftaChainName  = 3

	nftaRuleTable       = 1
	nftaRuleChain       = 2
	nftaRuleExpressions = 4
	nftaRuleUserdata    = 7

	nftaListElem      = 1
	nftaExprName      = 1
	nftaExprData      = 2
	nftaMatchName     = 1
	nftaMatchInfo     = 3
	nftaCounterBytes  = 1
	nftaCounterPkts   = 2
	nftaImmediateData = 2
	nftaDataVerdict   = 2
	nftaVerdictCode   = 1
	nftaVerdictChain  = 2

	nftJump = -3
	nftGoto = -4

	// udataRuleComment is libnftnl's NFTNL_UDATA_RULE_COMMENT.
	udataRuleComment = 0
)

// kernelRule is what a narrow read learns about one rule.
type kernelRule struct {
	// Hash is the vmfw fingerprint from the rule's comment, "" if none.
	Hash string
	// Counter is the rule's packet and byte counter.
	Counter Counter
	// Target is the chain the rule jumps or goes to, "" if none.
	Target layout.Chain
	// Matches counts the rule's expressions other than its counter and
	// verdict: 0 for a bare "-j CHAIN".
	Matches int
}

// nfproto returns the nf_tables family of f.
func nfproto(f ruleset.Family) uint8 {
	if f == ruleset.IPv6 {
		return nfprotoIPv6
	}
	return nfprotoIPv4
}

// listChains lists the chains of the filter table of family in one
// netlink dump. It does not say whose they are.
func listChains(ctx context.Context, family uint8) (map[layout.Chain]bool, error) {
	out := map[layout.Chain]bool{}
	err := nlmsg.With(ctx, func(c *nlmsg.Conn) error {
		clear(out)
		return c.Request(nfnlSubsysNFTables<<8|nftMsgGetChain, unix.NLM_F_DUMP, family, nil, func(_ uint8, attrs []byte) {
			var table, name []byte
			nlmsg.Attrs(attrs, func(typ uint16, val []byte) {
				switch typ {
				case nftaChainTable:
					table = val
				case nftaChainName:
					name = val
				}
			})
			if cString(table) == "filter" {
				out[layout.Chain(cString(name))] = true
			}
		})
	})
	if err != nil {
		return nil, fmt.Errorf("listing nf_tables chains: %w", err)
	}
	return out, nil
}

// chainsExist reports which of the named chains the filter table of
// family has, asking for each by name.
func chainsExist(ctx context.Context, family uint8, names []layout.Chain) (map[layout.Chain]bool, error) {
	out := map[layout.Chain]bool{}
	err := nlmsg.With(ctx, func(c *nlmsg.Conn) error {
		for _, name := range names {
			var req []byte
			req = nlmsg.AppendAttr(req, nftaChainTable, []byte("filter\x00"))
			req = nlmsg.AppendAttr(req, nftaChainName, []byte(string(name)+"\x00"))
			err := c.Request(nfnlSubsysNFTables<<8|nftMsgGetChain, unix.NLM_F_ACK, family, req, func(uint8, []byte) {})
			switch {
			case err == nil:
				out[name] = true
			case !errors.Is(err, unix.ENOENT):
				return fmt.Errorf("chain %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("looking up nf_tables chains: %w", err)
	}
	return out, nil
}

// readFilterRules reads the rules of the named chains of the filter table
// of family (nfprotoIPv4, nfprotoIPv6 or nfprotoBridge), one netlink dump
// per chain. A chain that does not exist reads as no rules.
func readFilterRules(ctx context.Context, family uint8, chains []layout.Chain) (map[layout.Chain][]kernelRule, error) {
	out := map[layout.Chain][]kernelRule{}
	err := nlmsg.With(ctx, func(c *nlmsg.Conn) error {
		for _, chain := range chains {
			var req []byte
			req = nlmsg.AppendAttr(req, nftaRuleTable, []byte("filter\x00"))
			req = nlmsg.AppendAttr(req, nftaRuleChain, []byte(string(chain)+"\x00"))
			var rules []kernelRule
			err := c.Request(nfnlSubsysNFTables<<8|nftMsgGetRule, unix.NLM_F_DUMP, family, req, func(_ uint8, attrs []byte) {
				// Old kernels ignore the chain in a dump request.
				if table, name, r := parseRule(attrs); table == "filter" && name == chain {
					rules = append(rules, r)
				}
			})
			if err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("chain %s: %w", chain, err)
			}
			out[chain] = rules
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading nf_tables rules: %w", err)
	}
	return out, nil
}

// parseRule returns the table and chain of one rule message and what vmfw
// reads of the rule.
func parseRule(attrs []byte) (table string, chain layout.Chain, r kernelRule) {
	nlmsg.Attrs(attrs, func(typ uint16, val []byte) {
		switch typ {
		case nftaRuleTable:
			table = cString(val)
		case nftaRuleChain:
			chain = layout.Chain(cString(val))
		case nftaRuleExpressions:
			parseExpressions(val, &r)
		case nftaRuleUserdata:
			if r.Hash == "" {
				r.Hash = udataHash(val)
			}
		}
	})
	return table, chain, r
}

// parseExpressions fills r from a rule's expression list.
func parseExpressions(list []byte, r *kernelRule) {
	nlmsg.Attrs(list, func(typ uint16, elem []byte) {
		if typ != nftaListElem {
			return
		}
		name, data := namedData(elem, nftaExprName, nftaExprData)
		switch name {
		case "counter":
			nlmsg.Attrs(data, func(typ uint16, val []byte) {
				if len(val) != 8 {
					return
				}
				switch typ {
				case nftaCounterPkts:
					r.Counter.Packets = binary.BigEndian.Uint64(val)
				case nftaCounterBytes:
					r.Counter.Bytes = binary.BigEndian.Uint64(val)
				}
			})
		case "immediate":
			nlmsg.Attrs(data, func(typ uint16, val []byte) {
				if typ != nftaImmediateData {
					return
				}
				nlmsg.Attrs(val, func(typ uint16, val []byte) {
					if typ != nftaDataVerdict {
						return
					}
					var code int32
					var chain string
					nlmsg.Attrs(val, func(typ uint16, val []byte) {
						switch {
						case typ == nftaVerdictCode && len(val) == 4:
							code = int32(binary.BigEndian.Uint32(val))
						case typ == nftaVerdictChain:
							chain = cString(val)
						}
					})
					if code == nftJump || code == nftGoto {
						r.Target = layout.Chain(chain)
					}
				})
			})
		case "match":
			mname, info := namedData(data, nftaMatchName, nftaMatchInfo)
			if mname == "comment" {
				if h := commentHash(cString(info)); h != "" && r.Hash == "" {
					r.Hash = h
				}
				return // a comment matches every packet
			}
			r.Matches++
		default:
			r.Matches++
		}
	})
}

// namedData returns the name (attribute nameType) and the data (attribute
// dataType) of an expression or a match.
func namedData(attrs []byte, nameType, dataType uint16) (name string, data []byte) {
	nlmsg.Attrs(attrs, func(typ uint16, val []byte) {
		switch typ {
		case nameType:
			name = cString(val)
		case dataType:
			data = val
		}
	})
	return name, data
}

// commentHash returns the fingerprint in a vmfw comment, "" for another.
func commentHash(comment string) string {
	h, ok := strings.CutPrefix(comment, layout.CommentPrefix)
	if !ok {
		return ""
	}
	h, _, _ = strings.Cut(h, " ")
	return h
}

// udataHash finds a vmfw comment in a rule's user data: type-length-value
// entries of one byte type and one byte length.
func udataHash(b []byte) string {
	for len(b) >= 2 {
		typ, n := b[0], int(b[1])
		if 2+n > len(b) {
			return ""
		}
		if typ == udataRuleComment {
			return commentHash(cString(b[2 : 2+n]))
		}
		b = b[2+n:]
	}
	return ""
}

func cString(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// SaveChains reads vmfw's part of the named chains of family f's filter
// table, and the hooks in the built-in chains, without reading the rest of
// the table. The snapshot has fingerprints and counters but no rule text
// (Lines): a caller that may have to revert rebuilds it. Chains that do
// not exist are absent from the snapshot. On legacy it returns ErrNotNFT.
func (c *Client) SaveChains(ctx context.Context, f ruleset.Family, names []layout.Chain) (*Snapshot, error) {
	if c.mode != NFT {
		return nil, ErrNotNFT
	}
	family := nfproto(f)
	exist, err := chainsExist(ctx, family, names)
	if err != nil {
		return nil, fmt.Errorf("reading %s chains: %w", f, err)
	}
	var read []layout.Chain
	for _, n := range names {
		if exist[n] && !layout.IsBuiltin(n) {
			read = append(read, n)
		}
	}
	rules, err := readFilterRules(ctx, family, append(read, layout.BuiltinChains...))
	if err != nil {
		return nil, fmt.Errorf("reading %s chains: %w", f, err)
	}
	s := newSnapshot()
	for _, from := range layout.BuiltinChains {
		for _, r := range rules[from] {
			if r.Hash != "" && layout.IsBaseChain(r.Target) && layout.IsOwnedName(string(r.Target)) {
				s.Hooks[layout.Hook{From: from, To: r.Target}]++
			}
		}
	}
	for _, n := range read {
		s.Chains[n] = []string{}
		s.Counters[n] = []Counter{}
		for _, r := range rules[n] {
			s.Chains[n] = append(s.Chains[n], r.Hash)
			s.Counters[n] = append(s.Counters[n], r.Counter)
			if r.Hash == "" {
				s.Foreign[n]++
			}
		}
	}
	return s, nil
}

// SaveFingerprints reads vmfw's part of family f's filter table as Save
// does, but over netlink: the chain names, then the rules chain by chain,
// which the kernel answers from its own structures, where iptables-save translates
// every rule of the table into text (seconds at thousands of taps). The
// snapshot has no rule text (Lines); ChainLines reads it for the few
// chains a change must be able to revert. On legacy it returns ErrNotNFT.
func (c *Client) SaveFingerprints(ctx context.Context, f ruleset.Family) (*Snapshot, error) {
	if c.mode != NFT {
		return nil, ErrNotNFT
	}
	family := nfproto(f)
	// Two dumps are two moments: read them again if the ruleset changed
	// in between (vmfw holds its lock; someone else may not).
	for try := 0; ; try++ {
		gen, err := Generation(ctx)
		if err != nil {
			return nil, err
		}
		chains, err := listChains(ctx, family)
		if err != nil {
			return nil, fmt.Errorf("reading %s chains: %w", f, err)
		}
		declared := make([]layout.Chain, 0, len(chains))
		for c := range chains {
			declared = append(declared, c)
		}
		slices.Sort(declared)
		// One dump per chain: a dump of the whole table costs the kernel
		// time quadratic in its rules (each batch of the answer walks the
		// table from the start to where the last one ended).
		rules, err := readFilterRules(ctx, family, declared)
		if err != nil {
			return nil, fmt.Errorf("reading %s rules: %w", f, err)
		}
		if now, err := Generation(ctx); err != nil {
			return nil, err
		} else if now != gen && try < 4 {
			continue
		}
		var saved []savedRule
		for _, chain := range declared {
			for _, r := range rules[chain] {
				saved = append(saved, savedRule{chain: chain, counter: r.Counter, hash: r.Hash, target: r.Target})
			}
		}
		return snapshotOf(declared, saved), nil
	}
}

// ChainLines returns the rules of the named chains of family f as
// iptables-save prints them (without counters), one "iptables -S" each.
func (c *Client) ChainLines(ctx context.Context, f ruleset.Family, names []layout.Chain) (map[layout.Chain][]string, error) {
	out := map[layout.Chain][]string{}
	for _, name := range names {
		text, err := c.runner.Run(ctx, nil, c.command(f, ""), "-w", xtablesWait, "-t", "filter", "-S", string(name))
		if err != nil {
			return nil, fmt.Errorf("reading %s chain %s: %w", f, name, err)
		}
		out[name] = []string{}
		for _, line := range strings.Split(string(text), "\n") {
			if !strings.HasPrefix(line, "-A ") {
				continue
			}
			r, err := parseSavedRule(line)
			if err != nil {
				return nil, fmt.Errorf("reading %s chain %s: %w", f, name, err)
			}
			out[name] = append(out[name], r.line)
		}
	}
	return out, nil
}

// BridgeHooks counts the jumps into the chains to from the built-in chains
// of the bridge filter table (ebtables-nft): rules that do nothing but jump.
func BridgeHooks(ctx context.Context, to []layout.Chain) (map[layout.Hook]int, error) {
	rules, err := readFilterRules(ctx, nfprotoBridge, layout.BuiltinChains)
	if err != nil {
		return nil, fmt.Errorf("reading bridge hooks: %w", err)
	}
	hooks := map[layout.Hook]int{}
	for _, from := range layout.BuiltinChains {
		for _, r := range rules[from] {
			if slices.Contains(to, r.Target) && r.Matches == 0 {
				hooks[layout.Hook{From: from, To: r.Target}]++
			}
		}
	}
	return hooks, nil
}

// ListChains lists the chains of family f's filter table, in one netlink
// dump, on the nf_tables backend; on legacy it returns ErrNotNFT.
func (c *Client) ListChains(ctx context.Context, f ruleset.Family) (map[layout.Chain]bool, error) {
	if c.mode != NFT {
		return nil, ErrNotNFT
	}
	return listChains(ctx, nfproto(f))
}

// BridgeChainsExist reports which of the named chains the bridge filter
// table (ebtables-nft) has.
func BridgeChainsExist(ctx context.Context, names []layout.Chain) (map[layout.Chain]bool, error) {
	return chainsExist(ctx, nfprotoBridge, names)
}

// Generation returns the nf_tables ruleset generation of the current
// network namespace, which every committed change (iptables-nft,
// ebtables-nft, nft) increments: equal before and after an operation means
// it wrote nothing.
func Generation(ctx context.Context) (uint32, error) {
	var gen uint32
	err := nlmsg.With(ctx, func(c *nlmsg.Conn) error {
		return c.Request(nfnlSubsysNFTables<<8|nftMsgGetGen, unix.NLM_F_ACK, nfprotoUnspec, nil, func(_ uint8, attrs []byte) {
			nlmsg.Attrs(attrs, func(typ uint16, val []byte) {
				if typ == nftaGenID && len(val) == 4 {
					gen = binary.BigEndian.Uint32(val)
				}
			})
		})
	})
	if err != nil {
		return 0, fmt.Errorf("reading the nf_tables generation: %w", err)
	}
	return gen, nil
}

// BridgeTargets returns, for each of the named chains of the bridge
// filter table (ebtables-nft), the chains its rules jump to, in rule
// order, without the rules that jump nowhere; a chain that does not exist
// reads as none. ebtables rules carry no fingerprints: what a dispatch
// chain jumps to is what a scoped change must know before it rewrites it.
func BridgeTargets(ctx context.Context, names []layout.Chain) (map[layout.Chain][]layout.Chain, error) {
	rules, err := readFilterRules(ctx, nfprotoBridge, names)
	if err != nil {
		return nil, fmt.Errorf("reading bridge chains: %w", err)
	}
	out := make(map[layout.Chain][]layout.Chain, len(rules))
	for c, list := range rules {
		out[c] = []layout.Chain{}
		for _, r := range list {
			if r.Target != "" {
				out[c] = append(out[c], r.Target)
			}
		}
	}
	return out, nil
}
