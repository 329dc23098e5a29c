package nftables

import (
	"context"
	"slices"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
)

// Remembering what the kernel holds, for the agent (docs/agent.md).
//
// After the agent's own change its transaction made a known generation
// (the one it was checked against, plus one), and the tables hold exactly
// what the plan wanted. Mark keeps that as the state of the generation;
// while the generation stays the same nothing was committed to nf_tables
// by anyone, so the next change plans from memory without reading, and
// the drift check reads nothing. A plan made from memory is written with
// its generation, which the kernel checks: if anyone committed in
// between, the transaction is refused whole and the engine reads afresh
// (backend.StaleError).

// kept is a state the backend remembers: the tables, and the names of
// the interfaces installed, sorted (nil when not known).
type kept struct {
	obs       *nlnft.Observed
	installed []string
}

// installedAfter returns names (sorted, the interfaces installed before
// batch) changed as batch changes the ports set; nil when names is, or
// when batch creates or deletes the table or the set.
func installedAfter(names []string, b *nlnft.Batch) []string {
	if names == nil {
		return nil
	}
	out, copied := names, false
	for _, tc := range b.Tables {
		if tc.Family != layout.Bridge {
			continue
		}
		if tc.Create || tc.Delete || slices.Contains(tc.DeleteSets, layout.SetPorts) ||
			slices.ContainsFunc(tc.NewSets, func(s *layout.Set) bool { return s.Name == layout.SetPorts }) {
			return nil
		}
		del, add := tc.DelElements[layout.SetPorts], tc.AddElements[layout.SetPorts]
		if len(del)+len(add) == 0 {
			continue
		}
		if !copied {
			out, copied = slices.Clone(names), true // names is the memory's
		}
		// Deleted first, as the kernel does: an element whose comment
		// changes is deleted and added again.
		for _, e := range del {
			if i, ok := slices.BinarySearch(out, portName(e)); ok {
				out = slices.Delete(out, i, i+1)
			}
		}
		for _, e := range add {
			if i, ok := slices.BinarySearch(out, portName(e)); !ok {
				out = slices.Insert(out, i, portName(e))
			}
		}
	}
	return out
}

// portName is the interface name of an element of the ports set.
func portName(e layout.Element) string { return strings.TrimRight(string(e.KeyBytes()), "\x00") }

// Mark remembers the state the last Apply left when the kernel is still
// at the generation that Apply made; otherwise it reads the tables and
// remembers them if nothing committed while they were read.
func (b *Backend) Mark(ctx context.Context) error {
	b.mu.Lock()
	pending := b.pending
	b.pending, b.memory = nil, nil
	b.mu.Unlock()
	gen, err := b.kernel.Generation()
	if err != nil {
		return err
	}
	if pending != nil && pending.obs.Gen == gen {
		b.mu.Lock()
		b.memory = pending
		b.mu.Unlock()
		return nil
	}
	obs, err := b.kernel.Read(true)
	if err != nil {
		return err
	}
	if again, err := b.kernel.Generation(); err != nil || again != obs.Gen {
		return err
	}
	b.mu.Lock()
	b.memory = &kept{obs: obs}
	b.mu.Unlock()
	return nil
}

// Unchanged reports whether the generation is the one Mark remembered.
func (b *Backend) Unchanged(ctx context.Context) (bool, error) {
	b.mu.Lock()
	mem := b.memory
	b.mu.Unlock()
	if mem == nil {
		return false, nil
	}
	gen, err := b.kernel.Generation()
	if err != nil {
		return false, err
	}
	return gen == mem.obs.Gen, nil
}

// remembered returns the remembered state if the generation has not
// moved, else nil. It is not copied (a set of 100,000 elements took tens
// of milliseconds to copy for every plan, the elements of 5000
// interfaces 7.5 ms, a quarter of what an ifup through the agent may
// cost): plans and status only read a state, and Apply changes the one
// its plan was made from in place, once the kernel holds the same, under
// the engine's lock like every use of a state.
func (b *Backend) remembered() *kept {
	b.mu.Lock()
	mem := b.memory
	b.mu.Unlock()
	if mem == nil {
		return nil
	}
	if gen, err := b.kernel.Generation(); err != nil || gen != mem.obs.Gen {
		return nil
	}
	return mem
}

// forget drops what was remembered: the backend is about to write.
func (b *Backend) forget() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.memory, b.pending, b.held = nil, nil, nil
}
