package ebtables

import (
	"context"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
)

// Narrow reads for scoped attach and detach (see package engine): with
// ebtables-nft the bridge table is an nf_tables table, so which chains
// exist and the jumps into vmfw-l2 can be asked over netlink instead of
// reading the whole table with ebtables-save (tens of thousands of lines
// at 5000 taps). ebtables-legacy offers no such thing.

// ChainsExist reports which of the named chains the bridge filter table
// has; with ebtables-legacy it returns xtables.ErrNotNFT.
func (c *Client) ChainsExist(ctx context.Context, names []layout.Chain) (map[layout.Chain]bool, error) {
	if c.tool != "ebtables-nft" {
		return nil, xtables.ErrNotNFT
	}
	return xtables.BridgeChainsExist(ctx, names)
}

// Hooks counts the jumps into vmfw's root chains (layout.BridgeRoots)
// from the built-in chains; with ebtables-legacy it returns
// xtables.ErrNotNFT.
func (c *Client) Hooks(ctx context.Context) (map[layout.Hook]int, error) {
	if c.tool != "ebtables-nft" {
		return nil, xtables.ErrNotNFT
	}
	return xtables.BridgeHooks(ctx, layout.BridgeRoots)
}

// Narrow reports whether ChainsExist and Hooks work (ebtables-nft).
func (c *Client) Narrow() bool { return c.tool == "ebtables-nft" }

// Targets returns what each of the named chains jumps to, in rule order
// (xtables.BridgeTargets); with ebtables-legacy it returns
// xtables.ErrNotNFT.
func (c *Client) Targets(ctx context.Context, names []layout.Chain) (map[layout.Chain][]layout.Chain, error) {
	if !c.Narrow() {
		return nil, xtables.ErrNotNFT
	}
	return xtables.BridgeTargets(ctx, names)
}
