package xtables

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
)

// savedRule is one "-A" line of iptables-save output.
type savedRule struct {
	chain   layout.Chain
	line    string // without the counters
	counter Counter
	hash    string // "" when the rule has no vmfw comment
	target  layout.Chain
}

// Parse extracts vmfw's chains and hooks from iptables-save -c output of
// the filter table. A chain is vmfw's when it is named like one and either
// carries a vmfw comment or is the target of a rule that does; a chain
// someone else named "web-in" is therefore left alone.
func Parse(save []byte) (*Snapshot, error) {
	var declared []layout.Chain
	var rules []savedRule
	inFilter := false
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := sc.Text()
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			inFilter = line == "*filter"
		case line == "COMMIT":
			inFilter = false
		case !inFilter:
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			declared = append(declared, layout.Chain(name))
		default:
			r, err := parseSavedRule(line)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", lineNo, err)
			}
			rules = append(rules, r)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return snapshotOf(declared, rules), nil
}

// snapshotOf picks vmfw's chains and hooks out of a table's declared chains
// and rules.
func snapshotOf(declared []layout.Chain, rules []savedRule) *Snapshot {
	owned := map[layout.Chain]bool{}
	for _, c := range declared {
		if layout.IsBaseChain(c) && layout.IsOwnedName(string(c)) {
			owned[c] = true
		}
	}
	for _, r := range rules {
		if r.hash == "" {
			continue
		}
		if layout.IsOwnedName(string(r.chain)) {
			owned[r.chain] = true
		}
		if r.target != "" && layout.IsOwnedName(string(r.target)) {
			owned[r.target] = true
		}
	}

	s := newSnapshot()
	for _, c := range declared {
		if owned[c] {
			s.Chains[c] = []string{}
		}
	}
	for _, r := range rules {
		if layout.IsBuiltin(r.chain) && r.hash != "" && owned[r.target] {
			s.Hooks[layout.Hook{From: r.chain, To: r.target}]++
			continue
		}
		if !owned[r.chain] {
			continue
		}
		s.Chains[r.chain] = append(s.Chains[r.chain], r.hash)
		if r.line != "" {
			s.Lines[r.chain] = append(s.Lines[r.chain], r.line)
		}
		s.Counters[r.chain] = append(s.Counters[r.chain], r.counter)
		if r.hash == "" {
			s.Foreign[r.chain]++
		}
	}
	return s
}

func parseSavedRule(line string) (savedRule, error) {
	var r savedRule
	if strings.HasPrefix(line, "[") {
		counters, rest, ok := strings.Cut(line[1:], "] ")
		if !ok {
			return r, fmt.Errorf("malformed counters in %q", line)
		}
		pkts, bytes, _ := strings.Cut(counters, ":")
		n, err := strconv.ParseUint(pkts, 10, 64)
		if err != nil {
			return r, fmt.Errorf("malformed counters in %q", line)
		}
		b, err := strconv.ParseUint(bytes, 10, 64)
		if err != nil {
			return r, fmt.Errorf("malformed counters in %q", line)
		}
		r.counter, line = Counter{Packets: n, Bytes: b}, rest
	}
	r.line = line
	words, err := layout.SplitWords(line)
	if err != nil {
		return r, err
	}
	if len(words) < 2 || words[0] != "-A" {
		return r, fmt.Errorf("unexpected line %q", line)
	}
	r.chain = layout.Chain(words[1])
	for i := 2; i+1 < len(words); i++ {
		switch words[i] {
		case "--comment":
			if h, ok := strings.CutPrefix(words[i+1], layout.CommentPrefix); ok {
				h, _, _ = strings.Cut(h, " ")
				r.hash = h
			}
		case "-j", "-g", "--jump", "--goto":
			r.target = layout.Chain(words[i+1])
		}
	}
	return r, nil
}
