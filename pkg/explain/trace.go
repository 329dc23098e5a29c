// Package explain answers "why is this connection blocked?": vmfw trace.
// Given two endpoints (a VM, a tap, an address, the hypervisor) and a
// protocol, it follows the first packet of the flow through vmfw's rules
// the way the kernel takes it — bridged, routed by the hypervisor, sent
// by the hypervisor, or to it (docs/routing.md) — and reports each rule it
// meets and the verdict, twice:
//
//   - from the configuration, with package policy (the evaluator that also
//     decides which connections an edit cuts): anti-spoofing, state, the
//     DHCP and neighbour discovery exceptions, each group rule by file and
//     line, the policy;
//   - from the ruleset read back from the kernel, with an interpreter of
//     the iptables and ebtables rules vmfw writes (interp.go, l2.go),
//     starting at the hooks vmfw installs.
//
// The same interpreter also runs the ruleset compiled from the current
// configuration; every chain either walk enters whose rules in the kernel
// differ from the compiled ones (by fingerprint, see package ruleset), and
// every ipset a rule on the way looks up whose members differ, is drift.
// When the kernel's verdict and the configuration's differ, the report
// says which is which: the kernel decides what packets do.
//
// Like pkg/ruleset it is pure: the caller reads the kernel (package engine)
// and hands over the snapshots, so tests feed it hand-made kernels.
package explain

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/policy"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Input is what Trace reads.
type Input struct {
	// Model is the configuration.
	Model *config.Model
	// Resolve maps an interface name to its settings: configured taps
	// and attachment records (CNI, libvirt). nil means Model.NIC.
	Resolve func(name string) *config.NIC
	// Attached are the interfaces whose chains are installed.
	Attached []*config.NIC
	// Kernel is what the kernel holds; nil evaluates the configuration
	// and the compiled rules only.
	Kernel *Kernel
	// HostAddrs are the hypervisor's own addresses with the prefix of
	// their subnet: they tell the hypervisor from other hosts and a
	// bridged path from a routed one.
	HostAddrs []netip.Prefix

	// compiled caches the ruleset compiled for Attached: a batch of
	// traces compiles it once.
	mu       sync.Mutex
	compiled *ruleset.Ruleset
}

// compile returns the ruleset for the attached interfaces, nics,
// compiling it once.
func (in *Input) compile(nics []*config.NIC) (*ruleset.Ruleset, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.compiled == nil {
		rs, err := ruleset.Build(in.Model, nics)
		if err != nil {
			return nil, err
		}
		in.compiled = rs
	}
	return in.compiled, nil
}

// Kernel is vmfw's part of the kernel's firewall, as read back.
type Kernel struct {
	// Backend names the iptables backend, for the report.
	Backend string
	// Tables holds each family's chains with their rules' text (Lines)
	// and fingerprints (Chains), and the hooks.
	Tables map[ruleset.Family]ruleset.Observed
	// Bridge is vmfw's part of the ebtables filter table; nil when
	// ebtables is not managed.
	Bridge *ruleset.Observed
	// Sets maps vmfw's ipsets to their members.
	Sets map[string]map[netip.Addr]bool
}

// Query is the flow to trace.
type Query struct {
	// From and To are each a VM id ("110", "110:1" for [net1]), a VM
	// name, an interface name, an address, or "hypervisor".
	From string `json:"from"`
	To   string `json:"to"`
	// Proto is tcp, udp, sctp, icmp, icmpv6 or a protocol number.
	Proto string `json:"proto"`
	// SPort and DPort are the ports, -1 when not given.
	SPort int `json:"sport"`
	DPort int `json:"dport"`
	// ICMPType is an ICMP type name, number or TYPE/CODE; "" is
	// echo-request.
	ICMPType string `json:"icmp_type,omitempty"`
	// Family is 4 or 6, 0 to infer it from the endpoints.
	Family int `json:"family,omitempty"`
	// Path forces "bridged" or "routed"; "" infers it.
	Path string `json:"path,omitempty"`
	// MAC is the sender's source MAC when it is not a VM interface with
	// a configured MAC; "" leaves it open.
	MAC string `json:"mac,omitempty"`
}

// QueryError is a query that names nothing traceable: an unknown VM,
// tap or address, or endpoints no vmfw rule stands between.
type QueryError struct{ Msg string }

func (e *QueryError) Error() string { return e.Msg }

func queryErr(format string, args ...any) error {
	return &QueryError{Msg: fmt.Sprintf(format, args...)}
}

// Endpoint is one end of the traced flow.
type Endpoint struct {
	// Kind is vm, hypervisor or external.
	Kind string `json:"kind"`
	// Address is the address the flow uses.
	Address netip.Addr `json:"address"`
	// Tap, VM, VMName, File and Line describe a VM interface.
	Tap    string `json:"tap,omitempty"`
	VM     *int   `json:"vm,omitempty"`
	VMName string `json:"vm_name,omitempty"`
	File   string `json:"file,omitempty"`
	Line   int    `json:"line,omitempty"`
	// Attached says whether the interface's chains are installed.
	Attached bool `json:"attached,omitempty"`

	nic *config.NIC
}

// Flow is the packet traced.
type Flow struct {
	// Family is 4 or 6.
	Family int `json:"family"`
	// Proto is tcp, udp, sctp, icmp, icmpv6 or a protocol number.
	Proto string `json:"proto"`
	// Src and Dst are the packet's addresses.
	Src netip.Addr `json:"src"`
	Dst netip.Addr `json:"dst"`
	// SPort and DPort are set for tcp, udp and sctp, with the values
	// assumed for ports the query did not give.
	SPort *int `json:"sport,omitempty"`
	DPort *int `json:"dport,omitempty"`
	// ICMPType and ICMPCode are set for icmp and icmpv6.
	ICMPType *int `json:"icmp_type,omitempty"`
	ICMPCode *int `json:"icmp_code,omitempty"`
	// SrcMAC is the sender's MAC as the rules see it.
	SrcMAC string `json:"src_mac,omitempty"`
}

// Config is the configuration's answer.
type Config struct {
	// Verdict is accept, drop, reject, or unknown when it depends on
	// what the configuration cannot tell (Steps say where).
	Verdict string `json:"verdict"`
	// Out and In are the steps in the sender's out chain and the
	// receiver's in chain.
	Out []policy.Step `json:"out,omitempty"`
	In  []policy.Step `json:"in,omitempty"`
}

// RuleHit is a kernel rule the packet matched.
type RuleHit struct {
	// Table is ipv4, ipv6 or bridge.
	Table string `json:"table"`
	// Chain is the chain the rule is in.
	Chain string `json:"chain"`
	// Index is the rule's position in its chain, from 1.
	Index int `json:"index"`
	// Rule is the rule's text as the kernel prints it, without vmfw's
	// fingerprint comment.
	Rule string `json:"rule"`
	// Origin is the configuration the rule implements: FILE:LINE of a
	// group rule, or the VM file of a policy; empty for rules vmfw adds
	// by itself.
	Origin string `json:"origin,omitempty"`
}

// KernelResult is the kernel's answer.
type KernelResult struct {
	// Backend is the iptables backend.
	Backend string `json:"backend,omitempty"`
	// Verdict is accept, drop or reject; empty when the rules could not
	// be evaluated (Error says why).
	Verdict string `json:"verdict,omitempty"`
	// Chains are the chains the packet entered, in order.
	Chains []string `json:"chains"`
	// Rules are the rules it matched, in order; the last decided.
	Rules []RuleHit `json:"rules"`
	// DecidedBy is the rule that decided, or a sentence for a packet no
	// vmfw rule decided.
	DecidedBy string `json:"decided_by,omitempty"`
	// Error says why the kernel's rules could not be evaluated.
	Error string `json:"error,omitempty"`
}

// Alternative is a verdict the flow gets when a value it leaves open
// (a port, the source MAC) takes a particular value.
type Alternative struct {
	// When names the value: "source port 68", "destination port 22, 80",
	// with the rule that decides then.
	When string `json:"when"`
	// Verdict is accept, drop or reject.
	Verdict string `json:"verdict"`
}

// Report is Trace's answer; its JSON is vmfw trace -o json.
type Report struct {
	// Verdict is what happens to the packet: the kernel's verdict, or
	// the configuration's when the kernel was not read or its rules could
	// not be evaluated.
	Verdict string `json:"verdict"`
	// From and To are the flow's ends, Flow its first packet.
	From Endpoint `json:"from"`
	To   Endpoint `json:"to"`
	Flow Flow     `json:"flow"`
	// Path is bridged, routed, from-hypervisor or to-hypervisor.
	Path string `json:"path"`
	// Config is the configuration's answer; Kernel the kernel's, nil
	// when the kernel was not read.
	Config Config        `json:"config"`
	Kernel *KernelResult `json:"kernel,omitempty"`
	// Drift lists what differs between the kernel and the configuration
	// on the packet's way: "ipv4/tap101i0-in differs", "set sg-web-v4
	// differs", "FORWARD jump to vmfw-FORWARD missing". The kernel's
	// verdict is then not the configuration's.
	Drift []string `json:"drift"`
	// Alternatives are other verdicts for values the query left open.
	Alternatives []Alternative `json:"alternatives,omitempty"`
	// Notes say what Trace assumed and anything else worth knowing.
	Notes []string `json:"notes,omitempty"`
}

// Paths a packet can take (docs/routing.md).
const (
	PathBridged        = "bridged"
	PathRouted         = "routed"
	PathFromHypervisor = "from-hypervisor"
	PathToHypervisor   = "to-hypervisor"
)

// Trace follows q's first packet through vmfw's rules.
func Trace(in *Input, q Query) (*Report, error) {
	t, err := newTracer(in, q)
	if err != nil {
		return nil, err
	}
	return t.trace()
}

// tracer holds one trace's state.
type tracer struct {
	in        *Input
	q         Query
	from, to  Endpoint
	family    ruleset.Family
	proto     uint8
	protoName string
	path      string
	icmpType  int
	icmpCode  int
	// attached is in.Attached plus the endpoints' interfaces, so that
	// the configuration's answer for a VM not running is what it would be
	// once it runs.
	attached []*config.NIC
	// compiled is the ruleset for attached, which the configuration's
	// answer is checked against; actual is the one for the interfaces
	// whose chains are installed, which the kernel is compared with. They
	// are one when both ends that are VMs are attached.
	compiled, actual *ruleset.Ruleset
	notes            []string
	// resolve is in.Resolve, or Model.NIC.
	resolve func(string) *config.NIC
}

func newTracer(in *Input, q Query) (*tracer, error) {
	t := &tracer{in: in, q: q, resolve: in.Resolve}
	if t.resolve == nil {
		t.resolve = in.Model.NIC
	}
	var err error
	if t.proto, t.protoName, err = parseProto(q.Proto); err != nil {
		return nil, err
	}
	if t.from, err = t.endpoint("--from", q.From); err != nil {
		return nil, err
	}
	if t.to, err = t.endpoint("--to", q.To); err != nil {
		return nil, err
	}
	if t.from.Kind != "vm" && t.to.Kind != "vm" {
		return nil, queryErr("neither %q nor %q is a VM interface: no vmfw rule stands between them", q.From, q.To)
	}
	if t.from.nic != nil && t.from.nic == t.to.nic {
		return nil, queryErr("%s and %s are the same interface", q.From, q.To)
	}
	if err := t.chooseFamily(); err != nil {
		return nil, err
	}
	if err := t.addresses(); err != nil {
		return nil, err
	}
	if err := t.choosePath(); err != nil {
		return nil, err
	}
	if err := t.ports(); err != nil {
		return nil, err
	}
	t.attached = slices.Clone(in.Attached)
	for _, e := range []*Endpoint{&t.from, &t.to} {
		if e.nic == nil {
			continue
		}
		e.Attached = slices.Contains(in.Attached, e.nic)
		if !e.Attached {
			t.attached = append(t.attached, e.nic)
			t.notes = append(t.notes, fmt.Sprintf("%s is not attached (no chains installed: the VM is not running, or vmfw has not firewalled it); the configuration's answer is for when it is", e.nic.Tap))
		}
	}
	if t.actual, err = t.in.compile(in.Attached); err != nil {
		return nil, fmt.Errorf("compiling the configuration: %w", err)
	}
	t.compiled = t.actual
	if len(t.attached) != len(in.Attached) {
		if t.compiled, err = ruleset.Build(in.Model, t.attached); err != nil {
			return nil, fmt.Errorf("compiling the configuration: %w", err)
		}
	}
	return t, nil
}

// parseProto reads --proto.
func parseProto(s string) (uint8, string, error) {
	switch strings.ToLower(s) {
	case "":
		return 0, "", queryErr("--proto is required (tcp, udp, sctp, icmp, icmpv6 or a number)")
	case "tcp":
		return protoTCP, "tcp", nil
	case "udp":
		return protoUDP, "udp", nil
	case "sctp":
		return protoSCTP, "sctp", nil
	case "icmp":
		return protoICMP, "icmp", nil
	case "icmpv6", "ipv6-icmp":
		return protoICMPv6, "icmpv6", nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 255 {
		return 0, "", queryErr("--proto %q: want tcp, udp, sctp, icmp, icmpv6 or a protocol number from 1 to 255", s)
	}
	return uint8(n), strconv.Itoa(n), nil
}

// endpoint resolves one --from or --to.
func (t *tracer) endpoint(flag, s string) (Endpoint, error) {
	m := t.in.Model
	switch strings.ToLower(s) {
	case "":
		return Endpoint{}, queryErr("%s is required: a VM id, tap, address or \"hypervisor\"", flag)
	case "hypervisor", "host":
		return Endpoint{Kind: "hypervisor"}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		if a.Zone() != "" || !unicast(a) || a.IsUnspecified() {
			return Endpoint{}, queryErr("%s %s: not a unicast address", flag, s)
		}
		if n := t.owner(a); n != nil {
			e := t.vmEndpoint(n)
			e.Address = a
			return e, nil
		}
		if t.isLocal(a) {
			return Endpoint{Kind: "hypervisor", Address: a}, nil
		}
		return Endpoint{Kind: "external", Address: a}, nil
	}
	id, index, hasIndex := strings.Cut(s, ":")
	if vmid, err := strconv.Atoi(id); err == nil && vmid >= 0 {
		vm := m.VMs[vmid]
		if vm == nil {
			return Endpoint{}, queryErr("%s %s: no VM %d in the configuration (no vms/%d.toml)", flag, s, vmid, vmid)
		}
		if len(vm.NICs) == 0 {
			return Endpoint{}, queryErr("%s %s: VM %d has no interfaces", flag, s, vmid)
		}
		n := vm.NICs[0]
		if hasIndex {
			i, err := strconv.Atoi(index)
			n = nil
			for _, x := range vm.NICs {
				if err == nil && x.Index == i {
					n = x
				}
			}
			if n == nil {
				return Endpoint{}, queryErr("%s %s: VM %d has no [net%s] (%s)", flag, s, vmid, index, vm.File)
			}
		}
		return t.vmEndpoint(n), nil
	}
	if n := t.resolve(s); n != nil {
		return t.vmEndpoint(n), nil
	}
	var named []*config.VM
	for _, vm := range m.VMs {
		if vm.Name == s && len(vm.NICs) > 0 {
			named = append(named, vm)
		}
	}
	switch len(named) {
	case 1:
		return t.vmEndpoint(named[0].NICs[0]), nil
	case 0:
		return Endpoint{}, queryErr("%s %q: unknown VM, tap or address (want a VM id such as 110 or 110:1, a tap such as tap110i0, a VM name, an IPv4 or IPv6 address, or \"hypervisor\")", flag, s)
	}
	return Endpoint{}, queryErr("%s %q: %d VMs have that name; give the VM id", flag, s, len(named))
}

func (t *tracer) vmEndpoint(n *config.NIC) Endpoint {
	e := Endpoint{Kind: "vm", Tap: n.Tap, File: n.VM.File, Line: n.Line, nic: n, VMName: n.VM.Name}
	if n.VM.File != "" {
		id := n.VM.ID
		e.VM = &id
	}
	return e
}

// owner returns the interface whose ips hold a: an attached one first,
// then any configured one.
func (t *tracer) owner(a netip.Addr) *config.NIC {
	for _, n := range t.in.Attached {
		if slices.Contains(n.IPs, a) {
			return n
		}
	}
	ids := make([]int, 0, len(t.in.Model.VMs))
	for id := range t.in.Model.VMs {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		for _, n := range t.in.Model.VMs[id].NICs {
			if slices.Contains(n.IPs, a) {
				return n
			}
		}
	}
	return nil
}

func (t *tracer) isLocal(a netip.Addr) bool {
	for _, p := range t.in.HostAddrs {
		if p.Addr() == a {
			return true
		}
	}
	return false
}

// chooseFamily picks IPv4 or IPv6 from the query, the addresses given, the
// protocol, or the VMs' addresses, in that order.
func (t *tracer) chooseFamily() error {
	fam := 0
	set := func(f int, why string) error {
		if fam != 0 && fam != f {
			return queryErr("IPv%d and IPv%d do not mix (%s)", fam, f, why)
		}
		fam = f
		return nil
	}
	if t.q.Family != 0 {
		if t.q.Family != 4 && t.q.Family != 6 {
			return queryErr("family %d: want 4 or 6", t.q.Family)
		}
		fam = t.q.Family
	}
	for _, e := range []Endpoint{t.from, t.to} {
		if e.Address.IsValid() {
			f := 4
			if e.Address.Is6() {
				f = 6
			}
			if err := set(f, e.Address.String()); err != nil {
				return err
			}
		}
	}
	switch t.proto {
	case protoICMP:
		if err := set(4, "icmp is IPv4's; use icmpv6"); err != nil {
			return err
		}
	case protoICMPv6:
		if err := set(6, "icmpv6 is IPv6's; use icmp"); err != nil {
			return err
		}
	}
	if fam == 0 {
		fam = 4
		for _, e := range []Endpoint{t.from, t.to} {
			if e.nic != nil && !slices.ContainsFunc(e.nic.IPs, netip.Addr.Is4) && slices.ContainsFunc(e.nic.IPs, netip.Addr.Is6) {
				fam = 6
			}
		}
	}
	t.family = ruleset.IPv4
	if fam == 6 {
		t.family = ruleset.IPv6
	}
	return nil
}

// addresses fills in the address of each endpoint that has none: a VM
// interface's first address of the family, the hypervisor's address on
// the other end's subnet.
func (t *tracer) addresses() error {
	is6 := t.family == ruleset.IPv6
	for _, e := range []*Endpoint{&t.from, &t.to} {
		if e.Address.IsValid() || e.Kind != "vm" {
			continue
		}
		for _, a := range e.nic.IPs {
			if a.Is6() == is6 {
				e.Address = a
				break
			}
		}
		if !e.Address.IsValid() {
			return queryErr("%s lists no IPv%d address in ips (%s:%d): give an address instead", e.nic.Tap, map[bool]int{false: 4, true: 6}[is6], e.nic.VM.File, e.nic.Line)
		}
	}
	for _, pair := range [][2]*Endpoint{{&t.from, &t.to}, {&t.to, &t.from}} {
		e, other := pair[0], pair[1]
		if e.Kind != "hypervisor" || e.Address.IsValid() {
			continue
		}
		for _, p := range t.in.HostAddrs {
			if p.Addr().Is6() == is6 && !p.Addr().IsLinkLocalUnicast() && p.Contains(other.Address) {
				e.Address = p.Addr()
				break
			}
		}
		for _, p := range t.in.HostAddrs {
			if !e.Address.IsValid() && p.Addr().Is6() == is6 && !p.Addr().IsLinkLocalUnicast() && !p.Addr().IsLoopback() {
				e.Address = p.Addr()
			}
		}
		if !e.Address.IsValid() {
			return queryErr("the hypervisor has no IPv%d address: give one", map[bool]int{false: 4, true: 6}[is6])
		}
	}
	return nil
}

// onLink reports whether a hypervisor subnet holds a; sameLink whether
// one holds both a and b.
func (t *tracer) onLink(a netip.Addr) bool {
	for _, p := range t.in.HostAddrs {
		if !p.Addr().IsLoopback() && p.Contains(a) {
			return true
		}
	}
	return false
}

func (t *tracer) sameLink(a, b netip.Addr) bool {
	for _, p := range t.in.HostAddrs {
		if !p.Addr().IsLoopback() && p.Contains(a) && p.Contains(b) {
			return true
		}
	}
	return false
}

// choosePath tells how the packet travels (docs/routing.md). Two hosts on
// one of the hypervisor's subnets talk over the bridge; hosts on different
// subnets, one of them the hypervisor's, through the hypervisor's routing;
// where the hypervisor has no address on either subnet it cannot route,
// and the packet is bridged (to a router elsewhere on the bridge).
func (t *tracer) choosePath() error {
	switch {
	case t.from.Kind == "hypervisor":
		t.path = PathFromHypervisor
	case t.to.Kind == "hypervisor":
		t.path = PathToHypervisor
	case t.q.Path == PathBridged || t.q.Path == PathRouted:
		t.path = t.q.Path
	case t.q.Path != "":
		return queryErr("--path %q: want bridged or routed", t.q.Path)
	case t.sameLink(t.from.Address, t.to.Address):
		t.path = PathBridged
	case t.onLink(t.from.Address) || t.onLink(t.to.Address):
		t.path = PathRouted
	default:
		t.path = PathBridged
	}
	if t.q.Path != "" && t.path != t.q.Path {
		return queryErr("--path %s: a flow %s the hypervisor is neither bridged nor routed", t.q.Path, map[bool]string{true: "from", false: "to"}[t.path == PathFromHypervisor])
	}
	return nil
}

// ports checks the ports and ICMP type against the protocol.
func (t *tracer) ports() error {
	hasPorts := t.proto == protoTCP || t.proto == protoUDP || t.proto == protoSCTP
	for _, p := range []struct {
		name string
		v    int
	}{{"--sport", t.q.SPort}, {"--dport", t.q.DPort}} {
		if p.v < 0 {
			continue
		}
		if !hasPorts {
			return queryErr("%s: ports need tcp, udp or sctp", p.name)
		}
		if p.v > 65535 {
			return queryErr("%s %d: not a port", p.name, p.v)
		}
	}
	isICMP := t.proto == protoICMP || t.proto == protoICMPv6
	if t.q.ICMPType != "" && !isICMP {
		return queryErr("--icmp-type needs icmp or icmpv6")
	}
	if isICMP {
		name := t.q.ICMPType
		if name == "" {
			name = "echo-request"
		}
		typ, code, ok := policy.ParseICMPType(t.protoName, name)
		if !ok {
			return queryErr("--icmp-type %q: not an %s type name, number or TYPE/CODE", t.q.ICMPType, t.protoName)
		}
		t.icmpType, t.icmpCode = typ, max(code, 0)
	}
	if t.q.MAC != "" {
		if _, err := net.ParseMAC(t.q.MAC); err != nil {
			return queryErr("--mac %q: %v", t.q.MAC, err)
		}
		if n := t.from.nic; n != nil && n.MAC != nil {
			return queryErr("--mac: %s sends from its configured mac %s (%s:%d); --mac is for senders whose MAC the configuration does not say", n.Tap, n.MAC, n.VM.File, n.Line)
		}
		if t.path == PathFromHypervisor {
			return queryErr("--mac: packets the hypervisor sends meet no MAC match")
		}
	}
	return nil
}

// unknowns are the values a flow may leave open, and the values worth
// trying for each: those where some rule's answer changes.
type unknowns struct {
	sports, dports []uint16
	macs           []net.HardwareAddr
	// typical values: a port and MAC no rule names, what a flow from an
	// ephemeral port of an ordinary host uses.
	sport, dport uint16
	mac          net.HardwareAddr
}

// builtinPorts are the ports the tap chains single out (DHCP, DHCPv6).
var builtinPorts = []uint16{67, 68, 546, 547}

func (t *tracer) unknowns() *unknowns {
	u := &unknowns{}
	var ranges []config.PortRange
	var macs []net.HardwareAddr
	for _, g := range t.in.Model.Groups {
		for _, r := range append(slices.Clone(g.In), g.Out...) {
			ranges = append(append(ranges, r.SPort...), r.DPort...)
			if r.SourceMAC != nil {
				macs = append(macs, r.SourceMAC)
			}
		}
	}
	candidates := map[uint16]bool{}
	for _, p := range builtinPorts {
		candidates[p] = true
	}
	for _, r := range ranges {
		for _, p := range []int{int(r.Lo) - 1, int(r.Lo), int(r.Hi), int(r.Hi) + 1} {
			if p > 0 && p <= 65535 {
				candidates[uint16(p)] = true
			}
		}
	}
	typical := func() uint16 {
		for p := 40000; p <= 65535; p++ {
			named := slices.Contains(builtinPorts, uint16(p))
			for _, r := range ranges {
				named = named || uint16(p) >= r.Lo && uint16(p) <= r.Hi
			}
			if !named {
				return uint16(p)
			}
		}
		return 40000
	}()
	candidates[typical] = true
	list := make([]uint16, 0, len(candidates))
	for p := range candidates {
		list = append(list, p)
	}
	slices.Sort(list)
	u.sport, u.dport = typical, typical
	if t.q.SPort >= 0 {
		u.sport = uint16(t.q.SPort)
	} else {
		u.sports = list
	}
	if t.q.DPort >= 0 {
		u.dport = uint16(t.q.DPort)
	} else {
		u.dports = list
	}
	hasPorts := t.proto == protoTCP || t.proto == protoUDP || t.proto == protoSCTP
	if !hasPorts {
		u.sport, u.dport, u.sports, u.dports = 0, 0, nil, nil
	}
	u.mac = net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x00, 0x01}
	for slices.ContainsFunc(macs, func(m net.HardwareAddr) bool { return m.String() == u.mac.String() }) {
		u.mac[5]++
	}
	switch {
	case t.q.MAC != "":
		u.mac, _ = net.ParseMAC(t.q.MAC)
	case t.path == PathFromHypervisor:
		// OUTPUT reaches no MAC match (sg-NAME-lin).
	case t.from.nic != nil && t.from.nic.MAC != nil:
		u.mac = t.from.nic.MAC
	default:
		seen := map[string]bool{}
		for _, m := range macs {
			if !seen[m.String()] {
				seen[m.String()] = true
				u.macs = append(u.macs, m)
			}
		}
		if len(u.macs) > 0 {
			u.macs = append(u.macs, u.mac)
		}
	}
	return u
}

// candidate is one concrete packet: the unknowns set to values.
type candidate struct {
	sport, dport uint16
	mac          net.HardwareAddr
	// when names the value that differs from the typical packet, "" for
	// the typical packet itself.
	when string
	// dim groups candidates that vary the same unknown.
	dim string
}

// candidates returns the typical packet first, then one candidate per
// value of each unknown, the others kept typical: every boundary of a
// rule is tried for each unknown on its own (not their combinations,
// which would grow with the product of the rules' ports).
func (u *unknowns) candidates() []candidate {
	out := []candidate{{sport: u.sport, dport: u.dport, mac: u.mac}}
	for _, p := range u.sports {
		if p != u.sport {
			out = append(out, candidate{sport: p, dport: u.dport, mac: u.mac, when: "source port", dim: "s" + strconv.Itoa(int(p))})
		}
	}
	for _, p := range u.dports {
		if p != u.dport {
			out = append(out, candidate{sport: u.sport, dport: p, mac: u.mac, when: "destination port", dim: "d" + strconv.Itoa(int(p))})
		}
	}
	for _, m := range u.macs {
		if m.String() != u.mac.String() {
			out = append(out, candidate{sport: u.sport, dport: u.dport, mac: m, when: "source MAC", dim: m.String()})
		}
	}
	return out
}

// result is one walk's answer.
type result struct {
	verdict   string
	decidedBy string
	// decider is the IP rule that decided, nil when an ebtables rule or
	// no rule did.
	decider  *irule
	hits     []RuleHit
	chains   []string
	entered  map[string][]ruleset.Chain // per table
	setsUsed map[string]bool
	err      error
}

func (t *tracer) trace() (*Report, error) {
	u := t.unknowns()
	cands := u.candidates()
	r := &Report{From: t.from, To: t.to, Path: t.path, Drift: []string{}}
	ev := policy.New(t.in.Model, t.attached, t.isLocal)

	compiledIP, compiledL2 := t.compiledMachine(t.compiled), t.compiledL2(t.compiled)
	actualIP, actualL2 := compiledIP, compiledL2
	if t.actual != t.compiled {
		actualIP, actualL2 = t.compiledMachine(t.actual), t.compiledL2(t.actual)
	}
	var kernelIP *machine
	var kernelL2 *l2machine
	if k := t.in.Kernel; k != nil {
		obs := k.Tables[t.family]
		kernelIP = newMachine(obs.Lines, obs.Chains, k.Sets)
		if k.Bridge != nil {
			kernelL2 = newL2Machine(k.Bridge.Chains)
		}
	}

	type answer struct {
		c             candidate
		config        *policy.Explanation
		compiled, krn *result
		// actual is the walk over the installed interfaces' ruleset,
		// when it is not compiled's.
		actual *result
	}
	var answers []answer
	for _, c := range cands {
		p := t.packet(c)
		a := answer{c: c}
		a.config = ev.Explain(t.policyFlow(c), t.policyPath(c))
		a.compiled = t.walk(compiledIP, compiledL2, nil, p)
		a.actual = a.compiled
		if kernelIP != nil && t.actual != t.compiled {
			a.actual = t.walk(actualIP, actualL2, nil, t.packet(c))
		}
		if kernelIP != nil {
			a.krn = t.walk(kernelIP, kernelL2, t.in.Kernel, t.packet(c))
		}
		answers = append(answers, a)
	}

	first := answers[0]
	r.Flow = t.flowInfo(cands[0])
	r.Config = Config{Verdict: configVerdict(first.config), Out: first.config.Out, In: first.config.In}
	r.Verdict = r.Config.Verdict
	if first.compiled.err == nil && r.Config.Verdict != "unknown" && first.compiled.verdict != r.Config.Verdict {
		r.Notes = append(r.Notes, fmt.Sprintf("internal error: the rules compiled from the configuration %s the packet, the configuration says %s (please report this)", first.compiled.verdict, r.Config.Verdict))
	}
	if first.krn != nil {
		k := &KernelResult{Backend: t.in.Kernel.Backend, Verdict: first.krn.verdict, Chains: first.krn.chains, Rules: first.krn.hits, DecidedBy: first.krn.decidedBy}
		if k.Rules == nil {
			k.Rules = []RuleHit{}
		}
		if first.krn.err != nil {
			k.Verdict, k.Error = "", first.krn.err.Error()
		} else {
			r.Verdict = k.Verdict
		}
		r.Kernel = k
		r.Drift = t.drift(first.actual, first.krn)
		if k.Verdict != "" && k.Verdict != r.Config.Verdict && r.Config.Verdict != "unknown" {
			what := "drift"
			if len(r.Drift) == 0 {
				what = "an error in vmfw (please report it)"
			}
			r.Notes = append(r.Notes, fmt.Sprintf("the kernel's rules %s the packet, the configuration would %s it: %s", verbed(k.Verdict), r.Config.Verdict, what))
		}
	}
	if r.Verdict == "unknown" {
		// Only the configuration answered and it cannot tell: the
		// compiled rules decide on the typical values.
		r.Verdict = first.compiled.verdict
	}

	// Alternatives: values of the unknowns that change the verdict.
	type key struct{ when, verdict, by string }
	groups := map[key][]string{}
	var order []key
	for _, a := range answers[1:] {
		v, by := a.compiled.verdict, a.compiled.decidedBy
		if a.krn != nil && a.krn.err == nil {
			v, by = a.krn.verdict, a.krn.decidedBy
		}
		if v == r.Verdict || v == "" {
			continue
		}
		k := key{a.c.when, v, by}
		if groups[k] == nil {
			order = append(order, k)
		}
		value := strings.TrimLeft(a.c.dim, "sd")
		groups[k] = append(groups[k], value)
	}
	for _, k := range order {
		alt := Alternative{When: k.when + " " + strings.Join(groups[k], ", "), Verdict: k.verdict}
		if k.by != "" {
			alt.When += " (" + k.by + ")"
		}
		r.Alternatives = append(r.Alternatives, alt)
	}
	r.Notes = append(t.notes, r.Notes...)
	r.Notes = append(r.Notes, t.assumptions(u)...)
	return r, nil
}

func verbed(v string) string {
	switch v {
	case "accept":
		return "accept"
	case "reject":
		return "reject"
	}
	return "drop"
}

func configVerdict(x *policy.Explanation) string {
	if x.Verdict == policy.Unknown {
		return "unknown"
	}
	return string(x.Action)
}

// assumptions say which values the trace chose for what the query left
// open.
func (t *tracer) assumptions(u *unknowns) []string {
	var out []string
	hasPorts := t.proto == protoTCP || t.proto == protoUDP || t.proto == protoSCTP
	if hasPorts && t.q.SPort < 0 {
		out = append(out, fmt.Sprintf("source port not given: %d assumed, a port no rule names", u.sport))
	}
	if hasPorts && t.q.DPort < 0 {
		out = append(out, fmt.Sprintf("destination port not given: %d assumed, a port no rule names", u.dport))
	}
	if (t.proto == protoICMP || t.proto == protoICMPv6) && t.q.ICMPType == "" {
		out = append(out, "ICMP type not given: echo-request assumed")
	}
	if len(u.macs) > 0 && t.q.MAC == "" {
		out = append(out, fmt.Sprintf("the sender's MAC is not known: %s assumed, one no rule names", u.mac))
	}
	if t.proto == protoTCP {
		out = append(out, "the packet is the connection's first (SYN); later packets of an accepted connection pass as ESTABLISHED")
	}
	return out
}

func (t *tracer) flowInfo(c candidate) Flow {
	f := Flow{Family: int(t.family), Proto: t.protoName, Src: t.from.Address, Dst: t.to.Address}
	switch t.proto {
	case protoTCP, protoUDP, protoSCTP:
		s, d := int(c.sport), int(c.dport)
		f.SPort, f.DPort = &s, &d
	case protoICMP, protoICMPv6:
		ty, co := t.icmpType, t.icmpCode
		f.ICMPType, f.ICMPCode = &ty, &co
	}
	if c.mac != nil && t.path != PathFromHypervisor {
		f.SrcMAC = c.mac.String()
	}
	return f
}

// packet builds the first packet of candidate c as the rules see it.
func (t *tracer) packet(c candidate) *packet {
	p := &packet{proto: t.proto, src: t.from.Address, dst: t.to.Address, sport: c.sport, dport: c.dport,
		icmpType: uint8(t.icmpType), icmpCode: uint8(t.icmpCode), state: "NEW"}
	if t.path != PathFromHypervisor {
		p.srcMAC = c.mac
	}
	if t.proto == protoICMP || t.proto == protoICMPv6 {
		p.state = policyState(t.proto, uint8(t.icmpType))
	}
	if t.proto == protoICMPv6 && (t.icmpType == 135 || t.icmpType == 136) {
		// A solicitation asks for the destination, an advertisement
		// announces the sender's own address.
		p.ndTarget = t.to.Address
		if t.icmpType == 136 {
			p.ndTarget = t.from.Address
		}
	}
	return p
}

// policyState is the conntrack state of a flow's first ICMP packet
// (see package policy).
func policyState(proto uint8, typ uint8) string {
	if proto == protoICMP {
		switch typ {
		case 8, 13, 15, 17:
			return "NEW"
		}
		return "INVALID"
	}
	switch typ {
	case 128, 139:
		return "NEW"
	case 130, 131, 132, 133, 134, 135, 136, 137, 143:
		return "UNTRACKED"
	}
	return "INVALID"
}

func (t *tracer) policyFlow(c candidate) policy.Flow {
	f := policy.Flow{Proto: t.proto, Src: t.from.Address, Dst: t.to.Address, SPort: c.sport, DPort: c.dport}
	if t.proto == protoICMP || t.proto == protoICMPv6 {
		f.ICMPType, f.ICMPCode, f.ICMPKnown = uint8(t.icmpType), uint8(t.icmpCode), true
	}
	return f
}

func (t *tracer) policyPath(c candidate) policy.Path {
	p := policy.Path{Sender: t.from.nic, Receiver: t.to.nic, Local: t.path == PathFromHypervisor}
	if p.Local {
		p.Sender = nil
		return p
	}
	if p.Sender != nil && p.Sender.MAC == nil && c.mac != nil {
		// The interface has no configured MAC; the trace's candidate
		// stands for the one it sends with.
		s := *p.Sender
		s.MAC = c.mac
		p.Sender = &s
	}
	if p.Sender == nil {
		p.SenderMAC = c.mac
	}
	if t.to.Kind == "hypervisor" {
		p.Receiver = nil
	}
	return p
}

func (t *tracer) compiledMachine(rs *ruleset.Ruleset) *machine {
	tbl := rs.Tables[t.family]
	lines := map[ruleset.Chain][]string{}
	hashes := map[ruleset.Chain][]string{}
	for _, c := range tbl.Chains {
		for _, r := range c.Rules {
			lines[c.Name] = append(lines[c.Name], r.Spec)
		}
		hashes[c.Name] = c.Hashes()
	}
	return newMachine(lines, hashes, compiledSets(rs))
}

func compiledSets(rs *ruleset.Ruleset) map[string]map[netip.Addr]bool {
	sets := map[string]map[netip.Addr]bool{}
	for _, s := range rs.Sets {
		m := map[netip.Addr]bool{}
		for _, a := range s.Members {
			if ip, err := netip.ParseAddr(a); err == nil {
				m[ip] = true
			}
		}
		sets[s.Name] = m
	}
	return sets
}

func (t *tracer) compiledL2(rs *ruleset.Ruleset) *l2machine {
	if rs.Bridge == nil {
		return nil
	}
	specs := map[ruleset.Chain][]string{}
	for _, c := range rs.Bridge.Chains {
		specs[c.Name] = rs.Bridge.Fingerprints(c)
	}
	return newL2Machine(specs)
}

// hooked reports whether the kernel jumps from built-in chain from to to;
// the compiled ruleset (k nil) always does.
func hooked(k *Kernel, table string, from, to ruleset.Chain, f ruleset.Family) bool {
	if k == nil {
		return true
	}
	h := ruleset.Hook{From: from, To: to}
	if table == "bridge" {
		return k.Bridge == nil || k.Bridge.Hooks[h] > 0
	}
	return k.Tables[f].Hooks[h] > 0
}

// walk runs the packet along its path: the layer-2 chains of a sending
// VM's port, the IP hook of the path, and for packets the hypervisor
// routes or sends, the layer-2 check of the receiving port.
func (t *tracer) walk(ipm *machine, l2m *l2machine, k *Kernel, p *packet) *result {
	res := &result{entered: map[string][]ruleset.Chain{}, setsUsed: map[string]bool{}}
	table := t.family.String()
	senderPort, receiverPort := "", ""
	if t.from.nic != nil {
		senderPort = t.from.nic.Tap
	}
	if t.to.nic != nil {
		receiverPort = t.to.nic.Tap
	}
	uplink := "(uplink)"
	var hook, entry ruleset.Chain
	switch t.path {
	case PathBridged:
		hook, entry = ruleset.Forward, ruleset.ChainForward
		p.physIn, p.physOut, p.bridged = cmp(senderPort, uplink), cmp(receiverPort, uplink), true
	case PathRouted:
		hook, entry = ruleset.Forward, ruleset.ChainForward
		p.physIn = senderPort
	case PathToHypervisor:
		hook, entry = ruleset.Input, ruleset.ChainInput
		p.physIn = senderPort
	case PathFromHypervisor:
		hook, entry = ruleset.Output, ruleset.ChainOutput
	}
	hitL2 := func(m *l2machine) {
		for _, r := range m.hits {
			res.hits = append(res.hits, RuleHit{Table: "bridge", Chain: string(r.chain), Index: r.index, Rule: r.text})
		}
		for _, c := range m.entered {
			res.chains = append(res.chains, "bridge/"+string(c))
		}
		res.entered["bridge"] = append(res.entered["bridge"], m.entered...)
	}
	decide := func(v, by string) *result {
		res.verdict, res.decidedBy = v, by
		return res
	}

	// Layer 2 first: ebtables' FORWARD and INPUT hooks come before
	// iptables' (br_netfilter). A frame the hypervisor routes onward was
	// received by the bridge's own interface (INPUT).
	if l2m != nil && senderPort != "" && t.path != PathFromHypervisor {
		l2hook := ruleset.Input
		if t.path == PathBridged {
			l2hook = ruleset.Forward
		}
		if hooked(k, "bridge", l2hook, ruleset.ChainL2, t.family) {
			f := &frame{pkt: p, in: senderPort}
			if t.path == PathBridged {
				f.out = p.physOut
			}
			drop, by, err := l2m.run(ruleset.ChainL2, f)
			hitL2(l2m)
			if err != nil {
				res.err = err
				return res
			}
			if drop {
				return decide("drop", fmt.Sprintf("bridge %s rule %d: %s", by.chain, by.index, by.text))
			}
		}
	}

	if !hooked(k, table, hook, entry, t.family) {
		res.chains = append(res.chains, string(hook))
		if t.path == PathFromHypervisor {
			return t.l2out(res, l2m, k, p, receiverPort, hitL2, fmt.Sprintf("the jump from %s to %s is missing: no vmfw rule sees the packet", hook, entry))
		}
		return decide("accept", fmt.Sprintf("the jump from %s to %s is missing: no vmfw rule sees the packet; %s's own rules and policy decide", hook, entry, hook))
	}
	o, by, err := ipm.run(entry, p)
	res.chains = append(res.chains, string(hook))
	for _, c := range ipm.entered {
		res.chains = append(res.chains, string(c))
	}
	res.entered[table] = ipm.entered
	for s := range ipm.sets.used {
		res.setsUsed[s] = true
	}
	for _, h := range ipm.hits {
		res.hits = append(res.hits, RuleHit{Table: table, Chain: string(h.chain), Index: h.index, Rule: stripComment(h.text), Origin: t.origin(h)})
	}
	if err != nil {
		res.err = err
		return res
	}
	res.decider = by
	describe := func(r *irule) string {
		s := fmt.Sprintf("%s rule %d", r.chain, r.index)
		if o := t.origin(r); o != "" {
			s += " (" + o + ")"
		}
		return s
	}
	// The sender's out chain marks what it allows: the last rule that did
	// says why a packet no in chain decided got through.
	allowed := ""
	for i := len(ipm.hits) - 1; i >= 0; i-- {
		if r := ipm.hits[i]; r.target == "MARK" && r.markValue != 0 && !ruleset.IsBaseChain(r.chain) {
			allowed = "allowed by " + describe(r) + "; "
			break
		}
	}
	switch o {
	case accepted:
		why := describe(by)
		if ruleset.IsBaseChain(by.chain) && allowed != "" {
			// vmfw-accept: allowed out to a port or address no VM has.
			why = allowed + "accepted by " + why
		}
		if t.path == PathRouted {
			return t.l2out(res, l2m, k, p, receiverPort, hitL2, why)
		}
		return decide("accept", why)
	case dropped:
		return decide("drop", describe(by))
	case rejected:
		return decide("reject", describe(by))
	}
	switch t.path {
	case PathToHypervisor:
		return decide("accept", allowed+"the host's own INPUT rules decide the rest")
	case PathFromHypervisor:
		return t.l2out(res, l2m, k, p, receiverPort, hitL2, "no in chain decided the packet")
	case PathRouted:
		return t.l2out(res, l2m, k, p, receiverPort, hitL2, allowed+"FORWARD's own rules and policy decide the rest")
	}
	return decide("accept", allowed+"FORWARD's own rules and policy decide the rest")
}

// l2out finishes the path of a packet the hypervisor puts on a bridge
// port: vmfw-l2out drops IP frames to managed ports that carry no mark.
func (t *tracer) l2out(res *result, l2m *l2machine, k *Kernel, p *packet, port string, hitL2 func(*l2machine), ipDecision string) *result {
	if port == "" || l2m == nil || !hooked(k, "bridge", ruleset.Output, ruleset.ChainL2Out, t.family) {
		res.verdict, res.decidedBy = "accept", ipDecision
		return res
	}
	drop, by, err := l2m.run(ruleset.ChainL2Out, &frame{pkt: p, out: port})
	hitL2(l2m)
	if err != nil {
		res.err = err
		return res
	}
	if drop {
		res.verdict = "drop"
		res.decidedBy = fmt.Sprintf("bridge %s rule %d (%s): no in chain accepted the packet (%s)", by.chain, by.index, by.text, ipDecision)
		return res
	}
	res.verdict, res.decidedBy = "accept", ipDecision
	return res
}

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// stripComment drops vmfw's comment from a rule's text: the fingerprint
// says nothing to a reader, the origin says more.
func stripComment(text string) string {
	words, err := ruleset.SplitWords(text)
	if err != nil {
		return text
	}
	var out []string
	for i := 0; i < len(words); i++ {
		if words[i] == "-m" && i+3 < len(words) && words[i+1] == "comment" && words[i+2] == "--comment" {
			i += 3
			continue
		}
		w := words[i]
		if strings.ContainsAny(w, " \t") || w == "" {
			w = strconv.Quote(w)
		}
		out = append(out, w)
	}
	return strings.Join(out, " ")
}

// origin names the configuration a rule implements, found by its
// fingerprint among the compiled rules of its chain.
func (t *tracer) origin(r *irule) string {
	if r.hash == "" {
		return ""
	}
	for _, rs := range []*ruleset.Ruleset{t.actual, t.compiled} {
		if c := rs.Tables[t.family].Chain(r.chain); c != nil {
			for _, cr := range c.Rules {
				if cr.Hash(c.Name) == r.hash {
					return t.describeOrigin(cr.Origin)
				}
			}
		}
	}
	return ""
}

func (t *tracer) describeOrigin(o ruleset.Origin) string {
	if o.IsZero() {
		return ""
	}
	if o.Group != "" {
		g := t.in.Model.Groups[o.Group]
		if g == nil || o.Index >= len(g.Rules(o.Dir)) {
			return ""
		}
		return fmt.Sprintf("%s:%d", g.File, g.Rules(o.Dir)[o.Index].Line)
	}
	if n := t.resolve(o.Tap); n != nil && n.VM.File != "" {
		return fmt.Sprintf("%s: policy_%s", n.VM.File, o.Dir)
	}
	return "policy_" + string(o.Dir)
}

// drift lists the chains and sets on the packet's way (in the kernel or
// in the compiled rules) whose kernel contents differ from the compiled.
func (t *tracer) drift(compiled, kernel *result) []string {
	out := []string{}
	k := t.in.Kernel
	table := t.family.String()
	tbl := t.actual.Tables[t.family]
	seen := map[string]bool{}
	note := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, h := range tbl.Hooks {
		if k.Tables[t.family].Hooks[h] == 0 {
			note(fmt.Sprintf("%s/%s jump to %s missing", table, h.From, h.To))
		}
	}
	if k.Bridge != nil && t.actual.Bridge != nil {
		for _, h := range t.actual.Bridge.Hooks {
			if k.Bridge.Hooks[h] == 0 {
				note(fmt.Sprintf("bridge/%s jump to %s missing", h.From, h.To))
			}
		}
	}
	chains := append(slices.Clone(compiled.entered[table]), kernel.entered[table]...)
	if kernel.err != nil && kernel.decider == nil {
		// The walk stopped at a chain it could not read: compare that
		// one too (errors name it).
		for _, c := range tbl.Chains {
			if strings.Contains(kernel.err.Error(), " "+string(c.Name)+" ") {
				chains = append(chains, c.Name)
			}
		}
	}
	obs := k.Tables[t.family]
	for _, c := range chains {
		want := tbl.Chain(c)
		got, ok := obs.Chains[c]
		switch {
		case want == nil && ok:
			note(fmt.Sprintf("%s/%s is installed but the configuration has no such chain", table, c))
		case want != nil && !ok:
			note(fmt.Sprintf("%s/%s is missing", table, c))
		case want != nil && !slices.Equal(got, want.Hashes()):
			note(fmt.Sprintf("%s/%s differs", table, c))
		}
	}
	if k.Bridge != nil && t.actual.Bridge != nil {
		br := t.actual.Bridge
		for _, c := range append(slices.Clone(compiled.entered["bridge"]), kernel.entered["bridge"]...) {
			want := br.Chain(c)
			got, ok := k.Bridge.Chains[c]
			switch {
			case want == nil && ok:
				note(fmt.Sprintf("bridge/%s is installed but the configuration has no such chain", c))
			case want != nil && !ok:
				note(fmt.Sprintf("bridge/%s is missing", c))
			case want != nil && !slices.Equal(got, br.Fingerprints(want)):
				note(fmt.Sprintf("bridge/%s differs", c))
			}
		}
	}
	want := compiledSets(t.actual)
	sets := map[string]bool{}
	for s := range compiled.setsUsed {
		sets[s] = true
	}
	for s := range kernel.setsUsed {
		sets[s] = true
	}
	for _, s := range slices.Sorted(maps.Keys(sets)) {
		w, g := want[s], k.Sets[s]
		var missing, extra []string
		for a := range w {
			if !g[a] {
				missing = append(missing, a.String())
			}
		}
		for a := range g {
			if !w[a] {
				extra = append(extra, a.String())
			}
		}
		if len(missing)+len(extra) == 0 {
			continue
		}
		sort.Strings(missing)
		sort.Strings(extra)
		d := "set " + s + " differs"
		if len(missing) > 0 {
			d += ": missing " + strings.Join(missing, " ")
		}
		if len(extra) > 0 {
			d += ": extra " + strings.Join(extra, " ")
		}
		note(d)
	}
	return out
}

// IsQueryError reports whether err is a bad query (exit status 2).
func IsQueryError(err error) bool {
	var q *QueryError
	return errors.As(err, &q)
}
