// Package ipset is the only code in vmfw that runs ipset. It reads back the
// sets vmfw owns, and no other, and changes them with one "ipset restore"
// per operation: members are added and deleted in place (group membership
// changes and address set edits never touch a chain), and a set that must
// change its header (capacity) is rebuilt under a temporary name and
// swapped in, so rules that reference it never see it missing. Members of
// hash:net sets (address sets) carry their nomatch flag: a member that
// changes only its flag is deleted and added again (see Plan). The kernel swaps only sets of
// the same type and family; a set of vmfw's name but another type (made by
// hand) makes the swap, and so the operation, fail with ipset's message.
package ipset

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Observed is one vmfw-owned set as the kernel holds it.
type Observed struct {
	// Type is the set's type, e.g. hash:ip.
	Type layout.SetType
	// Family is inet or inet6 for hash:ip sets, "" otherwise.
	Family string
	// MaxElem is the set's capacity.
	MaxElem int
	// Members holds the set's entries as Member writes them: addresses
	// and prefixes in their canonical form, those of nomatch entries
	// followed by layout.NoMatch.
	Members map[string]bool
}

// Client runs the ipset command.
type Client struct {
	runner xtables.Runner
}

// New returns a client; a nil runner runs the real ipset command.
func New(runner xtables.Runner) *Client {
	if runner == nil {
		runner = xtables.ExecRunner{}
	}
	return &Client{runner: runner}
}

// listAttempts bounds how often List starts over when a set it found by
// name is gone before its contents are read. vmfw changes its sets only
// under the namespace lock, so only an operator's "ipset destroy" between
// the two commands gets there.
const listAttempts = 3

// List returns vmfw's sets. It reads the names of every set (names only:
// "ipset list -n" reads no members), then the headers and members of
// vmfw's own sets, and of leftovers of a rebuild, with one "ipset
// restore" of "save NAME" lines (ipset accepts list and save in restore
// mode, and "ipset save" takes at most one name). Sets of other tools,
// however large, are never read.
func (c *Client) List(ctx context.Context) (map[string]*Observed, error) {
	for attempt := 1; ; attempt++ {
		out, err := c.runner.Run(ctx, nil, "ipset", "list", "-n")
		if err != nil {
			return nil, fmt.Errorf("listing ipsets: %w", err)
		}
		names := ownNames(out)
		if len(names) == 0 {
			return map[string]*Observed{}, nil
		}
		var script strings.Builder
		for _, name := range names {
			script.WriteString("save " + name + "\n")
		}
		save, err := c.runner.Run(ctx, []byte(script.String()), "ipset", "restore")
		if err == nil {
			return Parse(save), nil
		}
		if attempt == listAttempts {
			return nil, fmt.Errorf("reading ipsets: %w", err)
		}
	}
}

// Head is a set's header as "ipset list -t" prints it: what a set holds
// without its members.
type Head struct {
	// Type is the set's type, e.g. hash:net.
	Type layout.SetType
	// Family is inet or inet6 where the header names one.
	Family string
	// MaxElem is the set's capacity.
	MaxElem int
	// Entries counts its members.
	Entries int
}

// Heads runs script, then reads the headers of the named sets and the
// names of vmfw's sets and of leftovers of a rebuild (as List finds
// them), all in one "ipset restore": script, then "list NAME -t" lines
// and a "list -n" line. No member is read, so a set of 100,000 costs
// what a set of one does. A failing script, or a named set that does not
// exist, is an error.
func (c *Client) Heads(ctx context.Context, script string, names []string) (map[string]Head, []string, error) {
	var b strings.Builder
	b.WriteString(script)
	for _, name := range names {
		b.WriteString("list " + name + " -t\n")
	}
	// Last: ipset restore keeps -n for the list lines after it.
	b.WriteString("list -n\n")
	out, err := c.runner.Run(ctx, []byte(b.String()), "ipset", "restore")
	if err != nil {
		return nil, nil, fmt.Errorf("applying ipsets: %w", err)
	}
	heads, rest := ParseHeads(out)
	return heads, ownNames(rest), nil
}

// ParseHeads reads the headers "ipset list -t" prints, each from its
// "Name:" line to its "Number of entries:" line, and returns the lines
// outside them (what "list -n" prints: names, which hold no space).
func ParseHeads(out []byte) (map[string]Head, []byte) {
	heads := map[string]Head{}
	var rest []byte
	name := ""
	var h Head
	for _, line := range strings.Split(string(out), "\n") {
		key, value, found := strings.Cut(line, ": ")
		switch {
		case found && key == "Name" && name == "":
			name, h = value, Head{}
		case name == "":
			rest = append(rest, line+"\n"...)
		case key == "Type":
			h.Type = layout.SetType(value)
		case key == "Header":
			h.Family, h.MaxElem = header(strings.Fields(value))
		case key == "Number of entries":
			h.Entries, _ = strconv.Atoi(value)
			heads[name], name = h, ""
		}
	}
	return heads, rest
}

// header reads the family and maxelem of a set's header words, as
// "ipset list" and "ipset save" print them ("family inet hashsize 1024
// maxelem 65536").
func header(words []string) (family string, maxElem int) {
	for i := 0; i+1 < len(words); i++ {
		switch words[i] {
		case "family":
			family = words[i+1]
		case "maxelem":
			maxElem, _ = strconv.Atoi(words[i+1])
		}
	}
	return family, maxElem
}

// ownNames picks, sorted, the names of "ipset list -n" output that are
// vmfw's: its sets and leftovers of an interrupted rebuild.
func ownNames(list []byte) []string {
	var names []string
	for _, line := range strings.Split(string(list), "\n") {
		if name := strings.TrimSpace(line); layout.IsOwnedSet(name) || isLeftover(name) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// Parse extracts vmfw's sets, and leftovers of a rebuild, from "ipset
// save" output.
func Parse(save []byte) map[string]*Observed {
	sets := map[string]*Observed{}
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !(layout.IsOwnedSet(f[1]) || isLeftover(f[1])) {
			continue
		}
		switch f[0] {
		case "create":
			o := &Observed{Type: layout.SetType(f[2]), Members: map[string]bool{}}
			o.Family, o.MaxElem = header(f[3:])
			sets[f[1]] = o
		case "add":
			if o := sets[f[1]]; o != nil {
				o.Members[Member(f[2], slices.Contains(f[3:], "nomatch"))] = true
			}
		}
	}
	return sets
}

// Member returns the canonical form of a set member as ipset prints it
// (an address, or a prefix of a hash:net set), with layout.NoMatch when
// nomatch: addresses as netip writes them (lower case, IPv6 compressed),
// a prefix of a single address as that address, as layout writes
// members. Anything else is kept, in lower case.
func Member(m string, nomatch bool) string {
	out := strings.ToLower(m)
	if a, err := netip.ParseAddr(m); err == nil {
		out = a.String()
	} else if p, err := netip.ParsePrefix(m); err == nil {
		out = layout.SetMember(p)
	}
	if nomatch {
		out += layout.NoMatch
	}
	return out
}

// Restore runs script through one "ipset restore".
func (c *Client) Restore(ctx context.Context, script string) error {
	if script == "" {
		return nil
	}
	if _, err := c.runner.Run(ctx, []byte(script), "ipset", "restore"); err != nil {
		return fmt.Errorf("applying ipsets: %w", err)
	}
	return nil
}

// minMaxElem is the capacity of a new set; sets grow past it when a group
// has more members.
const minMaxElem = 65536

// minHashSize is ipset's default initial hash size.
const minHashSize = 1024

func familyName(f ruleset.Family) string {
	if f == ruleset.IPv6 {
		return "inet6"
	}
	return "inet"
}

func createLine(name string, s layout.Set) string {
	maxElem := minMaxElem
	for maxElem < 2*len(s.Members) {
		maxElem *= 2
	}
	opts := ""
	switch s.Type {
	case layout.HashIP:
		opts = " family " + familyName(s.Family)
	case layout.HashNet:
		// A hash grows by rehashing every member, several times on the
		// way from the default 1024 buckets to 100,000 members: sized for
		// its members from the start, an address set of 100,000 networks
		// loads in one pass (docs/performance.md, "Address sets").
		hashSize := minHashSize
		for hashSize < len(s.Members) {
			hashSize *= 2
		}
		opts = fmt.Sprintf(" family %s hashsize %d", familyName(s.Family), hashSize)
	}
	return fmt.Sprintf("create %s %s%s maxelem %d\n", name, s.Type, opts, maxElem)
}

// Plan returns two ipset restore scripts: pre, run before the iptables
// change (create sets and fix members, so new rules find their sets), and
// post, run after it (destroy sets no rule references any more).
func Plan(want []layout.Set, have map[string]*Observed) (pre, post string) {
	var b strings.Builder
	wanted := map[string]bool{}
	var leftovers []string
	for name := range have {
		if isLeftover(name) {
			leftovers = append(leftovers, name)
			wanted[name] = true // destroyed here, not in post
		}
	}
	sort.Strings(leftovers)
	for _, name := range leftovers {
		b.WriteString("destroy " + name + "\n")
	}
	for _, s := range want {
		wanted[s.Name] = true
		o := have[s.Name]
		if o == nil {
			b.WriteString(createLine(s.Name, s))
			for _, m := range s.Members {
				b.WriteString("add " + s.Name + " " + m + "\n")
			}
			continue
		}
		fam := ""
		if s.Type == layout.HashIP || s.Type == layout.HashNet {
			fam = familyName(s.Family)
		}
		if o.Type != s.Type || o.Family != fam || o.MaxElem < len(s.Members) {
			tmp := tempName(s.Name)
			b.WriteString(createLine(tmp, s))
			for _, m := range s.Members {
				b.WriteString("add " + tmp + " " + m + "\n")
			}
			b.WriteString("swap " + tmp + " " + s.Name + "\ndestroy " + tmp + "\n")
			continue
		}
		WriteMembers(&b, s.Name, Changes(s.Members, o.Members))
	}
	var gone []string
	for name := range have {
		if !wanted[name] {
			gone = append(gone, name)
		}
	}
	sort.Strings(gone)
	var p strings.Builder
	for _, name := range gone {
		p.WriteString("destroy " + name + "\n")
	}
	return b.String(), p.String()
}

// Changes returns how a set holding have must change to hold want: the
// members of want it lacks, in want's order, and the members it has that
// want lacks, sorted. Both are in Member's form, which layout writes
// members in already (an address set can have 100,000, each worth no
// parse here); a member whose nomatch flag changes is in both lists,
// with each flag.
func Changes(want []string, have map[string]bool) layout.MemberChanges {
	var c layout.MemberChanges
	wanted := make(map[string]bool, len(want))
	for _, m := range want {
		wanted[m] = true
		if !have[m] {
			c.Added = append(c.Added, m)
		}
	}
	for m := range have {
		if !wanted[m] {
			c.Removed = append(c.Removed, m)
		}
	}
	sort.Strings(c.Removed)
	return c
}

// WriteMembers writes to b the commands that change the members of set
// name by c, for a set that keeps its header: every member added that is
// new, then every member whose flag changes, deleted and added again,
// then every member removed, in c's orders.
//
// A member whose nomatch flag changes is deleted, then added with the new
// flag. In between, the next less specific member decides its addresses;
// excepts lie inside entries, so that is an entry or an except around it,
// and the addresses see either the old or the new answer, never a third.
// "add -exist" would rewrite the flag in one step, but ipset restore
// honours -exist only on the first line of a run of commands for a set,
// and for the whole run then, which would hide the error that tells a
// plan from stale state (backend.StaleError): an "add" of a member the
// set has, a "del" of one it lacks.
func WriteMembers(b *strings.Builder, name string, c layout.MemberChanges) {
	removed := make(map[string]bool, len(c.Removed))
	for _, m := range c.Removed {
		removed[m] = true
	}
	added := make(map[string]bool, len(c.Added))
	var flips []string
	for _, m := range c.Added {
		added[m] = true
		if removed[flipped(m)] {
			flips = append(flips, m)
			continue
		}
		b.WriteString("add " + name + " " + m + "\n")
	}
	for _, m := range flips {
		b.WriteString("del " + name + " " + strings.TrimSuffix(m, layout.NoMatch) + "\n")
		b.WriteString("add " + name + " " + m + "\n")
	}
	for _, m := range c.Removed {
		if !added[flipped(m)] {
			b.WriteString("del " + name + " " + strings.TrimSuffix(m, layout.NoMatch) + "\n")
		}
	}
}

// flipped returns member m with the other nomatch flag.
func flipped(m string) string {
	if bare, ok := strings.CutSuffix(m, layout.NoMatch); ok {
		return bare
	}
	return m + layout.NoMatch
}

// tempName names the set a changed set is rebuilt in before the swap. It
// is not shaped like a group's or an address set's set, so no rule ever
// references it, and it fits ipset's 31 characters for the longest name
// (vmfw-sg-NAME-v4 and vmfw-as-NAME-v4 with a 20-character NAME).
func tempName(name string) string { return tempPrefix + name }

// tempPrefix starts the name of a set being rebuilt; one found at the start
// of a run was left by a crash and is destroyed first.
const tempPrefix = "vmfw-"

// oldTempPrefix started the names of sets being rebuilt before tempPrefix,
// which is too long for the longest group names. A crash of that version can
// have left such a set behind.
const oldTempPrefix = "vmfw-tmp-"

// isLeftover reports whether name is a set being rebuilt: vmfw's name of a
// group's or an address set's set behind one of the temporary prefixes. Only such names are
// destroyed as leftovers, so another tool's set that merely starts with
// "vmfw-" is never touched.
func isLeftover(name string) bool {
	for _, prefix := range []string{oldTempPrefix, tempPrefix} {
		if rest, ok := strings.CutPrefix(name, prefix); ok && layout.IsOwnedSet(rest) {
			return true
		}
	}
	return false
}
