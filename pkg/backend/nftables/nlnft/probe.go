package nlnft

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// probeTable is the throwaway table the feature probe creates and deletes
// in the same transaction: nothing of it stays, and it is not vmfw's
// table (the agent's watcher ignores it).
const probeTable = "vmfw-probe"

// feature is one kernel feature the backend's layout uses, and how to
// show that the kernel has it: objects added to the probe table.
type feature struct {
	name string
	add  func(c *nftables.Conn, t *nftables.Table) error
}

var features = []feature{
	{"the nf_tables bridge family", func(*nftables.Conn, *nftables.Table) error { return nil }},
	{"the nf_tables inet family", nil},
	{"concatenated set keys (ifname . ipv4_addr)", func(c *nftables.Conn, t *nftables.Table) error {
		kt, err := nftables.ConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr)
		if err != nil {
			return err
		}
		return c.AddSet(&nftables.Set{Table: t, Name: "concat", KeyType: kt, Concatenation: true}, nil)
	}},
	{"counters on set elements", func(c *nftables.Conn, t *nftables.Table) error {
		return c.AddSet(&nftables.Set{Table: t, Name: "counted", KeyType: nftables.TypeIFName, Counter: true}, nil)
	}},
	{"meta iifkind", func(c *nftables.Conn, t *nftables.Table) error {
		ch := c.AddChain(&nftables.Chain{Name: "kind", Table: t})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: metaKeyIIFKIND, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte("bridge\x00")},
		}})
		return nil
	}},
	{"reject in the inet family", nil},
}

// Probe commits, for every kernel feature vmfw's layout needs, a
// transaction that creates the probe table with an object using it and
// deletes the table again, and returns an error naming the first feature
// the kernel refuses: a missing feature is named here instead of showing
// as a failed write of vmfw's tables.
func (cl Client) Probe() (err error) {
	c, done, err := cl.conn()
	if err != nil {
		return err
	}
	defer func() { done(err) }()
	for _, f := range features {
		family := nftables.TableFamilyBridge
		add := f.add
		switch f.name {
		case "the nf_tables inet family":
			family, add = nftables.TableFamilyINet, func(*nftables.Conn, *nftables.Table) error { return nil }
		case "reject in the inet family":
			family = nftables.TableFamilyINet
			add = func(c *nftables.Conn, t *nftables.Table) error {
				ch := c.AddChain(&nftables.Chain{Name: "reject", Table: t, Type: nftables.ChainTypeFilter,
					Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
				c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}})
				return nil
			}
		}
		t := c.AddTable(&nftables.Table{Name: probeTable, Family: family})
		if err := add(c, t); err != nil {
			return fmt.Errorf("probing %s: %w", f.name, err)
		}
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("the kernel lacks %s, which vmfw's nftables backend needs: %w", f.name, err)
		}
	}
	return nil
}
