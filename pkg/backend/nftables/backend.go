// Package nftables is vmfw's native nftables backend (docs/nftables.md).
// It lays a policy out as two tables of its own, table bridge vmfw and
// table inet vmfw (package layout), whose chains are static: every
// interface is a handful of set elements, so attaching or detaching one
// sends elements only and the kernel validates no table for it. Every
// change of both tables is one nf_tables transaction (package nlnft), so
// a crash leaves the old ruleset or the new one and nothing needs a
// revert. Plans compare fingerprints of chains and elements of sets, so
// only what differs is sent.
package nftables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/trace"
)

// Kernel reads and writes vmfw's tables. nlnft.Client implements it;
// tests may fake it.
type Kernel interface {
	// Read reads the tables; with elements false without the sets'
	// elements; with only, the named sets' elements alone.
	Read(elements bool, only ...string) (*nlnft.Observed, error)
	// Write sends one batch as one transaction.
	Write(b *nlnft.Batch) error
	// Generation returns the ruleset generation.
	Generation() (uint32, error)
	// ReadChains reads the named chains of each table and every set's
	// signature, without elements.
	ReadChains(names map[layout.Family][]string) (*nlnft.Observed, error)
}

// Options are what New builds a backend on.
type Options struct {
	// Mark is the mask of packet-mark bits the backend may use; 0 takes
	// layout.DefaultMask. It needs at least five bits, none shared with
	// the iptables backend's mark.
	Mark uint32
	// Kernel talks to nf_tables; nil uses the current network namespace.
	Kernel Kernel
	// Hooks writes vmfw's rule in iptables' FORWARD and OUTPUT chains;
	// nil uses the host's iptables of flavour IPTables ("" detects it).
	Hooks    Hooks
	IPTables xtables.Mode
	// KeepSocket keeps one nf_tables netlink socket open for every read
	// and write (nlnft.Kept), for a process that makes change after
	// change: closing a socket after a change waits for the kernel to
	// free the replaced rules (nlnft.Client). Ignored with Kernel.
	KeepSocket bool
}

// Backend is the nftables backend. Build one with New.
type Backend struct {
	kernel Kernel
	hooks  Hooks
	marks  layout.Marks

	mu sync.Mutex
	// memory is the state remembered after the backend's own change, at
	// the generation its transaction made (Generationer).
	memory *kept
	// pending is the state the last Apply left, not yet Marked.
	pending *kept
	// fullNext makes the next plan a full one: a plan made from a hint
	// failed to apply, so the kernel is not what the hint said.
	fullNext bool
	// held is what the address sets' interval sets hold after the
	// backend's last write, or after a plan that found nothing to write
	// (setedit.go); nil when not known.
	held *heldSets
}

var (
	_ backend.Backend        = (*Backend)(nil)
	_ backend.Generationer   = (*Backend)(nil)
	_ backend.Watcher        = (*Backend)(nil)
	_ backend.PortAttributor = (*Backend)(nil)
	_ backend.Rechecker      = (*Backend)(nil)
)

// New returns a backend on o.
func New(o Options) (*Backend, error) {
	mask := o.Mark
	if mask == 0 {
		mask = layout.DefaultMask
	}
	m, err := layout.NewMarks(mask)
	if err != nil {
		return nil, err
	}
	k := o.Kernel
	switch {
	case k != nil:
	case o.KeepSocket:
		k = nlnft.Kept()
	default:
		k = nlnft.Client{}
	}
	h := o.Hooks
	if h == nil {
		h = &xtablesHooks{mode: o.IPTables}
	}
	return &Backend{kernel: k, hooks: h, marks: m}, nil
}

// Name is backend.NFTables.
func (b *Backend) Name() backend.Name { return backend.NFTables }

// Flavour is "": there is one.
func (b *Backend) Flavour() string { return "" }

// Describe names the kernel interface.
func (b *Backend) Describe() string { return "netlink" }

// AttributesByPort is true: routed, NATed and host-sent packets to a VM
// meet its in rules at bridge postrouting, by the port they leave
// through (backend.PortAttributor).
func (b *Backend) AttributesByPort() bool { return true }

// Marks returns the mark bits the backend uses.
func (b *Backend) Marks() layout.Marks { return b.marks }

// state is what Read saw.
type state struct {
	obs *nlnft.Observed
	// full says every set's elements and every chain were read.
	full bool
	// remembered says obs came from memory, not the kernel.
	remembered bool
	// installed caches Installed, sorted; nil until known.
	installed []string
}

// Installed names the elements of the ports set, sorted. The agent's
// remembered state carries them from its last change (installedAfter):
// computing them from 5000 elements cost 1.8 ms, a fifth of an ifup
// through the agent.
func (s *state) Installed() []string {
	if s.installed == nil {
		s.installed = installedOf(s.obs)
	}
	return slices.Clone(s.installed)
}

// installedOf names the elements of obs's ports set, sorted.
func installedOf(obs *nlnft.Observed) []string {
	out := []string{}
	t := obs.Tables[layout.Bridge]
	if t == nil || t.Sets[layout.SetPorts] == nil {
		return out
	}
	// Keys are names padded to 16 bytes: trimming them is what decoding
	// them as elements did, at a tenth of the cost (10 ms at 5000 taps
	// before, part of every ifup through the agent).
	out = slices.Grow(out, len(t.Sets[layout.SetPorts].Elements))
	for k := range t.Sets[layout.SetPorts].Elements {
		if len(k) == layout.TypeIfname.Len() {
			out = append(out, strings.TrimRight(k, "\x00"))
		}
	}
	sort.Strings(out)
	return out
}

// Read reads vmfw's tables: narrow, only the interfaces installed (the
// ports set); else everything. The agent's state remembered at its last
// change stands in for a read while the generation has not moved; it is
// not copied (plans only read it, and Apply changes it in place after
// its write).
func (b *Backend) Read(ctx context.Context, narrow bool) (backend.State, error) {
	if mem := b.remembered(); mem != nil {
		return &state{obs: mem.obs, full: true, remembered: true, installed: mem.installed}, nil
	}
	start := time.Now()
	if narrow {
		obs, err := b.kernel.Read(false, layout.SetPorts)
		if err != nil {
			return nil, err
		}
		trace.Since(start, "read the installed interfaces")
		return &state{obs: obs}, nil
	}
	obs, err := b.kernel.Read(true)
	if err != nil {
		return nil, err
	}
	trace.Since(start, "read vmfw's tables")
	return &state{obs: obs, full: true}, nil
}

// Current reports whether st was read from the kernel at the generation
// the kernel is at: every commit, vmfw's or anyone's, moves it. A
// remembered state is never current here: Read checks the memory itself.
func (b *Backend) Current(ctx context.Context, st backend.State) (bool, error) {
	s, ok := st.(*state)
	if !ok || s.remembered {
		return false, nil
	}
	gen, err := b.kernel.Generation()
	if err != nil {
		return false, err
	}
	return gen == s.obs.Gen, nil
}

// full returns st read in full.
func (b *Backend) fullState(st *state) (*state, error) {
	if st.full {
		return st, nil
	}
	start := time.Now()
	obs, err := b.kernel.Read(true)
	if err != nil {
		return nil, err
	}
	trace.Since(start, "read vmfw's tables")
	return &state{obs: obs, full: true}, nil
}

// Plan lays want out and compares it with the kernel, by fingerprint and
// element. With a hint it lays out and compares what the hinted
// interfaces or groups touch alone (planScoped), and falls back to the
// whole layout when the tables are not as the scope relies on. The hint
// also spares an interface's change (ifup, ifdown, a group edit) the read
// of vmfw's rules in iptables' chains, which such a change leaves as they
// are; a full plan (apply, flush, repair) and any plan that creates or
// deletes the tables checks them.
func (b *Backend) Plan(ctx context.Context, s backend.State, want *ruleset.Policy, hint *backend.Hint) (backend.Plan, error) {
	p, err := b.plan(ctx, s.(*state), want, hint)
	if err == nil && p.Empty() {
		// The tables hold want's sets already: as good as written.
		if p.edit != nil {
			b.setHeld(p.batch.Gen, p.edit.held)
		} else {
			b.setHeld(p.batch.Gen, b.heldAfter(p))
		}
	}
	return p, err
}

func (b *Backend) plan(ctx context.Context, s *state, want *ruleset.Policy, hint *backend.Hint) (*plan, error) {
	if hint != nil && hint.Members && len(hint.Sets) > 0 && want != nil {
		if p := b.planSetEdit(s, want, hint.Sets); p != nil {
			return p, nil
		}
	}
	if st := s; hint != nil && hint.Was != nil && want != nil && !b.takeFullNext() && !(!st.full && reattaches(st, want, hint)) {
		p, err := b.planScoped(st, want, hint)
		if err != nil || p != nil {
			return p, err
		}
		if !st.full {
			if p, err = b.planHinted(st, want, hint); err != nil || p != nil {
				return p, err
			}
		}
	}
	st, err := b.fullState(s)
	if err != nil {
		return nil, err
	}
	var rs *layout.Ruleset
	if want != nil {
		start := time.Now()
		rs = layout.Build(want, b.marks)
		trace.Since(start, "lay out %d interfaces", len(want.Interfaces))
	}
	p := diff(rs, st)
	p.held = heldOf(want, rs)
	if hint == nil || p.createsOrDeletes() {
		start := time.Now()
		hs, err := b.hooks.Read(ctx)
		if err != nil {
			return nil, fmt.Errorf("reading iptables' FORWARD and OUTPUT chains: %w", err)
		}
		p.hooks = planHooks(hs, want != nil, b.marks.Acc)
		p.summarizeHooks()
		trace.Since(start, "read vmfw's rules in iptables' chains")
	}
	return p, nil
}

// Apply writes the plan as one transaction. A plan made from remembered
// state is sent with the generation it was made at, which the kernel
// checks: when someone committed since, nothing is written and Apply
// returns backend.StaleError.
func (b *Backend) Apply(ctx context.Context, bp backend.Plan) error {
	p := bp.(*plan)
	if p.Empty() {
		return nil
	}
	if len(p.batch.Tables) == 0 {
		return b.applyHooks(ctx, p.hooks)
	}
	// What the address sets hold once the batch is in: known before the
	// memory is forgotten for the write.
	held := b.heldAfter(p)
	b.forget()
	start := time.Now()
	err := b.kernel.Write(p.batch)
	if err != nil {
		b.setHeld(0, nil)
		// A plan from a hint, or laid out for its scope alone, rests on
		// what it did not read or lay out: the kernel refusing it says
		// that was wrong, and the engine's retry plans in full.
		if p.hinted || p.scoped {
			b.mu.Lock()
			b.fullNext = true
			b.mu.Unlock()
		}
		if p.st.remembered || p.hinted || p.scoped || errors.Is(err, nlnft.ErrGeneration) {
			return &backend.StaleError{Err: err}
		}
		return err
	}
	trace.Since(start, "write the transaction")
	if p.edit != nil {
		// The kernel committed on top of Gen: the tables hold what the
		// memory the edit was planned from held, changed by the edit.
		b.appliedEdit(p.st, p.edit, p.batch.Gen+nlnft.Commits(p.batch))
	} else if p.batch.Gen != 0 && p.st.full {
		// The kernel committed on top of Gen, so the transactions made
		// Gen+Commits, and the tables hold what the plan's state held with
		// the batch applied: the state (the remembered one, or a full
		// read) follows it in place, at the cost of the change, not of
		// the tables. A state the batch does not fit (the kernel took
		// what the model refuses) is not remembered.
		start = time.Now()
		if err := p.st.obs.Apply(p.batch); err != nil {
			trace.Printf("not remembering the tables: %v", err)
			b.setHeld(0, nil)
		} else {
			b.mu.Lock()
			b.pending = &kept{obs: p.st.obs, installed: installedAfter(p.st.installed, p.batch)}
			b.mu.Unlock()
			b.setHeld(p.batch.Gen+nlnft.Commits(p.batch), held)
		}
		trace.Since(start, "remember the change")
	} else {
		b.setHeld(0, nil)
	}
	return b.applyHooks(ctx, p.hooks)
}

// reattaches reports whether the hint brings up an interface the tables
// hold already (an ifup of an attached tap, perhaps after its VM file
// changed). hint.Was gives it the settings the configuration has now,
// not those its elements were written with, and a narrow read does not
// read them: only a full plan finds the elements to change.
func reattaches(st *state, want *ruleset.Policy, hint *backend.Hint) bool {
	t := st.obs.Tables[layout.Bridge]
	if t == nil || t.Sets[layout.SetPorts] == nil {
		return false
	}
	ports := t.Sets[layout.SetPorts].Elements
	for _, name := range hint.Interfaces {
		if _, held := ports[string(layout.Ifname(name).Bytes)]; held && want.Interface(name) != nil {
			return true
		}
	}
	return false
}

// applyHooks writes vmfw's rules in iptables' chains, after the tables:
// they accept what the tables marked, so a rule that comes first passes
// nothing vmfw did not decide. It is not part of the nf_tables
// transaction; a failure is reported and the next full plan repairs it.
func (b *Backend) applyHooks(ctx context.Context, h *hookChange) error {
	if h.empty() {
		return nil
	}
	start := time.Now()
	if err := b.hooks.Change(ctx, h.delete, h.insert, h.rule); err != nil {
		return err
	}
	trace.Since(start, "write vmfw's rules in iptables' chains")
	return nil
}

// Usable reads everything Read reads, probes the kernel features the
// layout uses (nlnft.Client.Probe: an error names the one missing), and
// checks what the backend needs besides nf_tables: br_netfilter, which
// hands bridged packets to the inet table.
func (b *Backend) Usable(ctx context.Context) error {
	if _, err := b.kernel.Read(true); err != nil {
		return fmt.Errorf("nf_tables: %w", err)
	}
	if p, ok := b.kernel.(interface{ Probe() error }); ok {
		if err := p.Probe(); err != nil {
			return err
		}
	}
	for _, f := range []string{"/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables"} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("br_netfilter (module or built in) is needed to pass bridged packets to the inet table: %w", err)
		}
	}
	return nil
}

// ForgetAddresses deletes addrs from every membership set (and from the
// sets of VM addresses) that lists them.
func (b *Backend) ForgetAddresses(ctx context.Context, addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return nil
	}
	obs, err := b.kernel.Read(true)
	if err != nil {
		return err
	}
	batch := &nlnft.Batch{Gen: obs.Gen}
	for _, f := range []layout.Family{layout.Bridge, layout.Inet} {
		t := obs.Tables[f]
		if t == nil {
			continue
		}
		tc := &nlnft.TableChange{Family: f, DelElements: map[string][]layout.Element{}}
		for name, s := range t.Sets {
			if !isAddressSet(f, name) {
				continue
			}
			set := &layout.Set{Name: name, Key: []layout.Type{addressType(name)}}
			for _, a := range addrs {
				e := layout.Element{Key: []layout.Value{layout.Addr(a.Unmap())}}
				if e.Key[0].Type != set.Key[0] {
					continue
				}
				if _, ok := s.Elements[string(e.KeyBytes())]; ok {
					tc.DelElements[name] = append(tc.DelElements[name], e)
					tc.Sets = append(tc.Sets, set)
				}
			}
		}
		if len(tc.DelElements) > 0 {
			batch.Tables = append(batch.Tables, tc)
		}
	}
	b.forget()
	if len(batch.Tables) == 0 {
		return nil
	}
	return b.kernel.Write(batch)
}

// isAddressSet reports whether name is a set of addresses: a group's
// members or the VMs' addresses.
func isAddressSet(f layout.Family, name string) bool {
	if f == layout.Inet {
		return name == layout.SetVM4 || name == layout.SetVM6
	}
	l := len(name)
	return l > 6 && name[:3] == "sg-" && (name[l-3:] == "-v4" || name[l-3:] == "-v6")
}

func addressType(name string) layout.Type {
	if name == layout.SetVM6 || name[len(name)-2:] == "v6" {
		return layout.TypeIPv6
	}
	return layout.TypeIPv4
}
