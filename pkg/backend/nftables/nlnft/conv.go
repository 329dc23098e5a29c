package nlnft

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

// Registers. A single value is loaded into the first 16-byte register, as
// nft does; the parts of a concatenation into consecutive 32-bit
// registers from the first, each part padded to four bytes, which is the
// layout nft reads back as "a . b".
const (
	reg1   = 1
	reg32a = 8
)

// setTypes are the kernel's set data types of the layout's types.
var setTypes = map[layout.Type]nftables.SetDatatype{
	layout.TypeIfname:    nftables.TypeIFName,
	layout.TypeIPv4:      nftables.TypeIPAddr,
	layout.TypeIPv6:      nftables.TypeIP6Addr,
	layout.TypeEther:     nftables.TypeEtherAddr,
	layout.TypeEtherType: nftables.TypeEtherType,
	layout.TypeService:   nftables.TypeInetService,
	layout.TypeL4Proto:   nftables.TypeInetProto,
	layout.TypeMark:      nftables.TypeMark,
	layout.TypeICMP:      nftables.TypeICMPType,
	layout.TypeICMPv6:    nftables.TypeICMP6Type,
}

// setType maps a layout type to the kernel's set data type.
func setType(t layout.Type) (nftables.SetDatatype, error) {
	if dt, ok := setTypes[t]; ok {
		return dt, nil
	}
	return nftables.TypeInvalid, fmt.Errorf("no set type for %s", t)
}

// keyType returns the key type of a set of key types, a concatenation
// when there are several.
func keyType(types []layout.Type) (nftables.SetDatatype, bool, error) {
	dts := make([]nftables.SetDatatype, len(types))
	for i, t := range types {
		dt, err := setType(t)
		if err != nil {
			return nftables.TypeInvalid, false, err
		}
		dts[i] = dt
	}
	if len(dts) == 1 {
		return dts[0], false, nil
	}
	dt, err := nftables.ConcatSetType(dts...)
	return dt, true, err
}

// Meta keys the kernel has and x/sys does not name (linux/netfilter/
// nf_tables.h, enum nft_meta_keys): the kind of the input and output
// interface ("bridge").
const (
	metaKeyIIFKIND expr.MetaKey = 26
	metaKeyOIFKIND expr.MetaKey = 27
)

var metaKeys = map[string]expr.MetaKey{
	"iifname":  expr.MetaKeyIIFNAME,
	"oifname":  expr.MetaKeyOIFNAME,
	"iifkind":  metaKeyIIFKIND,
	"oifkind":  metaKeyOIFKIND,
	"protocol": expr.MetaKeyPROTOCOL,
	"l4proto":  expr.MetaKeyL4PROTO,
	"nfproto":  expr.MetaKeyNFPROTO,
	"mark":     expr.MetaKeyMARK,
}

var payloadBases = map[string]expr.PayloadBase{
	"ll": expr.PayloadBaseLLHeader,
	"nh": expr.PayloadBaseNetworkHeader,
	"th": expr.PayloadBaseTransportHeader,
}

// load returns the expression that loads f into register reg.
func load(f layout.Field, reg uint32) (expr.Any, error) {
	if f.Meta != "" {
		k, ok := metaKeys[f.Meta]
		if !ok {
			return nil, fmt.Errorf("unknown meta key %s", f.Meta)
		}
		return &expr.Meta{Key: k, Register: reg}, nil
	}
	base, ok := payloadBases[f.Base]
	if !ok {
		return nil, fmt.Errorf("unknown payload base %s", f.Base)
	}
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: base, Offset: uint32(f.Offset), Len: uint32(f.Len)}, nil
}

// rule is one layout rule as netlink expressions, with the anonymous sets
// it needs created first.
type rule struct {
	exprs []expr.Any
	anon  []anonSet
}

// anonSet is an anonymous set a rule looks up.
type anonSet struct {
	set   *nftables.Set
	elems []nftables.SetElement
	// lookup is completed with the set's name and id once it is added
	// to a batch, which allocates them.
	lookup *expr.Lookup
}

// convert turns a layout rule into netlink expressions. sets resolves the
// named sets the rule looks up (their ids when created in the same
// batch). t is the table the anonymous sets go to.
func convert(r layout.Rule, t *nftables.Table, sets func(name string) *nftables.Set) (*rule, error) {
	out := &rule{}
	for _, e := range r.Exprs {
		if err := out.add(e, t, sets); err != nil {
			return nil, fmt.Errorf("%s: %w", e.Text(), err)
		}
	}
	return out, nil
}

// load appends the expression that loads f into register reg.
func (r *rule) load(f layout.Field, reg uint32) error {
	l, err := load(f, reg)
	if err != nil {
		return err
	}
	r.exprs = append(r.exprs, l)
	return nil
}

func (r *rule) add(e layout.Expr, t *nftables.Table, sets func(string) *nftables.Set) error {
	switch e := e.(type) {
	case *layout.Cmp:
		if err := r.load(e.Field, reg1); err != nil {
			return err
		}
		if e.Mask != nil {
			r.exprs = append(r.exprs, &expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: uint32(len(e.Mask)), Mask: e.Mask, Xor: make([]byte, len(e.Mask))})
		}
		op := expr.CmpOpEq
		if e.Neg {
			op = expr.CmpOpNeq
		}
		r.exprs = append(r.exprs, &expr.Cmp{Op: op, Register: reg1, Data: e.Value.Bytes})
	case *layout.Lookup:
		// A concatenation is loaded into consecutive 32-bit registers.
		reg := uint32(reg1)
		if len(e.Fields) > 1 {
			reg = reg32a
		}
		next := reg
		for _, f := range e.Fields {
			if err := r.load(f, next); err != nil {
				return err
			}
			next += uint32((f.Len + 3) / 4)
		}
		s := sets(e.Set)
		if s == nil {
			return fmt.Errorf("set %s is not in the table", e.Set)
		}
		r.exprs = append(r.exprs, &expr.Lookup{SourceRegister: reg, SetName: s.Name, SetID: s.ID, Invert: e.Neg})
	case *layout.VMap:
		if err := r.load(e.Field, reg1); err != nil {
			return err
		}
		m := sets(e.Map)
		if m == nil {
			return fmt.Errorf("map %s is not in the table", e.Map)
		}
		r.exprs = append(r.exprs, &expr.Lookup{SourceRegister: reg1, SetName: m.Name, SetID: m.ID, DestRegister: 0, IsDestRegSet: true})
	case *layout.Anon:
		kt, err := setType(e.Field.Type)
		if err != nil {
			return err
		}
		// A set of single values is a hash, not an interval set: the
		// kernel publishes a new interval set only after the commit
		// that makes the rule using it visible (stage.go), a hash at
		// once.
		interval := e.HasRange()
		s := &nftables.Set{Table: t, Anonymous: true, Constant: true, Interval: interval, KeyType: kt}
		var elems []nftables.SetElement
		for _, iv := range e.Elems {
			elems = append(elems, nftables.SetElement{Key: iv.Lo.Bytes})
			if !interval {
				continue
			}
			if end, ok := increment(iv.Hi.Bytes); ok {
				elems = append(elems, nftables.SetElement{Key: end, IntervalEnd: true})
			}
		}
		if err := r.load(e.Field, reg1); err != nil {
			return err
		}
		lk := &expr.Lookup{SourceRegister: reg1}
		r.anon = append(r.anon, anonSet{set: s, elems: elems, lookup: lk})
		r.exprs = append(r.exprs, lk)
	case *layout.SetMark:
		// The kernel computes (mark & mask) ^ xor: clearing the bits to
		// set first makes the xor set them whatever they were.
		mask := binary.NativeEndian.AppendUint32(nil, ^(e.Clear | e.Set))
		xor := binary.NativeEndian.AppendUint32(nil, e.Set)
		r.exprs = append(r.exprs,
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: mask, Xor: xor},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1})
	case *layout.CtState:
		r.exprs = append(r.exprs,
			&expr.Ct{Key: expr.CtKeySTATE, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binary.NativeEndian.AppendUint32(nil, e.Bits()), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)})
	case *layout.Limit:
		units := map[string]expr.LimitTime{"second": expr.LimitTimeSecond, "minute": expr.LimitTimeMinute, "hour": expr.LimitTimeHour, "day": expr.LimitTimeDay}
		u, ok := units[e.Unit]
		if !ok {
			return fmt.Errorf("unknown limit unit %q", e.Unit)
		}
		r.exprs = append(r.exprs, &expr.Limit{Type: expr.LimitTypePkts, Rate: e.Rate, Unit: u, Burst: e.Burst})
	case *layout.Log:
		l := &expr.Log{Key: 1 << unix.NFTA_LOG_PREFIX, Data: []byte(e.Prefix)}
		if e.Group > 0 {
			l.Key |= 1 << unix.NFTA_LOG_GROUP
			l.Group = uint16(e.Group)
		} else {
			l.Key |= 1 << unix.NFTA_LOG_LEVEL
			l.Level = expr.LogLevelWarning
			if n, ok := layout.LogLevels[e.Level]; ok {
				l.Level = expr.LogLevel(n)
			}
		}
		r.exprs = append(r.exprs, &expr.Counter{}, l)
	case *layout.Reject:
		if e.TCP {
			r.exprs = append(r.exprs, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
		} else {
			r.exprs = append(r.exprs, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
		}
	case *layout.Verdict:
		r.exprs = append(r.exprs, &expr.Verdict{Kind: verdictKinds[e.Kind], Chain: e.Chain})
	default:
		return fmt.Errorf("unknown expression %T", e)
	}
	return nil
}

// increment returns b + 1 as a big-endian number: the exclusive end of an
// interval ending at b. ok is false when b is the largest value, whose
// interval runs to the end of the key space and needs no end element.
func increment(b []byte) ([]byte, bool) {
	out := append([]byte(nil), b...)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out, true
		}
	}
	return nil, false
}

// verdictKinds are the kernel's verdict codes of the layout's verdicts.
var verdictKinds = map[layout.VerdictKind]expr.VerdictKind{layout.Accept: expr.VerdictAccept, layout.Drop: expr.VerdictDrop,
	layout.Return: expr.VerdictReturn, layout.Jump: expr.VerdictJump, layout.Goto: expr.VerdictGoto}

// verdictText renders the data of a verdict map's element as the kernel
// returns it (the attributes of NFTA_DATA_VERDICT: the code, and the
// chain of a jump or goto) as layout.Verdict.Text does; "?" when it is
// not a verdict vmfw writes.
func verdictText(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "?"
	}
	ad.ByteOrder = binary.BigEndian
	var code int32
	chain := ""
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			code = int32(ad.Uint32())
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	if ad.Err() != nil {
		return "?"
	}
	for k, v := range verdictKinds {
		if int32(v) == code {
			return (&layout.Verdict{Kind: k, Chain: chain}).Text()
		}
	}
	return "?"
}
