package policy

import (
	"net"

	"github.com/vmfw/vmfw/pkg/config"
)

// Step is one rule of vmfw's chains that a packet meets on its way, as the
// configuration describes it: what vmfw trace prints.
type Step struct {
	// Chain is the chain the rule is compiled into: tap110i0-out,
	// sg-web-in, ...
	Chain string `json:"chain"`
	// What names the kind of rule: antispoof, state, ndp, dhcp, rule
	// (a group's), policy, disabled.
	What string `json:"what"`
	// Group and Rule name a group rule: the Rule-th (from 1) rule of the
	// group's direction.
	Group string `json:"group,omitempty"`
	Rule  int    `json:"rule,omitempty"`
	// File and Line say where the configuration says it: the group file
	// and the rule's line, or the VM file (and the interface's line) for
	// anti-spoofing and policies.
	File string `json:"file,omitempty"`
	Line int    `json:"line,omitempty"`
	// Match is yes, maybe (it depends on what the flow does not say, such
	// as the source MAC of a host that is not a VM) or no (shown for
	// steps that explain why a rule did not apply).
	Match string `json:"match"`
	// Action is what the rule does when it matches: accept, drop or
	// reject; empty for a step that decides nothing.
	Action config.Action `json:"action,omitempty"`
	// Note says it in words.
	Note string `json:"note,omitempty"`
	// Set names the address set a group rule's source_set or dest_set
	// looks the packet's address up in, SetFile its file. SetEntry is
	// the prefix of the set that decided ("198.51.100.0/24", or "except
	// 198.51.100.128/26" when an except did) and SetLine its line in
	// SetFile; both empty when no prefix of the set contains the
	// address.
	Set      string `json:"set,omitempty"`
	SetFile  string `json:"set_file,omitempty"`
	SetEntry string `json:"set_entry,omitempty"`
	SetLine  int    `json:"set_line,omitempty"`
}

// Path is how a flow reaches the chains: who sends it and who receives it.
// Check derives it from the addresses; vmfw trace knows it.
type Path struct {
	// Sender is the interface the packet comes from, nil for a host that
	// is not a VM interface (an external host, the hypervisor).
	Sender *config.NIC
	// Receiver is the interface the packet goes to, nil for a host that
	// is not a VM interface.
	Receiver *config.NIC
	// SenderMAC is the source MAC of a sender that is not a VM interface,
	// nil when unknown (rules matching a source MAC then may match).
	SenderMAC net.HardwareAddr
	// Local says the hypervisor itself sends the packet.
	Local bool
}

// Explanation is the verdict on one flow with the steps that led to it.
type Explanation struct {
	// Verdict is Allow, Deny, or Unknown when it depends on what the
	// flow does not say.
	Verdict Verdict
	// Action is what happens to the packet when the verdict is known:
	// accept, or the drop or reject of the rule that denied it.
	Action config.Action
	// Out and In are the steps in the sender's out chain and the
	// receiver's in chain; nil when the path has no such chain.
	Out, In []Step
}

// Explain decides flow f on path p and says why: the steps in the
// sender's out chain, then (when it lets the packet through) in the
// receiver's in chain. Unlike Check it takes the interfaces from p, not
// from the addresses, and with f.ICMPKnown it also walks the rules only
// some ICMP types meet.
func (e *Evaluator) Explain(f Flow, p Path) *Explanation {
	f.Src, f.Dst = f.Src.Unmap(), f.Dst.Unmap()
	x := &Explanation{Verdict: Allow, Action: config.Accept}
	if p.Sender != nil && !p.Local {
		w := walk{record: true}
		e.out(&w, p.Sender, f)
		x.Out = w.steps
		x.combine(&w)
		if x.Verdict == Deny {
			return x
		}
	}
	if p.Receiver != nil {
		w := walk{record: true}
		sender := p.Sender
		if sender == nil && p.SenderMAC != nil {
			sender = &config.NIC{MAC: p.SenderMAC, VM: &config.VM{}}
		}
		e.in(&w, p.Receiver, sender, f, p.Local)
		x.In = w.steps
		x.combine(&w)
	}
	return x
}

// combine adds the verdict of a chain the packet must also pass.
func (x *Explanation) combine(w *walk) {
	v := w.verdict()
	switch {
	case v == Deny && w.done:
		x.Verdict, x.Action = Deny, w.action
	case x.Verdict == Deny:
	default:
		x.Verdict = x.Verdict.and(v)
		if x.Verdict == Unknown {
			x.Action = ""
		}
	}
}
