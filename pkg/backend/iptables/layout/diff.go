package layout

import (
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Observed is what the kernel holds of vmfw's objects in one filter table.
type Observed struct {
	// Chains maps each vmfw-owned chain to the fingerprints of its rules in
	// order ("" for a rule without a vmfw comment, e.g. one added by hand).
	Chains map[Chain][]string
	// Lines maps each vmfw-owned chain to its rules as iptables-save printed
	// them, so a failed change can be reverted.
	Lines map[Chain][]string
	// Hooks counts the hook rules found in the built-in chains.
	Hooks map[Hook]int
}

// Plan is the set of changes that turns an observed table into a desired one.
type Plan struct {
	Family ruleset.Family
	// Create, Rewrite and Delete list chains to add, replace and remove.
	Create, Rewrite, Delete []Chain
	// AddHooks and DelHooks list hook rules to insert and remove.
	AddHooks, DelHooks []Hook
	// DeleteOnly lists chains of Rewrite that only lose rules, with the
	// positions (from 1, highest first) of the rules they lose: Render
	// writes "-D" of those rules instead of redeclaring and refilling the
	// chain. nf_tables validates the whole table at the commit of a
	// transaction that adds a rule and not of one that only deletes, so a
	// detach that only takes entries out of dispatch chains stays cheap
	// at thousands of taps. Revert still rewrites them whole.
	DeleteOnly map[Chain][]int
	want       *Table
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool {
	return len(p.Create)+len(p.Rewrite)+len(p.Delete)+len(p.AddHooks)+len(p.DelHooks) == 0
}

// Diff compares the desired table with the observed one. Only chains whose
// fingerprints differ are rewritten, so editing one group touches that
// group's chains and nothing else. An empty want (no chains, no hooks)
// removes everything vmfw owns.
func Diff(want *Table, have Observed) *Plan {
	p := &Plan{Family: want.Family, want: want}
	wanted := map[Chain]bool{}
	for _, c := range want.Chains {
		wanted[c.Name] = true
		got, ok := have.Chains[c.Name]
		switch {
		case !ok:
			p.Create = append(p.Create, c.Name)
		case !slices.Equal(got, want.Fingerprints(c)):
			p.Rewrite = append(p.Rewrite, c.Name)
		}
	}
	for name := range have.Chains {
		if !wanted[name] {
			p.Delete = append(p.Delete, name)
		}
	}
	slices.Sort(p.Delete)
	wantHooks := map[Hook]bool{}
	for _, h := range want.Hooks {
		wantHooks[h] = true
		if have.Hooks[h] == 0 {
			p.AddHooks = append(p.AddHooks, h)
		}
	}
	for h, n := range have.Hooks {
		extra := n
		if wantHooks[h] {
			extra = n - 1 // keep exactly one
		}
		for range extra {
			p.DelHooks = append(p.DelHooks, h)
		}
	}
	slices.SortFunc(p.DelHooks, func(a, b Hook) int { return strings.Compare(string(a.From), string(b.From)) })
	return p
}

// Render returns the plan as one iptables-restore --noflush transaction.
// Declaring a chain creates it or flushes it; chains to delete are flushed
// first so that references between them are gone before "-X".
func (p *Plan) Render() string {
	if p.Empty() {
		return ""
	}
	var deletes strings.Builder
	for _, c := range slices.Sorted(maps.Keys(p.DeleteOnly)) {
		for _, pos := range p.DeleteOnly[c] {
			deletes.WriteString("-D " + string(c) + " " + strconv.Itoa(pos) + "\n")
		}
	}
	rewrite := slices.DeleteFunc(slices.Clone(p.Rewrite), func(c Chain) bool { _, only := p.DeleteOnly[c]; return only })
	index := p.want.Index()
	return p.transaction(deletes.String(), [][]Chain{p.Create, rewrite, p.Delete}, func(c Chain) []string {
		var lines []string
		if want := index[c]; want != nil {
			for _, r := range want.Rules {
				lines = append(lines, p.want.line(c, r))
			}
		}
		return lines
	}, p.DelHooks, p.AddHooks, p.Delete)
}

// Revert returns the transaction that undoes the plan, restoring the
// chains as they were observed. It is used when a later step of the same
// operation (the other family) fails, so no half-applied change remains.
func (p *Plan) Revert(have Observed) string {
	if p.Empty() {
		return ""
	}
	created := make(map[Chain]bool, len(p.Create))
	for _, c := range p.Create {
		created[c] = true
	}
	return p.transaction("", [][]Chain{p.Create, p.Rewrite, p.Delete}, func(c Chain) []string {
		if created[c] {
			return nil
		}
		return have.Lines[c]
	}, p.AddHooks, p.DelHooks, p.Create)
}

// transaction renders one restore transaction: first lines, then the
// chains of declare declared (created, or flushed), filled in list order
// with rules(chain), the hooks of unhook deleted and of hook inserted,
// and the chains of remove deleted.
func (p *Plan) transaction(first string, declare [][]Chain, rules func(Chain) []string, unhook, hook []Hook, remove []Chain) string {
	var b strings.Builder
	b.WriteString("*filter\n" + first)
	b.WriteString(p.want.declareAll(declare...))
	for _, list := range declare {
		for _, c := range list {
			for _, l := range rules(c) {
				b.WriteString(l + "\n")
			}
		}
	}
	for _, h := range unhook {
		b.WriteString(p.want.deleteHook(h))
	}
	for _, h := range hook {
		b.WriteString(p.want.insertHook(h))
	}
	for _, c := range remove {
		b.WriteString("-X " + string(c) + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// ownedName matches the names vmfw gives its chains: its base chains,
// group chains (group names may contain '-', config's name rule) and
// per-interface chains.
var ownedName = regexp.MustCompile(`^(vmfw-(FORWARD|INPUT|OUTPUT|out|in|accept|l2|l2d|l2out|route|local)|sg-[A-Za-z][A-Za-z0-9_-]{0,19}-(in|out|lin)|[A-Za-z0-9_.-]{1,15}-(in|out|src|nd|lin|l2|l2d|rt|lo))$`)

// IsOwnedName reports whether name is shaped like a chain vmfw creates.
// A chain so named is vmfw's only if it also carries vmfw's comments or a
// vmfw chain jumps to it; the caller checks that.
func IsOwnedName(name string) bool { return ownedName.MatchString(name) }

// ownedSet matches the names of the ipsets vmfw creates: groups' member
// sets and address sets, per family (names.go).
var ownedSet = regexp.MustCompile(`^(sg|as)-[A-Za-z][A-Za-z0-9_-]{0,19}-(v4|v6)$`)

// IsOwnedSet reports whether an ipset name is one vmfw creates.
func IsOwnedSet(name string) bool { return ownedSet.MatchString(name) }
