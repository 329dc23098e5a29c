package layout

import (
	"encoding/hex"
	"net/netip"
	"sort"
	"strings"

	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Routed, NATed and hypervisor-sent traffic (docs/routing.md).
//
// The kernel chooses the bridge port of a packet the hypervisor routes or
// sends only after the IP hooks, so "--physdev-out TAP" never matches it.
// Such packets are attributed to a VM by their destination address instead:
// vmfw-route (from vmfw-FORWARD, for packets that are not bridged) and
// vmfw-local (from vmfw-OUTPUT) send a packet addressed to one of a VM's
// ips to that VM's in chain. With anti-spoofing on, nothing but that VM can
// claim the address on the bridge (ARP and neighbour advertisements are
// checked), so the packet reaches that VM or no VM.
//
// The dispatch is a prefix tree like the interface-name trees of
// dispatch.go, built over the addresses written as hex digits (one digit
// per four bits): a node "-d 192.0.2.0/28 -g vmfw-c000020-rt" takes every
// address starting with those digits. A packet fails at most a few "-d"
// matches per digit (a native comparison of the destination, cheaper than a
// physdev match), so the rate of new routed flows hardly depends on the
// number of VMs.
//
// Every in chain sets vmfw's mark bit when it is entered, so a packet an
// in chain accepts leaves the IP hooks with the bit set; a packet the
// hypervisor sends onto a managed port without it has met no in chain, and
// vmfw-l2out (bridge.go) drops it. The roots clear the bit first for
// packets that do not come from a bridge port, so a bit set by someone
// else cannot pass for vmfw's verdict; from a bridge port it carries the
// sender's verdict to vmfw-FORWARD's last rule, as for bridged packets.

// routeKey writes a as the hex digits the route tree is built over.
func routeKey(a netip.Addr) string { return hex.EncodeToString(a.AsSlice()) }

// routePrefix turns a route tree key back into the prefix it stands for: a
// whole address, or with a trailing "+" every address starting with the
// key's digits.
func routePrefix(f ruleset.Family, key string) netip.Prefix {
	digits, _ := strings.CutSuffix(key, "+")
	full := 8
	if f == ruleset.IPv6 {
		full = 32
	}
	padded := digits + strings.Repeat("0", full-len(digits))
	raw, err := hex.DecodeString(padded)
	if err != nil {
		// Keys come from routeKey; anything else is a bug.
		panic("ruleset: bad route key " + key)
	}
	a, _ := netip.AddrFromSlice(raw)
	return netip.PrefixFrom(a, 4*len(digits))
}

// routeOwners maps the route key of every address of family f that an
// attached interface lists to that interface. An address listed twice (the
// configuration forbids it; an attachment record may race an edit) goes to
// the interface first by name.
func routeOwners(f ruleset.Family, nics []*ruleset.Interface) map[string]*ruleset.Interface {
	sorted := append([]*ruleset.Interface(nil), nics...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	owners := map[string]*ruleset.Interface{}
	for _, n := range sorted {
		for _, ip := range n.IPs {
			if ruleset.FamilyOf(ip) != f {
				continue
			}
			if k := routeKey(ip); owners[k] == nil {
				owners[k] = n
			}
		}
	}
	return owners
}

// routeTree builds the tree of the addresses of family f the interfaces list.
func routeTree(f ruleset.Family, nics []*ruleset.Interface) (*dispatchNode, map[string]*ruleset.Interface) {
	owners := routeOwners(f, nics)
	keys := make([]string, 0, len(owners))
	for k := range owners {
		keys = append(keys, k)
	}
	return newDispatchTree(keys), owners
}

// routeStyles returns how vmfw-route and vmfw-local are written for family
// f, given the owner of every address. vmfw-local sends a packet to the
// owner's TAP-lin when it has one (localIn), as OUTPUT may not reach a
// source MAC match.
func (b *builder) routeStyles(f ruleset.Family, owners map[string]*ruleset.Interface) []*dispatchStyle {
	match := func(key string) string { return "-d " + routePrefix(f, key).String() }
	return []*dispatchStyle{
		{
			root:   ChainRoute,
			suffix: "rt",
			match:  match,
			jump:   "-g",
			target: func(key string) Chain { return TapChain(owners[key].Name, "in") },
			head:   []Rule{{Spec: "-m physdev ! --physdev-is-in " + b.clearMark()}},
		},
		{
			root:   ChainLocal,
			suffix: "lo",
			match:  match,
			jump:   "-g",
			target: func(key string) Chain {
				n := owners[key]
				if b.localIn(n) {
					return TapChain(n.Name, "lin")
				}
				return TapChain(n.Name, "in")
			},
			head: []Rule{{Spec: b.clearMark()}},
		},
	}
}

// routes returns vmfw-route, vmfw-local and their node chains for family f.
func (b *builder) routes(f ruleset.Family, nics []*ruleset.Interface) []*ChainRules {
	tree, owners := routeTree(f, nics)
	var out []*ChainRules
	for _, s := range b.routeStyles(f, owners) {
		out = append(out, s.chains(tree)...)
	}
	return out
}

// macGroup reports whether group g has an in rule matching a source MAC.
// The kernel allows the mac match only in PREROUTING, INPUT and FORWARD, so
// a chain OUTPUT can reach must not contain one: such a group gets a second
// in chain, sg-NAME-lin, without those rules (a packet the hypervisor sends
// has no source MAC yet, so they could not match it anyway).
func (b *builder) macGroup(g string) bool {
	grp := b.policy.Groups[g]
	return grp != nil && grp.MatchesSourceMAC()
}

// localIn reports whether n needs TAP-lin: its in chain for packets the
// hypervisor sends, which jumps to sg-NAME-lin instead of sg-NAME-in.
func (b *builder) localIn(n *ruleset.Interface) bool {
	if !n.Enabled {
		return false
	}
	for _, g := range n.Groups {
		if b.macGroup(g) {
			return true
		}
	}
	return false
}
