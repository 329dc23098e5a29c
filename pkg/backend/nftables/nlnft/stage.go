package nlnft

import (
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

// A set that holds ranges (flags interval: an address set, a list of
// port ranges or of prefixes in a rule) is kept by the kernel in a form
// it publishes to packets only when the transaction that changed it has
// committed, after the transaction's rules are already in force. A rule
// that looks up a set created in its own transaction therefore finds
// nothing for the packets that meet it in that moment: measured on
// kernel 6.18, a chain rewritten with `udp dport { 5001, 6000-6001 }
// accept` missed about one packet per transaction of a flood to 5001, an
// accept turned into the policy's drop and a drop into whatever followed
// it (docs/nftables.md, "Sets a rule meets new"). Sets of single values
// (hashes, bitmaps) and sets that existed before the transaction do not
// do this.
//
// So a change whose rules would meet an interval set new to them is
// written as two transactions. The first adds only what nothing in force
// reaches: the new sets, the new regular chains with their rules, and, at
// the end of each rewritten chain, a `return` followed by the chain's new
// rules, which no packet reaches behind it. The second is the rest of the
// change, with the old rules and that return deleted from the rewritten
// chains instead of a flush. Between the two, and after a crash between
// them, every chain in force decides as before; the next plan finds the
// unreached rules, chains and sets and removes them.

// stageMarker is the comment of the return that parts a rewritten chain's
// old rules from its new ones between the two transactions.
const stageMarker = commentPrefix + "staged"

// staging is what the first transaction writes of one table's change.
type staging struct {
	// sets are the table's new sets that are not maps, created with
	// their elements (the staged rules may look them up).
	sets map[string]bool
	// create are new regular chains, created and filled.
	create map[string]bool
	// appended are rewritten chains, whose new rules follow a return.
	appended map[string]bool
}

func (s *staging) empty() bool { return len(s.create)+len(s.appended) == 0 }

// stage returns, by family, what the first transaction of b writes; nil
// when b needs only one.
func stage(b *Batch) map[layout.Family]*staging {
	var out map[layout.Family]*staging
	for _, tc := range b.Tables {
		if s := stageTable(tc); s != nil {
			if out == nil {
				out = map[layout.Family]*staging{}
			}
			out[tc.Family] = s
		}
	}
	return out
}

// Commits returns how many transactions Write commits for b: the
// generation a batch planned at Gen leaves is Gen+Commits(b).
func Commits(b *Batch) uint32 {
	if stage(b) != nil {
		return 2
	}
	return 1
}

// stageTable returns the staging of one table's change, nil when none of
// its rules meets an interval set new to it. A chain is staged only when
// the first transaction can hold it: a regular chain whose jumps go to
// chains that exist and whose lookups find sets that exist or that the
// first transaction creates. A table the change creates is not staged:
// nothing of it filtered before the change.
func stageTable(tc *TableChange) *staging {
	if tc.Delete || tc.Create {
		return nil
	}
	newSets := map[string]*layout.Set{}
	for _, s := range tc.NewSets {
		newSets[s.Name] = s
	}
	newChains := map[string]bool{}
	for _, c := range tc.NewChains {
		newChains[c.Name] = true
	}
	s := &staging{sets: map[string]bool{}, create: map[string]bool{}, appended: map[string]bool{}}
	for _, c := range tc.Fill {
		// A chain deleted and created again (its hook changed) exists
		// until the second transaction deletes it: the first could only
		// add to the chain in force.
		if c.Hook != nil || slices.Contains(tc.DeleteChains, c.Name) || !meetsNewInterval(c, newSets) || !stageable(c, newSets, newChains) {
			continue
		}
		if newChains[c.Name] {
			s.create[c.Name] = true
		} else if slices.Contains(tc.Flush, c.Name) {
			s.appended[c.Name] = true
		}
	}
	if s.empty() {
		return nil
	}
	for name, set := range newSets {
		if !set.IsMap() {
			s.sets[name] = true
		}
	}
	return s
}

// meetsNewInterval reports whether a rule of c looks up an interval set
// the change creates: an anonymous one holding a range, or a new named
// one.
func meetsNewInterval(c *layout.Chain, newSets map[string]*layout.Set) bool {
	for _, r := range c.Rules {
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *layout.Anon:
				if e.HasRange() {
					return true
				}
			case *layout.Lookup:
				if s := newSets[e.Set]; s != nil && s.Interval {
					return true
				}
			}
		}
	}
	return false
}

// stageable reports whether c's rules refer only to what exists before
// the change or what the first transaction creates.
func stageable(c *layout.Chain, newSets map[string]*layout.Set, newChains map[string]bool) bool {
	for _, r := range c.Rules {
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *layout.Verdict:
				if e.Chain != "" && newChains[e.Chain] {
					return false
				}
			case *layout.VMap:
				if newSets[e.Map] != nil {
					return false
				}
			}
		}
	}
	return true
}

// addStaged adds the first transaction's part of tc to c.
func addStaged(c *nftables.Conn, tc *TableChange, s *staging) error {
	t := table(tc.Family)
	sets, err := nlSets(t, tc.Sets)
	if err != nil {
		return err
	}
	for _, ns := range tc.NewSets {
		if s.sets[ns.Name] {
			if err := addSet(c, sets[ns.Name], ns); err != nil {
				return err
			}
		}
	}
	for _, ch := range tc.Fill {
		switch {
		case s.create[ch.Name]:
			c.AddChain(&nftables.Chain{Name: ch.Name, Table: t})
		case s.appended[ch.Name]:
			c.AddRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: ch.Name, Table: t},
				Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}, UserData: userdata.AppendString(nil, userdata.TypeComment, stageMarker)})
		default:
			continue
		}
		if err := addRules(c, t, ch, sets); err != nil {
			return err
		}
	}
	return nil
}

// stagedHandles reads, after the first transaction, the handles of the
// rules the second deletes from each appended chain: every rule before
// its new ones, the marker included. It checks that the chain ends with
// the new rules behind the marker, as the first transaction left it.
func stagedHandles(c *nftables.Conn, tc *TableChange, s *staging) (map[string][]uint64, error) {
	t := table(tc.Family)
	out := map[string][]uint64{}
	for _, ch := range tc.Fill {
		if !s.appended[ch.Name] {
			continue
		}
		rules, err := c.GetRules(t, &nftables.Chain{Name: ch.Name, Table: t})
		if err != nil {
			return nil, fmt.Errorf("reading chain %s after its new rules were staged: %w", ch.Name, err)
		}
		keep := len(ch.Rules)
		old := len(rules) - keep
		if old < 1 || !isMarker(rules[old-1]) {
			return nil, fmt.Errorf("%w: chain %s does not hold its staged rules", ErrGeneration, ch.Name)
		}
		for i, r := range ch.Rules {
			if RuleHash(rules[old+i].UserData) != r.Hash(ch.Name) {
				return nil, fmt.Errorf("%w: chain %s does not hold its staged rules", ErrGeneration, ch.Name)
			}
		}
		for _, r := range rules[:old] {
			out[ch.Name] = append(out[ch.Name], r.Handle)
		}
	}
	return out, nil
}

func isMarker(r *nftables.Rule) bool {
	c, ok := userdata.GetString(r.UserData, userdata.TypeComment)
	return ok && c == stageMarker
}
