package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	nftlayout "github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// commitFloor measures what the kernel alone charges for a write into the
// lab's filter tables as they stand: the nf_tables transaction that adds
// one rule to a chain of the bench's own, sent over netlink from this
// process (no iptables process, no parsing), timed from the send to the
// kernel's answer. Two kinds of rule:
//
//   - one with a verdict (accept). Adding any rule whose expressions the
//     kernel must validate (a verdict, an xtables match or target) makes
//     the commit walk every chain reachable from the table's hooks, once
//     per hook that reaches it, checking each rule's expressions: the cost
//     grows with the whole ruleset, not with the change. Every write vmfw
//     makes, an ifup, an edit, adds such rules, so this is the least any
//     of them can cost in that family, however userspace writes it;
//   - one with only a counter, which the kernel need not validate: the
//     cost of a transaction as such.
//
// The chain is named outside vmfw's namespace of names (vmfw ignores
// foreign chains, docs/design.md) and removed again; no agent runs while
// it is measured. The two families commit one after the other (nf_tables
// serialises transactions per network namespace), so a write of both
// costs at least the sum.
func commitFloor(ns *netns, runs int) (verdict map[ruleset.Family][]time.Duration, plain []time.Duration, err error) {
	verdict = map[ruleset.Family][]time.Duration{}
	err = ns.do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		for _, f := range ruleset.Families {
			fam := nftables.TableFamilyIPv4
			if f == ruleset.IPv6 {
				fam = nftables.TableFamilyIPv6
			}
			chain := &nftables.Chain{Name: "bench-floor", Table: &nftables.Table{Name: "filter", Family: fam}}
			c.AddChain(chain)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("creating %s chain %s: %w", f, chain.Name, err)
			}
			add := func(e expr.Any) (time.Duration, error) {
				c.AddRule(&nftables.Rule{Table: chain.Table, Chain: chain, Exprs: []expr.Any{e}})
				start := time.Now()
				err := c.Flush()
				d := time.Since(start)
				c.FlushChain(chain)
				if ferr := c.Flush(); err == nil {
					err = ferr
				}
				return d, err
			}
			for range runs {
				d, err := add(&expr.Verdict{Kind: expr.VerdictAccept})
				if err != nil {
					return fmt.Errorf("%s: one rule with a verdict: %w", f, err)
				}
				verdict[f] = append(verdict[f], d)
				if f == ruleset.IPv4 {
					d, err := add(&expr.Counter{})
					if err != nil {
						return fmt.Errorf("%s: one counter rule: %w", f, err)
					}
					plain = append(plain, d)
				}
			}
			c.DelChain(chain)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("removing %s chain %s: %w", f, chain.Name, err)
			}
		}
		return nil
	})
	return verdict, plain, err
}

// floorNote measures the commit floor in the agent lab and describes it
// under the table: the reason the rows that scale with the ruleset cannot
// go below a bound (docs/performance.md, "The kernel's floor").
func (a *agentLab) floorNote() error {
	if a.nftables() {
		return a.floorNoteNFT()
	}
	if a.backend != "nft" {
		return nil
	}
	runs := max(a.o.runs, 5)
	verdict, plain, err := commitFloor(a.hv, runs)
	if err != nil {
		return fmt.Errorf("kernel floor: %w", err)
	}
	v4, v6 := median(verdict[ruleset.IPv4]), median(verdict[ruleset.IPv6])
	a.r.floor = append(a.r.floor, floorRow{backend: a.backend, taps: a.n, v4: v4, v6: v6})
	a.r.notes = append(a.r.notes, fmt.Sprintf("%s, %d taps: kernel floor (nf_tables commit of a one-rule transaction over netlink, medians of %d): with a verdict ipv4 %s, ipv6 %s, both %s; a counter-only rule %s (max %s)",
		a.backend, a.n, runs, ms(v4), ms(v6), ms(v4+v6), ms(median(plain)), ms(slices.Max(plain))))
	return nil
}

// floorRow is one lab's commit floor, which evaluate sets beside the
// targets it bounds.
type floorRow struct {
	backend string
	taps    int
	v4, v6  time.Duration
}

// commitFloorNFT measures what the kernel charges the nftables backend,
// as commitFloor does for iptables: the transaction of an element of a
// set (one element added to the ports set of table bridge vmfw, then
// removed); that of an element of the gl-out map jumping to a chain (what
// every tap that lists groups adds: the kernel validates the table, and
// walks the map's elements to do it); and that of one rule with a verdict
// added to a chain of the bench's own in the same table, what a change
// that adds a chain (a new group list, a new group) pays for the table's
// validation. Times run from the send to the kernel's answer.
func commitFloorNFT(ns *netns, runs int) (elem, jump, verdict []time.Duration, err error) {
	err = ns.do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		t := &nftables.Table{Name: nftlayout.TableName, Family: nftables.TableFamilyBridge}
		ports := &nftables.Set{Table: t, Name: nftlayout.SetPorts, KeyType: nftables.TypeIFName}
		lists := &nftables.Set{Table: t, Name: nftlayout.MapListsOut, KeyType: nftables.TypeIFName, IsMap: true, DataType: nftables.TypeVerdict}
		key := []nftables.SetElement{{Key: nftlayout.Ifname("benchfloor0").Bytes}}
		timed := func() (time.Duration, error) {
			start := time.Now()
			err := c.Flush()
			return time.Since(start), err
		}
		// elemCommit returns how long the commit adding elems to s takes,
		// then removes them again.
		elemCommit := func(s *nftables.Set, elems []nftables.SetElement) (time.Duration, error) {
			if err := c.SetAddElements(s, elems); err != nil {
				return 0, err
			}
			d, err := timed()
			if err != nil {
				return 0, fmt.Errorf("adding an element to %s: %w", s.Name, err)
			}
			if err := c.SetDeleteElements(s, elems); err != nil {
				return 0, err
			}
			if err := c.Flush(); err != nil {
				return 0, fmt.Errorf("removing the element again: %w", err)
			}
			return d, nil
		}
		chain := &nftables.Chain{Name: "bench-floor", Table: t}
		c.AddChain(chain)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("creating bridge chain %s: %w", chain.Name, err)
		}
		jumpKey := []nftables.SetElement{{Key: key[0].Key, VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: chain.Name}}}
		for range runs {
			d, err := elemCommit(ports, key)
			if err != nil {
				return err
			}
			elem = append(elem, d)
			if d, err = elemCommit(lists, jumpKey); err != nil {
				return err
			}
			jump = append(jump, d)
			c.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
			if d, err = timed(); err != nil {
				return fmt.Errorf("adding a rule with a verdict: %w", err)
			}
			verdict = append(verdict, d)
			c.FlushChain(chain)
			if err := c.Flush(); err != nil {
				return err
			}
		}
		c.DelChain(chain)
		return c.Flush()
	})
	return elem, jump, verdict, err
}

// floorNoteNFT is floorNote for the nftables backend: its floor for the
// targets is the element transaction, the cost of every tap change.
func (a *agentLab) floorNoteNFT() error {
	runs := max(a.o.runs, 5)
	elem, jump, verdict, err := commitFloorNFT(a.hv, runs)
	if err != nil {
		return fmt.Errorf("kernel floor: %w", err)
	}
	a.r.floor = append(a.r.floor, floorRow{backend: a.backend, taps: a.n, v4: median(jump)})
	a.add("kernel commit of a set element", elem, nil, "netlink, from this process")
	a.add("kernel commit of a tap's gl-out element (table validated)", jump, nil, "netlink, from this process")
	a.add("kernel commit adding one rule (table validated)", verdict, nil, "netlink, from this process")
	a.r.notes = append(a.r.notes, fmt.Sprintf("%s, %d taps: kernel floor (nf_tables commit over netlink, medians of %d): one element of the ports set %s (max %s); one element of gl-out jumping to a chain %s (max %s); one rule with a verdict in table bridge vmfw %s (max %s)",
		a.backend, a.n, runs, ms(median(elem)), ms(slices.Max(elem)), ms(median(jump)), ms(slices.Max(jump)), ms(median(verdict)), ms(slices.Max(verdict))))
	return nil
}
