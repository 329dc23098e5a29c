package iptables

import (
	"context"
	"maps"
	"slices"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
)

// Remembering what the kernel holds, for the agent (docs/agent.md).
//
// Every change reads vmfw's ipsets first (two ipset processes, 10-25 ms)
// to plan the members to add and remove, and the agent's drift check would
// read every chain (seconds at thousands of taps). After the agent's own
// change, Mark reads the nf_tables ruleset generation and the sets once;
// while the generation stays the same, the next change takes the sets from
// memory, and the drift check reads everything only when the generation
// or the sets' members moved.
//
// "The generation stays the same" means nothing was committed to
// nf_tables: every vmfw process writes its iptables rules after its sets,
// so one that changed the sets also moved the generation (changes run
// under the namespace lock, so no vmfw process is between the two).
// Someone changing vmfw's ipsets by hand does not move it: Unchanged
// compares the members themselves, so the drift check repairs that, and a
// change planned from remembered sets that fails (an ipset "add" of a
// member already there) returns backend.StaleError, on which the caller
// reads afresh and tries once more. On legacy x_tables the generation does
// not cover the tables: nothing is remembered and every check reads.
//
// The drift check that finds the members moved drops the memory, so that
// the apply repairing them plans from the kernel's members; reading them
// again instead (the next Mark) would take the drift for the backend's
// own. After an edit of address sets planned from their configuration
// (setedit.go), Apply changes the memory as it changed the kernel and
// Mark keeps it: the edit wrote members only, so the generation is the
// one the memory belongs to, and reading 100,000 members back cost the
// agent 100-260 ms after every edit (VMFW_TRACE in the bench's set rows).

// memory is what Mark read.
type memory struct {
	gen  uint32
	sets map[string]*ipset.Observed
	// written says the backend's last write changed the sets from this
	// memory and changed it alike (rememberEdit): Mark keeps it while the
	// generation stays gen.
	written bool
}

// Mark remembers the generation and the sets as the backend's own.
func (b *Backend) Mark(ctx context.Context) error {
	mem := b.takeMemory()
	if !b.tables.Narrow() {
		return nil
	}
	gen, err := b.generation(ctx)
	if err != nil {
		return err
	}
	if mem != nil && mem.written && mem.gen == gen {
		b.memory.Store(mem)
		return nil
	}
	sets, err := b.sets.List(ctx)
	if err != nil {
		return err
	}
	// The sets are those of gen only if nothing committed while they
	// were read (another vmfw process does not wait for the agent).
	if again, err := b.generation(ctx); err != nil || again != gen {
		return err
	}
	b.memory.Store(&memory{gen: gen, sets: cloneSets(sets)})
	return nil
}

// Unchanged reports whether the generation and the sets' members are as
// Mark found them; false when nothing is remembered. When the sets'
// members moved while the generation did not (a change by hand, or a
// sets-only edit by another vmfw process), the memory is dropped: the
// apply that repairs the drift must plan from the kernel's sets, not
// from the memory that does not show it.
func (b *Backend) Unchanged(ctx context.Context) (bool, error) {
	mem := b.memory.Load()
	if mem == nil {
		return false, nil
	}
	gen, err := b.generation(ctx)
	if err != nil || gen != mem.gen {
		return false, err
	}
	sets, err := b.sets.List(ctx)
	if err != nil {
		return false, err
	}
	if setsFingerprint(sets) == setsFingerprint(mem.sets) {
		return true, nil
	}
	b.memory.CompareAndSwap(mem, nil)
	return false, nil
}

// forget drops what Mark remembered: the backend is about to write.
func (b *Backend) forget() { b.memory.Store(nil) }

// listSets returns vmfw's sets: from memory while the generation is the
// one Mark saw (remembered), else from the kernel.
func (b *Backend) listSets(ctx context.Context) (sets map[string]*ipset.Observed, remembered bool, err error) {
	if mem := b.memory.Load(); mem != nil {
		if gen, err := b.generation(ctx); err == nil && gen == mem.gen {
			return cloneSets(mem.sets), true, nil
		}
	}
	sets, err = b.sets.List(ctx)
	return sets, false, err
}

// setsFingerprint summarises sets and their members.
func setsFingerprint(sets map[string]*ipset.Observed) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(sets)) {
		o := sets[name]
		b.WriteString(name + " " + string(o.Type) + " " + o.Family + ":")
		for _, m := range slices.Sorted(maps.Keys(o.Members)) {
			b.WriteString(" " + m)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// cloneSets copies sets deeply enough that planning with a copy cannot
// change another.
func cloneSets(sets map[string]*ipset.Observed) map[string]*ipset.Observed {
	out := make(map[string]*ipset.Observed, len(sets))
	for name, o := range sets {
		c := *o
		c.Members = maps.Clone(o.Members)
		out[name] = &c
	}
	return out
}
