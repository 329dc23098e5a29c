package ruleset

import "github.com/vmfw/vmfw/pkg/config"

// ChainL2 dispatches frames from bridge ports to their tap's L2 chain in
// the ebtables filter table.
const ChainL2 Chain = "vmfw-l2"

// L2Chain returns the ebtables chain of tap.
func L2Chain(tap string) Chain { return Chain(tap + "-l2") }

// bridgeTable builds the L2 anti-spoofing that iptables cannot do, because
// ARP never reaches it: a VM with anti-spoofing may send frames only from
// its MAC, ARP only for its own addresses (and RFC 5227 probes from
// 0.0.0.0), and besides IPv4, IPv6 and ARP only the ethertypes it lists in
// l2_protocols. Frames pass ebtables' FORWARD (to other ports) and INPUT
// (to the hypervisor) hooks.
func (b *builder) bridgeTable(nics []*config.NIC) *Table {
	t := &Table{Bridge: true}
	var names []string
	for _, n := range nics {
		if !n.VM.Enable || !n.Antispoof {
			continue
		}
		c := &ChainRules{Name: L2Chain(n.Tap)}
		names = append(names, n.Tap)
		if n.MAC != nil {
			mac := n.MAC.String()
			c.Rules = append(c.Rules,
				Rule{Spec: "-s ! " + mac + " -j DROP"},
				Rule{Spec: "-p ARP --arp-mac-src ! " + mac + " -j DROP"})
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
	t.Hooks = []Hook{{From: Forward, To: ChainL2}, {From: Input, To: ChainL2}}
	return t
}
