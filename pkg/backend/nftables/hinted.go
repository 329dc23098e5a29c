package nftables

import (
	"slices"
	"time"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// Plans from a hint (an ifup, an ifdown, a group edit without the agent).
//
// A full plan reads every element of every set: tens of milliseconds per
// thousand interfaces, most of what an ifup costs. With a hint the engine
// says what the tables hold: the layout of hint.Was. That is checked
// against what is cheap to read, the chains' fingerprints, the sets'
// signatures and the ports set's elements (which the narrow read already
// has), and the plan is the difference between the layouts of Was and of
// want. Elements the check does not read may differ from Was (a foreign
// edit of one element): then the transaction can fail (deleting an element
// that is not there), which Apply reports as stale, and the engine plans
// again in full; an element added by someone else stays until the next
// full plan or drift check, as with any drift.

// takeFullNext reports, and clears, that the next plan must be full.
func (b *Backend) takeFullNext() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	full := b.fullNext
	b.fullNext = false
	return full
}

// planHinted returns the plan from hint.Was's layout to want's, or nil
// when the tables do not hold that layout as far as the check reads.
func (b *Backend) planHinted(st *state, want *ruleset.Policy, hint *backend.Hint) (*plan, error) {
	start := time.Now()
	obs, err := b.kernel.Read(false)
	if err != nil {
		return nil, err
	}
	if obs.Gen != st.obs.Gen {
		return nil, nil // something committed between the two reads
	}
	was := layout.Build(hint.Was, b.marks)
	if !holds(obs, st, was) {
		trace.Printf("the tables do not hold the hint's installed policy: planning in full")
		return nil, nil
	}
	rs := layout.Build(want, b.marks)
	assumed := observedOf(was)
	assumed.Gen = obs.Gen
	if hint.Members {
		// Only members changed, so hint.Was is the wanted policy itself
		// and says nothing of the members installed: those sets are read
		// (members.go).
		if ok, err := b.readMembers(assumed, rs); err != nil || !ok {
			return nil, err
		}
	}
	p := diff(rs, &state{obs: assumed, full: true})
	p.hinted = true
	p.held = heldOf(want, rs)
	trace.Since(start, "plan %d interfaces from the hint", len(want.Interfaces))
	return p, nil
}

// holdsLayout reports whether obs holds rs's chains (hooks and rule
// fingerprints) and sets (signatures), whatever the sets' elements.
func holdsLayout(obs *nlnft.Observed, rs *layout.Ruleset) bool {
	for _, t := range rs.Tables() {
		have := obs.Tables[t.Family]
		if have == nil || len(have.Chains) != len(t.Chains) || len(have.Sets) != len(t.Sets) {
			return false
		}
		for _, c := range t.Chains {
			o := have.Chains[c.Name]
			if o == nil || !sameHook(o.Hook, c.Hook) || !slices.Equal(o.Hashes, c.Hashes()) {
				return false
			}
		}
		for _, s := range t.Sets {
			if o := have.Sets[s.Name]; o == nil || o.Signature != s.Signature() {
				return false
			}
		}
	}
	return true
}

// holds reports whether what was read (obs: chains and set signatures;
// narrow: the ports set's elements with the interfaces' fingerprints)
// is rs as far as it goes.
func holds(obs *nlnft.Observed, narrow *state, rs *layout.Ruleset) bool {
	if !holdsLayout(obs, rs) {
		return false
	}
	ports := rs.Bridge.Set(layout.SetPorts)
	nt := narrow.obs.Tables[layout.Bridge]
	if ports == nil || nt == nil || nt.Sets[layout.SetPorts] == nil || len(nt.Sets[layout.SetPorts].Elements) != len(ports.Elements) {
		return false
	}
	// Each port's element carries the fingerprint of the interface's
	// other elements (layout.SettingsComment): an interface installed
	// with other settings than Was has is not held.
	have := nt.Sets[layout.SetPorts]
	for _, e := range ports.Elements {
		k := e.KeyBytes()
		if _, ok := have.Elements[string(k)]; !ok || have.Data[string(k)] != e.DataText() {
			return false
		}
	}
	return true
}
