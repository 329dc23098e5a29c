// Package backend is the seam between vmfw's engine and the kernel
// (docs/design.md, "The backend seam"). The engine loads the
// configuration, takes the namespace lock, resolves which interfaces are
// attached and compiles the policy (package ruleset); a Backend lays that
// policy out as its own kernel objects and owns everything
// kernel-specific: reading what is installed, planning the smallest
// change, writing it all or nothing (its own ordering and revert), drift
// and counters. The iptables backend (per-tap chains, ipsets, ebtables)
// and the nftables backend implement it; Fake is an in-memory one for
// tests of the code above the seam.
package backend

import (
	"context"
	"io"
	"net/netip"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Name names a backend, as vmfw.toml's backend key and --backend do.
type Name string

// The backends.
const (
	IPTables Name = "iptables"
	NFTables Name = "nftables"
)

// Backend puts a policy into the kernel of one network namespace. The
// engine calls it under the namespace lock, one operation at a time; a
// Rechecker's narrow Read may come before the lock.
type Backend interface {
	// Name says which backend this is.
	Name() Name
	// Flavour names the variant in use where a backend has several: nft
	// or legacy for iptables; "" otherwise.
	Flavour() string
	// Describe names the backend and the tools or kernel interfaces it
	// uses, for status ("nft, ebtables-nft").
	Describe() string
	// Read reads what the backend has installed. With narrow set it may
	// read only what tells which interfaces are installed; a Plan on a
	// narrow State reads what else it needs.
	Read(ctx context.Context, narrow bool) (State, error)
	// Plan computes the change that takes the kernel from st to want (a
	// nil want removes everything the backend installed). hint, when
	// not nil, says what changed since the installed policy so that the
	// backend can read and compile less; the plan must be the one it
	// would make without the hint.
	Plan(ctx context.Context, st State, want *ruleset.Policy, hint *Hint) (Plan, error)
	// Apply writes p: all of it or, on error, none of it.
	Apply(ctx context.Context, p Plan) error
	// Status compares what st holds with want: what differs, per
	// interface and outside any, and what each interface's rules dropped.
	Status(ctx context.Context, st State, want *ruleset.Policy) (*Status, error)
	// Usable reads, changing nothing, everything Read reads; its error
	// names the tool or kernel part that failed.
	Usable(ctx context.Context) error
	// ForgetAddresses takes addrs out of every membership set without
	// reading the configuration, for an attachment whose record is
	// forgotten while the configuration does not load: whoever gets an
	// address next must not inherit the old holder's groups.
	ForgetAddresses(ctx context.Context, addrs []netip.Addr) error
}

// State is what a backend read of the kernel.
type State interface {
	// Installed names the interfaces whose filtering is installed,
	// sorted.
	Installed() []string
}

// Plan is a change a backend computed and can apply.
type Plan interface {
	// Empty reports whether the plan changes nothing.
	Empty() bool
	// Summary says what the plan changes, for reports, logs and metrics.
	Summary() *Summary
	// WriteTo renders the plan as the backend writes it (apply --dry-run).
	io.WriterTo
}

// Hint says what changed between the policy installed and the one wanted.
// Every field is a promise the engine makes from the configuration; a
// backend checks what it reads against it and plans everything when the
// kernel disagrees.
type Hint struct {
	// Was is the policy as installed: the interfaces State.Installed
	// names, compiled from the configuration of the wanted policy (or,
	// for Groups, from the configuration before the edit).
	Was *ruleset.Policy
	// Interfaces names the interfaces attached, detached or re-attached;
	// every other interface is attached in Was and in the wanted policy
	// with the same settings.
	Interfaces []string
	// Groups names the groups whose rules alone changed between Was and
	// the wanted policy, which attach the same interfaces.
	Groups []string
	// Members says that only the members of sets changed: of groups
	// (cluster membership) or of address sets (an edit of sets/ alone).
	// The same interfaces, settings and rules, and the same sets
	// referenced.
	Members bool
	// Sets, with Members, names the address sets whose entries and
	// excepts alone changed, each with its configuration before and
	// after the edit; every other set, of a group or an address set,
	// has the same members before and after. A backend whose kernel is
	// known to hold the sets as they were may write only the difference
	// of the two (the prefixes added, removed, or moved between entries
	// and except) instead of laying out and comparing every member.
	Sets []SetEdit
}

// SetEdit is an edit of one address set: its configuration before and
// after. A set the edit created or removed is nil on that side.
type SetEdit struct {
	Name     string
	Was, Now *config.Set
}

// Summary is what a change does, computed once by the backend.
type Summary struct {
	// Tables maps each part of the kernel the backend writes (for
	// iptables "ipv4", "ipv6" and "bridge") to what changes there.
	Tables map[string]TableChanges `json:"chains"`
	// Sets is what changes in vmfw's address and membership sets.
	Sets SetChanges `json:"sets"`
}

// TableChanges is what a change writes in one part of the kernel.
type TableChanges struct {
	// Created, Rewritten and Deleted list whole objects (chains).
	Created   []string `json:"created"`
	Rewritten []string `json:"rewritten"`
	Deleted   []string `json:"deleted"`
	// HooksAdded and HooksRemoved name the jumps from the kernel's hooks
	// or built-in chains ("FORWARD -> vmfw-FORWARD").
	HooksAdded   []string `json:"hooks_added"`
	HooksRemoved []string `json:"hooks_removed"`
}

// Empty reports whether nothing changes in the table.
func (t TableChanges) Empty() bool {
	return len(t.Created)+len(t.Rewritten)+len(t.Deleted)+len(t.HooksAdded)+len(t.HooksRemoved) == 0
}

// SetChanges is what a change does to vmfw's sets.
type SetChanges struct {
	// Created and Destroyed list whole sets.
	Created   []string `json:"created"`
	Destroyed []string `json:"destroyed"`
	// Added and Removed map a set to the members it gains and loses.
	Added   map[string][]string `json:"added"`
	Removed map[string][]string `json:"removed"`
}

// NewSetChanges returns SetChanges with every list and map empty, not
// nil, as JSON readers expect.
func NewSetChanges() SetChanges {
	return SetChanges{Created: []string{}, Destroyed: []string{}, Added: map[string][]string{}, Removed: map[string][]string{}}
}

// Empty reports whether no set changes.
func (s SetChanges) Empty() bool {
	return len(s.Created)+len(s.Destroyed)+len(s.Added)+len(s.Removed) == 0
}

// MembersAdded and MembersRemoved count the members the change adds and
// removes, over every set.
func (s SetChanges) MembersAdded() int   { return countMembers(s.Added) }
func (s SetChanges) MembersRemoved() int { return countMembers(s.Removed) }

func countMembers(m map[string][]string) int {
	n := 0
	for _, l := range m {
		n += len(l)
	}
	return n
}

// Empty reports whether the summary changes nothing.
func (s *Summary) Empty() bool {
	for _, t := range s.Tables {
		if !t.Empty() {
			return false
		}
	}
	return s.Sets.Empty()
}

// Status is what Backend.Status found.
type Status struct {
	// BaseDrifted lists what differs outside any interface's objects:
	// entry chains, dispatch, hooks.
	BaseDrifted []Drift
	// Interfaces holds the installed interfaces of the wanted policy.
	Interfaces map[string]*InterfaceStatus
	// Sets holds the address sets of the wanted policy (Policy.Sets),
	// by name.
	Sets map[string]*SetStatus
}

// SetStatus is what the kernel holds of one address set.
type SetStatus struct {
	// Members counts the members the kernel's set holds per family
	// ("ipv4", "ipv6"); a family without a kernel set is absent. How
	// entries become members is the backend's: one each for ipset's
	// hash:net, the effective prefixes for nftables.
	Members map[string]int
	// Drifted lists what differs from the set's configuration.
	Drifted []Drift
}

// InterfaceStatus is one installed interface's state.
type InterfaceStatus struct {
	// Drifted lists what differs in the interface's objects, its groups'
	// and its addresses' membership of its groups' sets.
	Drifted []Drift
	// DroppedIn and DroppedOut count what the interface's own rules
	// (policies, anti-spoofing) dropped or rejected, both families.
	DroppedIn, DroppedOut Counter
}

// Drift is one kernel object that differs from the wanted policy.
type Drift struct {
	// Object names it: "ipv4/tap110i0-in", "ipv4/FORWARD", "ipset sg-web-v4".
	Object string
	// Problem says how: "missing", "drifted", "unexpected", "jump to
	// vmfw-FORWARD missing", "member 192.0.2.10 missing".
	Problem string
}

func (d Drift) String() string { return d.Object + ": " + d.Problem }

// Counter is what rules matched.
type Counter struct {
	Packets, Bytes uint64
}

// Add adds c to k.
func (k *Counter) Add(c Counter) { k.Packets += c.Packets; k.Bytes += c.Bytes }

// Generationer is implemented by a backend whose kernel tells cheaply
// whether the backend's objects may have changed: the agent's drift check
// (docs/agent.md) reads everything only when they may have.
type Generationer interface {
	// Mark records the kernel's state as the backend's own, after a
	// change it wrote and read back.
	Mark(ctx context.Context) error
	// Unchanged reports whether the kernel is as it was at the last Mark.
	Unchanged(ctx context.Context) (bool, error)
}

// Rechecker is implemented by a backend that can tell cheaply whether a
// State it read is still what the kernel holds (nf_tables' ruleset
// generation moves with every commit). The engine may then make an
// interface change's narrow Read before it takes the namespace lock,
// beside loading the configuration, and use that State under the lock
// only when Current says nothing committed since.
type Rechecker interface {
	// Current reports whether st, from Read, is still what the kernel
	// holds.
	Current(ctx context.Context, st State) (bool, error)
}

// StaleError is what Apply returns when it failed on a plan made from a
// state the backend remembered instead of reading (Generationer): the
// caller reads afresh and plans again, once.
type StaleError struct{ Err error }

func (e *StaleError) Error() string { return e.Err.Error() }
func (e *StaleError) Unwrap() error { return e.Err }

// Watcher is implemented by a backend that can tell at once when someone
// else changed or deleted its objects (a foreign "nft flush ruleset"),
// so that the agent repairs them without waiting for its next drift
// check (docs/nftables.md, "Repair").
type Watcher interface {
	// Watch signals on the returned channel when someone else changed or
	// deleted the backend's objects. Signals coalesce: one pending
	// signal stands for any number of changes. The channel is closed
	// when ctx ends or watching fails.
	Watch(ctx context.Context) (<-chan struct{}, error)
}

// Warner is implemented by a backend that can tell what about the host
// may keep its ruleset from working as intended without being drift: a
// foreign chain's DROP policy, a kernel feature or setting missing.
// check and status print them.
type Warner interface {
	// Warnings says what it found, one sentence each; none is nil.
	Warnings(ctx context.Context) ([]string, error)
}

// PortAttributor is implemented by a backend that checks routed, NATed
// and hypervisor-sent packets to a VM by the bridge port they leave
// through rather than by the VM's addresses (the nftables backend): every
// enabled interface's in rules then see such traffic, whatever addresses
// it lists (docs/routing.md, docs/nftables.md).
type PortAttributor interface {
	AttributesByPort() bool
}
