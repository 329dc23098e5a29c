package engine

import (
	"fmt"
	"net/netip"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/conntrack"
	"github.com/vmfw/vmfw/pkg/policy"
)

// FlowTable is the connection tracking table of the namespace vmfw runs
// in. conntrack.Table implements it.
type FlowTable interface {
	// LocalAddrs returns the namespace's own addresses.
	LocalAddrs() ([]netip.Addr, error)
	// Delete removes the tracked flows cut selects and returns how many.
	Delete(cut func(conntrack.Flow) bool) (int, error)
}

var _ FlowTable = conntrack.Table{}

// cutFlows deletes the tracked connections that the ruleset just applied
// for nics does not allow, so that they stop. Their packets would
// otherwise keep passing the "established" rules, which come before the
// groups: without this, removing a rule, a group or a member, or
// tightening a policy, would only stop new connections.
//
// Only connections the new rules deny are deleted. Deleting every
// connection of a VM would also cut allowed ones that are allowed only as
// established, such as the replies to a VM's own outbound connections
// (conntrack would see their next packet as a new inbound one, which the
// VM's in chain drops). Connections conntrack only tracked because vmfw
// did not filter them — the hypervisor's own — are never denied; see
// package policy for what decides. It returns how many it deleted.
//
// touched, when not nil, says which addresses the change can have
// denied: only flows from or to one are checked (see touchedBy).
func (e *Engine) cutFlows(m *config.Model, nics []*config.NIC, touched func(netip.Addr) bool) (int, error) {
	addressed := false
	for _, n := range nics {
		addressed = addressed || len(n.IPs) > 0
	}
	table := e.kernel.Flows
	if !addressed || table == nil {
		return 0, nil // no flow can be told to be a VM's
	}
	addrs, err := table.LocalAddrs()
	if err != nil {
		return 0, fmt.Errorf("rules applied, but cutting the connections they no longer allow failed: %w", err)
	}
	local := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		local[a] = true
	}
	ev := policy.New(m, nics, func(a netip.Addr) bool { return local[a] })
	n, err := table.Delete(func(f conntrack.Flow) bool {
		if touched != nil && !touched(f.Src.Unmap()) && !touched(f.Dst.Unmap()) {
			return false
		}
		return ev.Check(policyFlow(f)) == policy.Deny
	})
	if err != nil {
		return n, fmt.Errorf("rules applied, but cutting the connections they no longer allow failed: %w", err)
	}
	return n, nil
}

func policyFlow(f conntrack.Flow) policy.Flow {
	return policy.Flow{Proto: f.Proto, Src: f.Src, Dst: f.Dst, SPort: f.SPort, DPort: f.DPort, PortsUnknown: !f.Ports}
}

// maxTouched bounds the prefixes touchedBy checks a flow against one by
// one; an edit of more checks every flow.
const maxTouched = 64

// touchedBy returns, for an edit of address sets alone (hint.Sets), which
// addresses it can have denied: those in a prefix whose place in a set
// changed (config.SetChanges). Every other address matches each set as
// before, and the rules are the same, so a flow between two such addresses
// is decided as before: allowed, or it would not be tracked. nil (check
// every flow) for any other change, or an edit of many prefixes.
func touchedBy(hint *backend.Hint) func(netip.Addr) bool {
	if hint == nil || len(hint.Sets) == 0 {
		return nil
	}
	var prefixes []netip.Prefix
	for _, ed := range hint.Sets {
		for _, c := range config.SetChanges(ed.Was, ed.Now) {
			prefixes = append(prefixes, c.Prefix)
		}
		if len(prefixes) > maxTouched {
			return nil
		}
	}
	return func(a netip.Addr) bool {
		for _, p := range prefixes {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
}
