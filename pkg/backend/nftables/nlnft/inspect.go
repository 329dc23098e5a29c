package nlnft

import (
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

// What vmfw trace reads and walks (docs/trace.md): the rules as netlink
// expressions, and the elements of every set they look up, the anonymous
// ones written inside rules included. The same expressions are made for
// the rules the backend would lay out (RuleExprs), so that one
// interpreter walks both.

// AnonSet is an anonymous set a rule looks up, with its elements: the
// keys of a plain set, or for an interval set the ranges, keyed as
// layout.Element.KeyBytes keys them.
type AnonSet struct {
	Interval bool
	Keys     []string
}

// Inspection is vmfw's tables as read for a trace: everything Read reads
// with every set's elements, and the anonymous sets by table and name.
type Inspection struct {
	*Observed
	Anon map[layout.Family]map[string]*AnonSet
}

// Inspect reads vmfw's tables in full, anonymous sets included.
func (cl Client) Inspect() (_ *Inspection, err error) {
	obs, err := cl.Read(true)
	if err != nil {
		return nil, err
	}
	out := &Inspection{Observed: obs, Anon: map[layout.Family]map[string]*AnonSet{}}
	c, done, err := cl.conn()
	if err != nil {
		return nil, err
	}
	defer func() { done(err) }()
	for f := range obs.Tables {
		sets, err := c.GetSets(table(f))
		if err != nil {
			return nil, fmt.Errorf("listing sets of table %s %s: %w", f, layout.TableName, err)
		}
		out.Anon[f] = map[string]*AnonSet{}
		for _, s := range sets {
			if !s.Anonymous && !strings.HasPrefix(s.Name, "__") {
				continue
			}
			elems, err := c.GetSetElements(s)
			if err != nil {
				return nil, fmt.Errorf("reading set %s: %w", s.Name, err)
			}
			a := &AnonSet{Interval: s.Interval}
			if s.Interval {
				a.Keys = intervals(elems, int(s.KeyType.Bytes))
			} else {
				for _, e := range elems {
					a.Keys = append(a.Keys, string(e.Key))
				}
			}
			out.Anon[f][s.Name] = a
		}
	}
	return out, nil
}

// RuleExprs returns the netlink expressions r is written as, and the
// anonymous sets its lookups use (by lookup; their names are given only
// when a batch adds them). Named sets are looked up by name.
func RuleExprs(r layout.Rule) ([]expr.Any, map[*expr.Lookup]*AnonSet, error) {
	t := &nftables.Table{Name: layout.TableName}
	conv, err := convert(r, t, func(name string) *nftables.Set { return &nftables.Set{Name: name, Table: t} })
	if err != nil {
		return nil, nil, err
	}
	anon := map[*expr.Lookup]*AnonSet{}
	for _, a := range conv.anon {
		as := &AnonSet{Interval: a.set.Interval}
		if a.set.Interval {
			as.Keys = intervals(a.elems, len(a.elems[0].Key))
		} else {
			for _, e := range a.elems {
				as.Keys = append(as.Keys, string(e.Key))
			}
		}
		anon[a.lookup] = as
	}
	return conv.exprs, anon, nil
}
