package layout

import (
	"crypto/sha256"
	"encoding/hex"
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

// Maps of the bridge table from an enabled interface that lists groups
// to the jump into its group list's chain (ListChain), one per direction:
// the dispatch that takes an interface to its groups in its order.
const (
	MapListsOut = "gl-out"
	MapListsIn  = "gl-in"
)

// ListChainPrefix starts the name of every group list's chain.
const ListChainPrefix = "gl-"

// ListChain names the chain that evaluates the groups of a list in its
// order, for direction dir (in, out): "gl-" and the list's fingerprint,
// then the direction. Every interface listing the same groups in the
// same order shares it. The fingerprint is the first 64 bits of a
// SHA-256 of the names: two of 10,000 distinct lists share one with a
// chance of about 3 in 10^12, and the names are bounded by nf_tables'
// 256 bytes whatever the list's length.
func ListChain(groups []string, dir config.Direction) string {
	return ListChainPrefix + ListKey(groups) + "-" + string(dir)
}

// ListKey is a group list's fingerprint, the part of ListChain that names
// the list.
func ListKey(groups []string) string {
	h := sha256.New()
	for _, g := range groups {
		h.Write([]byte(g))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// ParseListChain splits a list chain's name into the list's fingerprint
// and the direction.
func ParseListChain(name string) (key string, dir config.Direction, ok bool) {
	return parseDirected(name, ListChainPrefix)
}

// parseDirected splits the name of a chain named prefix, what it is for
// and a direction ("-in", "-out") into those two.
func parseDirected(name, prefix string) (string, config.Direction, bool) {
	rest, found := strings.CutPrefix(name, prefix)
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

// MemberSet names the set of group's members' addresses of family f.
func MemberSet(group string, f ruleset.Family) string {
	if f == ruleset.IPv6 {
		return config.GroupChainPrefix + group + "-v6"
	}
	return config.GroupChainPrefix + group + "-v4"
}

// ParseGroupChain splits a group chain's name into group and direction.
func ParseGroupChain(name string) (group string, dir config.Direction, ok bool) {
	return parseDirected(name, config.GroupChainPrefix)
}
