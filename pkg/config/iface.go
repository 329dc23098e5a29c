package config

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Interface settings. A VM file's [netN] table (with its VM's keys), a CNI
// configuration with the attachment's prevResult, and an attachment record
// all say how one interface is firewalled. ValidateIface checks them by one
// set of rules, so the three accept and refuse the same values in the same
// words; each caller only says where a value came from (file:line, a CNI
// key, a record's file), by rendering the *FieldError with its own key.

// Prefixes of vmfw's own chain and set names (built by package ruleset):
// a firewalled interface's name becomes part of its chains' names, so no
// such interface may start with either, or its chains could be taken for
// vmfw's base or group chains.
const (
	BaseChainPrefix  = "vmfw-"
	GroupChainPrefix = "sg-"
)

// maxIfName is the longest Linux interface name (IFNAMSIZ - 1).
const maxIfName = 15

// IfaceSettings are one interface's firewall settings as an entry point
// read them, not yet validated. An empty string is the same as a key left
// out (the default), in every source.
type IfaceSettings struct {
	// Iface is the host-side interface name: tap<VMID>i<N>, a CNI veth,
	// a libvirt vnetN.
	Iface string
	// Label names the VM or attachment in status and logs; "" for none.
	Label string
	// PolicyIn and PolicyOut decide what no rule matched: accept, drop or
	// reject, in any case; "" means drop in and accept out.
	PolicyIn, PolicyOut string
	// Log logs packets dropped or rejected by policy, in both
	// directions at DefaultLogLevel.
	Log bool
	// MAC is the guest's MAC address, "" if unknown.
	MAC string
	// IPs are the addresses the guest may send from.
	IPs []string
	// Bridge is the bridge ifup attaches the tap to; nil for none. Only
	// VM files have it.
	Bridge *string
	// Groups are the security groups, evaluated in this order.
	Groups []string
	// Antispoof restricts source MAC and IP to MAC and IPs.
	Antispoof bool
	// AntispoofMACOnly turns anti-spoofing on for the source MAC alone
	// (antispoof = "mac"): MAC must be given, the addresses are not
	// bound. ParseAntispoof reads both from a setting as written.
	AntispoofMACOnly bool
	// DHCP allows DHCP and DHCPv6 client traffic.
	DHCP bool
	// NoNDP leaves neighbour discovery to the groups (ndp = false). Only
	// VM files have it; false, the zero value, keeps vmfw's exception.
	NoNDP bool
	// L2Protocols are ethertypes the guest may send besides IPv4, IPv6
	// and ARP. Only VM files have them.
	L2Protocols []string
}

// Field names one setting of IfaceSettings, spelt as in a VM file.
type Field string

// The fields of IfaceSettings that can be wrong.
const (
	FieldIface       Field = "iface"
	FieldLabel       Field = "name"
	FieldPolicyIn    Field = "policy_in"
	FieldPolicyOut   Field = "policy_out"
	FieldMAC         Field = "mac"
	FieldIPs         Field = "ips"
	FieldBridge      Field = "bridge"
	FieldGroups      Field = "groups"
	FieldAntispoof   Field = "antispoof"
	FieldL2Protocols Field = "l2_protocols"
)

// FieldError is a problem with one interface setting. It names the field,
// not where the field was written: each entry point renders it with its
// own key (Render) after its own location.
type FieldError struct {
	// Field is the setting that is wrong.
	Field Field
	// Index is the offending element of a list setting (IPs, Groups,
	// L2Protocols), -1 for the others.
	Index int
	// Value is the offending value as written.
	Value string
	// Problem says what is wrong with it, e.g. "unknown group, there is
	// no groups/db.toml".
	Problem string
}

// Error renders the error with the VM file's key.
func (e *FieldError) Error() string { return e.Render(string(e.Field)) }

// Render words the error as KEY "VALUE": PROBLEM, key being the setting
// as the source spells it ("policy_in", "args.cni.policyIn",
// "spec.groups[1]").
func (e *FieldError) Render(key string) string {
	return key + " " + strconv.Quote(e.Value) + ": " + e.Problem
}

func fieldError(f Field, index int, value, problem string) *FieldError {
	return &FieldError{Field: f, Index: index, Value: value, Problem: problem}
}

// ValidateIface validates an interface's settings and returns them as a
// NIC of a VM of its own (enabled, not from a file). defined reports
// whether a group is defined; nil checks group names for their form only,
// for a caller that has not loaded the configuration yet and checks again
// once it has.
func ValidateIface(s *IfaceSettings, defined func(group string) bool) (*NIC, *FieldError) {
	vm, err := validateVMSettings(s.Label, s.PolicyIn, s.PolicyOut)
	if err != nil {
		return nil, err
	}
	if s.Log {
		vm.Log, vm.LogIn, vm.LogOut = true, DefaultLogLevel, DefaultLogLevel
	}
	return validateNIC(vm, s, defined)
}

// validateVMSettings validates the settings a VM file gives once for all
// its interfaces and the other sources per interface.
func validateVMSettings(label, policyIn, policyOut string) (*VM, *FieldError) {
	vm := &VM{Name: label, Enable: true}
	if p := labelProblem(label); p != "" {
		return nil, fieldError(FieldLabel, -1, label, p)
	}
	var ok bool
	if vm.PolicyIn, ok = parsePolicy(policyIn, Drop); !ok {
		return nil, fieldError(FieldPolicyIn, -1, policyIn, "must be drop, reject or accept")
	}
	if vm.PolicyOut, ok = parsePolicy(policyOut, Accept); !ok {
		return nil, fieldError(FieldPolicyOut, -1, policyOut, "must be accept, drop or reject")
	}
	return vm, nil
}

// parsePolicy parses a policy; "" is def.
func parsePolicy(s string, def Action) (Action, bool) {
	if s == "" {
		return def, true
	}
	return parseAction(s)
}

// MaxLabel bounds a VM's label, which ends up in logs and status output.
const MaxLabel = 64

// labelProblem checks a VM's or attachment's label: [A-Za-z0-9._/-], at
// most MaxLabel characters, so it cannot garble a log line or status
// output. '/' is allowed for CNI's NETWORK/CONTAINER labels.
func labelProblem(label string) string {
	if len(label) > MaxLabel {
		return "is " + strconv.Itoa(len(label)) + " characters, at most " + strconv.Itoa(MaxLabel) + " are allowed"
	}
	for i := 0; i < len(label); i++ {
		if c := label[i]; !isAlnum(c) && !strings.ContainsRune("._-/", rune(c)) {
			return "use only letters, digits, '.', '_', '-' or '/'"
		}
	}
	return ""
}

// validateNIC validates the interface settings of s for an interface of
// vm.
func validateNIC(vm *VM, s *IfaceSettings, defined func(string) bool) (*NIC, *FieldError) {
	if p := IfaceNameProblem(s.Iface); p != "" {
		return nil, fieldError(FieldIface, -1, s.Iface, p)
	}
	nic := &NIC{VM: vm, Tap: s.Iface, Antispoof: s.Antispoof || s.AntispoofMACOnly, AntispoofMACOnly: s.AntispoofMACOnly, DHCP: s.DHCP, NoNDP: s.NoNDP}
	if s.MAC != "" {
		mac, problem := parseMAC(s.MAC)
		if problem != "" {
			return nil, fieldError(FieldMAC, -1, s.MAC, problem)
		}
		nic.MAC = mac
	}
	if s.AntispoofMACOnly && nic.MAC == nil {
		// Without a MAC there is nothing to check, and an operator who
		// asked for MAC anti-spoofing must not get none.
		return nil, fieldError(FieldAntispoof, -1, AntispoofMAC, "checks the source MAC, but the interface has no mac; give its mac, or set antispoof = false")
	}
	for i, v := range s.IPs {
		a, problem := parseAddr(v)
		if problem == "" && !unicast(a) {
			problem = "not a unicast address"
		}
		if j := slices.Index(nic.IPs, a); problem == "" && j >= 0 {
			problem = "listed twice"
			if s.IPs[j] != v {
				problem += " (" + strconv.Quote(s.IPs[j]) + " is the same address)"
			}
		}
		if problem != "" {
			return nil, fieldError(FieldIPs, i, v, problem)
		}
		nic.IPs = append(nic.IPs, a)
	}
	if s.Bridge != nil {
		if p := linuxNameProblem(*s.Bridge); p != "" {
			return nil, fieldError(FieldBridge, -1, *s.Bridge, p)
		}
		nic.Bridge = *s.Bridge
	}
	for i, g := range s.Groups {
		problem := groupProblem(g, defined)
		if problem == "" && slices.Contains(s.Groups[:i], g) {
			problem = "listed twice"
		}
		if problem != "" {
			return nil, fieldError(FieldGroups, i, g, problem)
		}
	}
	nic.Groups = append([]string{}, s.Groups...)
	for i, p := range s.L2Protocols {
		name, ok := EtherType(p)
		problem := ""
		switch {
		case !ok:
			problem = "not an ethertype; use a name such as LLDP, 802_1Q or PPP_DISC, or a hex number 0x0600..0xffff"
		case slices.Contains(nic.L2Protocols, name):
			problem = "listed twice"
		}
		if problem != "" {
			return nil, fieldError(FieldL2Protocols, i, p, problem)
		}
		nic.L2Protocols = append(nic.L2Protocols, name)
	}
	return nic, nil
}

// AntispoofMAC is the value of antispoof that limits anti-spoofing to the
// MAC address.
const AntispoofMAC = "mac"

// ParseAntispoof reads an antispoof setting as written in TOML or JSON:
// true (MAC and addresses), false (off) or "mac" in any case (the MAC
// alone). ok is false for any other value.
func ParseAntispoof(v any) (on, macOnly, ok bool) {
	switch v := v.(type) {
	case bool:
		return v, false, true
	case string:
		if strings.EqualFold(v, AntispoofMAC) {
			return true, true, true
		}
	}
	return false, false, false
}

// groupProblem checks a reference to a group: its form and, unless
// defined is nil, that it is defined.
func groupProblem(name string, defined func(string) bool) string {
	if !validGroupName(name) {
		return "not a group name (" + nameRule + ")"
	}
	if defined != nil && !defined(name) {
		return "unknown group, there is no groups/" + name + ".toml"
	}
	return ""
}

// IfaceNameProblem says why name cannot be a firewalled interface, "" when
// it can: it must be a Linux interface name (linuxNameProblem) that cannot
// be mistaken for one of vmfw's own chains. The name ends up in iptables
// rules and in the file name of an attachment record.
func IfaceNameProblem(name string) string {
	if p := linuxNameProblem(name); p != "" {
		return p
	}
	for _, prefix := range []string{BaseChainPrefix, GroupChainPrefix} {
		if strings.HasPrefix(name, prefix) {
			return "starts with " + strconv.Quote(prefix) + " like vmfw's own chains and sets"
		}
	}
	return ""
}

// ValidIfaceName reports whether name can be a firewalled interface (see
// IfaceNameProblem).
func ValidIfaceName(name string) bool { return IfaceNameProblem(name) == "" }

// linuxNameProblem says why name is not an interface name the kernel and
// ip(8) take as written, "" when it is: 1 to 15 letters, digits, '_', '.'
// or '-', not "." or "..", not starting with '-' (ip would read an
// option).
func linuxNameProblem(name string) string {
	if len(name) > maxIfName {
		return "not an interface name: " + strconv.Itoa(len(name)) + " characters, Linux allows " + strconv.Itoa(maxIfName)
	}
	if name == "" || name == "." || name == ".." || name[0] == '-' {
		return "not an interface name; use 1 to 15 letters, digits, '_', '.' or '-', not starting with '-'"
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return "not an interface name; use 1 to 15 letters, digits, '_', '.' or '-', not starting with '-'"
		}
	}
	return ""
}

// unicast reports whether a can be an interface's own address.
func unicast(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLoopback() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}
