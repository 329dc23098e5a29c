// Package iptables is the only code in vmfw that runs iptables-save and
// iptables-restore. It reads back the filter table, keeps only the chains
// vmfw owns (their rule fingerprints, raw lines and counters) and applies
// changes as one iptables-restore --noflush transaction per family, so a
// change is either entirely in the kernel or not at all.
package xtables

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// Mode is the iptables backend: nf_tables or legacy x_tables.
type Mode string

// The backends iptables 1.8 offers.
const (
	NFT    Mode = "nft"
	Legacy Mode = "legacy"
)

// Runner runs a command with stdin and returns its standard output. It is
// an interface so tests can fake the kernel.
type Runner interface {
	Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)
}

// ExecRunner runs real commands, each traced (package trace) with its
// input and output sizes.
type ExecRunner struct{}

// Run executes name, returning stdout; the error carries the command line
// and its stderr, which is where iptables says what went wrong.
func (ExecRunner) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	trace.Since(start, "%s %s  (in %d B, out %d B)", name, strings.Join(args, " "), len(stdin), stdout.Len())
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Client talks to one backend for both families.
type Client struct {
	mode   Mode
	runner Runner
}

// New returns a client for mode; an empty mode detects the backend the
// host's iptables command uses.
func New(ctx context.Context, mode Mode, runner Runner) (*Client, error) {
	if runner == nil {
		runner = ExecRunner{}
	}
	if mode == "" {
		out, err := runner.Run(ctx, nil, "iptables", "--version")
		if err != nil {
			return nil, fmt.Errorf("detecting iptables backend: %w", err)
		}
		mode = Legacy
		if strings.Contains(string(out), "nf_tables") {
			mode = NFT
		}
	}
	if mode != NFT && mode != Legacy {
		return nil, fmt.Errorf("unknown iptables backend %q (want nft or legacy)", mode)
	}
	return &Client{mode: mode, runner: runner}, nil
}

// Mode returns the backend in use.
func (c *Client) Mode() Mode { return c.mode }

func (c *Client) command(f ruleset.Family, tool string) string {
	base := "iptables"
	if f == ruleset.IPv6 {
		base = "ip6tables"
	}
	return base + "-" + string(c.mode) + tool
}

// Counter is what a rule has matched since it was written.
type Counter struct {
	Packets, Bytes uint64
}

// Snapshot is vmfw's part of one family's filter table.
type Snapshot struct {
	layout.Observed
	// Counters maps each owned chain to the counters of each rule.
	Counters map[layout.Chain][]Counter
	// Foreign counts rules in owned chains that carry no vmfw comment.
	Foreign map[layout.Chain]int
}

func newSnapshot() *Snapshot {
	return &Snapshot{
		Observed: layout.Observed{
			Chains: map[layout.Chain][]string{},
			Lines:  map[layout.Chain][]string{},
			Hooks:  map[layout.Hook]int{},
		},
		Counters: map[layout.Chain][]Counter{},
		Foreign:  map[layout.Chain]int{},
	}
}

// Only returns the part of s in the named chains, with all of s's hooks
// and without rule text: what SaveChains reads of those chains, taken from
// a whole table already read.
func (s *Snapshot) Only(names []layout.Chain) *Snapshot {
	part := newSnapshot()
	part.Hooks = s.Hooks
	for _, n := range names {
		if hashes, ok := s.Chains[n]; ok {
			part.Chains[n] = hashes
			part.Counters[n] = s.Counters[n]
			part.Foreign[n] = s.Foreign[n]
		}
	}
	return part
}

// Save reads the filter table of family f and returns vmfw's part of it.
func (c *Client) Save(ctx context.Context, f ruleset.Family) (*Snapshot, error) {
	out, err := c.runner.Run(ctx, nil, c.command(f, "-save"), "-c", "-t", "filter")
	if err != nil {
		return nil, fmt.Errorf("reading %s filter table: %w", f, err)
	}
	s, err := Parse(out)
	if err != nil {
		return nil, fmt.Errorf("reading %s filter table: %w", f, err)
	}
	return s, nil
}

// Restore applies text as one iptables-restore --noflush transaction.
func (c *Client) Restore(ctx context.Context, f ruleset.Family, text string) error {
	if text == "" {
		return nil
	}
	if _, err := c.runner.Run(ctx, []byte(text), c.command(f, "-restore"), "-w", xtablesWait, "--noflush"); err != nil {
		return fmt.Errorf("applying %s rules: %w", f, err)
	}
	return nil
}

// xtablesWait is how many seconds iptables-restore waits for the xtables
// lock. iptables-legacy takes one lock file for every network namespace on
// the host, so a large restore elsewhere (another hypervisor namespace, a
// container runtime) can hold it for seconds; vmfw's own lock bounds the
// whole operation at a minute.
const xtablesWait = "60"

// Narrow reports whether the narrow reads (ListChains, SaveChains,
// SaveFingerprints, Generation) work: on nf_tables, not on legacy
// x_tables, which hands out whole tables only.
func (c *Client) Narrow() bool { return c.mode == NFT }
