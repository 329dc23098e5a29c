package xtables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"

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
