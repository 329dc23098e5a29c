package layout

import (
	"slices"
	"strings"

	"github.com/vmfw/vmfw/pkg/ruleset"
)

// ChainL2 dispatches frames from bridge ports to their tap's L2 chain in
// the ebtables filter table.
const ChainL2 Chain = "vmfw-l2"

// ChainL2Out is entered from the ebtables OUTPUT hook, which frames the
// hypervisor sends onto bridge ports pass (routed, NATed or its own): it
// drops IP frames to managed ports that no in chain accepted (route.go).
const ChainL2Out Chain = "vmfw-l2out"

// ChainL2Dest dispatches frames the bridge forwards to a port by the port
// they leave through, to its tap's L2 destination chain (L2DestChain).
const ChainL2Dest Chain = "vmfw-l2d"

// BridgeRoots are the chains the ebtables hooks enter; every other chain
// of vmfw's in the bridge table is reached from them.
var BridgeRoots = []Chain{ChainL2, ChainL2Dest, ChainL2Out}

// L2Chain returns the ebtables chain of tap.
func L2Chain(tap string) Chain { return Chain(tap + "-l2") }

// L2DestChain returns the ebtables chain that checks the destination MAC
// of frames forwarded to tap.
func L2DestChain(tap string) Chain { return Chain(tap + "-l2d") }

// bridgeTable builds the L2 anti-spoofing that iptables cannot do, because
// ARP never reaches it: a VM with anti-spoofing may send frames only from
// its MAC, ARP only for its own addresses (and RFC 5227 probes from
// 0.0.0.0), and besides IPv4, IPv6 and ARP only the ethertypes it lists in
// l2_protocols. With antispoof = "mac" only the first part holds: frames
// and ARP's sender hardware address must carry its MAC, and nothing more
// is checked (build.go, tapChains). Frames pass ebtables' FORWARD (to
// other ports) and INPUT (to the hypervisor) hooks.
func (b *builder) bridgeTable(nics []*ruleset.Interface) *Table {
	t := &Table{Bridge: true}
	var names []string
	for _, n := range nics {
		if !n.Enabled || !n.Antispoof {
			continue
		}
		c := &ChainRules{Name: L2Chain(n.Name)}
		names = append(names, n.Name)
		if n.MAC != nil {
			mac := n.MAC.String()
			c.Rules = append(c.Rules,
				Rule{Spec: "-s ! " + mac + " -j DROP"},
				Rule{Spec: "-p ARP --arp-mac-src ! " + mac + " -j DROP"})
		}
		if n.AntispoofMACOnly {
			t.Chains = append(t.Chains, c)
			continue
		}
		for _, ip := range n.IPs {
			if ip.Is4() {
				c.Rules = append(c.Rules, Rule{Spec: "-p ARP --arp-ip-src " + ip.String() + " -j RETURN"})
			}
		}
		c.Rules = append(c.Rules,
			Rule{Spec: "-p ARP --arp-ip-src 0.0.0.0 -j RETURN"},
			Rule{Spec: "-p ARP -j DROP"},
			Rule{Spec: "-p IPv4 -j RETURN"},
			Rule{Spec: "-p IPv6 -j RETURN"})
		for _, p := range n.L2Protocols {
			c.Rules = append(c.Rules, Rule{Spec: "-p " + p + " -j RETURN"})
		}
		c.Rules = append(c.Rules, Rule{Spec: "-j DROP"})
		t.Chains = append(t.Chains, c)
	}
	t.Chains = append(t.Chains, l2Dispatch(names)...)
	t.Chains = append(t.Chains, l2DestChains(nics)...)
	t.Chains = append(t.Chains, l2DestDispatch(l2DestNames(nics))...)
	t.Chains = append(t.Chains, b.l2Out(nics))
	t.Hooks = bridgeHooks()
	return t
}

// l2DestChains builds the TAP-l2d chains: a unicast frame the bridge
// forwards to the port of a VM with a MAC and anti-spoofing must be
// addressed to that MAC. The bridge floods a unicast frame whose
// destination it has not learnt (after the fdb aged the entry out, or a
// VM moved) to every port; without this drop each copy meets the in rules
// of the VM behind that port, and a VM whose in rules reject has the host
// answer another VM's traffic with a reset or an unreachable in the real
// destination's name, which can reach the client before the real answer.
// The guest's NIC would ignore the frame anyway, so nothing it should see
// is lost, and flooded unicast no longer leaks to other VMs. Broadcast and
// multicast pass (vmfw-l2d's head: "Multicast" covers broadcast too). A VM
// without anti-spoofing may use other MACs (a router, a nested bridge)
// and a disabled VM passes everything, so neither gets a chain.
func l2DestChains(nics []*ruleset.Interface) []*ChainRules {
	var out []*ChainRules
	for _, n := range nics {
		if hasL2Dest(n) {
			out = append(out, &ChainRules{Name: L2DestChain(n.Name), Rules: []Rule{
				{Spec: "-d " + n.MAC.String() + " -j RETURN"},
				{Spec: "-j DROP"},
			}})
		}
	}
	return out
}

// hasL2Dest reports whether n gets a TAP-l2d chain (l2DestChains).
func hasL2Dest(n *ruleset.Interface) bool {
	return n.Enabled && n.Antispoof && n.MAC != nil
}

// l2DestNames returns the interfaces with a TAP-l2d chain.
func l2DestNames(nics []*ruleset.Interface) []string {
	var out []string
	for _, n := range nics {
		if hasL2Dest(n) {
			out = append(out, n.Name)
		}
	}
	return out
}

// bridgeHooks are the jumps from the built-in chains of the ebtables
// filter table into vmfw's root chains. ebtables' FORWARD runs before
// br_netfilter hands the frame to iptables' FORWARD, so a flooded copy
// vmfw-l2d drops never meets the in rules that could reject it.
func bridgeHooks() []Hook {
	return []Hook{{From: Forward, To: ChainL2}, {From: Forward, To: ChainL2Dest}, {From: Input, To: ChainL2}, {From: Output, To: ChainL2Out}}
}

// l2Out builds vmfw-l2out. An IPv4 or IPv6 frame the hypervisor sends to a
// managed port (one matching a managed pattern, or an attached interface)
// must carry the mark bit, which only an in chain sets (route.go): the
// packet was attributed to a VM by its destination address and that VM's
// in rules accepted it. What cannot be attributed — an address of a VM
// without anti-spoofing that it did not list, any unicast to a VM without
// addresses — is dropped rather than passed unfiltered. Broadcast and
// multicast frames, DHCP server replies and neighbour discovery to
// link-local addresses carry no mark and must still reach VMs; a disabled
// VM's port passes everything.
//
// Rules are written as ebtables-save prints them (ebtables has no comment
// to fingerprint; see Table.Bridge).
func (b *builder) l2Out(nics []*ruleset.Interface) *ChainRules {
	c := &ChainRules{Name: ChainL2Out, Rules: []Rule{
		{Spec: "-d Multicast -j RETURN"},
		{Spec: "--mark " + b.mark + "/" + b.mark + " -j RETURN"},
		{Spec: "-p IPv4 --ip-proto udp --ip-sport 67 --ip-dport 68 -j RETURN"},
		{Spec: "-p IPv6 --ip6-dst fe80::/10 --ip6-proto ipv6-icmp --ip6-icmp-type 133:137/0:255 -j RETURN"},
		{Spec: "-p IPv6 --ip6-proto udp --ip6-sport 547 --ip6-dport 546 -j RETURN"},
	}}
	sorted := slices.SortedFunc(slices.Values(nics), func(a, b *ruleset.Interface) int { return strings.Compare(a.Name, b.Name) })
	var unmanaged []string
	for _, n := range sorted {
		switch {
		case !n.Enabled:
			c.Rules = append(c.Rules, Rule{Spec: "-o " + n.Name + " -j RETURN"})
		case !matchesAny(b.policy.Host.Managed, n.Name):
			unmanaged = append(unmanaged, n.Name)
		}
	}
	for _, port := range append(slices.Clone(b.policy.Host.Managed), unmanaged...) {
		c.Rules = append(c.Rules,
			Rule{Spec: "-p IPv4 -o " + port + " -j DROP"},
			Rule{Spec: "-p IPv6 -o " + port + " -j DROP"})
	}
	return c
}

// matchesAny reports whether name matches one of the interface patterns
// (a trailing "+" is a wildcard, as in iptables and ebtables).
func matchesAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if stem, wild := strings.CutSuffix(p, "+"); wild && strings.HasPrefix(name, stem) || p == name {
			return true
		}
	}
	return false
}
