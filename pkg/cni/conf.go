// Package cni is vmfw's CNI plugin: with CNI_COMMAND set the vmfw binary
// runs as a chained plugin ("type": "vmfw" after "bridge" in a conflist)
// and firewalls the attachment's host-side interface with the security
// groups of vmfw's configuration directory, through the same engine as
// every other entry point.
//
// ADD takes the host-side interface (the one without a sandbox that is a
// bridge port or a tap), the container's MAC and addresses from prevResult,
// records the attachment in the state directory (so group membership
// survives into later runs), firewalls it and prints prevResult back
// unchanged. DEL removes the record and the chains and is idempotent. CHECK
// reports a missing or drifted chain, jump or ipset member. GC removes the
// attachments of the network not listed as valid. STATUS says whether
// iptables, ip6tables, ipset and bridge netfilter are usable.
//
// Settings come from the plugin configuration, overridden by "args":
// {"cni": {...}} and then by the "vmfw" runtimeConfig capability: the most
// specific source wins, key by key. They, and the interface, MAC and
// addresses of prevResult, are checked by the rules of a VM file's
// interface (config.ValidateIface); a bad value is an "invalid
// configuration" error naming its key, such as args.cni.groups[1].
package cni

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/state"
)

// Error codes vmfw returns beyond the CNI spec's own (7 invalid
// configuration, 11 try again later, 50 plugin not available).
const (
	// ErrApply means the firewall, ipsets or state directory could not be
	// read or changed; nothing was left half-applied.
	ErrApply uint = 100
	// ErrDrift means CHECK found the attachment not firewalled as
	// configured: a chain, jump, ipset member or record is missing or
	// different.
	ErrDrift uint = 101
)

// Settings is what the firewall of one attachment looks like. Every field
// is optional; an absent field keeps the value of a less specific source.
type Settings struct {
	// Groups are the security groups (files groups/NAME.toml of the
	// configuration directory), evaluated in order. An empty list, as
	// opposed to an absent one, clears the groups of a less specific source.
	Groups []string `json:"groups,omitempty"`
	// PolicyIn decides traffic to the container that no rule matched:
	// "drop" (default), "reject" or "accept", in any case.
	PolicyIn string `json:"policyIn,omitempty"`
	// PolicyOut decides traffic from the container that no rule matched:
	// "accept" (default), "drop" or "reject", in any case.
	PolicyOut string `json:"policyOut,omitempty"`
	// Log logs packets dropped or rejected by policy (default false).
	Log *bool `json:"log,omitempty"`
	// Antispoof restricts the container's source MAC and addresses to
	// those of prevResult (default true), or with "mac" its source MAC
	// alone (config.ParseAntispoof).
	Antispoof *Antispoof `json:"antispoof,omitempty"`
	// DHCP allows DHCP and DHCPv6 client traffic (default false: CNI
	// IPAM assigns addresses without it).
	DHCP *bool `json:"dhcp,omitempty"`
}

// Antispoof is an antispoof setting as a CNI configuration writes it:
// true, false or "mac", read as VM files read it (config.ParseAntispoof).
type Antispoof struct {
	// On is true for true and "mac"; MACOnly for "mac" alone.
	On, MACOnly bool
}

// UnmarshalJSON reads true, false or "mac" (in any case).
func (a *Antispoof) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	on, macOnly, ok := config.ParseAntispoof(v)
	if !ok {
		return fmt.Errorf(`antispoof %s: use true, false or "mac"`, b)
	}
	a.On, a.MACOnly = on, macOnly
	return nil
}

// MarshalJSON writes the setting as it is read.
func (a Antispoof) MarshalJSON() ([]byte, error) {
	if a.MACOnly {
		return []byte(`"mac"`), nil
	}
	return json.Marshal(a.On)
}

// merge overlays the fields set in o onto s, noting in from that source
// (a key prefix: "", "args.cni." or "runtimeConfig.vmfw.") set them.
func (s *Settings) merge(o *Settings, source string, from map[string]string) {
	if o == nil {
		return
	}
	if o.Groups != nil {
		s.Groups = append([]string{}, o.Groups...)
		from["groups"] = source
	}
	if o.PolicyIn != "" {
		s.PolicyIn = o.PolicyIn
		from["policyIn"] = source
	}
	if o.PolicyOut != "" {
		s.PolicyOut = o.PolicyOut
		from["policyOut"] = source
	}
	if o.Log != nil {
		s.Log = o.Log
	}
	if o.Antispoof != nil {
		s.Antispoof = o.Antispoof
	}
	if o.DHCP != nil {
		s.DHCP = o.DHCP
	}
}

// NetConf is the plugin's configuration as the runtime passes it on stdin.
type NetConf struct {
	types.PluginConf
	// ConfigDir is vmfw's configuration directory, where the groups are
	// defined. Default $VMFW_CONFIG_DIR or /etc/vmfw.
	ConfigDir string `json:"configDir,omitempty"`
	// StateDir is where attachment records are kept. Default
	// $VMFW_STATE_DIR or /var/lib/vmfw.
	StateDir string `json:"stateDir,omitempty"`
	// Backend is vmfw's backend, "iptables" or "nftables", as --backend
	// chooses it. Default $VMFW_BACKEND, then vmfw.toml's backend, then
	// iptables.
	Backend string `json:"backend,omitempty"`
	// IPTables is the iptables backend, "nft" or "legacy". Default
	// $VMFW_IPTABLES or whatever the host's iptables uses.
	IPTables string `json:"iptables,omitempty"`
	// Settings are the network's defaults for every attachment.
	Settings
	// Args carries per-attachment overrides in "args": {"cni": {...}}.
	Args *struct {
		CNI *Settings `json:"cni,omitempty"`
	} `json:"args,omitempty"`
	// RuntimeConfig carries the runtime's per-attachment overrides for the
	// "vmfw" capability, which take precedence over everything else.
	RuntimeConfig *struct {
		VMFW *Settings `json:"vmfw,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// parseConf decodes the plugin configuration; errors are CNI errors with
// code 7 (invalid configuration) or 6 (decoding failure).
func parseConf(stdin []byte) (*NetConf, error) {
	var c NetConf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "vmfw: parsing the plugin configuration", err.Error())
	}
	if c.Backend != "" && c.Backend != config.BackendIPTables && c.Backend != config.BackendNFTables {
		return nil, invalid("backend %q: must be iptables or nftables", c.Backend)
	}
	if c.IPTables != "" && c.IPTables != "nft" && c.IPTables != "legacy" {
		return nil, invalid("iptables %q: must be nft or legacy", c.IPTables)
	}
	return &c, nil
}

// merged is an attachment's settings after merging its sources, with
// the source of each so that a bad value is named where it was written.
type merged struct {
	Settings
	// from maps a key (groups, policyIn, policyOut) to the prefix of the
	// source that set it: "", "args.cni." or "runtimeConfig.vmfw.".
	from map[string]string
}

// effective returns the attachment's settings: the plugin configuration,
// then args.cni, then runtimeConfig.vmfw, each overriding the previous
// source key by key.
func (c *NetConf) effective() *merged {
	m := &merged{from: map[string]string{}}
	m.merge(&c.Settings, "", m.from)
	if c.Args != nil {
		m.merge(c.Args.CNI, "args.cni.", m.from)
	}
	if c.RuntimeConfig != nil {
		m.merge(c.RuntimeConfig.VMFW, "runtimeConfig.vmfw.", m.from)
	}
	return m
}

// settings returns the attachment's settings for validation, defaults
// filled in: antispoof on, DHCP and log off.
func (m *merged) settings(label string, a *attachment) *config.IfaceSettings {
	return &config.IfaceSettings{
		Iface: a.host, Label: label,
		PolicyIn: m.PolicyIn, PolicyOut: m.PolicyOut,
		Log:              m.Log != nil && *m.Log,
		MAC:              a.mac,
		IPs:              a.ips,
		Groups:           m.Groups,
		Antispoof:        m.Antispoof == nil || m.Antispoof.On,
		AntispoofMACOnly: m.Antispoof != nil && m.Antispoof.MACOnly,
		DHCP:             m.DHCP != nil && *m.DHCP,
	}
}

// validate checks the settings and what prevResult says of the attachment
// by the rules VM files and attachment records follow
// (config.ValidateIface); a bad value is an "invalid configuration" error
// naming it by its key. defined is as for config.ValidateIface.
func (m *merged) validate(label string, a *attachment, defined func(string) bool) (*config.NIC, error) {
	nic, fe := config.ValidateIface(m.settings(label, a), defined)
	if fe != nil {
		return nil, m.invalid(a, fe)
	}
	return nic, nil
}

// invalid words fe as an "invalid configuration" error with the key the
// setting has in the plugin configuration or prevResult.
func (m *merged) invalid(a *attachment, fe *config.FieldError) *types.Error {
	var key string
	switch fe.Field {
	case config.FieldIface:
		key = a.hostKey
	case config.FieldMAC:
		key = a.macKey
	case config.FieldIPs:
		key = "prevResult.ips"
		if fe.Index >= 0 && fe.Index < len(a.ipKeys) {
			key = a.ipKeys[fe.Index]
		}
	case config.FieldLabel:
		key = "name"
	case config.FieldPolicyIn:
		key = m.from["policyIn"] + "policyIn"
	case config.FieldPolicyOut:
		key = m.from["policyOut"] + "policyOut"
	case config.FieldGroups:
		key = m.from["groups"] + "groups[" + strconv.Itoa(fe.Index) + "]"
	default:
		key = string(fe.Field)
	}
	return invalid("%s", fe.Render(key))
}

// label names an attachment in status output and logs: NETWORK/CONTAINER
// with the container id cut to 12 characters, as container runtimes
// show it, and the whole cut to what a label may be.
func label(network, containerID string) string {
	if len(containerID) > 12 {
		containerID = containerID[:12]
	}
	l := network + "/" + containerID
	if len(l) > config.MaxLabel {
		l = l[:config.MaxLabel]
	}
	return l
}

// spec turns validated settings into the record's form.
func spec(nic *config.NIC) *state.Spec {
	sp := &state.Spec{
		Name:             nic.VM.Name,
		Groups:           append([]string{}, nic.Groups...),
		PolicyIn:         string(nic.VM.PolicyIn),
		PolicyOut:        string(nic.VM.PolicyOut),
		Log:              nic.VM.Log,
		Antispoof:        nic.Antispoof,
		AntispoofMACOnly: nic.AntispoofMACOnly,
		DHCP:             nic.DHCP,
	}
	if nic.MAC != nil {
		sp.MAC = nic.MAC.String()
	}
	for _, ip := range nic.IPs {
		sp.IPs = append(sp.IPs, ip.String())
	}
	return sp
}

// invalid returns a CNI "invalid network configuration" error.
func invalid(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "vmfw: "+fmt.Sprintf(format, args...), "")
}
