package layout

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"

	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Dispatch trees.
//
// vmfw-out and vmfw-in send a packet to the chain of the bridge port it came
// in from or goes out of. A flat list of one physdev rule per interface
// makes every packet fail one match per interface listed before its own
// (about 70 ns each on nf_tables), so a host with 5000 taps spends most of a
// new flow's time in the dispatch list. Instead the interfaces form a prefix
// tree on their names: a rule "--physdev-in tap1+ -g vmfw-tap1-out" sends
// every name starting with tap1 to a chain that only tells those apart, and
// so on, so a packet fails at most a few rules per character of its port's
// name: about 20 matches at 5000 taps instead of 2500 on average.
//
// The tree is a function of the set of names alone, never of the order taps
// came in: a node's chain depends only on the names under its prefix. Adding
// or removing a tap therefore changes only the chains on that tap's path
// (plus, when the names' common prefix changes, the chain that takes over
// the old root's entries), and the chain-fingerprint diff rewrites exactly
// those. There is nothing to rebalance: the depth is bounded by the length
// of the names (15 characters), and for the decimal VM ids taps are named
// after it grows with the logarithm (base ten) of the number of taps.
//
// All jumps are gotos, so a tap chain that returns returns to the caller of
// the root (vmfw-FORWARD or vmfw-INPUT), as with the flat list. A packet
// whose port matches no entry of a node falls to the node's last rules: the
// fail-closed drops for the managed patterns that can match a name under the
// node's prefix. Without them a tap matching "tap+" that has no chains but
// shares a prefix with taps that do would fall off the end of a node chain
// and return past the fail-closed rules of the root.

// leafMax is the largest group of interfaces sharing the next character
// that a node lists one rule each instead of giving them a node of their
// own. A node costs the packets of its group one extra rule and saves every
// packet of the groups after it all but one of the group's rules; from four
// names up the saving wins.
const leafMax = 3

// nodeNameMax is the longest prefix a node chain is named after, so that
// "vmfw-PREFIX" stays within the 15 characters before the direction suffix
// that vmfw's chain names allow. Longer prefixes are named after a hash.
const nodeNameMax = 9

// dispatchNode is one chain of a dispatch tree: the interfaces whose names
// start with prefix.
type dispatchNode struct {
	prefix  string
	entries []dispatchEntry
}

// dispatchEntry is one rule of a dispatch node: an interface (a leaf) or a
// subtree of names sharing a longer prefix.
type dispatchEntry struct {
	// name is the interface name, or for a subtree its prefix.
	name string
	// node is the subtree, nil for a leaf.
	node *dispatchNode
}

// newDispatchTree builds the tree of names. The root's prefix is the
// longest one all names share, so hosts whose taps all start with "tap"
// do not pay one rule for it on every packet.
func newDispatchTree(names []string) *dispatchNode {
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	sorted = compactStrings(sorted)
	root := &dispatchNode{}
	if len(sorted) > 0 {
		root.prefix = commonPrefix(sorted)
		root.entries = dispatchEntries(root.prefix, sorted)
	}
	return root
}

// dispatchEntries groups sorted names sharing prefix by the character that
// follows it. A name equal to prefix is a leaf; small groups are listed
// name by name; larger ones become a node at their own common prefix, which
// is at least one character longer, so the recursion ends.
func dispatchEntries(prefix string, names []string) []dispatchEntry {
	var out []dispatchEntry
	for i := 0; i < len(names); {
		if len(names[i]) == len(prefix) {
			out = append(out, dispatchEntry{name: names[i]})
			i++
			continue
		}
		c := names[i][len(prefix)]
		j := i + 1
		for j < len(names) && len(names[j]) > len(prefix) && names[j][len(prefix)] == c {
			j++
		}
		group := names[i:j]
		if len(group) <= leafMax {
			for _, n := range group {
				out = append(out, dispatchEntry{name: n})
			}
		} else {
			p := commonPrefix(group)
			out = append(out, dispatchEntry{name: p, node: &dispatchNode{prefix: p, entries: dispatchEntries(p, group)}})
		}
		i = j
	}
	return out
}

// walk calls fn for n and every node below it, parents first.
func (n *dispatchNode) walk(fn func(*dispatchNode)) {
	fn(n)
	for _, e := range n.entries {
		if e.node != nil {
			e.node.walk(fn)
		}
	}
}

// nodeKey identifies node n of the tree rooted at root across trees: the
// root by its place (its prefix moves with the names), others by prefix,
// which names their chain.
func nodeKey(root, n *dispatchNode) string {
	if n == root {
		return "\x00root"
	}
	return n.prefix
}

// changedNodes returns the keys of the nodes whose chains differ between
// two trees: nodes only one of them has, and nodes whose entries differ.
// A node's rules depend only on its prefix and its entries.
func changedNodes(a, b *dispatchNode) map[string]bool {
	index := func(root *dispatchNode) map[string]*dispatchNode {
		m := map[string]*dispatchNode{}
		root.walk(func(n *dispatchNode) { m[nodeKey(root, n)] = n })
		return m
	}
	ia, ib := index(a), index(b)
	out := map[string]bool{}
	for k, na := range ia {
		nb := ib[k]
		if nb == nil || !sameEntries(na.entries, nb.entries) {
			out[k] = true
		}
	}
	for k := range ib {
		if ia[k] == nil {
			out[k] = true
		}
	}
	return out
}

func sameEntries(a, b []dispatchEntry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].name != b[i].name || (a[i].node == nil) != (b[i].node == nil) {
			return false
		}
	}
	return true
}

// commonPrefix returns the longest prefix of all of sorted (non-empty):
// that of its first and last element.
func commonPrefix(sorted []string) string {
	a, b := sorted[0], sorted[len(sorted)-1]
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return a[:n]
}

func compactStrings(sorted []string) []string {
	out := sorted[:0]
	for i, s := range sorted {
		if i == 0 || s != sorted[i-1] {
			out = append(out, s)
		}
	}
	return out
}

// dispatchStyle says how a tree is written as chains.
type dispatchStyle struct {
	// root is the chain the tree's root is written to.
	root Chain
	// suffix ends the names of the node chains ("out", "in").
	suffix string
	// match returns the match of an interface name or pattern ("tap1+").
	match func(pattern string) string
	// jump is "-g" where the table has goto (iptables) and "-j" where it
	// has not (ebtables); see l2Dispatch for why a jump is enough there.
	jump string
	// target returns the chain a leaf sends its interface's packets to.
	target func(iface string) Chain
	// head are the root's first rules.
	head []Rule
	// managed are the fail-closed patterns.
	managed []string
}

// nodeChain names the chain of the node at prefix: vmfw-PREFIX-SUFFIX, or
// for a prefix too long for that, vmfw-h plus nine hex digits of its hash.
// The two forms differ in length, so they never collide.
func (s *dispatchStyle) nodeChain(prefix string) Chain {
	if len(prefix) <= nodeNameMax {
		return Chain("vmfw-" + prefix + "-" + s.suffix)
	}
	sum := sha256.Sum256([]byte(prefix))
	return Chain("vmfw-h" + hex.EncodeToString(sum[:])[:nodeNameMax] + "-" + s.suffix)
}

// failClosed returns the drops that end the chain of a node at prefix: one
// per managed pattern that can match a name starting with prefix. The root
// (isRoot) sees every bridged packet, so it gets them all.
func (s *dispatchStyle) failClosed(prefix string, isRoot bool) []Rule {
	var out []Rule
	for _, p := range s.managed {
		stem, wildcard := strings.CutSuffix(p, "+")
		can := strings.HasPrefix(stem, prefix) || (wildcard && strings.HasPrefix(prefix, stem))
		if isRoot || can {
			out = append(out, Rule{Spec: s.match(p) + " -j DROP", Comment: "fail-closed"})
		}
	}
	return out
}

// chains writes the tree as chains, the root first, then every node in
// depth-first order.
func (s *dispatchStyle) chains(root *dispatchNode) []*ChainRules {
	return s.someChains(root, nil)
}

// someChains writes the chains of the nodes only says yes to (every node
// when only is nil), keyed as nodeKey keys them.
func (s *dispatchStyle) someChains(root *dispatchNode, only map[string]bool) []*ChainRules {
	var out []*ChainRules
	root.walk(func(n *dispatchNode) {
		if only != nil && !only[nodeKey(root, n)] {
			return
		}
		c := &ChainRules{Name: s.root}
		if n != root {
			c.Name = s.nodeChain(n.prefix)
		} else {
			c.Rules = append(c.Rules, s.head...)
		}
		for _, e := range n.entries {
			if e.node == nil {
				c.Rules = append(c.Rules, Rule{Spec: s.match(e.name) + " " + s.jump + " " + string(s.target(e.name))})
			} else {
				c.Rules = append(c.Rules, Rule{Spec: s.match(e.name+"+") + " " + s.jump + " " + string(s.nodeChain(e.name))})
			}
		}
		c.Rules = append(c.Rules, s.failClosed(n.prefix, n == root)...)
		out = append(out, c)
	})
	return out
}

// dispatchStyles returns how vmfw-out and vmfw-in are written.
func dispatchStyles(managed []string, clearMark string) []*dispatchStyle {
	return []*dispatchStyle{
		{
			root:    ChainOut,
			suffix:  "out",
			match:   func(p string) string { return "-m physdev --physdev-in " + p },
			jump:    "-g",
			target:  func(iface string) Chain { return TapChain(iface, "out") },
			head:    []Rule{{Spec: clearMark}},
			managed: managed,
		},
		{
			root:    ChainIn,
			suffix:  "in",
			match:   func(p string) string { return "-m physdev --physdev-out " + p },
			jump:    "-g",
			target:  func(iface string) Chain { return TapChain(iface, "in") },
			managed: managed,
		},
	}
}

// dispatchChains returns vmfw-out, vmfw-in and their node chains for the
// interfaces named.
func dispatchChains(names, managed []string, clearMark string) []*ChainRules {
	tree := newDispatchTree(names)
	var out []*ChainRules
	for _, s := range dispatchStyles(managed, clearMark) {
		out = append(out, s.chains(tree)...)
	}
	return out
}

// dispatch builds the chains that send a packet to its tap's chain.
func (b *builder) dispatch(nics []*ruleset.Interface) []*ChainRules {
	names := make([]string, len(nics))
	for i, n := range nics {
		names[i] = n.Name
	}
	return dispatchChains(names, b.policy.Host.Managed, b.clearMark())
}

// l2Style is how vmfw-l2, the ebtables dispatch of L2 anti-spoofing, is
// written. ebtables has no goto, so a frame returning from its tap's chain
// continues in the node that jumped there; the node's remaining entries
// cannot match (siblings have different prefixes), so it falls off the end
// (every vmfw chain's policy is RETURN) and so on up to vmfw-l2 and back to
// FORWARD or INPUT, as from the flat list. The cost is that a frame looks
// at every entry of the nodes on its path instead of half of them on
// average; ebtables matches "-i" natively (about 13 ns per rule on
// nf_tables, against 160 for a physdev match), so that stays cheap. L2 has
// no fail-closed rules: iptables drops what comes from an unmanaged tap.
var l2Style = &dispatchStyle{
	root:   ChainL2,
	suffix: "l2",
	match:  func(p string) string { return "-i " + p },
	jump:   "-j",
	target: L2Chain,
}

// l2Dispatch returns vmfw-l2 and its node chains for the interfaces named.
func l2Dispatch(names []string) []*ChainRules {
	return l2Style.chains(newDispatchTree(names))
}

// l2DestStyle is how vmfw-l2d, the dispatch of frames forwarded to a port
// by that port (l2DestChains), is written: as vmfw-l2, but on the output
// port. Its head lets broadcast and multicast frames (ebtables'
// "Multicast" is any destination with the group bit, broadcast included)
// return before any lookup.
var l2DestStyle = &dispatchStyle{
	root:   ChainL2Dest,
	suffix: "l2d",
	match:  func(p string) string { return "-o " + p },
	jump:   "-j",
	target: L2DestChain,
	head:   []Rule{{Spec: "-d Multicast -j RETURN"}},
}

// l2DestDispatch returns vmfw-l2d and its node chains for the interfaces
// named.
func l2DestDispatch(names []string) []*ChainRules {
	return l2DestStyle.chains(newDispatchTree(names))
}
