package nftables

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// fakeKernel is a simulated kernel: it holds vmfw's tables as a read
// returns them, applies what is written as the kernel commits a
// transaction (nlnft.Observed.Apply: all of it or, refused, none), and
// records the batches.
type fakeKernel struct {
	obs       *nlnft.Observed
	batches   []*nlnft.Batch
	failWrite error
	// reads counts the reads, elements the set elements they returned.
	reads, elements int
}

func (k *fakeKernel) Read(elements bool, only ...string) (*nlnft.Observed, error) {
	k.reads++
	o := k.obs.Clone()
	for _, t := range o.Tables {
		for name, s := range t.Sets {
			if !elements && !slices.Contains(only, name) {
				s.Elements, s.Data = map[string]nlnft.Counter{}, nil
			}
			k.elements += len(s.Elements)
		}
		if len(only) > 0 {
			t.Chains = map[string]*nlnft.ObservedChain{}
		}
	}
	return o, nil
}

func (k *fakeKernel) ReadChains(names map[layout.Family][]string) (*nlnft.Observed, error) {
	k.reads++
	o := k.obs.Clone()
	for f, t := range o.Tables {
		chains := map[string]*nlnft.ObservedChain{}
		for _, name := range names[f] {
			if c := t.Chains[name]; c != nil {
				chains[name] = c
			}
		}
		t.Chains = chains
		for _, s := range t.Sets {
			s.Elements, s.Data = map[string]nlnft.Counter{}, nil
		}
	}
	return o, nil
}

func (k *fakeKernel) Write(b *nlnft.Batch) error {
	if err := k.failWrite; err != nil {
		k.failWrite = nil
		return err
	}
	next := k.obs.Clone()
	if err := next.Apply(b); err != nil {
		return err
	}
	k.obs = next
	k.batches = append(k.batches, b)
	return nil
}
func (k *fakeKernel) Generation() (uint32, error) { return k.obs.Gen, nil }

// fakeHooks holds what a read of iptables' chains returns, and what
// Change left.
type fakeHooks struct{ st *HookState }

func (h *fakeHooks) Read(context.Context) (*HookState, error) { return h.st, nil }

func (h *fakeHooks) Change(_ context.Context, del map[HookChain][]string, insert []HookChain, rule []string) error {
	if h.st.Rules == nil {
		h.st.Rules = map[HookChain][]string{}
	}
	for hc, lines := range del {
		h.st.Rules[hc] = slices.DeleteFunc(h.st.Rules[hc], func(l string) bool { return slices.Contains(lines, l) })
	}
	for _, hc := range insert {
		h.st.Rules[hc] = append([]string{saveLine(hc.Chain, rule)}, h.st.Rules[hc]...)
	}
	return nil
}

// installedBackend returns a backend on a simulated kernel that holds
// p's layout, with vmfw's rules in iptables' chains in place, as after
// any apply.
func installedBackend(t *testing.T, p *ruleset.Policy) (*Backend, *fakeKernel) {
	t.Helper()
	k := &fakeKernel{}
	b, err := New(Options{Kernel: k, Hooks: &fakeHooks{st: &HookState{}}})
	if err != nil {
		t.Fatal(err)
	}
	k.obs = observedOf(layout.Build(p, b.Marks()))
	if err := b.applyHooks(context.Background(), planHooks(&HookState{}, true, b.Marks().Acc)); err != nil {
		t.Fatal(err)
	}
	return b, k
}

func referencePolicy(t *testing.T) *ruleset.Policy {
	t.Helper()
	p, err := ruleset.Compile(scenario.Load(t, "../../../conf/examples/reference"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPlanRewritesChangedFingerprints: a plan against what the previous
// plan left is empty; a chain whose rules carry other fingerprints (rules
// written under an older encoding, or edited by someone else) is
// rewritten whole, and nothing else is.
func TestPlanRewritesChangedFingerprints(t *testing.T) {
	k := &fakeKernel{obs: &nlnft.Observed{Tables: map[layout.Family]*nlnft.ObservedTable{}}}
	b, err := New(Options{Kernel: k, Hooks: &fakeHooks{st: &HookState{}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want := referencePolicy(t)
	plan := func() *plan {
		t.Helper()
		return readPlan(t, b, false, want, nil)
	}
	first := plan()
	if first.Empty() || !slices.Contains(first.Summary().Tables["bridge"].Created, layout.ChainIn) {
		t.Fatalf("the first plan does not create the tables: %+v", first.Summary())
	}
	if err := b.Apply(ctx, first); err != nil {
		t.Fatal(err)
	}
	if p := plan(); !p.Empty() {
		t.Fatalf("a plan against its own result changes %+v", p.Summary())
	}
	in := k.obs.Tables[layout.Bridge].Chains[layout.ChainIn]
	in.Hashes = slices.Clone(in.Hashes)
	in.Hashes[0] = "0000000000000000"
	p := plan()
	got := p.Summary().Tables["bridge"]
	if !slices.Equal(got.Rewritten, []string{layout.ChainIn}) || len(got.Created)+len(got.Deleted) != 0 || !p.Summary().Sets.Empty() {
		t.Errorf("after a fingerprint changed in %s: %+v, sets %+v; want only %s rewritten", layout.ChainIn, got, p.Summary().Sets, layout.ChainIn)
	}
	if inet := p.Summary().Tables["inet"]; !inet.Empty() {
		t.Errorf("the inet table changes: %+v", inet)
	}
	if _, ok := p.Summary().Tables["iptables"]; ok {
		t.Errorf("vmfw's rules in iptables' chains change: %+v", p.Summary().Tables["iptables"])
	}
}

// TestPlanFromHint: an ifup planned from the hint (the tables hold the
// hint's installed policy, checked by chains, set signatures and the
// ports set) writes exactly what a plan from a full read writes; when the
// chains differ from the hint it plans from a full read; a hinted plan
// that fails to apply is stale, and the next plan reads in full.
func TestPlanFromHint(t *testing.T) {
	ctx := context.Background()
	all := referencePolicy(t)
	was := *all
	was.Interfaces = all.Interfaces[1:]
	wasPolicy, err := ruleset.Compile(mustModel(t), nicsOf(t, was.Interfaces))
	if err != nil {
		t.Fatal(err)
	}
	b, k := installedBackend(t, wasPolicy)
	narrow := &state{obs: k.obs.Clone()}
	hint := &backend.Hint{Was: wasPolicy, Interfaces: []string{all.Interfaces[0].Name}}
	hinted := mustPlan(t, b, narrow, all, hint)
	full := mustPlan(t, b, &state{obs: k.obs.Clone()}, all, nil)
	if !hinted.hinted || text(t, hinted) != text(t, full) || hinted.Empty() {
		t.Errorf("the hinted plan (hinted %v):\n%s\ndiffers from the full one:\n%s", hinted.hinted, text(t, hinted), text(t, full))
	}

	in := k.obs.Tables[layout.Bridge].Chains[layout.ChainIn]
	in.Hashes = append([]string{"0000000000000000"}, in.Hashes[1:]...)
	if p := mustPlan(t, b, &state{obs: k.obs.Clone()}, all, hint); p.hinted || !slices.Contains(p.Summary().Tables["bridge"].Rewritten, layout.ChainIn) {
		t.Errorf("with the in chain not as the hint says, the plan is hinted %v and rewrites %v", p.hinted, p.Summary().Tables["bridge"].Rewritten)
	}

	k.obs = observedOf(layout.Build(wasPolicy, b.Marks()))
	k.failWrite = errors.New("No such file or directory")
	hinted = mustPlan(t, b, &state{obs: k.obs.Clone()}, all, hint)
	var stale *backend.StaleError
	if err := b.Apply(ctx, hinted); !errors.As(err, &stale) {
		t.Errorf("a hinted plan that fails: %v, want a StaleError", err)
	}
	if p, err := b.Plan(ctx, &state{obs: k.obs.Clone()}, all, hint); err != nil || p.(*plan).hinted {
		t.Errorf("the plan after a failed hinted one is hinted %v (%v), want a full one", p.(*plan).hinted, err)
	}
}

// mustPlan returns b's plan for want from st; planning must succeed.
func mustPlan(t *testing.T, b *Backend, st backend.State, want *ruleset.Policy, hint *backend.Hint) *plan {
	t.Helper()
	p, err := b.Plan(context.Background(), st, want, hint)
	if err != nil {
		t.Fatal(err)
	}
	return p.(*plan)
}

// readPlan reads the tables, narrowly when narrow, and returns b's plan
// for want from them.
func readPlan(t *testing.T, b *Backend, narrow bool, want *ruleset.Policy, hint *backend.Hint) *plan {
	t.Helper()
	st, err := b.Read(context.Background(), narrow)
	if err != nil {
		t.Fatal(err)
	}
	return mustPlan(t, b, st, want, hint)
}

func text(t *testing.T, p backend.Plan) string {
	t.Helper()
	var b strings.Builder
	if _, err := p.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func mustModel(t *testing.T) *config.Model {
	t.Helper()
	m, err := config.Load("../../../conf/examples/reference")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// nicsOf returns the configuration of the interfaces ifaces name.
func nicsOf(t *testing.T, ifaces []*ruleset.Interface) []*config.NIC {
	t.Helper()
	m := mustModel(t)
	var nics []*config.NIC
	for _, n := range ifaces {
		nics = append(nics, m.NIC(n.Name))
	}
	return nics
}

// probingKernel is a fake kernel whose feature probe fails.
type probingKernel struct {
	fakeKernel
	missing error
}

func (k *probingKernel) Probe() error { return k.missing }

// TestUsableNamesMissingFeature: a kernel feature the probe finds missing
// makes Usable fail with the probe's words, and status warn with them.
func TestUsableNamesMissingFeature(t *testing.T) {
	k := &probingKernel{fakeKernel: fakeKernel{obs: &nlnft.Observed{Tables: map[layout.Family]*nlnft.ObservedTable{}}},
		missing: errors.New("the kernel lacks counters on set elements, which vmfw's nftables backend needs: operation not supported")}
	b, err := New(Options{Kernel: k, Hooks: &fakeHooks{st: &HookState{}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Usable(context.Background()); err == nil || !strings.Contains(err.Error(), "counters on set elements") {
		t.Errorf("Usable: %v, want the missing feature named", err)
	}
}
