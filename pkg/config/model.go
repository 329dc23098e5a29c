// Package config loads and validates vmfw's configuration directory into a
// Model. Loading has no side effects: it reads files and either returns a
// complete, validated Model or an error naming the file and line of the first
// problem, so callers never act on half-read configuration.
package config

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Action is what a rule or policy does with a packet it decides.
type Action string

// The actions a rule or policy may take.
const (
	Accept Action = "accept"
	Drop   Action = "drop"
	Reject Action = "reject"
)

// Direction tells whether a rule filters traffic to the VM (In) or from it (Out).
type Direction string

// The two directions of a tap.
const (
	In  Direction = "in"
	Out Direction = "out"
)

// DefaultMark is the one packet-mark bit vmfw uses to carry an "allowed by the
// sender's out rules" verdict to the receiver's in rules. kube-proxy uses
// 0x4000/0x8000, Calico 0xffff0000, Cilium 0x0f00, Tailscale 0xff0000 and
// Istio 0x539, so 0x1000 is free of all of them.
const DefaultMark uint32 = 0x1000

// DefaultMarkMask is the nftables backend's mark bits, 0x20c6 (bits 1, 2,
// 6, 7 and 13): docs/nftables.md, "The mark", says which bits other
// software on a hypervisor uses and why these.
const DefaultMarkMask uint32 = 0x20c6

// minMarkMaskBits is how many bits the nftables backend's mask needs.
const minMarkMaskBits = 5

// The backends vmfw.toml's backend key names.
const (
	BackendIPTables = "iptables"
	BackendNFTables = "nftables"
)

// Model is a complete, validated configuration.
type Model struct {
	// Dir is the configuration directory the model was loaded from.
	Dir string
	// Host holds the host-wide options of vmfw.toml.
	Host Host
	// Groups maps a group name to its definition.
	Groups map[string]*Group
	// VMs maps a VM id to its definition.
	VMs map[int]*VM
	// Sets maps an address set's name to its definition (sets/NAME.toml).
	Sets map[string]*Set
	// RemoteMembers maps a group to the addresses of its members attached
	// on other hosts (cluster mode). They fill the group's ipsets but get
	// no chains here; Load leaves it nil.
	RemoteMembers map[string][]netip.Addr
}

// Host holds the host-wide options (vmfw.toml); every field has a default.
type Host struct {
	// Managed lists interface patterns (iptables syntax, a trailing "+" is a
	// wildcard) that get no traffic through unless vmfw installed their chains.
	Managed []string
	// Backend is vmfw.toml's backend, "iptables" or "nftables"; empty
	// when the file does not say (--backend and $VMFW_BACKEND come first,
	// iptables is the default).
	Backend string
	// Mark is the single mark bit the iptables backend may set and clear.
	Mark uint32
	// MarkMask is the mark bits the nftables backend may use, at least
	// five, none of them Mark.
	MarkMask uint32
	// LogLimit is the rate of the limit match on LOG rules, e.g. "10/second".
	LogLimit string
	// LogBurst is the burst of the limit match on LOG rules.
	LogBurst int
	// LogGroup is the NFLOG group logged packets go to (vmfw.toml
	// log_group, 1 to 65535); 0, the default, logs with the kernel's LOG
	// target instead.
	LogGroup int
	// RepairInterval is how often the agent checks the kernel for drift
	// and repairs it (vmfw.toml repair_interval, default 10s).
	RepairInterval time.Duration
	// MetricsListen is the address the agent serves /metrics on; empty
	// is off (vmfw.toml metrics_listen).
	MetricsListen string
	// Cluster is the [cluster] table: nil runs from files alone
	// (docs/cluster.md).
	Cluster *Cluster
}

// Group is a named security group: ordered rules per direction.
type Group struct {
	// Name is the group's name, taken from its file name.
	Name string
	// File is the path of the file the group was loaded from.
	File string
	// Description is free text shown to operators.
	Description string
	// In filters traffic to the VM, Out traffic from it, first match wins.
	In, Out []Rule
}

// Rules returns the group's rules for one direction.
func (g *Group) Rules(d Direction) []Rule {
	if d == In {
		return g.In
	}
	return g.Out
}

// PortRange is an inclusive range of ports; Lo == Hi for a single port.
type PortRange struct {
	Lo, Hi uint16
}

// Rule is one validated firewall rule of a group.
type Rule struct {
	// Line is the line of the rule's table header in its file, for messages.
	Line int
	// Action is what the rule does with packets it matches (default accept).
	Action Action
	// Proto is "" (any), a name (tcp, udp, sctp, icmp, icmpv6) or a decimal
	// protocol number.
	Proto string
	// DPort and SPort are the destination and source ports (tcp/udp/sctp).
	DPort, SPort []PortRange
	// ICMPType is an icmp or icmpv6 type name or number, "" for any.
	ICMPType string
	// Source and Dest are address prefixes; v4 and v6 may mix.
	Source, Dest []netip.Prefix
	// SourceGroup and DestGroup name groups whose members match.
	SourceGroup, DestGroup string
	// SourceSet and DestSet name address sets (Model.Sets) whose
	// addresses match; "" for none. Like SourceGroup and DestGroup,
	// SourceSet is only in In rules and DestSet only in Out rules. A rule
	// matches a packet that every key it has matches: Source (any one of
	// its prefixes), SourceGroup, SourceSet and SourceMAC together, as
	// Source and SourceGroup have always combined.
	SourceSet, DestSet string
	// SourceMAC matches the Ethernet source address.
	SourceMAC net.HardwareAddr
	// Log logs packets the rule matches, rate limited: LogLevel != "".
	Log bool
	// LogLevel is the syslog level the rule logs at, LogOff for none
	// (log = true is DefaultLogLevel).
	LogLevel LogLevel
	// Comment is shown in the generated rule; printable ASCII without quotes.
	Comment string
}

// VM is one virtual machine and its interfaces.
type VM struct {
	// ID is the VM's numeric id, taken from its file name.
	ID int
	// File is the path of the file the VM was loaded from.
	File string
	// Name is an optional label shown in status and logs.
	Name string
	// Enable false lets the VM's taps pass unfiltered (explicitly).
	Enable bool
	// DropInvalid, only with Enable false, still drops what conntrack
	// finds INVALID and new TCP without SYN, as a filtered VM's chains
	// do first (drop_invalid = true; Proxmox's PVEFW-FORWARD does it for
	// guests whose firewall is off: docs/proxmox.md).
	DropInvalid bool
	// PolicyIn and PolicyOut decide packets no rule matched.
	PolicyIn, PolicyOut Action
	// Log logs packets dropped or rejected by policy, rate limited, in
	// either direction: LogIn != "" || LogOut != "".
	Log bool
	// LogIn and LogOut are the syslog levels packets dropped or
	// rejected by policy_in and policy_out are logged at, LogOff for
	// none: log sets both, log_in and log_out one each.
	LogIn, LogOut LogLevel
	// NICs are the VM's interfaces, ordered by index.
	NICs []*NIC
}

// NIC is one interface of a VM, backed by the tap tap<VMID>i<Index>.
type NIC struct {
	// VM is the VM this interface belongs to.
	VM *VM
	// Index is N of the [netN] table.
	Index int
	// Line is the line of the [netN] table header.
	Line int
	// Tap is the host-side interface name, tap<VMID>i<Index>.
	Tap string
	// MAC is the VM's MAC address on this interface, nil if unknown.
	MAC net.HardwareAddr
	// IPs are the addresses the VM may send from.
	IPs []netip.Addr
	// Bridge is the bridge ifup attaches the tap to, "" for none.
	Bridge string
	// Groups are the security groups, evaluated in this order.
	Groups []string
	// Antispoof says the interface has anti-spoofing (default true):
	// source MAC and IP restricted to MAC and IPs, or with
	// AntispoofMACOnly the MAC alone.
	Antispoof bool
	// AntispoofMACOnly limits anti-spoofing to the source MAC of frames
	// and the sender hardware address of ARP; the interface's addresses
	// are not bound (antispoof = "mac", Proxmox's macfilter without
	// ipfilter). Antispoof is true whenever it is, so code that knows
	// only Antispoof checks more than asked, never less.
	AntispoofMACOnly bool
	// DHCP allows DHCP/DHCPv6 client traffic (default true).
	DHCP bool
	// NoNDP turns off vmfw's neighbour discovery exception (ndp = false):
	// router and neighbour solicitations and advertisements then meet
	// the groups like any packet, so a group can drop them before
	// another allows them (docs/proxmox.md, the blacklist). The negative
	// keeps the zero value, and every NIC built without it, as before.
	NoNDP bool
	// L2Protocols are the ethertypes besides IPv4, IPv6 and ARP the VM may
	// send when Antispoof is on, in the form ebtables prints them.
	L2Protocols []string
}

// TapName returns the tap name of interface index of VM id.
func TapName(vmid, index int) string {
	return "tap" + strconv.Itoa(vmid) + "i" + strconv.Itoa(index)
}

// ParseTapName splits a tap name of the form tap<VMID>i<N>; ok is false for
// any other name (leading zeros included, so names and ids map one to one).
func ParseTapName(tap string) (vmid, index int, ok bool) {
	rest, found := strings.CutPrefix(tap, "tap")
	if !found {
		return 0, 0, false
	}
	id, idx, found := strings.Cut(rest, "i")
	if !found {
		return 0, 0, false
	}
	vmid, ok1 := canonicalNumber(id)
	index, ok2 := canonicalNumber(idx)
	if !ok1 || !ok2 {
		return 0, 0, false
	}
	return vmid, index, true
}

// canonicalNumber parses s when it is a number as strconv.Itoa writes
// one that is not negative: digits, no sign, no leading zero. Checked so,
// rather than by writing the name again, a parse allocates nothing (an
// ifup without the agent looks up every installed tap).
func canonicalNumber(s string) (int, bool) {
	if s == "" || len(s) > 1 && s[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// NIC returns the interface whose tap is named tap, or nil.
func (m *Model) NIC(tap string) *NIC {
	vmid, index, ok := ParseTapName(tap)
	if !ok {
		return nil
	}
	vm := m.VMs[vmid]
	if vm == nil {
		return nil
	}
	for _, n := range vm.NICs {
		if n.Index == index {
			return n
		}
	}
	return nil
}
