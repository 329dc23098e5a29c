package nftables

import (
	"fmt"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
)

// Plans of members alone (backend.Hint.Members: a cluster membership
// change, an edit of sets/ alone, engine.SyncSets). The engine's hint
// then names no installed policy apart from the wanted one, so the sets
// whose elements are members, groups' (sg-G-v4, sg-G-v6) and address
// sets' (as-NAME-v4, as-NAME-v6), are read, and the plan is the change
// of their elements: a set edit sends the effective prefixes added and
// removed and rewrites no rule (docs/nftables.md, "Address sets").

// memberSets names the sets of rs's bridge table whose elements are
// members.
func memberSets(rs *layout.Ruleset) []string {
	var out []string
	for _, s := range rs.Bridge.Sets {
		if isAddressSet(layout.Bridge, s.Name) || isListSet(s.Name) {
			out = append(out, s.Name)
		}
	}
	return out
}

// isListSet reports whether name is an address set's interval set.
func isListSet(name string) bool {
	_, _, ok := layout.ParseAddressSet(name)
	return ok
}

// readMembers replaces the elements assumed holds of rs's member sets
// with what the kernel holds; ok is false when something committed since
// assumed's generation, and the plan must be made in full.
func (b *Backend) readMembers(assumed *nlnft.Observed, rs *layout.Ruleset) (ok bool, err error) {
	names := memberSets(rs)
	if len(names) == 0 {
		return true, nil
	}
	read, err := b.kernel.Read(false, names...)
	if err != nil {
		return false, err
	}
	have, into := read.Tables[layout.Bridge], assumed.Tables[layout.Bridge]
	if read.Gen != assumed.Gen || have == nil || into == nil {
		return false, nil
	}
	for _, name := range names {
		o := have.Sets[name]
		if o == nil || into.Sets[name] == nil || o.Signature != into.Sets[name].Signature {
			return false, nil
		}
		into.Sets[name] = o
	}
	return true, nil
}

// addressSetStatus records in out what the kernel holds (o, nil when
// missing) of the interval set s of an address set, laid out as want:
// its size in effective prefixes, and what differs. An address set's
// drift is the set's, not an interface's.
func addressSetStatus(out *backend.Status, s *layout.Set, o *nlnft.ObservedSet, obj string) {
	name, f, _ := layout.ParseAddressSet(s.Name)
	if out.Sets == nil {
		out.Sets = map[string]*backend.SetStatus{}
	}
	ss := out.Sets[name]
	if ss == nil {
		ss = &backend.SetStatus{Members: map[string]int{}}
		out.Sets[name] = ss
	}
	switch {
	case o == nil:
		ss.Drifted = append(ss.Drifted, backend.Drift{Object: obj, Problem: "missing"})
		return
	case o.Signature != s.Signature():
		ss.Drifted = append(ss.Drifted, backend.Drift{Object: obj, Problem: "drifted"})
		return
	}
	ss.Members[f.String()] = len(o.Elements)
	missing := 0
	for _, e := range s.Elements {
		if _, ok := o.Elements[string(e.KeyBytes())]; !ok {
			missing++
		}
	}
	if extra := len(o.Elements) - (len(s.Elements) - missing); missing+extra > 0 {
		ss.Drifted = append(ss.Drifted, backend.Drift{Object: obj, Problem: fmt.Sprintf("%d prefixes missing, %d unexpected", missing, extra)})
	}
}
