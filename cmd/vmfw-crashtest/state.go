package main

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/vmfw/vmfw/integration/labnet"
)

// snapshot is what the host holds of one kind of state, in a canonical
// text: two snapshots are equal exactly when the states are.
type snapshot struct {
	v4, v6, eb string
	sets       setState
}

// parts names the rule tables in the order an apply changes them.
var parts = []string{"ipv4", "ipv6", "ebtables"}

func (s *snapshot) part(name string) string {
	switch name {
	case "ipv4":
		return s.v4
	case "ipv6":
		return s.v6
	}
	return s.eb
}

var counters = regexp.MustCompile(` \[\d+:\d+\]$`)

// canonicalTable turns iptables-save or ebtables-save output into chains
// sorted by name, each with its rules in order: the nft backend lists
// chains in creation order, which differs between two ways of reaching the
// same ruleset, and the order of chains means nothing.
func canonicalTable(save string) string {
	type chain struct {
		head  string
		rules []string
	}
	chains := map[string]*chain{}
	get := func(name string) *chain {
		if chains[name] == nil {
			chains[name] = &chain{}
		}
		return chains[name]
	}
	for _, l := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(l, ":"):
			l = counters.ReplaceAllString(l, "")
			name, _, _ := strings.Cut(l[1:], " ")
			get(name).head = l
		case strings.HasPrefix(l, "-A "):
			name, _, _ := strings.Cut(l[3:], " ")
			c := get(name)
			c.rules = append(c.rules, l)
		}
	}
	names := make([]string, 0, len(chains))
	for n := range chains {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		c := chains[n]
		b.WriteString(c.head + "\n")
		for _, r := range c.rules {
			b.WriteString(r + "\n")
		}
	}
	return b.String()
}

// read takes a snapshot of the hypervisor namespace.
func read(ctx context.Context, hv *labnet.NS, backend string) (*snapshot, error) {
	run := func(args ...string) (string, error) {
		out, err := hv.Exec(ctx, args...)
		return string(out), err
	}
	s := &snapshot{}
	v4, err := run("iptables-"+backend+"-save", "-t", "filter")
	if err != nil {
		return nil, err
	}
	v6, err := run("ip6tables-"+backend+"-save", "-t", "filter")
	if err != nil {
		return nil, err
	}
	// vmfw programs ebtables through ebtables-nft whenever it works,
	// whatever the iptables backend (see package ebtables).
	eb, err := run("ebtables-nft-save")
	if err != nil {
		if eb, err = run("ebtables-legacy-save"); err != nil {
			return nil, err
		}
	}
	sets, err := run("ipset", "save")
	if err != nil {
		return nil, err
	}
	s.v4, s.v6, s.eb = canonicalTable(v4), canonicalTable(v6), canonicalTable(eb)
	s.sets = parseSets(sets)
	return s, nil
}

// setState is the ipsets of the namespace: name → header and members.
type setState map[string]*set

type set struct {
	header  string // type, family and capacity
	members map[string]bool
}

// parseSets reads "ipset save" output. The header keeps what identifies a
// set's kind and capacity, not its hash size (which grows with the set)
// or hash seed.
func parseSets(save string) setState {
	st := setState{}
	for _, l := range strings.Split(save, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		switch f[0] {
		case "create":
			st[f[1]] = &set{header: setHeader(f[2:]), members: map[string]bool{}}
		case "add":
			if s := st[f[1]]; s != nil {
				s.members[strings.ToLower(f[2])] = true
			}
		}
	}
	return st
}

func setHeader(f []string) string {
	h := []string{f[0]}
	for i := 1; i+1 < len(f); i++ {
		if f[i] == "family" || f[i] == "maxelem" {
			h = append(h, f[i], f[i+1])
		}
	}
	return strings.Join(h, " ")
}

func (st setState) clone() setState {
	c := setState{}
	for n, s := range st {
		m := make(map[string]bool, len(s.members))
		for k := range s.members {
			m[k] = true
		}
		c[n] = &set{header: s.header, members: m}
	}
	return c
}

func (st setState) String() string {
	var lines []string
	for n, s := range st {
		lines = append(lines, n+" "+s.header)
		for m := range s.members {
			lines = append(lines, n+" + "+m)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// apply runs one line of an "ipset restore" script on the model.
func (st setState) apply(line string) error {
	f := strings.Fields(line)
	if len(f) < 2 {
		return nil
	}
	switch f[0] {
	case "create":
		if len(f) < 3 {
			return fmt.Errorf("ipset line %q", line)
		}
		st[f[1]] = &set{header: setHeader(f[2:]), members: map[string]bool{}}
	case "add", "del":
		s := st[f[1]]
		if s == nil || len(f) < 3 {
			return fmt.Errorf("ipset line %q on a missing set", line)
		}
		if f[0] == "add" {
			s.members[strings.ToLower(f[2])] = true
		} else {
			delete(s.members, strings.ToLower(f[2]))
		}
	case "swap":
		if len(f) < 3 {
			return fmt.Errorf("ipset line %q", line)
		}
		st[f[1]], st[f[2]] = st[f[2]], st[f[1]]
	case "destroy":
		delete(st, f[1])
	default:
		return fmt.Errorf("ipset command %q is not modelled", f[0])
	}
	return nil
}

// plan is what an apply from one configuration to the other does, as
// "vmfw apply --dry-run" prints it.
type plan struct {
	setsBefore, setsAfter []string
}

// parsePlan splits a dry run's output: an ipset section before the first
// rule section holds the sets changed first, one after it the sets
// removed last.
func parsePlan(out string) plan {
	var p plan
	var cur *[]string
	seenRules := false
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "# ") {
			cur = nil
			switch {
			case l == "# ipset restore" && !seenRules:
				cur = &p.setsBefore
			case l == "# ipset restore":
				cur = &p.setsAfter
			case strings.Contains(l, "restore"):
				seenRules = true
			}
			continue
		}
		if cur != nil && strings.TrimSpace(l) != "" {
			*cur = append(*cur, l)
		}
	}
	return p
}

// setStages returns every ipset state an apply of p from state from can
// leave when interrupted, in order: each line of the script run before
// the rules is a step, and so is each line of the one run after them.
// stage len(p.setsBefore) is "sets ready, rules next".
func setStages(from setState, p plan) ([]string, error) {
	st := from.clone()
	stages := []string{st.String()}
	for _, l := range append(append([]string{}, p.setsBefore...), p.setsAfter...) {
		if err := st.apply(l); err != nil {
			return nil, err
		}
		stages = append(stages, st.String())
	}
	return stages, nil
}
