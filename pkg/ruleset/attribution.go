package ruleset

import "github.com/vmfw/vmfw/pkg/config"

// Attribution says which paths into an interface meet its in rules
// (docs/routing.md).
type Attribution string

// The attributions of an interface.
const (
	// Filtered: anti-spoofing binds the interface's addresses to it, so
	// routed, NATed and hypervisor-sent packets to them meet its in rules,
	// and no other address can be claimed by it.
	Filtered Attribution = "filtered"
	// ListedOnly: the interface's addresses are not bound to it
	// (antispoof = false, or "mac", which checks the source MAC alone).
	// Routed and hypervisor-sent packets to the listed addresses meet the
	// in rules; to any other address the VM may claim, they are dropped.
	ListedOnly Attribution = "listed-only"
	// Dropped: the interface lists no addresses, so no routed or
	// hypervisor-sent unicast packet can be attributed to it; they are
	// dropped.
	Dropped Attribution = "dropped"
	// Unfiltered: the VM is disabled; everything passes.
	Unfiltered Attribution = "unfiltered"
)

// Attribution returns how routed, NATed and hypervisor-sent traffic to
// the interface is filtered.
func (i *Interface) Attribution() Attribution {
	switch {
	case !i.Enabled:
		return Unfiltered
	case len(i.IPs) == 0:
		return Dropped
	case !i.Antispoof || i.AntispoofMACOnly:
		// "mac" binds no address either: the VM may claim any in ARP
		// and neighbour discovery, as with antispoof = false.
		return ListedOnly
	}
	return Filtered
}

// Attribute is the Attribution of the interface n configures.
func Attribute(n *config.NIC) Attribution { return compileInterface(n).Attribution() }

// AttributeFor is Attribute for a backend that attributes routed, NATed
// and hypervisor-sent traffic by address (byPort false: the iptables
// backend) or by the bridge port it leaves through (byPort true: the
// nftables backend), where every enabled interface is Filtered.
func AttributeFor(n *config.NIC, byPort bool) Attribution {
	a := Attribute(n)
	if byPort && a != Unfiltered {
		return Filtered
	}
	return a
}

// Explain says in a sentence what the attribution means for an operator:
// what is filtered and what is not.
func (a Attribution) Explain() string {
	switch a {
	case Unfiltered:
		return "VM disabled: routed, NATed and hypervisor-sent traffic passes unfiltered, like bridged traffic"
	case Dropped:
		return "no ips: routed, NATed and hypervisor-sent unicast to it is dropped (bridged traffic, broadcast, multicast, DHCP replies and link-local neighbour discovery pass as usual)"
	case ListedOnly:
		return "antispoof = false or \"mac\" (addresses not bound): routed, NATed and hypervisor-sent traffic to its ips meets its in rules; to any other address it may claim, such traffic is dropped"
	}
	return "routed, NATed and hypervisor-sent traffic to its ips meets its in rules"
}
