package layout

import (
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// TableName is the name of both of vmfw's tables (bridge and inet).
const TableName = "vmfw"

// Chains of the bridge table.
const (
	ChainPrerouting  = "prerouting"
	ChainForward     = "forward"
	ChainInput       = "input"
	ChainPostrouting = "postrouting"
	ChainRejectGuard = "reject-guard"
	ChainL2          = "l2"
	ChainOut         = "out"
	ChainSpoof       = "out-spoof"
	ChainIn          = "in"
	ChainDropOut     = "drop-out"
	ChainDropIn      = "drop-in"
	ChainRejectOut   = "reject-out"
	ChainRejectIn    = "reject-in"
	ChainPolicyOut   = "policy-out"
	ChainPolicyIn    = "policy-in"
	ChainPolRejOut   = "policy-out-reject"
	ChainPolRejIn    = "policy-in-reject"
)

// Chains of the inet table.
const (
	ChainState  = "state"
	ChainReject = "reject-marked"
	ChainRouted = "routed"
	ChainOutput = "output"
)

// Per-interface sets of the bridge table. Each holds interface names (or
// names concatenated with an address), so attaching or detaching a tap
// changes elements only (docs/nftables.md).
const (
	// SetPorts holds every attached interface: what Installed reads.
	SetPorts    = "ports"
	SetDisabled = "disabled"
	// SetDropInvalid holds the disabled interfaces with drop_invalid:
	// their packets marked invalid are dropped before "vm disabled".
	SetDropInvalid = "drop-invalid"
	SetAntispoof   = "antispoof"
	// SetAntispoofMAC holds the interfaces with antispoof = "mac": the
	// l2 chain checks their source MAC and nothing else.
	SetAntispoofMAC = "antispoof-mac"
	SetHasMAC       = "has-mac"
	SetMACs         = "macs"
	SetSrc4         = "src4"
	SetSrc6         = "src6"
	SetL2Proto      = "l2proto"
	SetDHCP         = "dhcp"
	// SetNoNDP holds the interfaces with ndp = false, whose neighbour
	// discovery meets their groups: usually empty, so that the common
	// case adds no element per interface.
	SetNoNDP     = "no-ndp"
	SetOutAccept = "policy-out-accept"
	SetOutReject = "policy-out-reject"
	SetInAccept  = "policy-in-accept"
	SetInReject  = "policy-in-reject"
	SetLogOut    = "log-out"
	SetLogIn     = "log-in"
	// SetDropsOut and SetDropsIn give each enabled interface a counter
	// of what its own rules dropped or rejected (status).
	SetDropsOut = "drops-out"
	SetDropsIn  = "drops-in"
)

// Sets of the inet table: every attached interface's addresses, which
// routed and host-sent packets to a VM are recognised by.
const (
	SetVM4 = "vm4"
	SetVM6 = "vm6"
)

// GroupChain names a group's chain for direction dir (in, out).
func GroupChain(group string, dir config.Direction) string {
	return config.GroupChainPrefix + group + "-" + string(dir)
}

// PositionSet names the set of interfaces listing group at position k
// (from 0) of their groups.
func PositionSet(group string, k int) string {
	return config.GroupChainPrefix + group + "-p" + strconv.Itoa(k)
}

// MemberSet names the set of group's members' addresses of family f.
func MemberSet(group string, f ruleset.Family) string {
	if f == ruleset.IPv6 {
		return config.GroupChainPrefix + group + "-v6"
	}
	return config.GroupChainPrefix + group + "-v4"
}

// ParsePositionSet splits a position set's name into group and position.
func ParsePositionSet(name string) (group string, k int, ok bool) {
	rest, found := strings.CutPrefix(name, config.GroupChainPrefix)
	i := strings.LastIndex(rest, "-p")
	if !found || i <= 0 {
		return "", 0, false
	}
	k, err := strconv.Atoi(rest[i+2:])
	if err != nil || k < 0 {
		return "", 0, false
	}
	return rest[:i], k, true
}

// ParseGroupChain splits a group chain's name into group and direction.
func ParseGroupChain(name string) (group string, dir config.Direction, ok bool) {
	rest, found := strings.CutPrefix(name, config.GroupChainPrefix)
	i := strings.LastIndexByte(rest, '-')
	if !found || i <= 0 {
		return "", "", false
	}
	d := config.Direction(rest[i+1:])
	if d != config.In && d != config.Out {
		return "", "", false
	}
	return rest[:i], d, true
}
