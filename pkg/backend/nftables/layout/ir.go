package layout

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/ruleset"
)

// The intermediate form. A rule is a list of expressions of a few kinds
// (comparisons, set lookups, statements, a verdict), each of which knows
// its nft text; package nlnft turns the same values into netlink
// expressions. Keeping both renderings beside one value is what lets the
// golden files (text) stand for what the kernel gets (netlink), and the
// fingerprint of a rule is the hash of its text.

// Family is an nf_tables table family vmfw uses.
type Family string

// The two families of vmfw's tables (docs/nftables.md).
const (
	Bridge Family = "bridge"
	Inet   Family = "inet"
)

// Type is the data type of a set key, a map value or a compared value,
// named as nft names it.
type Type string

// The types vmfw's sets and comparisons use.
const (
	TypeIfname    Type = "ifname"
	TypeIPv4      Type = "ipv4_addr"
	TypeIPv6      Type = "ipv6_addr"
	TypeEther     Type = "ether_addr"
	TypeEtherType Type = "ether_type"
	TypeService   Type = "inet_service"
	TypeL4Proto   Type = "inet_proto"
	TypeMark      Type = "mark"
	TypeICMP      Type = "icmp_type"
	TypeICMPv6    Type = "icmpv6_type"
	TypeInteger   Type = "integer"
	TypeVerdict   Type = "verdict"
	// TypeString is an interface kind (meta iifkind), compared only.
	TypeString Type = "string"
)

// Len is the length of a value of t in bytes.
func (t Type) Len() int {
	switch t {
	case TypeIfname, TypeIPv6, TypeString:
		return 16
	case TypeIPv4, TypeMark:
		return 4
	case TypeEther:
		return 6
	case TypeEtherType, TypeService:
		return 2
	case TypeL4Proto, TypeICMP, TypeICMPv6, TypeInteger:
		return 1
	}
	return 0
}

// Value is a typed constant in the byte order the kernel compares it in.
type Value struct {
	Type  Type
	Bytes []byte
}

// String renders v as nft prints it.
func (v Value) String() string {
	b := v.Bytes
	switch v.Type {
	case TypeIfname, TypeString:
		if v.Type == TypeIfname && len(b) < 16 {
			// A prefix of a name: nft's wildcard.
			return strconv.Quote(string(b) + "*")
		}
		return strconv.Quote(strings.TrimRight(string(b), "\x00"))
	case TypeIPv4, TypeIPv6:
		a, _ := netip.AddrFromSlice(b)
		return a.String()
	case TypeEther:
		return net.HardwareAddr(b).String()
	case TypeEtherType:
		return etherTypeName(binary.BigEndian.Uint16(b))
	case TypeService:
		return strconv.Itoa(int(binary.BigEndian.Uint16(b)))
	case TypeL4Proto:
		return protoName(b[0])
	case TypeMark:
		return fmt.Sprintf("0x%08x", binary.NativeEndian.Uint32(b))
	}
	if len(b) == 1 {
		return strconv.Itoa(int(b[0]))
	}
	return "0x" + hex.EncodeToString(b)
}

func etherTypeName(n uint16) string {
	switch n {
	case 0x0800:
		return "ip"
	case 0x86dd:
		return "ip6"
	case 0x0806:
		return "arp"
	}
	return fmt.Sprintf("0x%04x", n)
}

func protoName(p uint8) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "ipv6-icmp"
	case 132:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

// Ifname returns an interface name as nf_tables compares it: 16 bytes,
// zero padded.
func Ifname(name string) Value {
	b := make([]byte, 16)
	copy(b, name)
	return Value{TypeIfname, b}
}

// Addr returns an IPv4 or IPv6 address.
func Addr(a netip.Addr) Value {
	if a.Is4() {
		return Value{TypeIPv4, a.AsSlice()}
	}
	return Value{TypeIPv6, a.AsSlice()}
}

// Ether returns a MAC address.
func Ether(mac net.HardwareAddr) Value { return Value{TypeEther, []byte(mac)} }

// EtherType returns an ethertype.
func EtherType(n uint16) Value { return Value{TypeEtherType, binary.BigEndian.AppendUint16(nil, n)} }

// Port returns a transport port.
func Port(n uint16) Value { return Value{TypeService, binary.BigEndian.AppendUint16(nil, n)} }

// Proto returns an IP protocol number.
func Proto(n uint8) Value { return Value{TypeL4Proto, []byte{n}} }

// Byte returns a one-byte value of type t (an ICMP type, a code).
func Byte(t Type, n uint8) Value { return Value{t, []byte{n}} }

// Mark returns a packet mark value (host byte order, as meta mark loads it).
func Mark(n uint32) Value { return Value{TypeMark, binary.NativeEndian.AppendUint32(nil, n)} }

// Field is what an expression reads from a packet: a meta key or a
// payload field.
type Field struct {
	// Name is the field in nft syntax: "iifname", "meta mark", "ip saddr".
	Name string
	// Type is the type of its value.
	Type Type
	// Meta is the meta key ("iifname", "mark", ...) for a meta field.
	Meta string
	// Base, Offset and Len locate a payload field: Base is "ll", "nh"
	// or "th".
	Base   string
	Offset int
	Len    int
}

// The fields vmfw's rules read.
var (
	FIifname  = Field{Name: "iifname", Type: TypeIfname, Meta: "iifname", Len: 16}
	FOifname  = Field{Name: "oifname", Type: TypeIfname, Meta: "oifname", Len: 16}
	FIifkind  = Field{Name: "meta iifkind", Type: TypeString, Meta: "iifkind", Len: 16}
	FOifkind  = Field{Name: "meta oifkind", Type: TypeString, Meta: "oifkind", Len: 16}
	FProtocol = Field{Name: "meta protocol", Type: TypeEtherType, Meta: "protocol", Len: 2}
	// FNFProto is the IP family of a packet in the inet table (2 IPv4,
	// 10 IPv6): what an address match there must check first.
	FNFProto   = Field{Name: "meta nfproto", Type: TypeInteger, Meta: "nfproto", Len: 1}
	FL4Proto   = Field{Name: "meta l4proto", Type: TypeL4Proto, Meta: "l4proto", Len: 1}
	FMark      = Field{Name: "meta mark", Type: TypeMark, Meta: "mark", Len: 4}
	FEtherSrc  = Field{Name: "ether saddr", Type: TypeEther, Base: "ll", Offset: 6, Len: 6}
	FEtherDst  = Field{Name: "ether daddr", Type: TypeEther, Base: "ll", Offset: 0, Len: 6}
	FIPSrc     = Field{Name: "ip saddr", Type: TypeIPv4, Base: "nh", Offset: 12, Len: 4}
	FIPDst     = Field{Name: "ip daddr", Type: TypeIPv4, Base: "nh", Offset: 16, Len: 4}
	FIP6Src    = Field{Name: "ip6 saddr", Type: TypeIPv6, Base: "nh", Offset: 8, Len: 16}
	FIP6Dst    = Field{Name: "ip6 daddr", Type: TypeIPv6, Base: "nh", Offset: 24, Len: 16}
	FSport     = Field{Name: "th sport", Type: TypeService, Base: "th", Offset: 0, Len: 2}
	FDport     = Field{Name: "th dport", Type: TypeService, Base: "th", Offset: 2, Len: 2}
	FICMPType  = Field{Name: "icmp type", Type: TypeICMP, Base: "th", Offset: 0, Len: 1}
	FICMPCode  = Field{Name: "icmp code", Type: TypeInteger, Base: "th", Offset: 1, Len: 1}
	FICMP6Type = Field{Name: "icmpv6 type", Type: TypeICMPv6, Base: "th", Offset: 0, Len: 1}
	FICMP6Code = Field{Name: "icmpv6 code", Type: TypeInteger, Base: "th", Offset: 1, Len: 1}
	// FNDTarget is the target address of a neighbour advertisement.
	FNDTarget = Field{Name: "icmpv6 taddr", Type: TypeIPv6, Base: "th", Offset: 8, Len: 16}
	FTCPFlags = Field{Name: "tcp flags", Type: TypeInteger, Base: "th", Offset: 13, Len: 1}
	// FARPSha and FARPSpa are an Ethernet/IPv4 ARP packet's sender
	// hardware and protocol addresses.
	FARPPtype = Field{Name: "arp ptype", Type: TypeEtherType, Base: "nh", Offset: 2, Len: 2}
	FARPHlen  = Field{Name: "arp hlen", Type: TypeInteger, Base: "nh", Offset: 4, Len: 1}
	FARPPlen  = Field{Name: "arp plen", Type: TypeInteger, Base: "nh", Offset: 5, Len: 1}
	FARPSha   = Field{Name: "arp saddr ether", Type: TypeEther, Base: "nh", Offset: 8, Len: 6}
	FARPSpa   = Field{Name: "arp saddr ip", Type: TypeIPv4, Base: "nh", Offset: 14, Len: 4}
)

// Expr is one expression of a rule: *Cmp, *Lookup, *VMap, *Anon,
// *SetMark, *Log, *Limit, *Reject or *Verdict.
type Expr interface {
	// Text renders the expression in nft syntax.
	Text() string
}

// Cmp compares a field, masked when Mask is set, with a value.
type Cmp struct {
	Field Field
	// Mask, when not nil, is and-ed with the field first.
	Mask []byte
	Neg  bool
	// Value is compared with the (masked) field.
	Value Value
}

// Text renders the comparison.
func (c *Cmp) Text() string {
	op := " "
	if c.Neg {
		op = " != "
	}
	if c.Mask == nil {
		return c.Field.Name + op + c.Value.String()
	}
	if c.Field.Type == TypeIPv4 || c.Field.Type == TypeIPv6 {
		// An address under a prefix mask: nft prints the prefix.
		ones := 0
		for _, b := range c.Mask {
			for i := 7; i >= 0; i-- {
				if b&(1<<i) != 0 {
					ones++
				}
			}
		}
		return c.Field.Name + op + c.Value.String() + "/" + strconv.Itoa(ones)
	}
	if !c.Neg {
		op = " == "
	}
	return c.Field.Name + " & " + Value{c.Field.Type, c.Mask}.String() + op + c.Value.String()
}

// Lookup looks a field, or a concatenation of fields, up in a named set.
type Lookup struct {
	Fields []Field
	Set    string
	Neg    bool
}

// Text renders the lookup.
func (l *Lookup) Text() string {
	names := make([]string, len(l.Fields))
	for i, f := range l.Fields {
		names[i] = f.Name
	}
	op := " @"
	if l.Neg {
		op = " != @"
	}
	return strings.Join(names, " . ") + op + l.Set
}

// VMap looks a field up in a named verdict map and takes the verdict of
// the element found; a packet whose field is not in the map goes on to
// the next rule.
type VMap struct {
	Field Field
	Map   string
}

// Text renders the lookup.
func (v *VMap) Text() string { return v.Field.Name + " vmap @" + v.Map }

// Interval is a closed range of values of an anonymous set; Lo == Hi for
// a single value.
type Interval struct{ Lo, Hi Value }

// Anon looks a field up in an anonymous interval set written in the rule:
// port lists and ranges, address prefixes, ICMP types.
type Anon struct {
	Field Field
	Elems []Interval
}

// HasRange reports whether an element of a is a range rather than one
// value: such a set is an interval set in the kernel, one of single
// values a hash (package nlnft writes each as its kernel type suits).
func (a *Anon) HasRange() bool {
	for _, e := range a.Elems {
		if string(e.Lo.Bytes) != string(e.Hi.Bytes) {
			return true
		}
	}
	return false
}

// Text renders the anonymous set.
func (a *Anon) Text() string {
	parts := make([]string, len(a.Elems))
	for i, e := range a.Elems {
		parts[i] = intervalText(e)
	}
	return a.Field.Name + " { " + strings.Join(parts, ", ") + " }"
}

func intervalText(e Interval) string {
	if string(e.Lo.Bytes) == string(e.Hi.Bytes) {
		return e.Lo.String()
	}
	if e.Lo.Type == TypeIPv4 || e.Lo.Type == TypeIPv6 {
		lo, _ := netip.AddrFromSlice(e.Lo.Bytes)
		hi, _ := netip.AddrFromSlice(e.Hi.Bytes)
		if p, ok := rangePrefix(lo, hi); ok {
			return p.String()
		}
	}
	return e.Lo.String() + "-" + e.Hi.String()
}

// rangePrefix returns the prefix covering exactly lo..hi, if one does.
func rangePrefix(lo, hi netip.Addr) (netip.Prefix, bool) {
	for bits := 0; bits <= lo.BitLen(); bits++ {
		p := netip.PrefixFrom(lo, bits).Masked()
		if p.Addr() == lo && lastAddr(p) == hi {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// PrefixInterval returns the interval of addresses p covers.
func PrefixInterval(p netip.Prefix) Interval {
	return Interval{Addr(p.Masked().Addr()), Addr(lastAddr(p))}
}

// SetMark sets the packet mark to (mark & ^Clear) | Set: vmfw changes
// only its own bits (docs/nftables.md, "The mark").
type SetMark struct{ Clear, Set uint32 }

// Text renders the statement.
func (s *SetMark) Text() string {
	switch {
	case s.Clear == 0:
		return fmt.Sprintf("meta mark set meta mark | 0x%08x", s.Set)
	case s.Set == 0:
		return fmt.Sprintf("meta mark set meta mark & 0x%08x", ^s.Clear)
	}
	return fmt.Sprintf("meta mark set meta mark & 0x%08x | 0x%08x", ^s.Clear, s.Set)
}

// Limit passes at most Rate packets (per second, minute, ...) with a
// burst of Burst, as iptables' limit match does.
type Limit struct {
	Rate  uint64
	Unit  string // second, minute, hour, day
	Burst uint32
}

// Text renders the limit.
func (l *Limit) Text() string {
	return fmt.Sprintf("limit rate %d/%s burst %d packets", l.Rate, l.Unit, l.Burst)
}

// Log logs the packet: to NFLOG group Group when it is positive, else to
// the kernel log at level warning.
type Log struct {
	Prefix string
	Group  int
	// Level is the syslog level of a kernel log rule, "" for warning
	// (the default, which nft does not print).
	Level string
}

// Text renders the statement. A counter comes with it, so that what was
// logged can be counted as the iptables backend's LOG rules count it
// (status and tests read it; the kernel log of a namespace other than the
// host's is off by default).
func (l *Log) Text() string {
	if l.Group > 0 {
		return fmt.Sprintf("counter log prefix %q group %d", l.Prefix, l.Group)
	}
	if l.Level != "" {
		return fmt.Sprintf("counter log prefix %q level %s", l.Prefix, nftLevel(l.Level))
	}
	return fmt.Sprintf("counter log prefix %q", l.Prefix)
}

// nftLevel is nft's word for a syslog level ("warning" is "warn").
func nftLevel(level string) string {
	if level == "warning" {
		return "warn"
	}
	return level
}

// LogLevels are the syslog levels by name, as the kernel numbers them.
var LogLevels = map[string]uint32{"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}

// Reject rejects the packet: a TCP reset when TCP, else an ICMP or
// ICMPv6 port unreachable (icmpx), as iptables' REJECT rules of the
// iptables backend do.
type Reject struct{ TCP bool }

// Text renders the statement.
func (r *Reject) Text() string {
	if r.TCP {
		return "reject with tcp reset"
	}
	return "reject with icmpx type port-unreachable"
}

// VerdictKind is what a verdict does.
type VerdictKind string

// The verdicts.
const (
	Accept VerdictKind = "accept"
	Drop   VerdictKind = "drop"
	Return VerdictKind = "return"
	Jump   VerdictKind = "jump"
	Goto   VerdictKind = "goto"
)

// Verdict ends a rule.
type Verdict struct {
	Kind  VerdictKind
	Chain string
}

// Text renders the verdict.
func (v *Verdict) Text() string {
	if v.Chain != "" {
		return string(v.Kind) + " " + v.Chain
	}
	return string(v.Kind)
}

// Rule is one rule of a chain.
type Rule struct {
	Exprs []Expr
	// Comment is shown after the fingerprint (operator comments).
	Comment string
	// Origin is the configuration the rule implements, zero for rules
	// vmfw adds by itself.
	Origin ruleset.Origin
}

// Text renders the rule's expressions.
func (r Rule) Text() string {
	parts := make([]string, len(r.Exprs))
	for i, e := range r.Exprs {
		parts[i] = e.Text()
	}
	return strings.Join(parts, " ")
}

// Encoding is the version of how rules become netlink expressions
// (package nlnft). A fix there can leave a rule's text as it was, so the
// fingerprint hashes the version too: raising it makes every chain
// compare different once, and the next plan rewrites them in the fixed
// encoding (drift repair, upgrades). 2: a list of single values in a rule
// is a hash set, not an interval set (nlnft, stage.go).
const Encoding = 2

// Hash fingerprints the rule in chain: what vmfw keeps in the rule's
// comment ("vmfw:HASH") and compares to tell which chains differ. It
// covers the chain, the rule's text, its comment and Encoding.
func (r Rule) Hash(chain string) string {
	return r.hashAt(chain, Encoding)
}

func (r Rule) hashAt(chain string, encoding int) string {
	sum := sha256.Sum256([]byte("encoding " + strconv.Itoa(encoding) + "\x00" + chain + "\x00" + r.Text() + "\x00" + r.Comment))
	return hex.EncodeToString(sum[:8])
}

// UserComment is the comment vmfw stores in the rule: the fingerprint,
// then the operator's comment.
func (r Rule) UserComment(chain string) string {
	c := "vmfw:" + r.Hash(chain)
	if r.Comment != "" {
		c += " " + r.Comment
	}
	return c
}

// Hook makes a chain a base chain.
type Hook struct {
	// Hook is prerouting, input, forward, output or postrouting.
	Hook     string
	Priority int
}

// Chain is a chain of one of vmfw's tables.
type Chain struct {
	Name string
	// Hook is nil for a regular chain.
	Hook  *Hook
	Rules []Rule
}

// Header renders a base chain's declaration, "" for a regular chain.
func (c *Chain) Header() string {
	if c.Hook == nil {
		return ""
	}
	return fmt.Sprintf("type filter hook %s priority %d; policy accept;", c.Hook.Hook, c.Hook.Priority)
}

// Hashes returns the fingerprints of the chain's rules, in order.
func (c *Chain) Hashes() []string {
	out := make([]string, len(c.Rules))
	for i, r := range c.Rules {
		out[i] = r.Hash(c.Name)
	}
	return out
}

// Set is a named set or map of one of vmfw's tables.
type Set struct {
	Name string
	// Key is the key's type, several for a concatenation.
	Key []Type
	// Data is TypeVerdict for a verdict map, "" for a set.
	Data Type
	// Counter gives every element its own counter (per-tap drops).
	Counter bool
	// Interval makes the set hold ranges (flags interval): an address
	// set's effective prefixes (addrsets.go). Each element then has an
	// End.
	Interval bool
	// Elements are the set's elements, sorted by Key bytes.
	Elements []Element
	// Prefixes, of an address set's interval set, are the effective
	// prefixes its Elements cover, one each, in order: what an edit of
	// the set is planned from (setedit.go in package nftables).
	Prefixes []netip.Prefix
}

// IsMap reports whether s is a map: its elements carry data.
func (s *Set) IsMap() bool { return s.Data != "" }

// Element is one element of a set or map.
type Element struct {
	// Key is the element's key, one Value per part of a concatenation.
	Key []Value
	// Verdict is the data of an element of a verdict map, nil in a set.
	Verdict *Verdict
	// End is the last value of an interval set's element, whose Key is
	// the first; nil in other sets.
	End *Value
	// Comment is stored with the element (its userdata). An interface's
	// element of the ports set carries the fingerprint of the interface's
	// other elements (SettingsComment), which a plan from a hint reads to
	// know the interface is installed as the hint says.
	Comment string
}

// KeyBytes returns the key as the kernel stores it: the parts, each
// padded to a multiple of four bytes. An interval's are its first value's
// then its last value's bytes: what tells one range from another where
// plans and reads compare elements (the kernel stores the two ends as
// two elements, package nlnft).
func (e Element) KeyBytes() []byte {
	if e.End != nil {
		return append(slices.Clone(e.Key[0].Bytes), e.End.Bytes...)
	}
	if len(e.Key) == 1 {
		return e.Key[0].Bytes
	}
	var b []byte
	for _, v := range e.Key {
		b = append(b, v.Bytes...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

// Text renders the element: its key and, in a map, " : " and its data;
// an interval as the prefix it covers (or lo-hi).
func (e Element) Text() string {
	if e.End != nil {
		return intervalText(Interval{e.Key[0], *e.End})
	}
	parts := make([]string, len(e.Key))
	for i, v := range e.Key {
		parts[i] = v.String()
	}
	out := strings.Join(parts, " . ")
	if e.Verdict != nil {
		out += " : " + e.Verdict.Text()
	}
	if e.Comment != "" {
		out += " comment " + strconv.Quote(e.Comment)
	}
	return out
}

// DataText renders what the element carries besides its key, as a read
// of the kernel compares it (nlnft.ObservedSet.Data): its verdict in a
// verdict map, its comment; "" for a plain element of a set.
func (e Element) DataText() string {
	verdict := ""
	if e.Verdict != nil {
		verdict = e.Verdict.Text()
	}
	return DataText(verdict, e.Comment)
}

// DataText renders an element's verdict (as Verdict.Text renders it, ""
// for none) and comment as Element.DataText does: the one rendering a
// read of the kernel and a layout compare.
func DataText(verdict, comment string) string {
	if comment == "" {
		return verdict
	}
	sep := " comment "
	if verdict == "" {
		sep = "comment "
	}
	// vmfw's comments (fingerprints, names) need no escape: quoted by
	// hand they cost one allocation, where strconv.Quote's rune by rune
	// scan and copy were about a tenth of reading the 5000 elements of the
	// ports set (an ifup at 5000 taps, docs/performance.md, "The check
	// beside the plan, and fewer allocations").
	if plainASCII(comment) {
		return verdict + sep + `"` + comment + `"`
	}
	return verdict + sep + strconv.Quote(comment)
}

// plainASCII reports whether strconv.Quote would quote s as it is:
// printable ASCII without a quote or a backslash.
func plainASCII(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r > 0x7e || r == '"' || r == '\\' })
}

// Signature describes what the set is, apart from its elements: a set
// whose signature differs is created anew.
func (s *Set) Signature() string {
	parts := make([]string, len(s.Key))
	for i, t := range s.Key {
		parts[i] = string(t)
	}
	sig := "type " + strings.Join(parts, " . ")
	if s.Data != "" {
		sig += " : " + string(s.Data)
	}
	if s.Counter {
		sig += "; counter"
	}
	if s.Interval {
		sig += "; flags interval"
	}
	return sig
}

// Decode turns key bytes as KeyBytes makes them back into an element of
// s; ok is false when they do not fit its key.
func (s *Set) Decode(key []byte) (Element, bool) {
	if !s.Interval {
		return DecodeElement(s.Key, key)
	}
	n := s.Key[0].Len()
	if len(s.Key) != 1 || len(key) != 2*n {
		return Element{}, false
	}
	end := Value{s.Key[0], append([]byte(nil), key[n:]...)}
	return Element{Key: []Value{{s.Key[0], append([]byte(nil), key[:n]...)}}, End: &end}, true
}

// Table is one of vmfw's tables.
type Table struct {
	Family Family
	Sets   []*Set
	Chains []*Chain
}

// Chain returns the chain called name, or nil.
func (t *Table) Chain(name string) *Chain {
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Set returns the set called name, or nil.
func (t *Table) Set(name string) *Set {
	for _, s := range t.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// DecodeElement splits the key bytes of an element of a set keyed by
// types (as the kernel returns them, each part padded to four bytes)
// into its parts; ok is false when the bytes do not fit the types.
func DecodeElement(types []Type, key []byte) (e Element, ok bool) {
	for _, t := range types {
		n := t.Len()
		if len(key) < n {
			return Element{}, false
		}
		e.Key = append(e.Key, Value{t, append([]byte(nil), key[:n]...)})
		pad := (n + 3) / 4 * 4
		if len(types) == 1 {
			pad = n
		}
		if len(key) < pad {
			return Element{}, false
		}
		key = key[pad:]
	}
	return e, len(key) == 0
}
