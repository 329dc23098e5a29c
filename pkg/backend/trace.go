package backend

import (
	"context"
	"net"
	"net/netip"

	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Tracer is implemented by a backend whose objects vmfw trace can follow
// a packet through (docs/trace.md). The configuration's answer comes from
// package policy, above the seam; only the backend knows how its objects
// decide, so the kernel's answer, and what differs from the configuration
// on the packet's way, come from it.
type Tracer interface {
	// Inspect reads, changing nothing, what the backend installed, with
	// all a walk needs (the rules themselves, not only fingerprints; set
	// members). A batch of traces walks one Inspection.
	Inspect(ctx context.Context) (Inspection, error)
}

// Inspection is one read of what a backend installed.
type Inspection interface {
	// Installed names the interfaces whose filtering is installed,
	// sorted.
	Installed() []string
	// Describe names the backend's tools, for the report ("nft,
	// ebtables-nft").
	Describe() string
	// Trace prepares the walks of one flow. installed is the policy of
	// the interfaces Installed names: what differs from it on a walk's
	// way is drift. want is the policy the configuration's answer is for:
	// installed itself, or one that also attaches the flow's ends that
	// are not attached. name names the configuration a rule implements,
	// for the sentence that says what decided.
	Trace(installed, want *ruleset.Policy, name func(ruleset.Origin) string) KernelTrace
}

// DestinationMAC returns the destination MAC of a frame to port: the MAC
// of the interface the first of policies that attaches one there gives
// it (the configuration's before the installed one), which the sender,
// or the host routing, learnt from ARP or neighbour discovery; nil when
// none says one, and a walk then uses a unicast MAC no rule names.
func DestinationMAC(port string, policies []*ruleset.Policy) net.HardwareAddr {
	for _, p := range policies {
		if p == nil || port == "" {
			continue
		}
		if n := p.Interface(port); n != nil && n.MAC != nil {
			return n.MAC
		}
	}
	return nil
}

// KernelTrace follows the packets of one flow, one packet at a time.
type KernelTrace interface {
	// Walk follows p through the objects read (kernel, with the drift on
	// its way) and through those the backend would install for the
	// wanted policy (compiled): they must agree with the configuration's
	// answer where nothing drifted.
	Walk(p Packet) (kernel, compiled Walk)
}

// Path is the way a packet takes through the host (docs/routing.md).
type Path string

// The paths a traced packet can take.
const (
	// PathBridged is between two ports of a bridge.
	PathBridged Path = "bridged"
	// PathRouted is routed by the host, from one subnet to another.
	PathRouted Path = "routed"
	// PathFromHypervisor is sent by the host itself.
	PathFromHypervisor Path = "from-hypervisor"
	// PathToHypervisor is addressed to the host itself.
	PathToHypervisor Path = "to-hypervisor"
)

// Packet is the first packet of a flow, every field concrete: a trace
// tries each value the flow leaves open as a packet of its own.
type Packet struct {
	// Family is the packet's IP family.
	Family ruleset.Family
	// Proto is the IP protocol number.
	Proto uint8
	// Src and Dst are the packet's addresses.
	Src, Dst netip.Addr
	// SPort and DPort are the ports of tcp, udp and sctp.
	SPort, DPort uint16
	// ICMPType and ICMPCode are those of icmp and icmpv6.
	ICMPType, ICMPCode uint8
	// SrcMAC is the frame's source MAC; nil for a packet the host sends,
	// which meets no source MAC match.
	SrcMAC net.HardwareAddr
	// NDTarget is the target address of a neighbour solicitation or
	// advertisement.
	NDTarget netip.Addr
	// State is the connection tracking state of the packet: NEW,
	// INVALID or UNTRACKED.
	State string
	// Path is the way the packet takes.
	Path Path
	// InPort and OutPort are the interfaces of the sending and the
	// receiving VM, the bridge ports the packet comes in from and goes
	// out of; "" for an end that is no VM interface.
	InPort, OutPort string
}

// Walk is what a backend found on one packet's way through its objects.
type Walk struct {
	// Verdict is accept, drop or reject; "" when Err says why the walk
	// ended without one.
	Verdict string
	// DecidedBy names the rule that decided or, when no rule of the
	// backend's did, what decides.
	DecidedBy string
	// Note, when not empty, says that the verdict may differ from the
	// configuration's answer by a documented difference of the backend
	// (docs/nftables.md), and which: then a difference is neither drift
	// nor an error in vmfw.
	Note string
	// Objects are the objects (chains) the packet entered, in order, as
	// a report lists them.
	Objects []string
	// Rules are the rules the packet matched, in order; the last decided.
	Rules []RuleHit
	// Err says why the walk ended without a verdict: an object or rule
	// the backend cannot evaluate.
	Err error
	// Drift lists, on a walk of what the kernel holds, what differs on
	// the packet's way from the objects the installed policy wants, each
	// once: "ipv4/sg-web-in differs", "set sg-web-v4 differs: missing
	// 192.0.2.10". Empty when nothing does.
	Drift []string
}

// RuleHit is a rule a packet matched.
type RuleHit struct {
	// Table is the part of the kernel the rule is in, as the backend
	// names it (Summary.Tables).
	Table string
	// Object is the object (chain) holding the rule.
	Object string
	// Index is the rule's position in its object, from 1.
	Index int
	// Text is the rule as the kernel prints it, without what the backend
	// keeps there for itself (its fingerprint).
	Text string
	// Origin is the configuration the rule implements; the zero Origin
	// for the rules the backend adds by itself.
	Origin ruleset.Origin
}
