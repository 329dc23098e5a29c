package explain

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

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

// Error is the message alone: it names the flag and the value at fault.
func (e *QueryError) Error() string { return e.Msg }

func queryErr(format string, args ...any) error {
	return &QueryError{Msg: fmt.Sprintf(format, args...)}
}

// IsQueryError reports whether err is a bad query (exit status 2).
func IsQueryError(err error) bool {
	var q *QueryError
	return errors.As(err, &q)
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

// Paths a packet can take (docs/routing.md), as the report names them.
const (
	PathBridged        = string(backend.PathBridged)
	PathRouted         = string(backend.PathRouted)
	PathFromHypervisor = string(backend.PathFromHypervisor)
	PathToHypervisor   = string(backend.PathToHypervisor)
)

// parseProto reads --proto.
func parseProto(s string) (uint8, string, error) {
	switch strings.ToLower(s) {
	case "":
		return 0, "", queryErr("--proto is required (tcp, udp, sctp, icmp, icmpv6 or a number)")
	case "tcp":
		return config.ProtoTCP, "tcp", nil
	case "udp":
		return config.ProtoUDP, "udp", nil
	case "sctp":
		return config.ProtoSCTP, "sctp", nil
	case "icmp":
		return config.ProtoICMP, "icmp", nil
	case "icmpv6", "ipv6-icmp":
		return config.ProtoICMPv6, "icmpv6", nil
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
	case config.ProtoICMP:
		if err := set(4, "icmp is IPv4's; use icmpv6"); err != nil {
			return err
		}
	case config.ProtoICMPv6:
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
	hasPorts := t.proto == config.ProtoTCP || t.proto == config.ProtoUDP || t.proto == config.ProtoSCTP
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
	isICMP := t.proto == config.ProtoICMP || t.proto == config.ProtoICMPv6
	if t.q.ICMPType != "" && !isICMP {
		return queryErr("--icmp-type needs icmp or icmpv6")
	}
	if isICMP {
		name := t.q.ICMPType
		if name == "" {
			name = "echo-request"
		}
		typ, code, ok := ruleset.ParseICMPType(t.protoName, name)
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

// unicast reports whether a is a unicast address: every address vmfw
// trace accepts as an endpoint.
func unicast(a netip.Addr) bool {
	return !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}
