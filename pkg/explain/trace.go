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
//   - from what the backend installed, which the backend walks itself
//     (backend.Tracer): only it knows how its kernel objects decide.
//
// The backend also walks what it would install for the policy compiled
// from the current configuration (package ruleset), and names what
// differs from it on the packet's way: drift. When the kernel's verdict
// and the configuration's differ, the report says which is which: the
// kernel decides what packets do.
//
// Like pkg/ruleset it is pure: the caller reads the kernel (package
// engine, through the backend) and hands over what it read, so tests
// feed it kernels of their own.
//
// The tracer reads one concern a file: the query and its endpoints
// (query.go), what the query leaves open (unknowns.go), the packets it
// hands the backend (walk.go), the report (report.go, text.go), and Trace
// itself (trace.go).
package explain

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vmfw/vmfw/pkg/backend"
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
	// Kernel is what the backend read of the kernel; nil evaluates the
	// configuration only.
	Kernel backend.Inspection
	// HostAddrs are the hypervisor's own addresses with the prefix of
	// their subnet: they tell the hypervisor from other hosts and a
	// bridged path from a routed one.
	HostAddrs []netip.Prefix

	// installed caches the policy compiled for Attached: a batch of
	// traces compiles it once, and the backend lays it out once.
	mu        sync.Mutex
	installed *ruleset.Policy
}

// compile returns the policy of the attached interfaces, nics, compiling
// it once.
func (in *Input) compile(nics []*config.NIC) (*ruleset.Policy, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.installed == nil {
		p, err := ruleset.Compile(in.Model, nics)
		if err != nil {
			return nil, err
		}
		in.installed = p
	}
	return in.installed, nil
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
	// want is the policy of attached, which the configuration's answer
	// is checked against; installed is the one of the interfaces whose
	// chains are installed, which the kernel is compared with. They are
	// one when both ends that are VMs are attached.
	want, installed *ruleset.Policy
	notes           []string
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
	if t.installed, err = t.in.compile(in.Attached); err != nil {
		return nil, fmt.Errorf("compiling the configuration: %w", err)
	}
	t.want = t.installed
	if len(t.attached) != len(in.Attached) {
		if t.want, err = ruleset.Compile(in.Model, t.attached); err != nil {
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
	if first.krn != nil {
		if first.compiled.Err == nil && first.compiled.Note == "" && r.Config.Verdict != "unknown" && first.compiled.Verdict != r.Config.Verdict {
			r.Notes = append(r.Notes, fmt.Sprintf("internal error: the rules compiled from the configuration %s the packet, the configuration says %s (please report this)", first.compiled.Verdict, r.Config.Verdict))
		}
		t.kernelAnswer(r, first)
		if r.Verdict == "unknown" {
			// The kernel could not answer and the configuration
			// cannot tell: the compiled rules decide on the typical
			// values.
			r.Verdict = first.compiled.Verdict
		}
	}
	r.Alternatives = alternatives(answers[1:], r.Verdict)
	r.Notes = append(t.notes, r.Notes...)
	r.Notes = append(r.Notes, t.assumptions(u)...)
	return r, nil
}

// answer is what each evaluation says of one candidate packet.
type answer struct {
	c      candidate
	config *policy.Explanation
	// krn and compiled are the backend's walks over the kernel and over
	// the rules it would install for the configuration; nil when the
	// kernel was not read.
	krn, compiled *backend.Walk
}

// answers evaluates every candidate: the configuration's answer and,
// when the kernel was read, the backend's walks.
func (t *tracer) answers(cands []candidate) []answer {
	ev := policy.New(t.in.Model, t.attached, t.isLocal)
	var walks backend.KernelTrace
	if k := t.in.Kernel; k != nil {
		walks = k.Trace(t.installed, t.want, t.describeOrigin)
	}
	var answers []answer
	for _, c := range cands {
		a := answer{c: c}
		a.config = ev.Explain(t.policyFlow(c), t.policyPath(c))
		if walks != nil {
			krn, compiled := walks.Walk(t.packet(c))
			a.krn, a.compiled = &krn, &compiled
		}
		answers = append(answers, a)
	}
	return answers
}

// kernelAnswer fills in r the kernel's answer for the typical packet,
// a, with the drift on its way; the kernel's verdict is the report's.
func (t *tracer) kernelAnswer(r *Report, a answer) {
	k := &KernelResult{Backend: t.in.Kernel.Describe(), Verdict: a.krn.Verdict, Chains: a.krn.Objects, Rules: []RuleHit{}, DecidedBy: a.krn.DecidedBy}
	for _, h := range a.krn.Rules {
		k.Rules = append(k.Rules, RuleHit{Table: h.Table, Chain: h.Object, Index: h.Index, Rule: h.Text, Origin: t.describeOrigin(h.Origin)})
	}
	if a.krn.Err != nil {
		k.Verdict, k.Error = "", a.krn.Err.Error()
	} else {
		r.Verdict = k.Verdict
	}
	r.Kernel = k
	if a.krn.Drift != nil {
		r.Drift = a.krn.Drift
	}
	if k.Verdict != "" && k.Verdict != r.Config.Verdict && r.Config.Verdict != "unknown" {
		what := "drift"
		switch {
		case len(r.Drift) == 0 && a.krn.Note != "":
			// The backend differs from the configuration's answer here
			// by design, and says how.
			what = a.krn.Note
		case len(r.Drift) == 0:
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
		if a.krn == nil {
			continue
		}
		v, by := a.compiled.Verdict, a.compiled.DecidedBy
		if a.krn.Err == nil {
			v, by = a.krn.Verdict, a.krn.DecidedBy
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
	if t.proto == config.ProtoICMP || t.proto == config.ProtoICMPv6 {
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
