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

// BridgeRoots are the chains the ebtables hooks enter; every other chain
// of vmfw's in the bridge table is reached from them.
var BridgeRoots = []Chain{ChainL2, ChainL2Out}

// L2Chain returns the ebtables chain of tap.
func L2Chain(tap string) Chain { return Chain(tap + "-l2") }

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
	t.Chains = append(t.Chains, b.l2Out(nics))
	t.Hooks = bridgeHooks()
	return t
}

// bridgeHooks are the jumps from the built-in chains of the ebtables
// filter table into vmfw's root chains.
func bridgeHooks() []Hook {
	return []Hook{{From: Forward, To: ChainL2}, {From: Input, To: ChainL2}, {From: Output, To: ChainL2Out}}
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
