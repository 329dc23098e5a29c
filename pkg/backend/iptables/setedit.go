package iptables

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// Edits of address sets alone (backend.Hint.Sets).
//
// The members plan (planMembers) lays out every member of every set as a
// string and compares them with the kernel's: for an edit of one entry of
// a set of 100,000 networks 58-96 ms with the kernel's members remembered
// (BenchmarkPlanSetEdit100000 on a 2-core machine), plus reading them
// (3.6 MB of ipset save, ~125 ms) wherever no copy is remembered, as on
// legacy, for every edit, however small (docs/performance.md, "Address
// sets"). The engine knows more: which sets were edited, and their
// configuration before and after. When the kernel is known to hold the
// sets as they were, the change is the difference of the two
// configurations alone (layout.AddressSetChanges), written as ipset add
// and del of those members only: 0.3-0.4 ms to plan.
//
// "Known to hold the sets as they were" is four things:
//
//   - The backend wrote them so: held records, after each plan this
//     backend wrote (or found nothing to write for), the configuration
//     set each address set's ipsets were made from and how many members
//     each holds; the edit's old configuration must list what that set
//     lists (most often it is that very set: the agent's configuration
//     cache keeps an unchanged set's pointer), and every other address
//     set the policy refers to must be held as it is wanted.
//   - On nf_tables, nothing else wrote since: the ruleset generation is
//     the one Mark saw after that write, and Mark's copy holds the
//     policy's sets, with the sizes held counts. Every other vmfw process
//     writes its rules after its sets, which moves the generation
//     (memory.go). Legacy x_tables have no generation; the next two
//     checks are what it has.
//   - The members the plan touches are as the old configuration has them:
//     ipset refuses to add a member a set has or delete one it lacks, so a
//     member added or removed by someone else since makes the write fail.
//   - The sets' sizes and names are as the last write left them: the
//     ipset process that writes the plan then reads the edited sets'
//     headers and the names of vmfw's sets, without a member
//     (applyChecked), and each size must be the one held plus the members
//     added minus those removed.
//
// A write that fails either of the last two returns backend.StaleError:
// the engine reads the kernel and plans in full, which repairs whatever
// the plan wrote on a kernel that was not as it assumed. What no check
// sees is a change by hand, or by a vmfw process of a sets-only edit
// (which writes no rule), of members the edit does not touch that keeps
// every size: the plan is then what the full plan would be but for that
// drift, which the agent's drift check finds and repairs (docs/agent.md,
// "Drift": on nf_tables it compares the members with its copy, on legacy
// every check is a full apply). The members plan made from Mark's copy
// has the same limit.

// heldSet is what an address set's ipsets hold after a write: the
// configuration set they were made from, and how many members the ipset
// of each family holds.
type heldSet struct {
	config  *config.Set
	members map[ruleset.Family]int
}

// heldOf returns what the address sets hold once sets, the ipsets laid
// out for want, are written.
func heldOf(want *ruleset.Policy, sets []layout.Set) map[string]heldSet {
	held := map[string]heldSet{}
	if want == nil {
		return held
	}
	size := make(map[string]int, len(sets))
	for _, s := range sets {
		size[s.Name] = len(s.Members)
	}
	for name, s := range want.Sets {
		h := heldSet{config: s.Config, members: map[ruleset.Family]int{}}
		for _, f := range ruleset.Families {
			h.members[f] = size[layout.AddressSetName(name, f)]
		}
		held[name] = h
	}
	return held
}

// setHeld records what the address sets hold; nil when it is not known
// (a write failed).
func (b *Backend) setHeld(held map[string]heldSet) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.held = held
}

// planSetEdit plans an edit of address sets alone as the difference of
// each edited set's old and new configuration. ok is false, with nothing
// written, when the kernel is not known to hold the sets as they were;
// the caller then plans the members in full.
func (b *Backend) planSetEdit(ctx context.Context, want *ruleset.Policy, edits []backend.SetEdit) (p *plan, ok bool, err error) {
	start := time.Now()
	b.mu.Lock()
	held := b.held
	b.mu.Unlock()
	mem := b.memory.Load()
	if held == nil {
		trace.Printf("members plan: what the address sets hold is not known")
		return nil, false, nil
	}
	next := maps.Clone(held)
	changes := map[string]layout.MemberChanges{}
	var edited []string
	for _, e := range edits {
		ws := want.Sets[e.Name]
		if ws == nil {
			// No rule refers to the set: the kernel holds none.
			if _, isHeld := held[e.Name]; isHeld {
				return nil, false, nil
			}
			continue
		}
		h, isHeld := held[e.Name]
		if !isHeld || e.Was == nil || !h.config.SameMembers(e.Was) || ws.Config != e.Now {
			trace.Printf("members plan: the kernel is not known to hold address set %s as it was", e.Name)
			return nil, false, nil
		}
		fc, ok := layout.AddressSetChanges(e.Was, e.Now)
		if !ok {
			return nil, false, nil
		}
		counts := maps.Clone(h.members)
		for f, c := range fc {
			counts[f] += len(c.Added) - len(c.Removed)
			changes[layout.AddressSetName(e.Name, f)] = c
		}
		next[e.Name] = heldSet{config: e.Now, members: counts}
		edited = append(edited, e.Name)
	}
	if len(next) != len(want.Sets) {
		return nil, false, nil
	}
	for name, s := range want.Sets {
		if !next[name].config.SameMembers(s.Config) {
			trace.Printf("members plan: address set %s is not held as the policy has it", name)
			return nil, false, nil
		}
	}
	slices.Sort(edited)
	if b.tables.Narrow() && !b.rememberedHeld(ctx, mem, want, held) {
		return nil, false, nil
	}
	var script strings.Builder
	sc := backend.NewSetChanges()
	// In the order of the members plan's script: sets by name, families
	// in order.
	for _, name := range edited {
		for _, f := range ruleset.Families {
			kname := layout.AddressSetName(name, f)
			if c, ok := changes[kname]; ok {
				ipset.WriteMembers(&script, kname, c)
				addChanges(&sc, kname, c)
			}
		}
	}
	p = &plan{
		tables:     map[ruleset.Family]*layout.Plan{},
		st:         &state{full: true, remembered: true},
		summary:    &backend.Summary{Tables: map[string]backend.TableChanges{}, Sets: sc},
		setsBefore: script.String(),
		held:       next,
		check:      &setCheck{names: ownSetNames(want), members: map[string]int{}},
	}
	for _, name := range edited {
		for _, f := range ruleset.Families {
			p.check.members[layout.AddressSetName(name, f)] = next[name].members[f]
		}
	}
	if mem != nil {
		p.edit = changes
	}
	trace.Since(start, "plan the edit of address sets %s from their configuration", strings.Join(edited, ", "))
	return p, true, nil
}

// ownSetNames returns the names of the ipsets want's rules refer to.
func ownSetNames(want *ruleset.Policy) map[string]bool {
	names := map[string]bool{}
	for name := range want.Sets {
		for _, f := range ruleset.Families {
			names[layout.AddressSetName(name, f)] = true
		}
	}
	for g := range want.Members {
		for _, f := range ruleset.Families {
			names[layout.SetName(g, f)] = true
		}
	}
	return names
}

// rememberedHeld is planSetEdit's check on nf_tables before it plans:
// the generation is the one Mark saw (mem) after the backend's last
// write, and mem's sets are the policy's, with the members held counts.
func (b *Backend) rememberedHeld(ctx context.Context, mem *memory, want *ruleset.Policy, held map[string]heldSet) bool {
	if mem == nil {
		trace.Printf("members plan: nothing remembered since the last write")
		return false
	}
	if gen, err := b.generation(ctx); err != nil || gen != mem.gen {
		trace.Printf("members plan: the ruleset generation moved since the last write")
		return false
	}
	names := ownSetNames(want)
	if len(mem.sets) != len(names) {
		return false
	}
	for n := range mem.sets {
		if !names[n] {
			return false
		}
	}
	for name, h := range held {
		for _, f := range ruleset.Families {
			if o := mem.sets[layout.AddressSetName(name, f)]; o == nil || len(o.Members) != h.members[f] {
				return false
			}
		}
	}
	return true
}

// setCheck is what the kernel holds once a plan of planSetEdit is
// written, if it held what the plan assumed: vmfw's ipsets are the
// policy's (names), and the edited sets' ipsets hold members each.
// applyChecked verifies it in the ipset process that writes the plan.
type setCheck struct {
	names   map[string]bool
	members map[string]int
}

// applyChecked writes a plan of planSetEdit and, in the same ipset
// process, reads the headers of the edited sets' ipsets and the names of
// vmfw's sets (ipset.Client.Heads: no member is read). ipset refused to
// add a member a set had or delete one it lacked, so each ipset now holds
// the members it held before plus those added minus those removed, and
// its size is the one the last write left plus the same: a size other
// than check's means the kernel did not hold what the last write left
// (docs/agent.md, "What it remembers of the kernel"), and so does a set
// more or less. That is a backend.StaleError: the engine then reads the
// kernel and plans in full, which corrects whatever the plan wrote on it.
func (b *Backend) applyChecked(ctx context.Context, p *plan) error {
	knames := slices.Sorted(maps.Keys(p.check.members))
	heads, names, err := b.sets.Heads(ctx, p.setsBefore, knames)
	if err != nil {
		return err
	}
	if len(names) != len(p.check.names) {
		return fmt.Errorf("vmfw's ipsets are %v, not those its rules refer to", names)
	}
	for _, n := range names {
		if !p.check.names[n] {
			return fmt.Errorf("ipset %s is not one vmfw's rules refer to", n)
		}
	}
	for _, k := range knames {
		if got, want := heads[k].Entries, p.check.members[k]; got != want {
			return fmt.Errorf("ipset %s holds %d members, the last write left %d and the edit changed it to %d", k, got, want-(len(p.summary.Sets.Added[k])-len(p.summary.Sets.Removed[k])), want)
		}
	}
	return nil
}

// takeMemory forgets what Mark remembered, returning it: the backend is
// about to write.
func (b *Backend) takeMemory() *memory { return b.memory.Swap(nil) }

// rememberEdit keeps mem, the sets Mark remembered before a set edit
// planned from them was written, with the edit's changes made to them:
// ipset writes do not move the nf_tables generation, so mem still
// describes the kernel of its generation, and Mark need not read 100,000
// members back (100-260 ms, see memory.go). What the edit changed is what
// the kernel now holds where it touched (ipset refused anything else);
// where it did not, mem is as true as before, and the drift check
// compares it with the kernel as ever.
func (b *Backend) rememberEdit(mem *memory, edit map[string]layout.MemberChanges) {
	if mem == nil {
		return
	}
	for kname := range edit {
		if mem.sets[kname] == nil {
			return
		}
	}
	for kname, c := range edit {
		o := mem.sets[kname]
		for _, m := range c.Removed {
			delete(o.Members, m)
		}
		for _, m := range c.Added {
			o.Members[m] = true
		}
	}
	mem.written = true
	b.memory.Store(mem)
}
