// Package interp is the iptables backend's side of vmfw trace
// (docs/trace.md): an interpreter of the iptables and ebtables rules vmfw
// writes (interp.go, options.go, l2.go, one chain walk for both in
// chains.go), the packet's way through the hooks vmfw installs for each
// path (path.go), and drift on that way (drift.go).
//
// The same interpreter walks the rules read back from the kernel and the
// rules the backend lays out for a policy, so that the kernel's answer
// can be checked against the configuration's and everything that differs
// on the packet's way named. Like package layout it is pure: the backend
// reads the kernel (Kernel) and tests build kernels by hand.
package interp

import (
	"net/netip"
	"sync"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Kernel is vmfw's part of the kernel's firewall as the iptables backend
// read it back, with the rules' text: what vmfw trace walks.
type Kernel struct {
	// Backend names the iptables and ebtables tools, for the report.
	Backend string
	// Interfaces are the interfaces whose chains are installed, sorted.
	Interfaces []string
	// Tables holds each family's chains with their rules' text (Lines)
	// and fingerprints (Chains), and the hooks.
	Tables map[ruleset.Family]layout.Observed
	// Bridge is vmfw's part of the ebtables filter table; nil when
	// ebtables is not managed.
	Bridge *layout.Observed
	// Sets maps vmfw's hash:ip ipsets (groups' members) to their
	// members.
	Sets map[string]map[netip.Addr]bool
	// Nets maps vmfw's hash:net ipsets (address sets) to their members.
	Nets map[string]NetSet

	// laidOut is the layout of installed, the policy of the installed
	// interfaces: every trace of a batch compares the kernel with it, so
	// it is laid out once.
	mu        sync.Mutex
	installed *ruleset.Policy
	laidOut   *layout.Ruleset
}

var _ backend.Inspection = (*Kernel)(nil)

// Installed names the interfaces whose chains are installed.
func (k *Kernel) Installed() []string { return k.Interfaces }

// Describe names the tools the kernel was read with.
func (k *Kernel) Describe() string { return k.Backend }

// Trace lays out installed and want and prepares the walks of one flow
// over them and over the kernel.
func (k *Kernel) Trace(installed, want *ruleset.Policy, name func(ruleset.Origin) string) backend.KernelTrace {
	f := &flow{k: k, name: name, actual: k.layOut(installed), machines: map[ruleset.Family]*machines{}, policies: []*ruleset.Policy{want, installed}}
	f.compiled = f.actual
	if want != installed {
		f.compiled = layout.Build(want)
	}
	return f
}

// layOut returns the layout of p, the policy of the installed interfaces.
func (k *Kernel) layOut(p *ruleset.Policy) *layout.Ruleset {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.installed != p {
		k.installed, k.laidOut = p, layout.Build(p)
	}
	return k.laidOut
}

// flow is one trace's walks: over the kernel and over the layouts of the
// wanted policy (compiled) and the installed one (actual), which drift
// compares the kernel with. compiled and actual are one when the policies
// are.
type flow struct {
	k                *Kernel
	name             func(ruleset.Origin) string
	compiled, actual *layout.Ruleset
	machines         map[ruleset.Family]*machines
	// policies are the wanted policy and the installed one, where a frame
	// to a VM finds its destination MAC (backend.DestinationMAC).
	policies []*ruleset.Policy
}

// machines are the interpreters of one family's rules: the kernel's, the
// compiled and the actual ones, each for the IP table and the bridge
// table (nil when ebtables is not managed).
type machines struct {
	kernelIP, compiledIP, actualIP *machine
	kernelL2, compiledL2, actualL2 *l2machine
	// want, wantL2 and wantSets are what drift compares with: actual's
	// chains by name and its sets' members.
	want, wantL2 map[layout.Chain]*layout.ChainRules
	wantSets     map[string]map[netip.Addr]bool
	wantNets     map[string]NetSet
}

// machinesFor parses the rules of family f once per flow: every
// candidate packet of a trace walks the same rules.
func (t *flow) machinesFor(f ruleset.Family) *machines {
	if m := t.machines[f]; m != nil {
		return m
	}
	m := &machines{compiledIP: compiledMachine(t.compiled, f), compiledL2: compiledL2(t.compiled)}
	m.actualIP, m.actualL2 = m.compiledIP, m.compiledL2
	if t.actual != t.compiled {
		m.actualIP, m.actualL2 = compiledMachine(t.actual, f), compiledL2(t.actual)
	}
	obs := t.k.Tables[f]
	m.kernelIP = newMachine(obs.Lines, obs.Chains, t.k.Sets, t.k.Nets)
	if t.k.Bridge != nil {
		m.kernelL2 = newL2Machine(t.k.Bridge.Chains)
	}
	m.want = t.actual.Tables[f].Index()
	if t.actual.Bridge != nil {
		m.wantL2 = t.actual.Bridge.Index()
	}
	m.wantSets, m.wantNets = Sets(t.actual.Sets)
	t.machines[f] = m
	return m
}

// Walk follows p through the kernel's rules and the compiled ones, and
// names the drift on the kernel's way.
func (t *flow) Walk(p backend.Packet) (kernel, compiled backend.Walk) {
	m := t.machinesFor(p.Family)
	c := t.walk(m.compiledIP, m.compiledL2, nil, p)
	a := c
	if t.actual != t.compiled {
		a = t.walk(m.actualIP, m.actualL2, nil, p)
	}
	k := t.walk(m.kernelIP, m.kernelL2, t.k, p)
	kernel = k.public()
	kernel.Drift = t.drift(m, p.Family, a, k)
	return kernel, c.public()
}
