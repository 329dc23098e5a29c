// Package ipset is the only code in vmfw that runs ipset. It reads back the
// sets vmfw owns and changes them with one "ipset restore" per operation:
// members are added and deleted in place (group membership changes never
// touch a chain), and a set whose type changed is rebuilt under a temporary
// name and swapped in, so rules that reference it never see it missing.
package ipset

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/iptables"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Observed is one vmfw-owned set as the kernel holds it.
type Observed struct {
	// Type is the set's type, e.g. hash:ip.
	Type ruleset.SetType
	// Family is inet or inet6 for hash:ip sets, "" otherwise.
	Family string
	// MaxElem is the set's capacity.
	MaxElem int
	// Members holds the set's entries, normalised to lower case.
	Members map[string]bool
}

// Client runs the ipset command.
type Client struct {
	runner iptables.Runner
}

// New returns a client; a nil runner runs the real ipset command.
func New(runner iptables.Runner) *Client {
	if runner == nil {
		runner = iptables.ExecRunner{}
	}
	return &Client{runner: runner}
}

// List returns vmfw's sets, read with one "ipset save".
func (c *Client) List(ctx context.Context) (map[string]*Observed, error) {
	out, err := c.runner.Run(ctx, nil, "ipset", "save")
	if err != nil {
		return nil, fmt.Errorf("reading ipsets: %w", err)
	}
	return Parse(out), nil
}

// Parse extracts vmfw's sets from "ipset save" output.
func Parse(save []byte) map[string]*Observed {
	sets := map[string]*Observed{}
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !(ruleset.IsOwnedSet(f[1]) || strings.HasPrefix(f[1], tempPrefix)) {
			continue
		}
		switch f[0] {
		case "create":
			o := &Observed{Type: ruleset.SetType(f[2]), Members: map[string]bool{}}
			for i := 3; i+1 < len(f); i++ {
				switch f[i] {
				case "family":
					o.Family = f[i+1]
				case "maxelem":
					o.MaxElem, _ = strconv.Atoi(f[i+1])
				}
			}
			sets[f[1]] = o
		case "add":
			if o := sets[f[1]]; o != nil {
				o.Members[strings.ToLower(f[2])] = true
			}
		}
	}
	return sets
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

func familyName(f ruleset.Family) string {
	if f == ruleset.IPv6 {
		return "inet6"
	}
	return "inet"
}

func createLine(name string, s ruleset.Set) string {
	maxElem := minMaxElem
	for maxElem < 2*len(s.Members) {
		maxElem *= 2
	}
	opts := ""
	if s.Type == ruleset.HashIP {
		opts = " family " + familyName(s.Family)
	}
	return fmt.Sprintf("create %s %s%s maxelem %d\n", name, s.Type, opts, maxElem)
}

// Plan returns two ipset restore scripts: pre, run before the iptables
// change (create sets and fix members, so new rules find their sets), and
// post, run after it (destroy sets no rule references any more).
func Plan(want []ruleset.Set, have map[string]*Observed) (pre, post string) {
	var b strings.Builder
	wanted := map[string]bool{}
	var leftovers []string
	for name := range have {
		if strings.HasPrefix(name, tempPrefix) {
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
		if s.Type == ruleset.HashIP {
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
		wantMembers := map[string]bool{}
		for _, m := range s.Members {
			wantMembers[strings.ToLower(m)] = true
			if !o.Members[strings.ToLower(m)] {
				b.WriteString("add " + s.Name + " " + m + "\n")
			}
		}
		var stale []string
		for m := range o.Members {
			if !wantMembers[m] {
				stale = append(stale, m)
			}
		}
		sort.Strings(stale)
		for _, m := range stale {
			b.WriteString("del " + s.Name + " " + m + "\n")
		}
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

// tempName names the set a changed set is rebuilt in before the swap. It
// is not shaped like a group's set, so no rule ever references it.
func tempName(name string) string { return tempPrefix + name }

// tempPrefix starts the name of a set being rebuilt; one found at the start
// of a run was left by a crash and is destroyed first.
const tempPrefix = "vmfw-tmp-"
