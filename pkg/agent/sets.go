package agent

import (
	"context"
	"maps"
	"sync"

	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/engine"
)

// knownSets is the engine's set store in an agent on nf_tables. Every
// change reads vmfw's ipsets first (two ipset processes, 10-25 ms) to
// plan the members to add and remove; the agent already read them right
// after its own last write (Agent.remember), so when nothing has changed
// since, List returns that copy instead of asking the kernel.
//
// "Nothing has changed" is the nf_tables ruleset generation being what it
// was when the sets were read: every vmfw process writes its iptables
// rules after its sets, so one that changed the sets also moved the
// generation (List runs under the namespace lock, so no vmfw process is
// between the two). Someone changing vmfw's ipsets by hand does not move
// it; the agent's drift check, which compares the members themselves,
// repairs that within one repair interval, and a change that fails (an
// ipset "add" of a member already there) is run again on sets read from
// the kernel (Agent.retryStale).
type knownSets struct {
	engine.SetStore

	mu sync.Mutex
	// sets is what the kernel held at generation gen; nil when unknown.
	sets map[string]*ipset.Observed
	gen  uint32
	// served says a List since the last take was answered from sets.
	served bool
}

// List returns the remembered sets when the generation is unchanged, and
// reads them otherwise.
func (k *knownSets) List(ctx context.Context) (map[string]*ipset.Observed, error) {
	k.mu.Lock()
	sets, gen := k.sets, k.gen
	k.mu.Unlock()
	if sets != nil {
		if now, err := xtables.Generation(ctx); err == nil && now == gen {
			k.mu.Lock()
			k.served = true
			k.mu.Unlock()
			return cloneSets(sets), nil
		}
	}
	return k.SetStore.List(ctx)
}

// Restore changes the sets; what was remembered no longer holds.
func (k *knownSets) Restore(ctx context.Context, script string) error {
	if script != "" {
		k.forget()
	}
	return k.SetStore.Restore(ctx, script)
}

// remember records sets as read from the kernel at generation gen.
func (k *knownSets) remember(sets map[string]*ipset.Observed, gen uint32) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.sets, k.gen = cloneSets(sets), gen
}

// forget drops the remembered sets: the next List reads the kernel.
func (k *knownSets) forget() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.sets = nil
}

// takeServed reports whether a List was answered from memory since the
// last call, and resets it.
func (k *knownSets) takeServed() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.served
	k.served = false
	return s
}

// cloneSets copies sets deeply enough that the engine's use of a copy
// cannot change another.
func cloneSets(sets map[string]*ipset.Observed) map[string]*ipset.Observed {
	out := make(map[string]*ipset.Observed, len(sets))
	for name, o := range sets {
		c := *o
		c.Members = maps.Clone(o.Members)
		out[name] = &c
	}
	return out
}
