// Package explain answers "why is this connection blocked?": vmfw trace.
// Given two endpoints (a VM, a tap, an address, the hypervisor) and a
// protocol, it follows the first packet of the flow through vmfw's rules
// the way the kernel takes it — bridged, routed by the hypervisor, sent
// by the hypervisor, or to it (docs/routing.md) — and reports each rule it
// meets and the verdict, twice:
//
//   - from the configuration, with package policy (the evaluator that also
//     decides which connections an edit cuts): anti-spoofing, state, the
//     DHCP and neighbour discovery exceptions, each group rule by file and
//     line, the policy;
//   - from the ruleset read back from the kernel, with an interpreter of
//     the iptables and ebtables rules vmfw writes (interp*.go), starting
//     at the hooks vmfw installs.
//
// The same interpreter also runs the ruleset compiled from the current
// configuration; every chain either walk enters whose rules in the kernel
// differ from the compiled ones (by fingerprint, see package ruleset), and
// every ipset a rule on the way looks up whose members differ, is drift.
// When the kernel's verdict and the configuration's differ, the report
// says which is which: the kernel decides what packets do.
//
// Like pkg/ruleset it is pure: the caller reads the kernel (package engine)
// and hands over the snapshots, so tests feed it hand-made kernels.
//
// The tracer reads one concern a file: the query and its endpoints
// (query.go), what the query leaves open (unknowns.go), the walks along
// the packet's path (walk.go), drift (drift.go), the report (report.go,
// text.go), and Trace itself (trace.go). The interpreter (interp*.go)
// knows nothing of traces: it takes rules as text and a packet, and
// answers with the verdict, the chains entered and the rules matched.
package explain

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/policy"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Input is what Trace reads.
type Input struct {
	// Model is the configuration.
	Model *config.Model
	// Resolve maps an interface name to its settings: configured taps
	// and attachment records (CNI, libvirt). nil means Model.NIC.
	Resolve func(name string) *config.NIC
	// Attached are the interfaces whose chains are installed.
	Attached []*config.NIC
	// Kernel is what the kernel holds; nil evaluates the configuration
	// and the compiled rules only.
	Kernel *Kernel
	// HostAddrs are the hypervisor's own addresses with the prefix of
	// their subnet: they tell the hypervisor from other hosts and a
	// bridged path from a routed one.
	HostAddrs []netip.Prefix

	// compiled caches the ruleset compiled for Attached: a batch of
	// traces compiles it once.
	mu       sync.Mutex
	compiled *layout.Ruleset
}

// compile returns the ruleset for the attached interfaces, nics,
// compiling it once.
func (in *Input) compile(nics []*config.NIC) (*layout.Ruleset, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.compiled == nil {
		rs, err := layout.FromConfig(in.Model, nics)
		if err != nil {
			return nil, err
		}
		in.compiled = rs
	}
	return in.compiled, nil
}

// Kernel is vmfw's part of the kernel's firewall, as read back.
type Kernel struct {
	// Backend names the iptables backend, for the report.
	Backend string
	// Tables holds each family's chains with their rules' text (Lines)
	// and fingerprints (Chains), and the hooks.
	Tables map[ruleset.Family]layout.Observed
	// Bridge is vmfw's part of the ebtables filter table; nil when
	// ebtables is not managed.
	Bridge *layout.Observed
	// Sets maps vmfw's ipsets to their members.
	Sets map[string]map[netip.Addr]bool
}

// Trace follows q's first packet through vmfw's rules.
func Trace(in *Input, q Query) (*Report, error) {
	t, err := newTracer(in, q)
	if err != nil {
		return nil, err
	}
	return t.trace()
}

// tracer holds one trace's state.
type tracer struct {
	in        *Input
	q         Query
	from, to  Endpoint
	family    ruleset.Family
	proto     uint8
	protoName string
	path      string
	icmpType  int
	icmpCode  int
	// attached is in.Attached plus the endpoints' interfaces, so that
	// the configuration's answer for a VM not running is what it would be
	// once it runs.
	attached []*config.NIC
	// compiled is the ruleset for attached, which the configuration's
	// answer is checked against; actual is the one for the interfaces
	// whose chains are installed, which the kernel is compared with. They
	// are one when both ends that are VMs are attached.
	compiled, actual *layout.Ruleset
	notes            []string
	// resolve is in.Resolve, or Model.NIC.
	resolve func(string) *config.NIC
}

func newTracer(in *Input, q Query) (*tracer, error) {
	t := &tracer{in: in, q: q, resolve: in.Resolve}
	if t.resolve == nil {
		t.resolve = in.Model.NIC
	}
	var err error
	if t.proto, t.protoName, err = parseProto(q.Proto); err != nil {
		return nil, err
	}
	if t.from, err = t.endpoint("--from", q.From); err != nil {
		return nil, err
	}
	if t.to, err = t.endpoint("--to", q.To); err != nil {
		return nil, err
	}
	if t.from.Kind != "vm" && t.to.Kind != "vm" {
		return nil, queryErr("neither %q nor %q is a VM interface: no vmfw rule stands between them", q.From, q.To)
	}
	if t.from.nic != nil && t.from.nic == t.to.nic {
		return nil, queryErr("%s and %s are the same interface", q.From, q.To)
	}
	if err := t.chooseFamily(); err != nil {
		return nil, err
	}
	if err := t.addresses(); err != nil {
		return nil, err
	}
	if err := t.choosePath(); err != nil {
		return nil, err
	}
	if err := t.ports(); err != nil {
		return nil, err
	}
	t.attached = slices.Clone(in.Attached)
	for _, e := range []*Endpoint{&t.from, &t.to} {
		if e.nic == nil {
			continue
		}
		e.Attached = slices.Contains(in.Attached, e.nic)
		if !e.Attached {
			t.attached = append(t.attached, e.nic)
			t.notes = append(t.notes, fmt.Sprintf("%s is not attached (no chains installed: the VM is not running, or vmfw has not firewalled it); the configuration's answer is for when it is", e.nic.Tap))
		}
	}
	if t.actual, err = t.in.compile(in.Attached); err != nil {
		return nil, fmt.Errorf("compiling the configuration: %w", err)
	}
	t.compiled = t.actual
	if len(t.attached) != len(in.Attached) {
		if t.compiled, err = layout.FromConfig(in.Model, t.attached); err != nil {
			return nil, fmt.Errorf("compiling the configuration: %w", err)
		}
	}
	return t, nil
}

func (t *tracer) trace() (*Report, error) {
	u := t.unknowns()
	cands := u.candidates()
	r := &Report{From: t.from, To: t.to, Path: t.path, Drift: []string{}}
	answers := t.answers(cands)

	first := answers[0]
	r.Flow = t.flowInfo(cands[0])
	r.Config = Config{Verdict: configVerdict(first.config), Out: first.config.Out, In: first.config.In}
	r.Verdict = r.Config.Verdict
	if first.compiled.err == nil && r.Config.Verdict != "unknown" && first.compiled.verdict != r.Config.Verdict {
		r.Notes = append(r.Notes, fmt.Sprintf("internal error: the rules compiled from the configuration %s the packet, the configuration says %s (please report this)", first.compiled.verdict, r.Config.Verdict))
	}
	if first.krn != nil {
		t.kernelAnswer(r, first)
	}
	if r.Verdict == "unknown" {
		// Only the configuration answered and it cannot tell: the
		// compiled rules decide on the typical values.
		r.Verdict = first.compiled.verdict
	}
	r.Alternatives = alternatives(answers[1:], r.Verdict)
	r.Notes = append(t.notes, r.Notes...)
	r.Notes = append(r.Notes, t.assumptions(u)...)
	return r, nil
}

// answer is what each evaluation says of one candidate packet.
type answer struct {
	c             candidate
	config        *policy.Explanation
	compiled, krn *result
	// actual is the walk over the installed interfaces' ruleset,
	// when it is not compiled's.
	actual *result
}

// answers evaluates every candidate: the configuration's answer, and the
// walks over the compiled rules and, when it was read, the kernel's.
func (t *tracer) answers(cands []candidate) []answer {
	ev := policy.New(t.in.Model, t.attached, t.isLocal)
	compiledIP, compiledL2 := t.compiledMachine(t.compiled), t.compiledL2(t.compiled)
	actualIP, actualL2 := compiledIP, compiledL2
	if t.actual != t.compiled {
		actualIP, actualL2 = t.compiledMachine(t.actual), t.compiledL2(t.actual)
	}
	var kernelIP *machine
	var kernelL2 *l2machine
	if k := t.in.Kernel; k != nil {
		obs := k.Tables[t.family]
		kernelIP = newMachine(obs.Lines, obs.Chains, k.Sets)
		if k.Bridge != nil {
			kernelL2 = newL2Machine(k.Bridge.Chains)
		}
	}
	var answers []answer
	for _, c := range cands {
		p := t.packet(c)
		a := answer{c: c}
		a.config = ev.Explain(t.policyFlow(c), t.policyPath(c))
		a.compiled = t.walk(compiledIP, compiledL2, nil, p)
		a.actual = a.compiled
		if kernelIP != nil && t.actual != t.compiled {
			a.actual = t.walk(actualIP, actualL2, nil, t.packet(c))
		}
		if kernelIP != nil {
			a.krn = t.walk(kernelIP, kernelL2, t.in.Kernel, t.packet(c))
		}
		answers = append(answers, a)
	}
	return answers
}

// kernelAnswer fills in r the kernel's answer for the typical packet,
// a, with the drift on its way; the kernel's verdict is the report's.
func (t *tracer) kernelAnswer(r *Report, a answer) {
	k := &KernelResult{Backend: t.in.Kernel.Backend, Verdict: a.krn.verdict, Chains: a.krn.chains, Rules: a.krn.hits, DecidedBy: a.krn.decidedBy}
	if k.Rules == nil {
		k.Rules = []RuleHit{}
	}
	if a.krn.err != nil {
		k.Verdict, k.Error = "", a.krn.err.Error()
	} else {
		r.Verdict = k.Verdict
	}
	r.Kernel = k
	r.Drift = t.drift(a.actual, a.krn)
	if k.Verdict != "" && k.Verdict != r.Config.Verdict && r.Config.Verdict != "unknown" {
		what := "drift"
		if len(r.Drift) == 0 {
			what = "an error in vmfw (please report it)"
		}
		r.Notes = append(r.Notes, fmt.Sprintf("the kernel's rules %s the packet, the configuration would %s it: %s", verbed(k.Verdict), r.Config.Verdict, what))
	}
}

// alternatives are the values of the unknowns, tried in answers, that
// change the verdict, grouped by the verdict and the rule that decides.
func alternatives(answers []answer, verdict string) []Alternative {
	type key struct{ when, verdict, by string }
	groups := map[key][]string{}
	var order []key
	for _, a := range answers {
		v, by := a.compiled.verdict, a.compiled.decidedBy
		if a.krn != nil && a.krn.err == nil {
			v, by = a.krn.verdict, a.krn.decidedBy
		}
		if v == verdict || v == "" {
			continue
		}
		k := key{a.c.when, v, by}
		if groups[k] == nil {
			order = append(order, k)
		}
		value := strings.TrimLeft(a.c.dim, "sd")
		groups[k] = append(groups[k], value)
	}
	var out []Alternative
	for _, k := range order {
		alt := Alternative{When: k.when + " " + strings.Join(groups[k], ", "), Verdict: k.verdict}
		if k.by != "" {
			alt.When += " (" + k.by + ")"
		}
		out = append(out, alt)
	}
	return out
}

func (t *tracer) policyFlow(c candidate) policy.Flow {
	f := policy.Flow{Proto: t.proto, Src: t.from.Address, Dst: t.to.Address, SPort: c.sport, DPort: c.dport}
	if t.proto == protoICMP || t.proto == protoICMPv6 {
		f.ICMPType, f.ICMPCode, f.ICMPKnown = uint8(t.icmpType), uint8(t.icmpCode), true
	}
	return f
}

func (t *tracer) policyPath(c candidate) policy.Path {
	p := policy.Path{Sender: t.from.nic, Receiver: t.to.nic, Local: t.path == PathFromHypervisor}
	if p.Local {
		p.Sender = nil
		return p
	}
	if p.Sender != nil && p.Sender.MAC == nil && c.mac != nil {
		// The interface has no configured MAC; the trace's candidate
		// stands for the one it sends with.
		s := *p.Sender
		s.MAC = c.mac
		p.Sender = &s
	}
	if p.Sender == nil {
		p.SenderMAC = c.mac
	}
	if t.to.Kind == "hypervisor" {
		p.Receiver = nil
	}
	return p
}
