package engine

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/conntrack"
	"github.com/vmfw/vmfw/pkg/policy"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// FlowTable is the connection tracking table of the namespace vmfw runs
// in. conntrack.Table implements it.
type FlowTable interface {
	// LocalAddrs returns the namespace's own addresses.
	LocalAddrs() ([]netip.Addr, error)
	// Delete removes the tracked flows cut selects and returns how many.
	Delete(cut func(conntrack.Flow) bool) (int, error)
	// DeleteAt is Delete for the flows whose source or destination is
	// one of addrs, which only those are shown to cut: the kernel can
	// select them instead of copying out the whole table.
	DeleteAt(addrs []netip.Addr, cut func(conntrack.Flow) bool) (int, error)
}

// maxAddrsAsked bounds the addresses whose flows are asked of the kernel
// address by address (FlowTable.DeleteAt, two filtered walks of the
// table each); a change touching more reads the table once, whole.
const maxAddrsAsked = 8

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
// denied: only flows from or to one are decided (flowFilter); when they
// are the few addresses of asked, only their flows are read. The
// evaluator, which indexes every VM (7 ms at 5000), is built only when
// such a flow is tracked.
func (e *Engine) cutFlows(m *config.Model, nics []*config.NIC, touched func(netip.Addr) bool, asked []netip.Addr) (int, error) {
	addressed := false
	for _, n := range nics {
		addressed = addressed || len(n.IPs) > 0
	}
	table := e.kernel.Flows
	if !addressed || table == nil {
		return 0, nil // no flow can be told to be a VM's
	}
	// The namespace's addresses, and the evaluator, are read and built
	// for the first flow decided: listing the addresses walks every
	// interface (10-20 ms with 5000 taps), for nothing when no flow is.
	var ev *policy.Evaluator
	var localErr error
	del := table.Delete
	if asked != nil && len(asked) <= maxAddrsAsked {
		del = func(cut func(conntrack.Flow) bool) (int, error) { return table.DeleteAt(asked, cut) }
	}
	n, err := del(func(f conntrack.Flow) bool {
		if touched != nil && !touched(f.Src.Unmap()) && !touched(f.Dst.Unmap()) || localErr != nil {
			return false
		}
		if ev == nil {
			addrs, err := table.LocalAddrs()
			if err != nil {
				localErr = err
				return false
			}
			local := make(map[netip.Addr]bool, len(addrs))
			for _, a := range addrs {
				local[a] = true
			}
			ev = policy.New(m, nics, func(a netip.Addr) bool { return local[a] })
		}
		return ev.Check(policyFlow(f)) == policy.Deny
	})
	if err == nil {
		err = localErr
	}
	if err != nil {
		return n, fmt.Errorf("rules applied, but cutting the connections they no longer allow failed: %w", err)
	}
	return n, nil
}

func policyFlow(f conntrack.Flow) policy.Flow {
	return policy.Flow{Proto: f.Proto, Src: f.Src, Dst: f.Dst, SPort: f.SPort, DPort: f.DPort, PortsUnknown: !f.Ports}
}

// flowFilter returns the addresses whose flows a change described by hint
// can have denied (touchedBy for an edit of address sets, else
// flowScope), nil for every flow; asked lists them when they are a list
// of addresses (flowScope's), sorted. none reports that the change can
// have denied no flow at all: the flow table is not even read (its dump
// walks the kernel's whole hash table, 9-12 ms).
func flowFilter(hint *backend.Hint, want *ruleset.Policy) (touched func(netip.Addr) bool, asked []netip.Addr, none bool) {
	if t := touchedBy(hint); t != nil {
		return t, nil, false
	}
	only := flowScope(hint, want)
	switch {
	case only == nil:
		return nil, nil, false
	case len(only) == 0:
		return nil, nil, true
	}
	asked = slices.SortedFunc(maps.Keys(only), netip.Addr.Compare)
	return func(a netip.Addr) bool { return only[a] }, asked, false
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
