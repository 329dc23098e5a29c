package nftrace

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/google/nftables/expr"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// table is one of vmfw's tables as the interpreter walks it: chains of
// rules as netlink expressions, and the sets they look up.
type table struct {
	family layout.Family
	chains map[string]*chain
	sets   map[string]*set
}

// chain is a chain with its hook (nil for a regular chain).
type chain struct {
	name  string
	hook  *layout.Hook
	rules []*rule
}

// rule is a rule's expressions, its fingerprint, its text as nft prints
// it and the configuration it implements.
type rule struct {
	exprs  []expr.Any
	hash   string
	text   string
	origin ruleset.Origin
	// anon holds the anonymous sets of a laid out rule by lookup; a rule
	// read from the kernel names them (table.sets).
	anon map[*expr.Lookup]*set
}

// set is a set's elements: exact keys, or for an interval set ranges
// keyed lo then hi (layout.Element.KeyBytes).
type set struct {
	interval bool
	keys     map[string]bool
	// ranges are an interval set's, as [lo, hi] pairs.
	ranges [][2][]byte
	// data is a verdict map's: each key's verdict as layout.Verdict.Text
	// renders it ("jump gl-...-in"); nil for a set.
	data map[string]string
}

func newSet(interval bool, keys []string) *set {
	s := &set{interval: interval, keys: map[string]bool{}}
	for _, k := range keys {
		s.keys[k] = true
		if interval && len(k)%2 == 0 {
			n := len(k) / 2
			s.ranges = append(s.ranges, [2][]byte{[]byte(k[:n]), []byte(k[n:])})
		}
	}
	return s
}

// has reports whether key is in the set.
func (s *set) has(key []byte) bool {
	if !s.interval {
		return s.keys[string(key)]
	}
	for _, r := range s.ranges {
		if len(r[0]) == len(key) && bytes.Compare(r[0], key) <= 0 && bytes.Compare(key, r[1]) <= 0 {
			return true
		}
	}
	return false
}

// keyLen returns the length of the set's keys, 0 when it has none.
func (s *set) keyLen() int {
	for k := range s.keys {
		if s.interval {
			return len(k) / 2
		}
		return len(k)
	}
	return 0
}

// fromLayout is the interpreter's form of a laid out table: its rules
// turned into the netlink expressions package nlnft writes.
func fromLayout(t *layout.Table) (*table, error) {
	out := &table{family: t.Family, chains: map[string]*chain{}, sets: map[string]*set{}}
	for _, s := range t.Sets {
		keys := make([]string, len(s.Elements))
		for i, e := range s.Elements {
			keys[i] = string(e.KeyBytes())
		}
		out.sets[s.Name] = newSet(s.Interval, keys)
		if s.IsMap() {
			out.sets[s.Name].data = map[string]string{}
			for i, e := range s.Elements {
				out.sets[s.Name].data[keys[i]] = e.DataText()
			}
		}
	}
	for _, c := range t.Chains {
		oc := &chain{name: c.Name, hook: c.Hook}
		for _, r := range c.Rules {
			exprs, anon, err := nlnft.RuleExprs(r)
			if err != nil {
				return nil, fmt.Errorf("chain %s: %w", c.Name, err)
			}
			or := &rule{exprs: exprs, hash: r.Hash(c.Name), text: r.Text(), origin: r.Origin, anon: map[*expr.Lookup]*set{}}
			for l, a := range anon {
				or.anon[l] = newSet(a.Interval, a.Keys)
			}
			oc.rules = append(oc.rules, or)
		}
		out.chains[c.Name] = oc
	}
	return out, nil
}

// fromKernel is the interpreter's form of a table as read. A rule's text
// and origin are those of the laid out rule of its chain with its
// fingerprint (layouts, in order), found first at its own position; a
// rule none has keeps its fingerprint as its text.
func fromKernel(f layout.Family, ins *nlnft.Inspection, layouts ...*layout.Table) *table {
	ot := ins.Tables[f]
	out := &table{family: f, chains: map[string]*chain{}, sets: map[string]*set{}}
	if ot == nil {
		return nil
	}
	for name, s := range ot.Sets {
		keys := make([]string, 0, len(s.Elements))
		for k := range s.Elements {
			keys = append(keys, k)
		}
		out.sets[name] = newSet(strings.Contains(s.Signature, "flags interval"), keys)
		out.sets[name].data = s.Data
	}
	for name, a := range ins.Anon[f] {
		out.sets[name] = newSet(a.Interval, a.Keys)
	}
	for name, c := range ot.Chains {
		oc := &chain{name: name, hook: c.Hook}
		for i, r := range c.Rules {
			h := ""
			if i < len(c.Hashes) {
				h = c.Hashes[i]
			}
			or := &rule{exprs: r.Exprs, hash: h, text: "(a rule vmfw did not lay out: fingerprint " + h + ")"}
			if h == "" {
				or.text = "(a rule without vmfw's fingerprint)"
			}
			if lr, ok := laidOut(layouts, name, i, h); ok {
				or.text, or.origin = lr.Text(), lr.Origin
			}
			oc.rules = append(oc.rules, or)
		}
		out.chains[name] = oc
	}
	return out
}

// laidOut finds the laid out rule of chain with fingerprint h, at
// position i if it is there.
func laidOut(layouts []*layout.Table, name string, i int, h string) (layout.Rule, bool) {
	if h == "" {
		return layout.Rule{}, false
	}
	for _, t := range layouts {
		if c := t.Chain(name); c != nil && i < len(c.Rules) && c.Rules[i].Hash(name) == h {
			return c.Rules[i], true
		}
	}
	for _, t := range layouts {
		if c := t.Chain(name); c != nil {
			for _, r := range c.Rules {
				if r.Hash(name) == h {
					return r, true
				}
			}
		}
	}
	return layout.Rule{}, false
}

// outcome is how a chain walk ended.
type outcome int

const (
	// fell: the base chain ended without a verdict (its policy accepts).
	fell outcome = iota
	accepted
	dropped
	rejected
)

// hit is a rule that matched.
type hit struct {
	chain  string
	index  int
	rule   *rule
	origin ruleset.Origin
	// setBits are the mark bits the rule set.
	setBits uint32
}

// machine walks one table's chains for a packet.
type machine struct {
	t *table
	// entered lists the chains entered, hits the rules matched, in order.
	entered []string
	hits    []hit
	// setsUsed names the named sets a lookup consulted.
	setsUsed map[string]bool
}

// frame is one chain on the walk's stack.
type frame struct {
	c   *chain
	pos int
	// origin is what the rule that jumped here implements: rules of
	// shared chains (drop-in, reject-out) that implement nothing by
	// themselves decide for it.
	origin ruleset.Origin
}

// maxDepth bounds jumps: the kernel refuses loops and deeper stacks.
const maxDepth = 16

// run walks the base chain name for p.
func (m *machine) run(name string, p *packet) (outcome, *hit, error) {
	c := m.t.chains[name]
	if c == nil {
		return fell, nil, nil
	}
	m.entered = append(m.entered, string(m.t.family)+"/"+name)
	stack := []frame{{c: c}}
	for len(stack) > 0 {
		top := &stack[len(stack)-1]
		if top.pos >= len(top.c.rules) {
			stack = stack[:len(stack)-1]
			continue
		}
		r := top.c.rules[top.pos]
		top.pos++
		before := p.mark
		v, matched, err := m.eval(r, p)
		if err != nil {
			return fell, nil, fmt.Errorf("%s/%s rule %d (%s): %w", m.t.family, top.c.name, top.pos, r.text, err)
		}
		if !matched {
			continue
		}
		o := r.origin
		if o.IsZero() {
			o = top.origin
		}
		m.hits = append(m.hits, hit{chain: top.c.name, index: top.pos, rule: r, origin: o, setBits: p.mark &^ before})
		h := &m.hits[len(m.hits)-1]
		switch v.kind {
		case vNone:
		case vAccept:
			return accepted, h, nil
		case vDrop:
			return dropped, h, nil
		case vReject:
			return rejected, h, nil
		case vReturn:
			stack = stack[:len(stack)-1]
		case vJump, vGoto:
			next := m.t.chains[v.chain]
			if next == nil {
				return fell, nil, fmt.Errorf("%s/%s rule %d jumps to chain %s, which does not exist", m.t.family, top.c.name, top.pos, v.chain)
			}
			if len(stack) >= maxDepth {
				return fell, nil, fmt.Errorf("%s/%s rule %d: jumps nest deeper than %d", m.t.family, top.c.name, top.pos, maxDepth)
			}
			m.entered = append(m.entered, string(m.t.family)+"/"+v.chain)
			if v.kind == vGoto {
				stack = stack[:len(stack)-1]
			}
			stack = append(stack, frame{c: next, origin: o})
		}
	}
	return fell, nil, nil
}

// verdictKind is what a rule's last expression decides.
type verdictKind int

const (
	vNone verdictKind = iota
	vAccept
	vDrop
	vReject
	vReturn
	vJump
	vGoto
)

type verdict struct {
	kind  verdictKind
	chain string
}

// registers are the kernel's: NFT_REG_1 to 4 are 16 bytes each, the
// 32-bit registers NFT_REG32_00 (8) on alias them.
type registers [80]byte

func regSlice(r *registers, reg uint32, n int) ([]byte, error) {
	var off int
	switch {
	case reg >= 1 && reg <= 4:
		off = int(reg) * 16
	case reg >= 8 && reg <= 23:
		off = 16 + int(reg-8)*4
	default:
		return nil, fmt.Errorf("register %d", reg)
	}
	if off+n > len(r) {
		return nil, fmt.Errorf("register %d holds no %d bytes", reg, n)
	}
	return r[off : off+n], nil
}

// store writes v into reg as the kernel's loads do: padded with zeros to
// a whole 32-bit word.
func store(r *registers, reg uint32, v []byte) error {
	n := (len(v) + 3) / 4 * 4
	dst, err := regSlice(r, reg, n)
	if err != nil {
		return err
	}
	clear(dst)
	copy(dst, v)
	return nil
}

// eval runs r's expressions: matched is false when one of them does not
// match (the rule breaks); v is the rule's verdict, vNone when it has
// none. Statements (mark, log, counter) take effect on a match.
func (m *machine) eval(r *rule, p *packet) (v verdict, matched bool, err error) {
	var regs registers
	for _, e := range r.exprs {
		switch e := e.(type) {
		case *expr.Meta:
			if e.SourceRegister {
				if e.Key != expr.MetaKeyMARK {
					return v, false, fmt.Errorf("sets meta key %d", e.Key)
				}
				b, err := regSlice(&regs, e.Register, 4)
				if err != nil {
					return v, false, err
				}
				p.mark = binary.NativeEndian.Uint32(b)
				continue
			}
			val, ok := p.meta(e.Key)
			if !ok {
				return v, false, fmt.Errorf("reads meta key %d, which vmfw's rules do not use", e.Key)
			}
			if err := store(&regs, e.Register, val); err != nil {
				return v, false, err
			}
		case *expr.Payload:
			if e.OperationType != expr.PayloadLoad {
				return v, false, fmt.Errorf("writes the packet")
			}
			val, ok := p.payload(e.Base, int(e.Offset), int(e.Len))
			if !ok {
				return v, false, nil // the header is not there: no match
			}
			if err := store(&regs, e.DestRegister, val); err != nil {
				return v, false, err
			}
		case *expr.Bitwise:
			src, err := regSlice(&regs, e.SourceRegister, int(e.Len))
			if err != nil {
				return v, false, err
			}
			out := make([]byte, e.Len)
			for i := range out {
				out[i] = src[i]&e.Mask[i] ^ e.Xor[i]
			}
			dst, err := regSlice(&regs, e.DestRegister, int(e.Len))
			if err != nil {
				return v, false, err
			}
			copy(dst, out)
		case *expr.Cmp:
			got, err := regSlice(&regs, e.Register, len(e.Data))
			if err != nil {
				return v, false, err
			}
			eq := bytes.Equal(got, e.Data)
			switch e.Op {
			case expr.CmpOpEq:
				if !eq {
					return v, false, nil
				}
			case expr.CmpOpNeq:
				if eq {
					return v, false, nil
				}
			default:
				return v, false, fmt.Errorf("compares with operator %d", e.Op)
			}
		case *expr.Lookup:
			s := r.anon[e]
			if s == nil {
				s = m.t.sets[e.SetName]
				if s != nil && !strings.HasPrefix(e.SetName, "__") {
					m.setsUsed[e.SetName] = true
				}
			}
			if s == nil {
				return v, false, fmt.Errorf("looks up set %s, which does not exist", e.SetName)
			}
			found := false
			var key []byte
			if n := s.keyLen(); n > 0 {
				if key, err = regSlice(&regs, e.SourceRegister, n); err != nil {
					return v, false, err
				}
				found = s.has(key)
			}
			if e.IsDestRegSet {
				// A verdict map's lookup: the element's verdict, or
				// no match (the packet goes on to the next rule).
				if e.DestRegister != 0 || s.data == nil {
					return v, false, fmt.Errorf("looks up map %s into register %d", e.SetName, e.DestRegister)
				}
				if !found {
					return v, false, nil
				}
				mv, err := mapVerdict(s.data[string(key)])
				if err != nil {
					return v, false, fmt.Errorf("map %s: %w", e.SetName, err)
				}
				v = mv
				continue
			}
			if found == e.Invert {
				return v, false, nil
			}
		case *expr.Ct:
			if e.Key != expr.CtKeySTATE || e.SourceRegister {
				return v, false, fmt.Errorf("uses ct key %d", e.Key)
			}
			if err := store(&regs, e.Register, binary.NativeEndian.AppendUint32(nil, p.ctState())); err != nil {
				return v, false, err
			}
		case *expr.Counter, *expr.Log:
		case *expr.Limit:
			// A trace follows one packet: the rate limit lets it
			// through, as it does the first packets of a burst.
		case *expr.Reject:
			v.kind = vReject
		case *expr.Verdict:
			switch e.Kind {
			case expr.VerdictAccept:
				v.kind = vAccept
			case expr.VerdictDrop:
				v.kind = vDrop
			case expr.VerdictReturn:
				v.kind = vReturn
			case expr.VerdictJump:
				v = verdict{vJump, e.Chain}
			case expr.VerdictGoto:
				v = verdict{vGoto, e.Chain}
			default:
				return v, false, fmt.Errorf("has verdict %d", e.Kind)
			}
		default:
			return v, false, fmt.Errorf("has an expression of kind %T, which vmfw's rules do not use", e)
		}
	}
	return v, true, nil
}

// mapVerdict reads an element's verdict as layout.Verdict.Text renders
// it.
func mapVerdict(text string) (verdict, error) {
	kind, chain, _ := strings.Cut(text, " ")
	switch kind {
	case "accept":
		return verdict{kind: vAccept}, nil
	case "drop":
		return verdict{kind: vDrop}, nil
	case "return":
		return verdict{kind: vReturn}, nil
	case "jump":
		return verdict{vJump, chain}, nil
	case "goto":
		return verdict{vGoto, chain}, nil
	}
	return verdict{}, fmt.Errorf("an element's verdict %q", text)
}
