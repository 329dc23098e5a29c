package nftables

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

var _ backend.Warner = (*Backend)(nil)

// brNetfilter are the switches that hand bridged packets to the inet
// table: without them established replies are dropped and rejects become
// drops (docs/nftables.md, "What it needs from the kernel").
var brNetfilter = []string{"/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables"}

// Warnings names what keeps allowed traffic from passing or the ruleset
// from working as laid out, without being drift: a DROP policy in
// iptables' FORWARD or OUTPUT (passed by vmfw's rule there, said so that
// the operator knows the rule matters), a foreign nf_tables base chain
// with a drop policy on a path VM traffic takes (vmfw cannot accept past
// another table's chain), br_netfilter off or absent, and a kernel
// feature the layout needs missing (nlnft.Client.Probe).
func (b *Backend) Warnings(ctx context.Context) ([]string, error) {
	out := []string{}
	if p, ok := b.kernel.(interface{ Probe() error }); ok {
		if err := p.Probe(); err != nil {
			out = append(out, err.Error())
		}
	}
	hs, err := b.hooks.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading iptables' FORWARD and OUTPUT chains: %w", err)
	}
	for _, hc := range hookChains {
		if hs.Policy[hc] == "DROP" {
			out = append(out, fmt.Sprintf("iptables' %s policy is DROP: vmfw's rule at its head accepts the VM traffic vmfw allows", hc))
		}
	}
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("opening nf_tables netlink: %w", err)
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing nf_tables chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Policy == nil || *ch.Policy != nftables.ChainPolicyDrop || ch.Hooknum == nil || ch.Table == nil {
			continue
		}
		if ch.Table.Name == layout.TableName || isIPTablesFilter(ch) {
			continue // vmfw's own, or iptables-nft's (reported above)
		}
		hook := hookNameOf(ch.Table.Family, *ch.Hooknum)
		if !slices.Contains([]string{"prerouting", "forward", "output", "postrouting"}, hook) {
			continue
		}
		out = append(out, fmt.Sprintf("nf_tables chain %s %s %s (hook %s) has policy drop: vmfw cannot accept past another table's chain, so VM traffic it does not accept itself is dropped",
			familyName(ch.Table.Family), ch.Table.Name, ch.Name, hook))
	}
	for _, f := range brNetfilter {
		v, err := os.ReadFile(f)
		switch {
		case err != nil:
			out = append(out, fmt.Sprintf("br_netfilter is not loaded (%s missing): bridged packets never reach vmfw's inet table, so replies are dropped and rejects become drops", f))
		case strings.TrimSpace(string(v)) != "1":
			out = append(out, fmt.Sprintf("%s is %s, not 1: bridged packets skip vmfw's inet table (vmfw apply sets it)", f, strings.TrimSpace(string(v))))
		}
	}
	return out, nil
}

// isIPTablesFilter reports whether ch is a built-in chain of iptables-nft's
// filter table.
func isIPTablesFilter(ch *nftables.Chain) bool {
	return ch.Table.Name == "filter" && (ch.Table.Family == nftables.TableFamilyIPv4 || ch.Table.Family == nftables.TableFamilyIPv6) &&
		(ch.Name == "FORWARD" || ch.Name == "OUTPUT" || ch.Name == "INPUT")
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyNetdev:
		return "netdev"
	}
	return fmt.Sprint(uint8(f))
}

// hookNameOf names a hook number; the netdev family's are its own.
func hookNameOf(f nftables.TableFamily, n nftables.ChainHook) string {
	names := []string{"prerouting", "input", "forward", "output", "postrouting"}
	if f == nftables.TableFamilyNetdev || f == nftables.TableFamilyARP || int(n) >= len(names) {
		return fmt.Sprintf("%d", n)
	}
	return names[n]
}
