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
// specific source wins, key by key.
package cni

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/containernetworking/cni/pkg/types"

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
	// "drop" (default), "reject" or "accept".
	PolicyIn string `json:"policyIn,omitempty"`
	// PolicyOut decides traffic from the container that no rule matched:
	// "accept" (default), "drop" or "reject".
	PolicyOut string `json:"policyOut,omitempty"`
	// Log logs packets dropped or rejected by policy (default false).
	Log *bool `json:"log,omitempty"`
	// Antispoof restricts the container's source MAC and addresses to
	// those of prevResult (default true).
	Antispoof *bool `json:"antispoof,omitempty"`
	// DHCP allows DHCP and DHCPv6 client traffic (default false: CNI
	// IPAM assigns addresses without it).
	DHCP *bool `json:"dhcp,omitempty"`
}

// merge overlays the fields set in o onto s.
func (s *Settings) merge(o *Settings) {
	if o == nil {
		return
	}
	if o.Groups != nil {
		s.Groups = append([]string{}, o.Groups...)
	}
	if o.PolicyIn != "" {
		s.PolicyIn = o.PolicyIn
	}
	if o.PolicyOut != "" {
		s.PolicyOut = o.PolicyOut
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
	if c.IPTables != "" && c.IPTables != "nft" && c.IPTables != "legacy" {
		return nil, invalid("iptables %q: must be nft or legacy", c.IPTables)
	}
	return &c, nil
}

// effective returns the attachment's settings: the plugin configuration,
// then args.cni, then runtimeConfig.vmfw, each overriding the previous
// source key by key.
func (c *NetConf) effective() (*Settings, error) {
	s := &Settings{}
	s.merge(&c.Settings)
	if c.Args != nil {
		s.merge(c.Args.CNI)
	}
	if c.RuntimeConfig != nil {
		s.merge(c.RuntimeConfig.VMFW)
	}
	for i, g := range s.Groups {
		if slices.Contains(s.Groups[:i], g) {
			return nil, invalid("group %q listed twice", g)
		}
	}
	for _, p := range []struct{ key, v string }{{"policyIn", s.PolicyIn}, {"policyOut", s.PolicyOut}} {
		switch p.v {
		case "", "accept", "drop", "reject":
		default:
			return nil, invalid("%s %q: must be accept, drop or reject", p.key, p.v)
		}
	}
	return s, nil
}

// spec turns settings into the record's form, defaults filled in.
func (s *Settings) spec(name, mac string, ips []string) *state.Spec {
	sp := &state.Spec{
		Name: name, MAC: mac, IPs: ips,
		Groups:    append([]string{}, s.Groups...),
		PolicyIn:  s.PolicyIn,
		PolicyOut: s.PolicyOut,
		Antispoof: true,
	}
	if sp.PolicyIn == "" {
		sp.PolicyIn = "drop"
	}
	if sp.PolicyOut == "" {
		sp.PolicyOut = "accept"
	}
	if s.Log != nil {
		sp.Log = *s.Log
	}
	if s.Antispoof != nil {
		sp.Antispoof = *s.Antispoof
	}
	if s.DHCP != nil {
		sp.DHCP = *s.DHCP
	}
	return sp
}

// invalid returns a CNI "invalid network configuration" error.
func invalid(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "vmfw: "+fmt.Sprintf(format, args...), "")
}
