// Package ebtables is the only code in vmfw that runs ebtables. It reads
// back vmfw's part of the bridge filter table (the L2 anti-spoofing chains)
// and applies changes as one ebtables-restore --noflush transaction.
//
// ebtables has no comment match, so rules are identified by their text as
// ebtables-save prints it; the compiler writes rules in that printed form.
package ebtables

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
)

// Client runs one ebtables backend.
type Client struct {
	tool   string
	runner xtables.Runner
}

// New returns a client. It prefers ebtables-nft, which works beside either
// iptables backend (the bridge family is separate from ip and ip6), and
// falls back to ebtables-legacy where the kernel lacks nf_tables bridge
// support. Many kernels, this project's CI among them, have no legacy
// ebtables filter table at all.
func New(ctx context.Context, runner xtables.Runner) (*Client, error) {
	if runner == nil {
		runner = xtables.ExecRunner{}
	}
	// A bridge filter table that nf_tables already holds (vmfw's own,
	// from an earlier run) proves ebtables-nft works here without running
	// it, which every vmfw run would otherwise pay (~12 ms).
	if _, real := runner.(xtables.ExecRunner); real {
		if _, err := exec.LookPath("ebtables-nft"); err == nil {
			if have, err := xtables.BridgeChainsExist(ctx, []layout.Chain{layout.Input}); err == nil && have[layout.Input] {
				return &Client{tool: "ebtables-nft", runner: runner}, nil
			}
		}
	}
	var errs []string
	for _, tool := range []string{"ebtables-nft", "ebtables-legacy"} {
		// Listing one built-in chain proves the tool and the kernel's table
		// as well as ebtables-save does, without printing every chain
		// (0.65 s at 5000 taps, on every vmfw run).
		if _, err := runner.Run(ctx, nil, tool, "-t", "filter", "-L", "INPUT"); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		return &Client{tool: tool, runner: runner}, nil
	}
	return nil, fmt.Errorf("no usable ebtables for L2 anti-spoofing: %s", strings.Join(errs, "; "))
}

// Tool names the ebtables command in use.
func (c *Client) Tool() string { return c.tool }

// Save reads vmfw's part of the bridge filter table.
func (c *Client) Save(ctx context.Context) (layout.Observed, error) {
	out, err := c.runner.Run(ctx, nil, c.tool+"-save")
	if err != nil {
		return layout.Observed{}, fmt.Errorf("reading bridge filter table: %w", err)
	}
	return Parse(out), nil
}

// Restore applies text as one ebtables-restore --noflush transaction.
func (c *Client) Restore(ctx context.Context, text string) error {
	if text == "" {
		return nil
	}
	if _, err := c.runner.Run(ctx, []byte(text), c.tool+"-restore", "--noflush"); err != nil {
		return fmt.Errorf("applying bridge rules: %w", err)
	}
	return nil
}

// Parse extracts vmfw's chains and hooks from ebtables-save output: the
// root chains (vmfw-l2, vmfw-l2out), every chain they reach by jumps, and
// the jumps into them.
// Fingerprints are the rules' text after "-A CHAIN ".
func Parse(save []byte) layout.Observed {
	type rule struct {
		chain layout.Chain
		spec  string
		line  string
	}
	var rules []rule
	var declared []layout.Chain
	inFilter := false
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			inFilter = line == "*filter"
		case line == "COMMIT" || !inFilter:
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			declared = append(declared, layout.Chain(name))
		case strings.HasPrefix(line, "-A "):
			chain, spec, _ := strings.Cut(line[3:], " ")
			rules = append(rules, rule{layout.Chain(chain), spec, line})
		}
	}
	owned := map[layout.Chain]bool{}
	for _, c := range declared {
		if slices.Contains(layout.BridgeRoots, c) {
			owned[c] = true
		}
	}
	// vmfw-l2 is a prefix tree (see package ruleset): a chain is vmfw's
	// when a chain of vmfw's jumps to it, however deep.
	for grew := true; grew; {
		grew = false
		for _, r := range rules {
			if !owned[r.chain] {
				continue
			}
			if target := layout.Chain(jumpTarget(r.spec)); target != "" && !owned[target] && layout.IsOwnedName(string(target)) {
				owned[target] = true
				grew = true
			}
		}
	}
	o := layout.Observed{
		Chains: map[layout.Chain][]string{},
		Lines:  map[layout.Chain][]string{},
		Hooks:  map[layout.Hook]int{},
	}
	for _, c := range declared {
		if owned[c] {
			o.Chains[c] = []string{}
		}
	}
	for _, r := range rules {
		if to, ok := strings.CutPrefix(r.spec, "-j "); ok && layout.IsBuiltin(r.chain) && slices.Contains(layout.BridgeRoots, layout.Chain(to)) {
			o.Hooks[layout.Hook{From: r.chain, To: layout.Chain(to)}]++
			continue
		}
		if owned[r.chain] {
			o.Chains[r.chain] = append(o.Chains[r.chain], r.spec)
			o.Lines[r.chain] = append(o.Lines[r.chain], r.line)
		}
	}
	return o
}

func jumpTarget(spec string) string {
	f := strings.Fields(spec)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" {
			return f[i+1]
		}
	}
	return ""
}
