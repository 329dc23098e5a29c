package nlnft

import (
	"fmt"
	"maps"
	"slices"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

// Apply changes o as the kernel changes vmfw's tables when it commits b,
// in the order Write sends b's parts (in one or two transactions, the
// generation moving by Commits(b)): what a read afterwards would see
// (without rule bodies; a new element's counter is zero). It is how the
// agent's remembered state follows its own writes in place instead of
// being rebuilt from a whole layout, and the simulated kernel of tests.
//
// It refuses what the kernel refuses with the whole transaction: a batch
// planned at another generation (ErrGeneration); deleting a table, chain,
// set or element that is not there; deleting a chain that still has
// rules or that a rule or a map element still jumps to; deleting a set a
// rule still looks up; creating a table, chain or set that exists (vmfw's
// plans never mean to, though the kernel would merge them); adding an
// element that exists with other data; an element or a rule that jumps
// to a chain, or a rule that looks up a set, that is not there. What a
// rule refers to is known for the chains Apply filled. On error o is left
// partly changed: callers that keep o apply to a Clone and swap.
func (o *Observed) Apply(b *Batch) error {
	if b.Gen != 0 && b.Gen != o.Gen {
		return fmt.Errorf("%w: planned at generation %d, the tables are at %d", ErrGeneration, b.Gen, o.Gen)
	}
	for _, tc := range b.Tables {
		if err := o.applyTable(tc); err != nil {
			return fmt.Errorf("table %s %s: %w", tc.Family, layout.TableName, err)
		}
	}
	o.Gen += Commits(b)
	return nil
}

func (o *Observed) applyTable(tc *TableChange) error {
	t := o.Tables[tc.Family]
	if tc.Delete {
		if t == nil {
			return fmt.Errorf("deleting the table: no such table")
		}
		delete(o.Tables, tc.Family)
		return nil
	}
	if tc.Create {
		if t != nil {
			return fmt.Errorf("creating the table: it exists")
		}
		t = &ObservedTable{Chains: map[string]*ObservedChain{}, Sets: map[string]*ObservedSet{}}
		o.Tables[tc.Family] = t
	}
	if t == nil {
		return fmt.Errorf("no such table")
	}
	for _, name := range tc.Flush {
		c := t.Chains[name]
		if c == nil {
			return fmt.Errorf("flushing chain %s: no such chain", name)
		}
		t.Chains[name] = &ObservedChain{Hook: c.Hook}
	}
	for _, name := range slices.Sorted(maps.Keys(tc.DelElements)) {
		s := t.Sets[name]
		if s == nil {
			return fmt.Errorf("deleting elements from %s: no such set", name)
		}
		for _, e := range tc.DelElements[name] {
			k := string(e.KeyBytes())
			if _, ok := s.Elements[k]; !ok {
				return fmt.Errorf("deleting element %s from %s: no such element", e.Text(), name)
			}
			delete(s.Elements, k)
			delete(s.Data, k)
		}
	}
	for _, name := range tc.DeleteChains {
		c := t.Chains[name]
		switch {
		case c == nil:
			return fmt.Errorf("deleting chain %s: no such chain", name)
		case len(c.Hashes) > 0:
			return fmt.Errorf("deleting chain %s: it has rules", name)
		}
		if by := t.jumpsTo(name); by != "" {
			return fmt.Errorf("deleting chain %s: %s jumps to it", name, by)
		}
		delete(t.Chains, name)
	}
	for _, name := range tc.DeleteSets {
		if t.Sets[name] == nil {
			return fmt.Errorf("deleting set %s: no such set", name)
		}
		for cn, c := range t.Chains {
			if slices.Contains(c.refs, "@"+name) {
				return fmt.Errorf("deleting set %s: chain %s looks it up", name, cn)
			}
		}
		delete(t.Sets, name)
	}
	for _, c := range tc.NewChains {
		if t.Chains[c.Name] != nil {
			return fmt.Errorf("creating chain %s: it exists", c.Name)
		}
		t.Chains[c.Name] = &ObservedChain{Hook: c.Hook}
	}
	for _, s := range tc.NewSets {
		if t.Sets[s.Name] != nil {
			return fmt.Errorf("creating set %s: it exists", s.Name)
		}
		t.Sets[s.Name] = &ObservedSet{Signature: s.Signature(), Elements: map[string]Counter{}}
		if err := t.addElements(s.Name, s.Elements); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(tc.AddElements)) {
		if err := t.addElements(name, tc.AddElements[name]); err != nil {
			return err
		}
	}
	for _, c := range tc.Fill {
		have := t.Chains[c.Name]
		if have == nil {
			return fmt.Errorf("filling chain %s: no such chain", c.Name)
		}
		refs := slices.Clone(have.refs)
		for _, r := range c.Rules {
			for _, e := range r.Exprs {
				switch e := e.(type) {
				case *layout.Verdict:
					if e.Chain != "" {
						if t.Chains[e.Chain] == nil {
							return fmt.Errorf("chain %s: a rule jumps to chain %s, which does not exist", c.Name, e.Chain)
						}
						refs = append(refs, e.Chain)
					}
				case *layout.Lookup:
					if t.Sets[e.Set] == nil {
						return fmt.Errorf("chain %s: a rule looks up set %s, which does not exist", c.Name, e.Set)
					}
					refs = append(refs, "@"+e.Set)
				case *layout.VMap:
					if t.Sets[e.Map] == nil {
						return fmt.Errorf("chain %s: a rule looks up map %s, which does not exist", c.Name, e.Map)
					}
					refs = append(refs, "@"+e.Map)
				}
			}
		}
		t.Chains[c.Name] = &ObservedChain{Hook: have.Hook, Hashes: append(slices.Clone(have.Hashes), c.Hashes()...), refs: refs}
	}
	return nil
}

// addElements adds elements to the set called name.
func (t *ObservedTable) addElements(name string, elems []layout.Element) error {
	s := t.Sets[name]
	if s == nil {
		return fmt.Errorf("adding elements to %s: no such set", name)
	}
	for _, e := range elems {
		k := string(e.KeyBytes())
		data := e.DataText()
		if _, ok := s.Elements[k]; ok {
			if s.Data[k] != data {
				return fmt.Errorf("adding element %s to %s: it exists with data %q", e.Text(), name, s.Data[k])
			}
			continue
		}
		if v := e.Verdict; v != nil && v.Chain != "" && t.Chains[v.Chain] == nil {
			return fmt.Errorf("adding element %s to %s: chain %s does not exist", e.Text(), name, v.Chain)
		}
		s.Elements[k] = Counter{}
		s.SetData(k, data)
	}
	return nil
}

// jumpsTo names a rule's chain or a map whose element jumps to chain, ""
// when none does.
func (t *ObservedTable) jumpsTo(chain string) string {
	for name, c := range t.Chains {
		if slices.Contains(c.refs, chain) {
			return "chain " + name
		}
	}
	for name, s := range t.Sets {
		for _, d := range s.Data {
			if d == "jump "+chain || d == "goto "+chain {
				return "an element of map " + name
			}
		}
	}
	return ""
}
