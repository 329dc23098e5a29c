package engine

import (
	"context"
	"slices"
	"sort"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// The states Status reports for a tap or the base chains.
const (
	StateInSync       = "in-sync"
	StateDrifted      = "drifted"
	StateNotInstalled = "not-installed"
	StateUnconfigured = "unconfigured"
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
	// Backend is the iptables backend in use.
	Backend string `json:"backend,omitempty"`
	// Base is the state of vmfw's entry and dispatch chains and hooks.
	Base string `json:"base"`
	// BaseDrifted lists what differs there.
	BaseDrifted []string `json:"base_drifted,omitempty"`
	// Taps are the managed taps, sorted by name.
	Taps []TapStatus `json:"taps"`
}

// Status reports each managed tap: installed or configured and present.
// With tap set, only that tap is reported.
func (e *Engine) Status(ctx context.Context, tap string) (*Status, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	m := r.model
	st, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	links, err := e.kernel.Host.Links()
	if err != nil {
		return nil, err
	}
	installed := st.installed()
	rs, err := layout.FromConfig(m, nicsFor(r, installed))
	if err != nil {
		return nil, err
	}
	out := &Status{Backend: e.Backend, Base: StateInSync}
	for _, f := range ruleset.Families {
		want := rs.Tables[f]
		plan := layout.Diff(want, st.tables[f].Observed)
		for _, c := range append(append(append([]layout.Chain{}, plan.Create...), plan.Rewrite...), plan.Delete...) {
			if isBaseChain(c) {
				out.BaseDrifted = append(out.BaseDrifted, f.String()+"/"+string(c))
			}
		}
		for _, h := range append(append([]layout.Hook{}, plan.AddHooks...), plan.DelHooks...) {
			out.BaseDrifted = append(out.BaseDrifted, f.String()+"/"+string(h.From)+" jump")
		}
	}
	if e.kernel.Bridge != nil {
		plan := layout.Diff(rs.Bridge, st.bridge)
		for _, c := range append(append(append([]layout.Chain{}, plan.Create...), plan.Rewrite...), plan.Delete...) {
			if isBaseChain(c) {
				out.BaseDrifted = append(out.BaseDrifted, "bridge/"+string(c))
			}
		}
		for _, h := range append(append([]layout.Hook{}, plan.AddHooks...), plan.DelHooks...) {
			out.BaseDrifted = append(out.BaseDrifted, "bridge/"+string(h.From)+" jump")
		}
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
	isInstalled := map[string]bool{}
	for _, t := range installed {
		isInstalled[t] = true
	}
	want := wanted{tables: map[ruleset.Family]map[layout.Chain]*layout.ChainRules{}, rs: rs}
	for _, f := range ruleset.Families {
		want.tables[f] = rs.Tables[f].Index()
	}
	if rs.Bridge != nil {
		want.bridge = rs.Bridge.Index()
	}
	for t := range names {
		if tap != "" && t != tap {
			continue
		}
		out.Taps = append(out.Taps, e.tapStatus(r, want, st, t, isInstalled[t]))
	}
	sort.Slice(out.Taps, func(i, j int) bool { return out.Taps[i].Tap < out.Taps[j].Tap })
	return out, nil
}

func isBaseChain(c layout.Chain) bool { return layout.IsBaseChain(c) }

// wanted is the desired ruleset with its chains indexed by name: status
// looks up several chains per tap.
type wanted struct {
	rs     *layout.Ruleset
	tables map[ruleset.Family]map[layout.Chain]*layout.ChainRules
	bridge map[layout.Chain]*layout.ChainRules
}

func (e *Engine) tapStatus(src nicSource, w wanted, st *kernelState, tap string, installed bool) TapStatus {
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
	attr := ruleset.Attribute(nic)
	ts.Routed, ts.RoutedNote = string(attr), attr.Explain()
	if !installed {
		ts.State = StateNotInstalled
		return ts
	}
	chains := layout.TapChains(tap)
	if nic.VM.Enable {
		for _, g := range nic.Groups {
			chains = append(chains, layout.GroupChain(g, "in"), layout.GroupChain(g, "lin"), layout.GroupChain(g, "out"))
		}
	}
	for _, f := range ruleset.Families {
		have := st.tables[f]
		for _, name := range chains {
			c := w.tables[f][name]
			got, present := have.Chains[name]
			if c == nil {
				if present {
					ts.Drifted = append(ts.Drifted, f.String()+"/"+string(name))
				}
				continue
			}
			if !present || !slices.Equal(got, c.Hashes()) {
				ts.Drifted = append(ts.Drifted, f.String()+"/"+string(name))
			}
			if _, _, isGroup := layout.ParseGroupChain(name); isGroup {
				continue
			}
			dropped := droppedBy(c, got, have.Counters[name])
			if layout.IsInChain(name) {
				ts.DroppedIn += dropped.Packets
				ts.DroppedInBytes += dropped.Bytes
			} else {
				ts.DroppedOut += dropped.Packets
				ts.DroppedOutBytes += dropped.Bytes
			}
		}
	}
	if e.kernel.Bridge != nil {
		name := layout.L2Chain(tap)
		want, got := w.bridge[name], st.bridge.Chains[name]
		_, present := st.bridge.Chains[name]
		if (want == nil && present) || (want != nil && (!present || !slices.Equal(got, w.rs.Bridge.Fingerprints(want)))) {
			ts.Drifted = append(ts.Drifted, "bridge/"+string(name))
		}
	}
	if len(ts.Drifted) > 0 {
		ts.State = StateDrifted
	}
	return ts
}

// droppedBy sums the counters of the chain's DROP and REJECT rules, found
// in the kernel by their fingerprints.
func droppedBy(c *layout.ChainRules, hashes []string, counters []xtables.Counter) xtables.Counter {
	var sum xtables.Counter
	for _, r := range c.Rules {
		if !strings.HasSuffix(r.Spec, "-j DROP") && !strings.Contains(r.Spec, "-j REJECT") {
			continue
		}
		h := r.Hash(c.Name)
		for i, got := range hashes {
			if got == h && i < len(counters) {
				sum.Packets += counters[i].Packets
				sum.Bytes += counters[i].Bytes
			}
		}
	}
	return sum
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
// configuration, both families' filter tables and vmfw's ipsets (CNI
// STATUS). Its error is an *UnusableError.
func (e *Engine) Usable(ctx context.Context) error {
	if _, err := e.load(); err != nil {
		return &UnusableError{What: "the configuration directory " + e.ConfigDir, Err: err}
	}
	for _, f := range ruleset.Families {
		if _, err := e.kernel.Firewall.Save(ctx, f); err != nil {
			tool := "iptables"
			if f == ruleset.IPv6 {
				tool = "ip6tables"
			}
			return &UnusableError{What: tool + " (" + e.Backend + ")", Err: err}
		}
	}
	if _, err := e.kernel.Sets.List(ctx); err != nil {
		return &UnusableError{What: "ipset", Err: err}
	}
	return nil
}
