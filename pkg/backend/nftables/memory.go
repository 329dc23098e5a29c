package nftables

import (
	"context"

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
	if pending != nil && pending.Gen == gen {
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
	b.memory = obs
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
	return gen == mem.Gen, nil
}

// remembered returns the remembered state if the generation has not
// moved, else nil. It is not copied (a set of 100,000 elements took tens
// of milliseconds to copy for every plan, the elements of 5000
// interfaces 7.5 ms, a quarter of what an ifup through the agent may
// cost): plans and status only read a state, and Apply changes the one
// its plan was made from in place, once the kernel holds the same, under
// the engine's lock like every use of a state.
func (b *Backend) remembered() *nlnft.Observed {
	b.mu.Lock()
	mem := b.memory
	b.mu.Unlock()
	if mem == nil {
		return nil
	}
	if gen, err := b.kernel.Generation(); err != nil || gen != mem.Gen {
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
