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
	// parts names the rule tables in the order an apply changes them:
	// ipv4, ipv6 and ebtables for the iptables backend; nftables (both of
	// its tables, one transaction, or two when staged) and the
	// iptables-hooks of each family (its rule in iptables' chains,
	// written after, one transaction per family) for the nftables
	// backend.
	parts  []string
	tables map[string]string
	sets   setState
}

func (s *snapshot) part(name string) string { return s.tables[name] }

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
	if backend == nftablesBackend {
		return readNFT(run)
	}
	s := &snapshot{parts: []string{"ipv4", "ipv6", "ebtables"}}
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
	s.tables = map[string]string{"ipv4": canonicalTable(v4), "ipv6": canonicalTable(v6), "ebtables": canonicalTable(eb)}
	s.sets = parseSets(sets)
	return s, nil
}

// nftablesBackend names the nftables backend among --backends.
const nftablesBackend = "nftables"

// readNFT takes a snapshot of the nftables backend: its two tables, and
// its rules in iptables' FORWARD and OUTPUT chains (iptables-nft is the
// host's iptables here). It has no ipsets.
func readNFT(run func(args ...string) (string, error)) (*snapshot, error) {
	var tables strings.Builder
	for _, fam := range []string{"bridge", "inet"} {
		out, err := run("nft", "-s", "list", "table", fam, "vmfw")
		if err != nil {
			out = "no table " + fam + " vmfw\n" // absent is a state too
		}
		tables.WriteString(canonicalNFT(out))
	}
	// vmfw writes its rules in iptables' chains one family after the
	// other, each family in one transaction.
	snap := &snapshot{parts: []string{"nftables", "iptables-hooks ipv4", "iptables-hooks ipv6"},
		tables: map[string]string{"nftables": tables.String()}, sets: parseSets("")}
	for i, save := range []string{"iptables-nft-save", "ip6tables-nft-save"} {
		out, err := run(save, "-t", "filter")
		if err != nil {
			return nil, err
		}
		var hooks strings.Builder
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "vmfw nftables") {
				hooks.WriteString(l + "\n")
			}
		}
		snap.tables[snap.parts[1+i]] = hooks.String()
	}
	return snap, nil
}

// canonicalNFT turns an nft listing of one table into its chains and sets
// sorted by name, the elements of each set sorted: nft lists objects in
// creation order and a hash set's elements in bucket order, neither of
// which means anything.
func canonicalNFT(listing string) string {
	listing = labnet.SortNFTElements(listing)
	blocks := map[string]string{}
	var head, name string
	var body strings.Builder
	for _, l := range strings.Split(listing, "\n") {
		switch {
		case strings.HasPrefix(l, "table "):
			head = l
		case strings.HasPrefix(l, "\t") && isBlockHead(l[1:]):
			name = strings.TrimSpace(l)
			body.Reset()
		case l == "\t}" && name != "":
			blocks[name] = body.String()
			name = ""
		case name != "":
			body.WriteString(strings.TrimSpace(l) + "\n")
		}
	}
	names := make([]string, 0, len(blocks))
	for n := range blocks {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(head + "\n")
	for _, n := range names {
		b.WriteString(n + "\n" + blocks[n])
	}
	return b.String()
}

// unstaged returns the canonical listing staged (canonicalNFT) without
// what the first of the nftables backend's two transactions adds when a
// change is staged (pkg/backend/nftables/nlnft, stage.go): each chain's
// rules from its "vmfw:staged" return on, which no packet reaches, and
// the chains and sets that the listing old does not have, which nothing
// reaches yet. A kill between the two transactions leaves a state whose
// unstaged form is the old ruleset.
func unstaged(staged, old string) string {
	known := map[string]bool{}
	table := ""
	for _, l := range strings.Split(old, "\n") {
		if strings.HasPrefix(l, "table ") {
			table = l
		} else if isBlockHead(l) {
			known[table+"\x00"+l] = true
		}
	}
	var b strings.Builder
	keep, cut := true, false
	for _, l := range strings.Split(staged, "\n") {
		switch {
		case l == "":
			continue
		case strings.HasPrefix(l, "table "):
			table, keep, cut = l, true, false
		case isBlockHead(l):
			keep, cut = known[table+"\x00"+l], false
		case strings.Contains(l, `comment "vmfw:staged"`):
			cut = true
		}
		if keep && !cut {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// isBlockHead reports whether l opens a chain, set or map.
func isBlockHead(l string) bool {
	return strings.HasPrefix(l, "chain ") || strings.HasPrefix(l, "set ") || strings.HasPrefix(l, "map ")
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
