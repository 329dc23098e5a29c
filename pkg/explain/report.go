package explain

import (
	"net/netip"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/policy"
)

// Flow is the packet traced.
type Flow struct {
	// Family is 4 or 6.
	Family int `json:"family"`
	// Proto is tcp, udp, sctp, icmp, icmpv6 or a protocol number.
	Proto string `json:"proto"`
	// Src and Dst are the packet's addresses.
	Src netip.Addr `json:"src"`
	Dst netip.Addr `json:"dst"`
	// SPort and DPort are set for tcp, udp and sctp, with the values
	// assumed for ports the query did not give.
	SPort *int `json:"sport,omitempty"`
	DPort *int `json:"dport,omitempty"`
	// ICMPType and ICMPCode are set for icmp and icmpv6.
	ICMPType *int `json:"icmp_type,omitempty"`
	ICMPCode *int `json:"icmp_code,omitempty"`
	// SrcMAC is the sender's MAC as the rules see it.
	SrcMAC string `json:"src_mac,omitempty"`
}

// Config is the configuration's answer.
type Config struct {
	// Verdict is accept, drop, reject, or unknown when it depends on
	// what the configuration cannot tell (Steps say where).
	Verdict string `json:"verdict"`
	// Out and In are the steps in the sender's out chain and the
	// receiver's in chain.
	Out []policy.Step `json:"out,omitempty"`
	In  []policy.Step `json:"in,omitempty"`
}

// RuleHit is a kernel rule the packet matched.
type RuleHit struct {
	// Table is ipv4, ipv6 or bridge.
	Table string `json:"table"`
	// Chain is the chain the rule is in.
	Chain string `json:"chain"`
	// Index is the rule's position in its chain, from 1.
	Index int `json:"index"`
	// Rule is the rule's text as the kernel prints it, without vmfw's
	// fingerprint comment.
	Rule string `json:"rule"`
	// Origin is the configuration the rule implements: FILE:LINE of a
	// group rule, or the VM file of a policy; empty for rules vmfw adds
	// by itself.
	Origin string `json:"origin,omitempty"`
}

// KernelResult is the kernel's answer.
type KernelResult struct {
	// Backend names the tools the backend read the kernel with.
	Backend string `json:"backend,omitempty"`
	// Verdict is accept, drop or reject; empty when the rules could not
	// be evaluated (Error says why).
	Verdict string `json:"verdict,omitempty"`
	// Chains are the chains the packet entered, in order.
	Chains []string `json:"chains"`
	// Rules are the rules it matched, in order; the last decided.
	Rules []RuleHit `json:"rules"`
	// DecidedBy is the rule that decided, or a sentence for a packet no
	// vmfw rule decided.
	DecidedBy string `json:"decided_by,omitempty"`
	// Error says why the kernel's rules could not be evaluated.
	Error string `json:"error,omitempty"`
}

// Alternative is a verdict the flow gets when a value it leaves open
// (a port, the source MAC) takes a particular value.
type Alternative struct {
	// When names the value: "source port 68", "destination port 22, 80",
	// with the rule that decides then.
	When string `json:"when"`
	// Verdict is accept, drop or reject.
	Verdict string `json:"verdict"`
}

// Report is Trace's answer; its JSON is vmfw trace -o json.
type Report struct {
	// Verdict is what happens to the packet: the kernel's verdict, or
	// the configuration's when the kernel was not read or its rules could
	// not be evaluated (then, if the configuration cannot tell, the rules
	// compiled from it decide, or, without a kernel, it is unknown).
	Verdict string `json:"verdict"`
	// From and To are the flow's ends, Flow its first packet.
	From Endpoint `json:"from"`
	To   Endpoint `json:"to"`
	Flow Flow     `json:"flow"`
	// Path is bridged, routed, from-hypervisor or to-hypervisor.
	Path string `json:"path"`
	// Config is the configuration's answer; Kernel the kernel's, nil
	// when the kernel was not read.
	Config Config        `json:"config"`
	Kernel *KernelResult `json:"kernel,omitempty"`
	// Drift lists what differs between the kernel and the configuration
	// on the packet's way: "ipv4/tap101i0-in differs", "set sg-web-v4
	// differs", "FORWARD jump to vmfw-FORWARD missing". The kernel's
	// verdict is then not the configuration's.
	Drift []string `json:"drift"`
	// Alternatives are other verdicts for values the query left open.
	Alternatives []Alternative `json:"alternatives,omitempty"`
	// Notes say what Trace assumed and anything else worth knowing.
	Notes []string `json:"notes,omitempty"`
}

func verbed(v string) string {
	switch v {
	case "accept":
		return "accept"
	case "reject":
		return "reject"
	}
	return "drop"
}

func configVerdict(x *policy.Explanation) string {
	if x.Verdict == policy.Unknown {
		return "unknown"
	}
	return string(x.Action)
}

func (t *tracer) flowInfo(c candidate) Flow {
	f := Flow{Family: int(t.family), Proto: t.protoName, Src: t.from.Address, Dst: t.to.Address}
	switch t.proto {
	case config.ProtoTCP, config.ProtoUDP, config.ProtoSCTP:
		s, d := int(c.sport), int(c.dport)
		f.SPort, f.DPort = &s, &d
	case config.ProtoICMP, config.ProtoICMPv6:
		ty, co := t.icmpType, t.icmpCode
		f.ICMPType, f.ICMPCode = &ty, &co
	}
	if c.mac != nil && t.path != PathFromHypervisor {
		f.SrcMAC = c.mac.String()
	}
	return f
}
