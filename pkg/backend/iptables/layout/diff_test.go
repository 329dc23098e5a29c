package layout

import (
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/ruleset"
)

func table(chains ...*ChainRules) *Table {
	return &Table{Family: ruleset.IPv4, Chains: chains, Hooks: []Hook{{From: Forward, To: ChainForward}}}
}

func observe(t *Table) Observed {
	o := Observed{Chains: map[Chain][]string{}, Lines: map[Chain][]string{}, Hooks: map[Hook]int{}}
	for _, c := range t.Chains {
		o.Chains[c.Name] = c.Hashes()
		for _, r := range c.Rules {
			o.Lines[c.Name] = append(o.Lines[c.Name], r.Line(c.Name))
		}
	}
	for _, h := range t.Hooks {
		o.Hooks[h]++
	}
	return o
}

func TestDiffRewritesOnlyChangedChains(t *testing.T) {
	a := &ChainRules{Name: "sg-a-in", Rules: []Rule{{Spec: "-p tcp --dport 22 -j ACCEPT"}}}
	b := &ChainRules{Name: "sg-b-in", Rules: []Rule{{Spec: "-p tcp --dport 80 -j ACCEPT"}}}
	old := table(a, b)
	b2 := &ChainRules{Name: "sg-b-in", Rules: []Rule{{Spec: "-p tcp --dport 443 -j ACCEPT"}}}
	c := &ChainRules{Name: "sg-c-in"}
	p := Diff(table(a, b2, c), observe(old))
	if strings.Join(chainNames(p.Rewrite), ",") != "sg-b-in" || strings.Join(chainNames(p.Create), ",") != "sg-c-in" || len(p.Delete) != 0 || len(p.AddHooks) != 0 {
		t.Fatalf("plan = %+v", p)
	}
	text := p.Render()
	if strings.Contains(text, "sg-a-in") {
		t.Errorf("unchanged chain written:\n%s", text)
	}
	if !strings.Contains(text, "--dport 443") {
		t.Errorf("changed rule missing:\n%s", text)
	}
	if again := Diff(table(a, b2, c), observe(table(a, b2, c))); !again.Empty() || again.Render() != "" {
		t.Errorf("second diff not empty: %+v", again)
	}
}

func TestDiffDeletesAndReverts(t *testing.T) {
	a := &ChainRules{Name: "tap1i0-in", Rules: []Rule{{Spec: "-j DROP"}}}
	old := table(a)
	p := Diff(&Table{Family: ruleset.IPv4}, observe(old))
	text := p.Render()
	for _, want := range []string{":tap1i0-in - [0:0]", "-X tap1i0-in", "-D FORWARD -j vmfw-FORWARD -m comment"} {
		if !strings.Contains(text, want) {
			t.Errorf("flush plan lacks %q:\n%s", want, text)
		}
	}
	rev := p.Revert(observe(old))
	for _, want := range []string{a.Rules[0].Line(a.Name), "-I FORWARD 1 -j vmfw-FORWARD -m comment"} {
		if !strings.Contains(rev, want) {
			t.Errorf("revert lacks %q:\n%s", want, rev)
		}
	}
}

func TestDiffRemovesDuplicateHooks(t *testing.T) {
	o := observe(table())
	o.Hooks[Hook{From: Forward, To: ChainForward}] = 3
	p := Diff(table(), o)
	if len(p.DelHooks) != 2 || len(p.AddHooks) != 0 {
		t.Errorf("plan = %+v, want two hook deletions", p)
	}
}

func chainNames(cs []Chain) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = string(c)
	}
	return out
}
