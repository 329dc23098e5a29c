// Package droplog turns the packets vmfw's rules log to NFLOG (log_group
// in vmfw.toml) into JSON lines that name the tap, the VM, the direction,
// the group and the rule by file and line, and the verdict: what vmfw log
// prints, and what the agent can print while it runs. The rules' NFLOG
// prefix names the rule by group and position (ruleset.NFLOGPrefix);
// the tap comes from the prefix (an iptables policy), the packet's
// bridge port (a bridged packet, an nftables policy), or its destination
// address (routed and
// hypervisor-sent packets to a VM, docs/routing.md).
package droplog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/nflog"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Line is one logged packet as vmfw log and the agent print it: a JSON
// object per line.
type Line struct {
	// Time is when the kernel logged the packet.
	Time time.Time `json:"time"`
	// Tap is the VM interface the rule belongs to, VM and VMName its VM.
	Tap    string `json:"tap,omitempty"`
	VM     *int   `json:"vm,omitempty"`
	VMName string `json:"vm_name,omitempty"`
	// Direction is in (to the VM) or out (from it).
	Direction string `json:"direction"`
	// Group is the group of a group rule, "" for a policy.
	Group string `json:"group,omitempty"`
	// Rule is FILE:LINE of the group rule, or FILE of the VM whose
	// policy logged.
	Rule string `json:"rule,omitempty"`
	// Policy is true when the VM's policy decided.
	Policy bool `json:"policy,omitempty"`
	// Verdict is accept, drop or reject.
	Verdict string `json:"verdict"`
	// Family (4 or 6), Proto, Src and Dst come from the packet's IP
	// header, SPort and DPort from a tcp, udp or sctp header.
	Family int        `json:"family,omitempty"`
	Proto  string     `json:"proto,omitempty"`
	Src    netip.Addr `json:"src,omitzero"`
	Dst    netip.Addr `json:"dst,omitzero"`
	SPort  *uint16    `json:"sport,omitempty"`
	DPort  *uint16    `json:"dport,omitempty"`
	// ICMPType and ICMPCode are set for icmp and icmpv6.
	ICMPType *uint8 `json:"icmp_type,omitempty"`
	ICMPCode *uint8 `json:"icmp_code,omitempty"`
	// In, Out, PhysIn and PhysOut are the interfaces the kernel names:
	// the bridge ports (physdev) of bridged packets.
	In      string `json:"in,omitempty"`
	Out     string `json:"out,omitempty"`
	PhysIn  string `json:"physin,omitempty"`
	PhysOut string `json:"physout,omitempty"`
	// MAC is the frame's source MAC.
	MAC string `json:"mac,omitempty"`
	// Prefix is the NFLOG prefix as logged.
	Prefix string `json:"prefix"`
}

// Follow binds NFLOG group and writes a line to w for every packet vmfw's
// rules log, until ctx is done or, when count > 0, count lines are
// written. model returns the configuration to name rules with; it is
// called for every packet, so that it can follow edits (a failing call
// keeps the last good one).
func Follow(ctx context.Context, group uint16, model func() (*config.Model, error), w io.Writer, count int) error {
	c, err := nflog.Listen(group)
	if err != nil {
		return err
	}
	defer c.Close()
	enc := json.NewEncoder(w)
	var m *config.Model
	for n := 0; count <= 0 || n < count; {
		if ctx.Err() != nil {
			return nil
		}
		// The deadline lets a cancelled ctx end the wait.
		if err := c.SetDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
			return err
		}
		p, err := c.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return err
		}
		if cur, err := model(); err == nil {
			m = cur
		}
		if m == nil {
			return fmt.Errorf("no configuration to name logged rules with")
		}
		line, ok := Describe(p, m)
		if !ok {
			continue
		}
		if err := enc.Encode(line); err != nil {
			return err
		}
		n++
	}
	return nil
}

// Describe turns a packet vmfw logged into its line, naming the rule with
// configuration m (the one the rules were compiled from, or newer). ok is
// false for a packet another tool logged to the same group: its prefix is
// not vmfw's.
func Describe(p *nflog.Packet, m *config.Model) (Line, bool) {
	o, verdict, ok := ruleset.ParseNFLOGPrefix(p.Prefix)
	if !ok {
		return Line{}, false
	}
	out := Line{Time: p.Time.UTC(), Direction: string(o.Dir), Group: o.Group, Verdict: string(verdict), Prefix: p.Prefix,
		In: ifName(p.InDev), Out: ifName(p.OutDev), PhysIn: ifName(p.PhysInDev), PhysOut: ifName(p.PhysOutDev)}
	if p.HWAddr != nil {
		out.MAC = p.HWAddr.String()
	}
	if h, err := nflog.ParseHeader(p.Payload); err == nil {
		out.Family, out.Src, out.Dst = h.Family, h.Src, h.Dst
		out.Proto = protoName(h.Proto, h.Family)
		if h.HasPorts {
			out.SPort, out.DPort = &h.SPort, &h.DPort
		}
		if h.HasICMP {
			out.ICMPType, out.ICMPCode = &h.ICMPType, &h.ICMPCode
		}
	}
	// The interface: a policy names it; a group rule's chain is shared,
	// so the packet's bridge port tells, or for routed and
	// hypervisor-sent packets to a VM its destination address
	// (docs/routing.md).
	var nic *config.NIC
	out.Policy = o.Group == ""
	switch {
	case o.Tap != "":
		out.Tap = o.Tap
	case o.Dir == config.In && out.PhysOut != "":
		out.Tap = out.PhysOut
	case o.Dir == config.In:
		nic = ownerOf(m, out.Dst)
	default:
		out.Tap = out.PhysIn
	}
	if nic == nil && out.Tap != "" {
		nic = m.NIC(out.Tap)
	}
	if nic != nil {
		out.Tap = nic.Tap
		if nic.VM.File != "" {
			id := nic.VM.ID
			out.VM, out.VMName = &id, nic.VM.Name
		}
		if out.Policy {
			out.Rule = nic.VM.File
		}
	}
	if out.Policy && o.Tap == "" && out.Tap != "" {
		// A policy prefix of the nftables backend names no tap: say it
		// as the iptables backend's does, so that vmfw log prints the
		// same line whichever backend logged it.
		out.Prefix = ruleset.NFLOGPrefix(ruleset.Origin{Tap: out.Tap, Dir: o.Dir}, verdict)
	}
	if g := m.Groups[o.Group]; g != nil && o.Index < len(g.Rules(o.Dir)) {
		out.Rule = g.File + ":" + strconv.Itoa(g.Rules(o.Dir)[o.Index].Line)
	}
	return out, true
}

func ownerOf(m *config.Model, a netip.Addr) *config.NIC {
	if !a.IsValid() {
		return nil
	}
	for _, vm := range m.VMs {
		for _, n := range vm.NICs {
			if slices.Contains(n.IPs, a) {
				return n
			}
		}
	}
	return nil
}

func ifName(index uint32) string {
	if index == 0 {
		return ""
	}
	if ifi, err := net.InterfaceByIndex(int(index)); err == nil {
		return ifi.Name
	}
	return "if" + strconv.Itoa(int(index))
}

func protoName(p uint8, family int) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 132:
		return "sctp"
	case 1:
		return "icmp"
	case 58:
		if family == 6 {
			return "icmpv6"
		}
	}
	return fmt.Sprint(p)
}
