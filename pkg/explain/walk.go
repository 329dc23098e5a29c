package explain

import (
	"fmt"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// packet builds the first packet of candidate c as the backend walks it.
func (t *tracer) packet(c candidate) backend.Packet {
	p := backend.Packet{Family: t.family, Proto: t.proto, Src: t.from.Address, Dst: t.to.Address, SPort: c.sport, DPort: c.dport,
		ICMPType: uint8(t.icmpType), ICMPCode: uint8(t.icmpCode), State: "NEW", Path: backend.Path(t.path)}
	if t.path != PathFromHypervisor {
		p.SrcMAC = c.mac
	}
	if t.proto == config.ProtoICMP || t.proto == config.ProtoICMPv6 {
		p.State = policyState(t.proto, uint8(t.icmpType))
	}
	if t.proto == config.ProtoICMPv6 && (t.icmpType == 135 || t.icmpType == 136) {
		// A solicitation asks for the destination, an advertisement
		// announces the sender's own address.
		p.NDTarget = t.to.Address
		if t.icmpType == 136 {
			p.NDTarget = t.from.Address
		}
	}
	if t.from.nic != nil {
		p.InPort = t.from.nic.Tap
	}
	if t.to.nic != nil {
		p.OutPort = t.to.nic.Tap
	}
	return p
}

// policyState is the conntrack state of a flow's first ICMP packet
// (see package policy).
func policyState(proto uint8, typ uint8) string {
	if proto == config.ProtoICMP {
		switch typ {
		case 8, 13, 15, 17:
			return "NEW"
		}
		return "INVALID"
	}
	switch typ {
	case 128, 139:
		return "NEW"
	case 130, 131, 132, 133, 134, 135, 136, 137, 143:
		return "UNTRACKED"
	}
	return "INVALID"
}

// describeOrigin names the configuration a rule implements: FILE:LINE of
// a group rule, the VM file of a policy; "" for a rule vmfw adds by
// itself.
func (t *tracer) describeOrigin(o ruleset.Origin) string {
	if o.IsZero() {
		return ""
	}
	if o.Group != "" {
		g := t.in.Model.Groups[o.Group]
		if g == nil || o.Index >= len(g.Rules(o.Dir)) {
			return ""
		}
		return fmt.Sprintf("%s:%d", g.File, g.Rules(o.Dir)[o.Index].Line)
	}
	if n := t.resolve(o.Tap); n != nil && n.VM.File != "" {
		return fmt.Sprintf("%s: policy_%s", n.VM.File, o.Dir)
	}
	return "policy_" + string(o.Dir)
}
