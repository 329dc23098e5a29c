// Package nlnft reads and writes the nftables backend's tables over
// nf_tables netlink (docs/nftables.md): it turns the layout's rules into
// netlink expressions, writes a change of both tables as one batch (one
// transaction: the kernel applies all of it or none), and reads back
// chains by the fingerprints their rules carry, sets with their elements
// and the elements' counters, and the ruleset generation. It is the only
// code that talks to nf_tables for the backend.
package nlnft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/internal/nlmsg"
)

// Client talks to nf_tables in the calling thread's network namespace.
// The zero Client is ready: each of its calls opens one netlink socket,
// makes all its requests on it and closes it. Kept returns a Client that
// keeps its socket open from call to call.
//
// The sockets matter because the kernel, when any nf_tables netlink
// socket is released, first waits for the deferred destruction of the
// rules the last transaction replaced, which waits for an RCU grace
// period: 10 ms in strace -T of a close after a group edit
// (docs/performance.md, "nftables backend"). google/nftables opens a
// socket per request unless told to keep one, so a read of n chains closed
// n+3 sockets, each of which could wait; a process that keeps its socket
// (the agent) waits for none of them.
type Client struct{ kept *keptConn }

// keptConn is the socket of a Kept client. mu serialises its calls: the
// replies of two requests on one socket must not interleave.
type keptConn struct {
	mu sync.Mutex
	c  *nftables.Conn
}

// Kept returns a Client that keeps one netlink socket open, in the
// network namespace of the thread of its first call, until Close.
func Kept() Client { return Client{kept: &keptConn{}} }

// Close closes a Kept client's socket; the next call opens another. It
// does nothing for the zero Client.
func (cl Client) Close() error {
	if cl.kept == nil {
		return nil
	}
	cl.kept.mu.Lock()
	defer cl.kept.mu.Unlock()
	return cl.kept.drop()
}

func (k *keptConn) drop() error {
	if k.c == nil {
		return nil
	}
	err := k.c.CloseLasting()
	k.c = nil
	return err
}

// conn returns the connection for one call and the function that ends
// the call, given the call's error. A kept socket that saw an error is
// closed, so that no unread reply of a failed request is taken for the
// answer of the next call.
func (cl Client) conn() (*nftables.Conn, func(error), error) {
	if cl.kept == nil {
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return nil, nil, fmt.Errorf("opening nf_tables netlink: %w", err)
		}
		return c, func(error) { c.CloseLasting() }, nil
	}
	k := cl.kept
	k.mu.Lock()
	if k.c == nil {
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			k.mu.Unlock()
			return nil, nil, fmt.Errorf("opening nf_tables netlink: %w", err)
		}
		k.c = c
	}
	return k.c, func(err error) {
		if err != nil {
			k.drop()
		}
		k.mu.Unlock()
	}, nil
}

// Family is the table family of f.
func Family(f layout.Family) nftables.TableFamily {
	if f == layout.Bridge {
		return nftables.TableFamilyBridge
	}
	return nftables.TableFamilyINet
}

// table is vmfw's table of family f.
func table(f layout.Family) *nftables.Table {
	return &nftables.Table{Name: layout.TableName, Family: Family(f)}
}

// Observed is what the kernel holds of vmfw's tables.
type Observed struct {
	// Tables holds the tables present, by family.
	Tables map[layout.Family]*ObservedTable
	// Gen is the ruleset generation the read saw.
	Gen uint32
}

// ObservedTable is one of vmfw's tables as read.
type ObservedTable struct {
	Chains map[string]*ObservedChain
	Sets   map[string]*ObservedSet
}

// ObservedChain is a chain as read: its hook and its rules' fingerprints.
type ObservedChain struct {
	Hook *layout.Hook
	// Hashes are the rules' fingerprints in order ("" for a rule without
	// vmfw's comment).
	Hashes []string
	// Rules are the rules as the kernel returned them, for readers that
	// interpret them (vmfw trace).
	Rules []*nftables.Rule
	// refs are the chains the rules jump to and the sets they look up
	// ("@name"), known for chains Apply filled.
	refs []string
}

// ObservedSet is a named set or map as read.
type ObservedSet struct {
	// Signature is what vmfw stored in the set's comment.
	Signature string
	// Elements maps each element's key bytes to its counter (zero when
	// the element has none).
	Elements map[string]Counter
	// Data maps each element's key bytes to what it carries besides its
	// key as the layout renders it (layout.Element.DataText: "jump
	// gl-...-out" in a verdict map, a comment); elements that carry
	// nothing are not in it, and it is nil when none does.
	Data map[string]string
}

// ObservedSetOf is what a read would see of a set holding s's elements
// (without counters).
func ObservedSetOf(s *layout.Set) *ObservedSet {
	os := &ObservedSet{Signature: s.Signature(), Elements: make(map[string]Counter, len(s.Elements))}
	for _, e := range s.Elements {
		k := string(e.KeyBytes())
		os.Elements[k] = Counter{}
		os.SetData(k, e.DataText())
	}
	return os
}

// SetData records what the element with key k carries.
func (s *ObservedSet) SetData(k, data string) {
	if data == "" {
		delete(s.Data, k)
		return
	}
	if s.Data == nil {
		s.Data = map[string]string{}
	}
	s.Data[k] = data
}

// Counter is an element's counter.
type Counter struct{ Packets, Bytes uint64 }

// Clone copies o deeply enough that planning on the copy leaves o as it is.
func (o *Observed) Clone() *Observed {
	out := &Observed{Tables: map[layout.Family]*ObservedTable{}, Gen: o.Gen}
	for f, t := range o.Tables {
		ct := &ObservedTable{Chains: maps.Clone(t.Chains), Sets: map[string]*ObservedSet{}}
		for name, s := range t.Sets {
			ct.Sets[name] = &ObservedSet{Signature: s.Signature, Elements: maps.Clone(s.Elements), Data: maps.Clone(s.Data)}
		}
		out.Tables[f] = ct
	}
	return out
}

// hookNames maps hook numbers to names, per family (the bridge family's
// numbers are the IP ones).
var hookNames = map[uint32]string{
	unix.NF_INET_PRE_ROUTING: "prerouting", unix.NF_INET_LOCAL_IN: "input", unix.NF_INET_FORWARD: "forward",
	unix.NF_INET_LOCAL_OUT: "output", unix.NF_INET_POST_ROUTING: "postrouting",
}

// Read reads vmfw's tables. With elements false it reads the sets'
// names only; with only set, it reads the named sets' elements alone
// (and no chain).
func (cl Client) Read(elements bool, only ...string) (*Observed, error) {
	return cl.read(func(c *nftables.Conn, o *Observed) error {
		tables, err := c.ListTables()
		if err != nil {
			return fmt.Errorf("listing nf_tables tables: %w", err)
		}
		present := map[nftables.TableFamily]bool{}
		for _, t := range tables {
			if t.Name == layout.TableName {
				present[t.Family] = true
			}
		}
		for _, f := range []layout.Family{layout.Bridge, layout.Inet} {
			if !present[Family(f)] {
				continue
			}
			ot, err := cl.readTable(c, f, elements, only)
			if err != nil {
				return fmt.Errorf("reading table %s %s: %w", f, layout.TableName, err)
			}
			o.Tables[f] = ot
		}
		return nil
	})
}

// read makes one read on one connection: o starts at the generation the
// read sees, before fill adds the tables to it.
func (cl Client) read(fill func(c *nftables.Conn, o *Observed) error) (o *Observed, err error) {
	c, done, err := cl.conn()
	if err != nil {
		return nil, err
	}
	defer func() { done(err) }()
	gen, err := generation(c)
	if err != nil {
		return nil, err
	}
	o = &Observed{Tables: map[layout.Family]*ObservedTable{}, Gen: gen}
	if err = fill(c, o); err != nil {
		return nil, err
	}
	return o, nil
}

// generation reads the nf_tables ruleset generation on c.
func generation(c *nftables.Conn) (uint32, error) {
	g, err := c.GetGen()
	if err != nil {
		return 0, fmt.Errorf("reading the nf_tables generation: %w", err)
	}
	return g.ID, nil
}

// readChain reads chain ch of table t: its hook, and its rules with
// their fingerprints.
func readChain(c *nftables.Conn, t *nftables.Table, ch *nftables.Chain) (*ObservedChain, error) {
	oc := &ObservedChain{}
	if ch.Hooknum != nil && ch.Priority != nil {
		oc.Hook = &layout.Hook{Hook: hookNames[uint32(*ch.Hooknum)], Priority: int(*ch.Priority)}
	}
	rules, err := c.GetRules(t, ch)
	if err != nil {
		return nil, fmt.Errorf("reading chain %s: %w", ch.Name, err)
	}
	for _, r := range rules {
		oc.Hashes = append(oc.Hashes, RuleHash(r.UserData))
	}
	oc.Rules = rules
	return oc, nil
}

func (cl Client) readTable(c *nftables.Conn, f layout.Family, elements bool, only []string) (*ObservedTable, error) {
	t := table(f)
	ot := &ObservedTable{Chains: map[string]*ObservedChain{}, Sets: map[string]*ObservedSet{}}
	if len(only) == 0 {
		chains, err := c.ListChainsOfTableFamily(t.Family)
		if err != nil {
			return nil, fmt.Errorf("listing chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name != layout.TableName {
				continue
			}
			oc, err := readChain(c, t, ch)
			if err != nil {
				return nil, err
			}
			ot.Chains[ch.Name] = oc
		}
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("listing sets: %w", err)
	}
	var read []*nftables.Set
	for _, s := range sets {
		if s.Anonymous || strings.HasPrefix(s.Name, "__") {
			continue
		}
		if len(only) > 0 && !slices.Contains(only, s.Name) {
			continue
		}
		ot.Sets[s.Name] = &ObservedSet{Signature: strings.TrimPrefix(s.Comment, commentPrefix), Elements: map[string]Counter{}}
		if elements || len(only) > 0 {
			read = append(read, s)
		}
	}
	if len(read) == 0 {
		return ot, nil
	}
	// One socket for every set's dump: its buffer is 256 KiB.
	err = nlmsg.With(context.Background(), func(nc *nlmsg.Conn) error {
		for _, s := range read {
			if err := readElements(nc, f, s, ot.Sets[s.Name]); err != nil {
				return fmt.Errorf("reading set %s: %w", s.Name, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ot, nil
}

// readElements reads set s's elements into os. The elements are
// gathered first and the maps made at their size: grown element by
// element, the two maps of the ports set's 5000 elements were rehashed
// until rehashing was three quarters of filling them, 1.2 ms of an ifup
// at 5000 taps (docs/performance.md, "Policies without indexes, and a
// smaller index").
func readElements(nc *nlmsg.Conn, f layout.Family, s *nftables.Set, os *ObservedSet) error {
	var intervalElems []nftables.SetElement
	type element struct {
		key, data string
		cnt       Counter
	}
	var els []element
	withData := 0
	err := setElements(nc, f, s.Name, func(e *nftables.SetElement) {
		if s.Interval {
			e.Key = bytes.Clone(e.Key) // kept past the call
			intervalElems = append(intervalElems, *e)
			return
		}
		el := element{key: string(e.Key)}
		if e.Counter != nil {
			el.cnt = Counter{Packets: e.Counter.Packets, Bytes: e.Counter.Bytes}
		}
		verdict := ""
		if s.IsMap {
			verdict = verdictText(e.Val)
		}
		if el.data = layout.DataText(verdict, e.Comment); el.data != "" {
			withData++
		}
		els = append(els, el)
	})
	if err != nil {
		return err
	}
	os.Elements, os.Data = make(map[string]Counter, len(els)), nil
	if withData > 0 {
		os.Data = make(map[string]string, withData)
	}
	for _, el := range els {
		os.Elements[el.key] = el.cnt
		os.SetData(el.key, el.data)
	}
	if s.Interval {
		for _, k := range intervals(intervalElems, int(s.KeyType.Bytes)) {
			os.Elements[k] = Counter{}
		}
	}
	return nil
}

// ReadChains reads vmfw's tables narrowly: the chains named (those that
// exist, with their rules' fingerprints) and every set's signature, no
// element. A plan from a hint reads what its scope relies on this way:
// reading every chain cost a round trip per chain, seconds at 20,000
// (every tap its own group).
func (cl Client) ReadChains(names map[layout.Family][]string) (*Observed, error) {
	return cl.read(func(c *nftables.Conn, o *Observed) error {
		for _, f := range []layout.Family{layout.Bridge, layout.Inet} {
			t, err := c.ListTableOfFamily(layout.TableName, Family(f))
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			if err != nil {
				return fmt.Errorf("looking up table %s %s: %w", f, layout.TableName, err)
			}
			ot := &ObservedTable{Chains: map[string]*ObservedChain{}, Sets: map[string]*ObservedSet{}}
			for _, name := range names[f] {
				ch, err := c.ListChain(t, name)
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				if err != nil {
					return fmt.Errorf("reading chain %s: %w", name, err)
				}
				oc, err := readChain(c, t, ch)
				if err != nil {
					return err
				}
				ot.Chains[name] = oc
			}
			sets, err := c.GetSets(t)
			if err != nil {
				return fmt.Errorf("listing sets: %w", err)
			}
			for _, s := range sets {
				if !s.Anonymous && !strings.HasPrefix(s.Name, "__") {
					ot.Sets[s.Name] = &ObservedSet{Signature: strings.TrimPrefix(s.Comment, commentPrefix), Elements: map[string]Counter{}}
				}
			}
			o.Tables[f] = ot
		}
		return nil
	})
}

// commentPrefix starts the comment of every set and rule vmfw writes.
const commentPrefix = "vmfw:"

// RuleHash returns the fingerprint in a rule's user data: the first word
// of its comment after "vmfw:", "" when it has none.
func RuleHash(udata []byte) string {
	c, ok := userdata.GetString(udata, userdata.TypeComment)
	if !ok {
		return ""
	}
	rest, found := strings.CutPrefix(c, commentPrefix)
	if !found {
		return ""
	}
	h, _, _ := strings.Cut(rest, " ")
	return h
}

// Generation returns the nf_tables ruleset generation, which every
// committed transaction increments.
func (cl Client) Generation() (gen uint32, err error) {
	c, done, err := cl.conn()
	if err != nil {
		return 0, err
	}
	defer func() { done(err) }()
	return generation(c)
}

// Batch is a change of vmfw's tables, written as one transaction.
type Batch struct {
	// Gen, when not zero, makes the kernel refuse the batch if the
	// ruleset generation moved since (the plan was made from a state
	// that is no longer the kernel's).
	Gen    uint32
	Tables []*TableChange
}

// TableChange is what a batch does to one table, in the order the kernel
// needs: chains flushed and map elements deleted before the chains and
// sets they referred to are deleted, chains created before the map
// elements that jump to them, sets and chains before the rules that use
// them.
type TableChange struct {
	Family layout.Family
	// Delete removes the whole table; nothing else is done to it.
	Delete bool
	// Create adds the table.
	Create bool
	// Flush lists chains whose rules are removed (rewritten or deleted).
	Flush []string
	// DeleteChains and DeleteSets are removed after the flushes.
	DeleteChains []string
	DeleteSets   []string
	// NewSets are created with their elements.
	NewSets []*layout.Set
	// DelElements and AddElements change existing sets' elements.
	DelElements map[string][]layout.Element
	AddElements map[string][]layout.Element
	// NewChains are created (empty); Fill lists the chains whose rules
	// are written (new and flushed ones), in order.
	NewChains []*layout.Chain
	Fill      []*layout.Chain
	// Sets are the table's sets as wanted, which rules look up by name.
	Sets []*layout.Set
}

// ErrGeneration is returned by Write when the ruleset generation moved
// since the batch's Gen.
var ErrGeneration = errors.New("the nf_tables ruleset changed since it was read")

var writeMu sync.Mutex

// Write sends b as one transaction, or as two when its rules would meet
// an interval set new to them (stage.go).
func (cl Client) Write(b *Batch) (err error) {
	writeMu.Lock()
	defer writeMu.Unlock()
	c, done, err := cl.conn()
	if err != nil {
		return err
	}
	defer func() { done(err) }()
	staged := stage(b)
	gen := b.Gen
	handles := map[layout.Family]map[string][]uint64{}
	if staged != nil {
		for _, tc := range b.Tables {
			if s := staged[tc.Family]; s != nil {
				if err := addStaged(c, tc, s); err != nil {
					return fmt.Errorf("table %s %s: %w", tc.Family, layout.TableName, err)
				}
			}
		}
		if err := commit(c, gen); err != nil {
			return err
		}
		g, err := c.GetGen()
		if err != nil {
			return fmt.Errorf("reading the nf_tables generation: %w", err)
		}
		if gen != 0 && g.ID != gen+1 {
			return fmt.Errorf("%w: it moved while the change was staged", ErrGeneration)
		}
		gen = g.ID
		for _, tc := range b.Tables {
			if s := staged[tc.Family]; s != nil {
				if handles[tc.Family], err = stagedHandles(c, tc, s); err != nil {
					return err
				}
			}
		}
	}
	for _, tc := range b.Tables {
		if err := addTableChange(c, tc, staged[tc.Family], handles[tc.Family]); err != nil {
			return fmt.Errorf("table %s %s: %w", tc.Family, layout.TableName, err)
		}
	}
	return commit(c, gen)
}

// commit sends what c holds as one transaction, refused by the kernel if
// the generation is no longer gen (unless gen is 0).
func commit(c *nftables.Conn, gen uint32) error {
	var err error
	if gen != 0 {
		err = c.FlushWithGenID(gen)
		if errors.Is(err, unix.ERESTART) {
			return fmt.Errorf("%w: %w", ErrGeneration, err)
		}
	} else {
		err = c.Flush()
	}
	if err != nil {
		return fmt.Errorf("nf_tables transaction: %w", err)
	}
	return nil
}

// addTableChange adds tc to c, without what the first transaction wrote
// when it was staged (s, nil when not): the staged sets and chains are
// not created again, and each chain whose new rules were appended loses
// the rules with the handles old instead of being flushed.
func addTableChange(c *nftables.Conn, tc *TableChange, s *staging, old map[string][]uint64) error {
	if s == nil {
		s = &staging{}
	}
	t := table(tc.Family)
	if tc.Delete {
		c.DelTable(t)
		return nil
	}
	if tc.Create {
		c.AddTable(t)
	}
	for _, name := range tc.Flush {
		ch := &nftables.Chain{Name: name, Table: t}
		if !s.appended[name] {
			c.FlushChain(ch)
			continue
		}
		for _, h := range old[name] {
			if err := c.DelRule(&nftables.Rule{Table: t, Chain: ch, Handle: h}); err != nil {
				return fmt.Errorf("chain %s: deleting a rule: %w", name, err)
			}
		}
	}
	sets, err := nlSets(t, tc.Sets)
	if err != nil {
		return err
	}
	// Elements go before the chains they jump to (verdict maps), and the
	// chains are created before the elements that jump to them.
	if err := editElements(tc.DelElements, tc.Sets, sets, c.SetDeleteElements, "deleting elements from"); err != nil {
		return err
	}
	for _, name := range tc.DeleteChains {
		c.DelChain(&nftables.Chain{Name: name, Table: t})
	}
	for _, name := range tc.DeleteSets {
		c.DelSet(&nftables.Set{Name: name, Table: t})
	}
	for _, ch := range tc.NewChains {
		if s.create[ch.Name] {
			continue
		}
		nc := &nftables.Chain{Name: ch.Name, Table: t}
		if ch.Hook != nil {
			hook, err := hookNum(ch.Hook.Hook)
			if err != nil {
				return err
			}
			policy := nftables.ChainPolicyAccept
			nc.Type = nftables.ChainTypeFilter
			nc.Hooknum = hook
			nc.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(ch.Hook.Priority))
			nc.Policy = &policy
		}
		c.AddChain(nc)
	}
	for _, ns := range tc.NewSets {
		if s.sets[ns.Name] {
			continue
		}
		if err := addSet(c, sets[ns.Name], ns); err != nil {
			return err
		}
	}
	if err := editElements(tc.AddElements, tc.Sets, sets, c.SetAddElements, "adding elements to"); err != nil {
		return err
	}
	for _, ch := range tc.Fill {
		if s.create[ch.Name] || s.appended[ch.Name] {
			continue
		}
		if err := addRules(c, t, ch, sets); err != nil {
			return err
		}
	}
	return nil
}

// nlSets describes a table's sets for netlink, by name.
func nlSets(t *nftables.Table, sets []*layout.Set) (map[string]*nftables.Set, error) {
	out := make(map[string]*nftables.Set, len(sets))
	for _, s := range sets {
		ns, err := nlSet(t, s)
		if err != nil {
			return nil, err
		}
		out[s.Name] = ns
	}
	return out, nil
}

// addSet creates set s (described for netlink as ns) with its elements.
func addSet(c *nftables.Conn, ns *nftables.Set, s *layout.Set) error {
	if ns == nil {
		return fmt.Errorf("set %s is not among the table's sets", s.Name)
	}
	if err := c.AddSet(ns, nil); err != nil {
		return fmt.Errorf("adding set %s: %w", s.Name, err)
	}
	if len(s.Elements) > 0 {
		if err := c.SetAddElements(ns, elements(s, s.Elements)); err != nil {
			return fmt.Errorf("adding elements to %s: %w", s.Name, err)
		}
	}
	return nil
}

// addRules appends ch's rules to the chain of that name, with the
// anonymous sets they look up.
func addRules(c *nftables.Conn, t *nftables.Table, ch *layout.Chain, sets map[string]*nftables.Set) error {
	nc := &nftables.Chain{Name: ch.Name, Table: t}
	for _, r := range ch.Rules {
		conv, err := convert(r, t, func(name string) *nftables.Set { return sets[name] })
		if err != nil {
			return fmt.Errorf("chain %s: %w", ch.Name, err)
		}
		for _, a := range conv.anon {
			if err := c.AddSet(a.set, a.elems); err != nil {
				return fmt.Errorf("chain %s: anonymous set: %w", ch.Name, err)
			}
			a.lookup.SetName, a.lookup.SetID = a.set.Name, a.set.ID
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: nc, Exprs: conv.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.UserComment(ch.Name))})
	}
	return nil
}

// editElements hands the elements of each set in edit, by the set's
// name in order, to change (a connection's add or delete of elements);
// what names the change in its errors.
func editElements(edit map[string][]layout.Element, layoutSets []*layout.Set, sets map[string]*nftables.Set,
	change func(*nftables.Set, []nftables.SetElement) error, what string) error {
	for _, name := range slices.Sorted(maps.Keys(edit)) {
		s := layoutSet(layoutSets, name)
		if s == nil {
			return fmt.Errorf("set %s is not among the table's sets", name)
		}
		if err := change(sets[name], elements(s, edit[name])); err != nil {
			return fmt.Errorf("%s %s: %w", what, name, err)
		}
	}
	return nil
}

func layoutSet(sets []*layout.Set, name string) *layout.Set {
	for _, s := range sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func hookNum(name string) (*nftables.ChainHook, error) {
	for n, h := range hookNames {
		if h == name {
			return nftables.ChainHookRef(nftables.ChainHook(n)), nil
		}
	}
	return nil, fmt.Errorf("unknown hook %q", name)
}

// nlSet describes s for netlink.
func nlSet(t *nftables.Table, s *layout.Set) (*nftables.Set, error) {
	kt, concat, err := keyType(s.Key)
	if err != nil {
		return nil, fmt.Errorf("set %s: %w", s.Name, err)
	}
	ns := &nftables.Set{Table: t, Name: s.Name, KeyType: kt, Concatenation: concat, Interval: s.Interval, Comment: commentPrefix + s.Signature()}
	if s.Data == layout.TypeVerdict {
		ns.IsMap, ns.DataType = true, nftables.TypeVerdict
	}
	if !concat && (s.Key[0] == layout.TypeIfname || s.Key[0] == layout.TypeMark) {
		// nft prints the elements of a set by the byte order its user
		// data records: names and marks are kept in host order.
		ns.KeyByteOrder = binaryutil.NativeEndian
	}
	return ns, nil
}

// elements turns layout elements of s into netlink ones.
func elements(s *layout.Set, list []layout.Element) []nftables.SetElement {
	if s.Interval {
		return intervalElements(list)
	}
	out := make([]nftables.SetElement, len(list))
	for i, e := range list {
		out[i] = nftables.SetElement{Key: e.KeyBytes(), Comment: e.Comment}
		if v := e.Verdict; v != nil {
			out[i].VerdictData = &expr.Verdict{Kind: verdictKinds[v.Kind], Chain: v.Chain}
		}
		if s.Counter {
			out[i].Counter = &expr.Counter{}
		}
	}
	return out
}

// Present reports whether either of vmfw's tables exists: the cheap check
// the iptables backend's entry points make before they write (a host
// switching backends), two netlink lookups.
func (cl Client) Present() (present bool, err error) {
	c, done, err := cl.conn()
	if err != nil {
		return false, err
	}
	defer func() { done(err) }()
	for _, f := range []layout.Family{layout.Bridge, layout.Inet} {
		_, err := c.ListTableOfFamily(layout.TableName, Family(f))
		switch {
		case err == nil:
			return true, nil
		case !errors.Is(err, unix.ENOENT):
			return false, fmt.Errorf("looking up table %s %s: %w", f, layout.TableName, err)
		}
	}
	return false, nil
}
