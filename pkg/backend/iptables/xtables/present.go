package xtables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/vmfw/vmfw/pkg/ruleset"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
)

// Installed reports whether the iptables backend's entry chain
// (vmfw-FORWARD) exists in either family's filter table, in nf_tables
// (iptables-nft) or in x_tables (iptables-legacy), whichever flavour the
// host's iptables command uses: the cheap check the nftables backend's
// entry points make before they write (a host switching backends). The
// nf_tables side is one netlink lookup per family; the x_tables side runs
// iptables-legacy only when the kernel holds a legacy filter table.
func Installed(ctx context.Context) (bool, error) {
	for _, family := range []uint8{nfprotoIPv4, nfprotoIPv6} {
		have, err := chainsExist(ctx, family, []layout.Chain{layout.ChainForward})
		if err != nil {
			return false, err
		}
		if have[layout.ChainForward] {
			return true, nil
		}
	}
	for _, f := range []struct{ names, tool string }{
		{"/proc/net/ip_tables_names", "iptables-legacy"},
		{"/proc/net/ip6_tables_names", "ip6tables-legacy"},
	} {
		names, err := os.ReadFile(f.names)
		if errors.Is(err, os.ErrNotExist) {
			continue // no x_tables in this kernel: nothing legacy to find
		}
		if err != nil {
			return false, fmt.Errorf("reading %s: %w", f.names, err)
		}
		if !bytes.Contains(append([]byte("\n"), names...), []byte("\nfilter\n")) {
			continue
		}
		if _, err := exec.LookPath(f.tool); err != nil {
			continue // a legacy table nobody here could have written vmfw's chains into
		}
		err = exec.CommandContext(ctx, f.tool, "-w", "-t", "filter", "-S", string(layout.ChainForward)).Run()
		var exit *exec.ExitError
		switch {
		case err == nil:
			return true, nil
		case errors.As(err, &exit):
			// "No chain/target/match by that name": not installed.
		default:
			return false, fmt.Errorf("running %s -S %s: %w", f.tool, layout.ChainForward, err)
		}
	}
	return false, nil
}

// FilterTablesExist reports, per family ("ipv4", "ipv6"), whether the
// filter table of the host's iptables exists in either flavour, without
// creating it (listing with iptables would): nf_tables is asked for the
// table's FORWARD chain, x_tables' loaded tables are listed in /proc.
func FilterTablesExist(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	for _, f := range []struct {
		name   string
		family uint8
		proc   string
	}{{"ipv4", nfprotoIPv4, "/proc/net/ip_tables_names"}, {"ipv6", nfprotoIPv6, "/proc/net/ip6_tables_names"}} {
		have, err := chainsExist(ctx, f.family, []layout.Chain{layout.Forward})
		if err != nil {
			return nil, err
		}
		if have[layout.Forward] {
			out[f.name] = true
			continue
		}
		names, err := os.ReadFile(f.proc)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("reading %s: %w", f.proc, err)
		}
		out[f.name] = bytes.Contains(append([]byte("\n"), names...), []byte("\nfilter\n"))
	}
	return out, nil
}

// SaveFilter returns iptables-save of the filter table (ip6tables-save
// with v6), without counters.
func (c *Client) SaveFilter(ctx context.Context, v6 bool) (string, error) {
	f := ruleset.IPv4
	if v6 {
		f = ruleset.IPv6
	}
	out, err := c.runner.Run(ctx, nil, c.command(f, "-save"), "-t", "filter")
	if err != nil {
		return "", fmt.Errorf("reading %s filter table: %w", f, err)
	}
	return string(out), nil
}

// Exec runs iptables (ip6tables with v6) on the filter table with args,
// waiting for the xtables lock.
func (c *Client) Exec(ctx context.Context, v6 bool, args ...string) error {
	f := ruleset.IPv4
	if v6 {
		f = ruleset.IPv6
	}
	_, err := c.runner.Run(ctx, nil, c.command(f, ""), append([]string{"-w", xtablesWait, "-t", "filter"}, args...)...)
	return err
}
