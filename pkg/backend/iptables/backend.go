// Package iptables is vmfw's iptables backend (docs/design.md): it lays a
// policy out as per-interface iptables chains entered through physdev
// dispatch trees, address trees for routed and host-sent traffic, the
// mark protocol, ipsets for group members and ebtables chains for L2
// anti-spoofing (package layout), and reads, plans and writes them with
// iptables-restore, ipset and ebtables-restore (packages xtables, ipset,
// ebtables). Every change is one transaction per family, with the other
// family reverted when one fails; ifup, ifdown and group edits read and
// compile only what they touch (scoped.go).
package iptables

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// Tables reads and writes vmfw's part of both families' filter tables.
// *xtables.Client implements it. The narrow reads work only where Narrow
// says so (nf_tables).
type Tables interface {
	// Save reads family f's table with the rules' text.
	Save(ctx context.Context, f ruleset.Family) (*xtables.Snapshot, error)
	// Restore runs one iptables-restore --noflush transaction.
	Restore(ctx context.Context, f ruleset.Family, text string) error
	// Narrow reports whether the reads below work.
	Narrow() bool
	// SaveFingerprints reads f's table without rule text.
	SaveFingerprints(ctx context.Context, f ruleset.Family) (*xtables.Snapshot, error)
	// ChainLines reads the text of the named chains.
	ChainLines(ctx context.Context, f ruleset.Family, names []layout.Chain) (map[layout.Chain][]string, error)
	// ListChains names the chains of f's table.
	ListChains(ctx context.Context, f ruleset.Family) (map[layout.Chain]bool, error)
	// SaveChains reads the named chains and the hooks, without text.
	SaveChains(ctx context.Context, f ruleset.Family, names []layout.Chain) (*xtables.Snapshot, error)
}

// Sets reads and writes vmfw's ipsets. *ipset.Client implements it.
type Sets interface {
	// List reads vmfw's sets with their members.
	List(ctx context.Context) (map[string]*ipset.Observed, error)
	// Heads runs script as Restore does and then, in the same ipset
	// process, reads the headers of the named sets, without members, and
	// the names of vmfw's sets; a named set that does not exist is an
	// error.
	Heads(ctx context.Context, script string, names []string) (map[string]ipset.Head, []string, error)
	// Restore runs one ipset restore.
	Restore(ctx context.Context, script string) error
}

// Bridge reads and writes vmfw's part of the ebtables filter table.
// *ebtables.Client implements it; the narrow reads work only where Narrow
// says so (ebtables-nft).
type Bridge interface {
	Save(ctx context.Context) (layout.Observed, error)
	Restore(ctx context.Context, text string) error
	Narrow() bool
	ChainsExist(ctx context.Context, names []layout.Chain) (map[layout.Chain]bool, error)
	Hooks(ctx context.Context) (map[layout.Hook]int, error)
	// Targets reads what the named chains jump to, in rule order.
	Targets(ctx context.Context, names []layout.Chain) (map[layout.Chain][]layout.Chain, error)
}

// Backend is the iptables backend. Build one with New.
type Backend struct {
	tables  Tables
	sets    Sets
	bridge  Bridge
	desc    string
	flavour xtables.Mode
	// generation reads the nf_tables ruleset generation (Generationer).
	generation func(ctx context.Context) (uint32, error)

	// memory is what Mark remembered, nil when nothing is.
	memory atomic.Pointer[memory]
	// held is what the address sets hold after the backend's last plan
	// that found the kernel as it wanted or was written (setedit.go);
	// nil when not known. mu guards it.
	mu   sync.Mutex
	held map[string]heldSet
}

var (
	_ backend.Backend      = (*Backend)(nil)
	_ backend.Generationer = (*Backend)(nil)
	_ backend.Tracer       = (*Backend)(nil)
)

// Options are what New builds a backend on.
type Options struct {
	// Tables, Sets and Bridge talk to the kernel; a nil Bridge leaves
	// ebtables alone.
	Tables Tables
	Sets   Sets
	Bridge Bridge
	// Flavour is the iptables flavour Tables uses (nft, legacy).
	Flavour xtables.Mode
	// Describe names the tools, for status ("nft, ebtables-nft").
	Describe string
	// Generation reads the nf_tables ruleset generation; nil reads the
	// kernel's (xtables.Generation).
	Generation func(ctx context.Context) (uint32, error)
}

// New returns a backend on o's tools.
func New(o Options) *Backend {
	gen := o.Generation
	if gen == nil {
		gen = xtables.Generation
	}
	return &Backend{tables: o.Tables, sets: o.Sets, bridge: o.Bridge, desc: o.Describe, flavour: o.Flavour, generation: gen}
}

// Name is backend.IPTables.
func (b *Backend) Name() backend.Name { return backend.IPTables }

// Flavour is nft or legacy.
func (b *Backend) Flavour() string { return string(b.flavour) }

// Describe names the iptables and ebtables flavours in use.
func (b *Backend) Describe() string { return b.desc }

// state is vmfw's part of the kernel as read at the start of an operation.
type state struct {
	// full says tables, bridge and sets were read; a narrow state holds
	// only the chain names of the IPv4 table (listed).
	full   bool
	listed map[layout.Chain]bool

	tables map[ruleset.Family]*xtables.Snapshot
	// textless lists the families read without rule text (narrow reads
	// of a whole table); linesFor adds the text a change needs.
	textless map[ruleset.Family]bool
	bridge   layout.Observed
	sets     map[string]*ipset.Observed
	// remembered says sets came from memory (Mark), not the kernel.
	remembered bool
	// partial says a full state was read without the IPv6 table, the
	// sets and the bridge table: a narrow read on legacy, which reads the
	// whole IPv4 table to tell the installed interfaces (each has chains
	// in both families) and leaves the rest to the plan that needs it.
	// An edit of address sets planned from their configuration needs none
	// of it: not the 3.6 MB of ipset save of a set of 100,000 members
	// (~125 ms), nor another iptables-legacy-save process (5-38 ms on a
	// loaded 2-core machine, VMFW_TRACE in the bench's set rows).
	partial bool
}

// Installed names the interfaces whose chains are installed: every
// installed interface has an out chain in both families.
func (s *state) Installed() []string {
	seen := map[string]bool{}
	note := func(c layout.Chain) {
		if tap, ok := layout.InstalledTap(c); ok {
			seen[tap] = true
		}
	}
	if s.full {
		for _, t := range s.tables {
			for c := range t.Chains {
				note(c)
			}
		}
	} else {
		for c := range s.listed {
			note(c)
		}
	}
	out := make([]string, 0, len(seen))
	for t := range seen {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Read reads vmfw's chains, ipsets and bridge chains. Narrow, on
// nf_tables, it lists the IPv4 chains' names only (one netlink dump),
// which tells the installed interfaces; a scoped Plan then reads the few
// chains it touches. Legacy x_tables hands out whole tables, so there a
// narrow read is a full one.
func (b *Backend) Read(ctx context.Context, narrow bool) (backend.State, error) {
	if narrow && b.tables.Narrow() {
		start := time.Now()
		chains, err := b.tables.ListChains(ctx, ruleset.IPv4)
		if err != nil {
			return nil, err
		}
		trace.Since(start, "list chains")
		return &state{listed: chains}, nil
	}
	return b.readFull(ctx, narrow)
}

// readFull reads everything: both families' tables (fingerprints only
// where the kernel answers over netlink), the sets and the bridge table,
// or with partial the IPv4 table alone (see state.partial). The reads
// are independent and, at thousands of taps, each takes about a second:
// they run side by side.
func (b *Backend) readFull(ctx context.Context, partial bool) (*state, error) {
	st := &state{full: true, tables: map[ruleset.Family]*xtables.Snapshot{}, textless: map[ruleset.Family]bool{}, partial: true}
	if partial {
		s, textless, err := b.readTable(ctx, ruleset.IPv4)
		if err != nil {
			return nil, err
		}
		st.tables[ruleset.IPv4], st.textless[ruleset.IPv4] = s, textless
		return st, nil
	}
	return st, b.complete(ctx, st)
}

// complete reads what a partial state lacks, side by side: the tables
// of the families not read, the sets and the bridge table.
func (b *Backend) complete(ctx context.Context, st *state) error {
	if !st.partial {
		return nil
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(ruleset.Families)+2)
	b.readMissingTables(ctx, st, &wg, &mu, errs)
	var sets map[string]*ipset.Observed
	var remembered bool
	var bridge layout.Observed
	wg.Go(func() { sets, remembered, errs[len(errs)-2] = b.listSets(ctx) })
	if b.bridge != nil {
		wg.Go(func() { bridge, errs[len(errs)-1] = b.bridge.Save(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	st.sets, st.remembered, st.bridge, st.partial = sets, remembered, bridge, false
	return nil
}

// completeTables reads the tables a partial state lacks, and nothing
// else: what a scoped plan needs of it, which reads the sets and the
// bridge chains in scope itself.
func (b *Backend) completeTables(ctx context.Context, st *state) error {
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(ruleset.Families))
	b.readMissingTables(ctx, st, &wg, &mu, errs)
	wg.Wait()
	return errors.Join(errs...)
}

// readMissingTables starts, in wg, a read of each family's table st
// lacks, recording errors by family in errs.
func (b *Backend) readMissingTables(ctx context.Context, st *state, wg *sync.WaitGroup, mu *sync.Mutex, errs []error) {
	missing := make([]bool, len(ruleset.Families))
	for i, f := range ruleset.Families {
		missing[i] = st.tables[f] == nil
	}
	for i, f := range ruleset.Families {
		if !missing[i] {
			continue
		}
		wg.Go(func() {
			s, textless, err := b.readTable(ctx, f)
			mu.Lock()
			defer mu.Unlock()
			st.tables[f], st.textless[f], errs[i] = s, textless, err
		})
	}
}

// readTable reads vmfw's part of family f's table: its fingerprints only
// where the kernel answers over netlink (textless), else with the text.
func (b *Backend) readTable(ctx context.Context, f ruleset.Family) (s *xtables.Snapshot, textless bool, err error) {
	start := time.Now()
	if b.tables.Narrow() {
		s, err := b.tables.SaveFingerprints(ctx, f)
		if err != nil {
			return nil, false, err
		}
		trace.Since(start, "read the %s table's fingerprints", f)
		return s, true, nil
	}
	s, err = b.tables.Save(ctx, f)
	return s, false, err
}

// Usable reads, changing nothing, everything Read reads, and names the
// part that failed: iptables or ip6tables, ipset, ebtables.
func (b *Backend) Usable(ctx context.Context) error {
	for _, f := range ruleset.Families {
		if _, err := b.tables.Save(ctx, f); err != nil {
			tool := "iptables"
			if f == ruleset.IPv6 {
				tool = "ip6tables"
			}
			return fmt.Errorf("%s (%s): %w", tool, b.desc, err)
		}
	}
	if _, err := b.sets.List(ctx); err != nil {
		return fmt.Errorf("ipset: %w", err)
	}
	if b.bridge != nil {
		if _, err := b.bridge.Save(ctx); err != nil {
			return fmt.Errorf("ebtables: %w", err)
		}
	}
	return nil
}

// ForgetAddresses deletes addrs from every group's member set that lists
// them. Address sets are left alone: their members are networks the
// configuration names, not interfaces' addresses.
func (b *Backend) ForgetAddresses(ctx context.Context, addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return nil
	}
	sets, err := b.sets.List(ctx)
	if err != nil {
		return err
	}
	var script strings.Builder
	for _, name := range slices.Sorted(maps.Keys(sets)) {
		if kind, _, _, ok := layout.ParseSetName(name); !ok || kind != layout.GroupSet {
			continue
		}
		for _, a := range addrs {
			if member := strings.ToLower(a.String()); sets[name].Members[member] {
				fmt.Fprintf(&script, "del %s %s -exist\n", name, member)
			}
		}
	}
	b.forget()
	return b.sets.Restore(ctx, script.String())
}
