package engine

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// The states Status reports for a tap or the base chains.
const (
	StateInSync       = "in-sync"
	StateDrifted      = "drifted"
	StateNotInstalled = "not-installed"
	StateUnconfigured = "unconfigured"
	// StateUnused is an address set no rule of an attached interface's
	// groups refers to: the backend holds none of it.
	StateUnused = "unused"
)

// TapStatus describes one managed tap.
type TapStatus struct {
	Tap string `json:"tap"`
	// VMID is the VM the tap belongs to; nil for an interface a CNI or
	// libvirt record describes without a VM file.
	VMID      *int     `json:"vmid,omitempty"`
	VMName    string   `json:"vm_name,omitempty"`
	Enabled   bool     `json:"enabled"`
	Groups    []string `json:"groups"`
	PolicyIn  string   `json:"policy_in,omitempty"`
	PolicyOut string   `json:"policy_out,omitempty"`
	// State is in-sync, drifted, not-installed (configured, the tap exists,
	// but its chains do not) or unconfigured (chains of a tap the
	// configuration no longer has; the next apply removes them).
	State string `json:"state"`
	// Drifted lists the chains (family/chain) that differ from the configuration.
	Drifted []string `json:"drifted,omitempty"`
	// DroppedIn and DroppedOut count packets dropped or rejected by the
	// tap's own rules (policy and anti-spoofing), both families.
	DroppedIn  uint64 `json:"dropped_in"`
	DroppedOut uint64 `json:"dropped_out"`
	// DroppedInBytes and DroppedOutBytes are the same packets' bytes.
	DroppedInBytes  uint64 `json:"dropped_in_bytes"`
	DroppedOutBytes uint64 `json:"dropped_out_bytes"`
	// Routed says how traffic the hypervisor routes, NATs or sends to the
	// tap is filtered: filtered, listed-only, dropped or unfiltered
	// (docs/routing.md); RoutedNote says it in a sentence. Empty for an
	// unconfigured tap.
	Routed     string `json:"routed,omitempty"`
	RoutedNote string `json:"routed_note,omitempty"`
}

// Status is what Status reports.
type Status struct {
	// Backend names the backend in use: iptables or nftables.
	Backend string `json:"backend,omitempty"`
	// Tools names the tools or kernel interfaces it uses ("nft,
	// ebtables-nft").
	Tools string `json:"tools,omitempty"`
	// Warnings are what an operator must know that is not drift: the
	// other backend's ruleset installed, a foreign DROP policy, a missing
	// prerequisite.
	Warnings []string `json:"warnings,omitempty"`
	// Base is the state of vmfw's entry and dispatch chains and hooks.
	Base string `json:"base"`
	// BaseDrifted lists what differs there.
	BaseDrifted []string `json:"base_drifted,omitempty"`
	// Taps are the managed taps, sorted by name.
	Taps []TapStatus `json:"taps"`
	// Sets are the configuration's address sets, sorted by name; only
	// when Status reports every tap.
	Sets []SetStatus `json:"sets"`
}

// SetStatus describes one address set (sets/NAME.toml).
type SetStatus struct {
	Name string `json:"name"`
	File string `json:"file"`
	// Entries and Except count the set's entries and excepts.
	Entries int `json:"entries"`
	Except  int `json:"except"`
	// State is in-sync, drifted, or unused (no rule of an attached
	// interface's groups refers to it, so the kernel holds none of it).
	State string `json:"state"`
	// Kernel counts the members of the set's kernel objects per family
	// ("ipv4", "ipv6"), as the backend lays the set out.
	Kernel map[string]int `json:"kernel_members,omitempty"`
	// Drifted says what differs in the kernel.
	Drifted []string `json:"drifted,omitempty"`
}

// Status reports each managed tap: installed or configured and present.
// With tap set, only that tap is reported.
func (e *Engine) Status(ctx context.Context, tap string) (*Status, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	st, links, err := e.readWithLinks(ctx)
	if err != nil {
		return nil, err
	}
	installed := st.Installed()
	want, err := ruleset.Compile(r.model, nicsFor(r, installed))
	if err != nil {
		return nil, err
	}
	bs, err := e.kernel.Backend.Status(ctx, st, want)
	if err != nil {
		return nil, err
	}
	out := &Status{Backend: string(e.kernel.Backend.Name()), Tools: e.kernel.Backend.Describe(), Base: StateInSync}
	if out.Warnings, err = e.warnings(ctx); err != nil {
		return nil, err
	}
	for _, d := range bs.BaseDrifted {
		out.BaseDrifted = append(out.BaseDrifted, d.Object)
	}
	if len(out.BaseDrifted) > 0 {
		out.Base = StateDrifted
	}
	names := map[string]bool{}
	for _, t := range installed {
		names[t] = true
	}
	for _, n := range r.present(links) {
		names[n.Tap] = true
	}
	for _, t := range slices.Sorted(maps.Keys(names)) {
		if tap == "" || t == tap {
			out.Taps = append(out.Taps, tapStatus(r, t, bs.Interfaces[t], slices.Contains(installed, t), byPort(e.kernel.Backend)))
		}
	}
	out.Sets = []SetStatus{}
	if tap == "" {
		for _, name := range slices.Sorted(maps.Keys(r.model.Sets)) {
			out.Sets = append(out.Sets, setStatus(r.model.Sets[name], bs.Sets[name]))
		}
	}
	return out, nil
}

// Warnings says what about the host keeps vmfw's ruleset from working as
// intended without being drift (status and check print it): the other
// backend's ruleset installed, and what the backend finds (a foreign
// DROP policy, a missing prerequisite).
func (e *Engine) Warnings(ctx context.Context) ([]string, error) {
	release, err := e.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	return e.warnings(ctx)
}

func (e *Engine) warnings(ctx context.Context) ([]string, error) {
	var out []string
	if o := e.kernel.Other; o != nil {
		have, err := o.Installed(ctx)
		if err != nil {
			return nil, fmt.Errorf("looking for the %s backend's ruleset: %w", o.Name, err)
		}
		if have {
			out = append(out, fmt.Sprintf("the %s backend's ruleset is installed too: \"vmfw apply\" removes it, and ifup, ifdown, the hooks and CNI refuse until then", o.Name))
		}
	}
	if w, ok := e.kernel.Backend.(backend.Warner); ok {
		ws, err := w.Warnings(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, ws...)
	}
	return out, nil
}

// setStatus describes set s from its configuration and what the backend
// found of it (is, nil when no rule of the installed policy refers to it).
func setStatus(s *config.Set, is *backend.SetStatus) SetStatus {
	ss := SetStatus{Name: s.Name, File: s.File, Entries: len(s.Entries), Except: len(s.Except), State: StateUnused}
	if is == nil {
		return ss
	}
	ss.State, ss.Kernel = StateInSync, is.Members
	for _, d := range is.Drifted {
		ss.Drifted = append(ss.Drifted, d.String())
	}
	if len(ss.Drifted) > 0 {
		ss.State = StateDrifted
	}
	return ss
}

// tapStatus describes tap from its configuration (src) and what the
// backend found installed (is, nil when the configuration does not name
// it).
func tapStatus(src nicSource, tap string, is *backend.InterfaceStatus, installed, byPort bool) TapStatus {
	ts := TapStatus{Tap: tap, State: StateInSync, Groups: []string{}}
	nic := src.NIC(tap)
	if nic == nil {
		if vmid, _, ok := config.ParseTapName(tap); ok {
			ts.VMID = &vmid
		}
		ts.State = StateUnconfigured
		return ts
	}
	if nic.VM.File != "" {
		ts.VMID = &nic.VM.ID
	}
	ts.VMName, ts.Enabled = nic.VM.Name, nic.VM.Enable
	ts.Groups = append(ts.Groups, nic.Groups...)
	ts.PolicyIn, ts.PolicyOut = string(nic.VM.PolicyIn), string(nic.VM.PolicyOut)
	attr := ruleset.AttributeFor(nic, byPort)
	ts.Routed, ts.RoutedNote = string(attr), attr.Explain()
	if byPort && attr == ruleset.Filtered {
		ts.RoutedNote = "routed, NATed and hypervisor-sent traffic meets its in rules at the bridge port it leaves through"
	}
	if !installed || is == nil {
		ts.State = StateNotInstalled
		return ts
	}
	for _, d := range is.Drifted {
		if !slices.Contains(ts.Drifted, d.Object) {
			ts.Drifted = append(ts.Drifted, d.Object)
		}
	}
	if len(ts.Drifted) > 0 {
		ts.State = StateDrifted
	}
	ts.DroppedIn, ts.DroppedInBytes = is.DroppedIn.Packets, is.DroppedIn.Bytes
	ts.DroppedOut, ts.DroppedOutBytes = is.DroppedOut.Packets, is.DroppedOut.Bytes
	return ts
}

// byPort reports whether be attributes routed, NATed and host-sent
// traffic to an interface by the bridge port it leaves through
// (backend.PortAttributor).
func byPort(be backend.Backend) bool {
	pa, ok := be.(backend.PortAttributor)
	return ok && pa.AttributesByPort()
}

// UnusableError says which part of what an engine reads failed.
type UnusableError struct {
	// What names it: the configuration directory, iptables or ip6tables
	// of the backend, ipset.
	What string
	Err  error
}

func (e *UnusableError) Error() string { return e.What + ": " + e.Err.Error() }
func (e *UnusableError) Unwrap() error { return e.Err }

// Usable reads, changing nothing, what every operation reads: the
// configuration and everything the backend reads (CNI STATUS). Its error
// is an *UnusableError.
func (e *Engine) Usable(ctx context.Context) error {
	if _, err := e.load(); err != nil {
		return &UnusableError{What: "the configuration directory " + e.ConfigDir, Err: err}
	}
	if err := e.kernel.Backend.Usable(ctx); err != nil {
		return &UnusableError{What: string(e.kernel.Backend.Name()), Err: err}
	}
	return nil
}
