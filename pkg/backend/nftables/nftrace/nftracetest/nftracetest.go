// Package nftracetest builds the nftables backend's kernel for trace
// tests without a kernel: the tables exactly as the backend would write
// them for a policy, in the form a read returns them (rules as netlink
// expressions with vmfw's comments, sets with their elements, anonymous
// sets by name), so that tests of trace walk what the kernel would hold
// and can change it behind the configuration's back.
package nftracetest

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nftrace"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Applied returns the kernel right after the backend applied p with the
// default mark bits.
func Applied(p *ruleset.Policy) (*nftrace.Kernel, error) {
	marks, err := layout.NewMarks(layout.DefaultMask)
	if err != nil {
		return nil, err
	}
	rs := layout.Build(p, marks)
	ins := &nlnft.Inspection{Observed: &nlnft.Observed{Tables: map[layout.Family]*nlnft.ObservedTable{}}, Anon: map[layout.Family]map[string]*nlnft.AnonSet{}}
	for _, t := range rs.Tables() {
		ot := &nlnft.ObservedTable{Chains: map[string]*nlnft.ObservedChain{}, Sets: map[string]*nlnft.ObservedSet{}}
		anon := map[string]*nlnft.AnonSet{}
		for _, s := range t.Sets {
			ot.Sets[s.Name] = nlnft.ObservedSetOf(s)
		}
		for _, c := range t.Chains {
			oc := &nlnft.ObservedChain{Hook: c.Hook, Hashes: c.Hashes()}
			for _, r := range c.Rules {
				exprs, sets, err := nlnft.RuleExprs(r)
				if err != nil {
					return nil, fmt.Errorf("chain %s: %w", c.Name, err)
				}
				// The kernel names anonymous sets when they are added.
				for _, e := range exprs {
					if l, ok := e.(*expr.Lookup); ok && sets[l] != nil {
						l.SetName = fmt.Sprintf("__set%d", len(anon))
						anon[l.SetName] = sets[l]
					}
				}
				oc.Rules = append(oc.Rules, &nftables.Rule{Exprs: exprs, UserData: userdata.AppendString(nil, userdata.TypeComment, r.UserComment(c.Name))})
			}
			ot.Chains[c.Name] = oc
		}
		ins.Tables[t.Family] = ot
		ins.Anon[t.Family] = anon
	}
	var installed []string
	for _, n := range p.Interfaces {
		installed = append(installed, n.Name)
	}
	return &nftrace.Kernel{Read: ins, Marks: marks, Interfaces: installed}, nil
}
