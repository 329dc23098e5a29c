package layout

import (
	"strings"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Names. Every name vmfw gives a chain or an ipset is built by a function
// of this package (TapChain, GroupChain, L2Chain, L2DestChain, SetName,
// AddressSetName, the base chain constants and the dispatch node names)
// and read back by the functions below, so no other package cuts prefixes
// or suffixes off names.

// Prefixes of vmfw's names: its base and dispatch chains, and its group
// chains and sets. No interface may be named with either (an attachment's
// interface name becomes part of a chain name), which is why package
// config, validating interface names, holds them.
const (
	basePrefix  = config.BaseChainPrefix
	groupPrefix = config.GroupChainPrefix
)

// addressSetPrefix starts the ipsets of address sets (as-NAME-v4,
// as-NAME-v6). It differs from groupPrefix, so a set and a group of the
// same name never share an ipset; the longest name, with the 20
// characters names may have and the prefix a rebuilt set takes
// ("vmfw-as-NAME-v4"), is ipset's 31 characters. Address sets make no
// chains, so no interface name needs to avoid it.
const addressSetPrefix = "as-"

// tapChainKinds are the suffixes of a tap's chains (see TapChains,
// L2Chain and L2DestChain).
var tapChainKinds = []string{"out", "in", "lin", "src", "nd", "l2", "l2d"}

// IsBaseChain reports whether c is one of vmfw's base chains: the entry
// chains, the dispatch roots and their node chains.
func IsBaseChain(c Chain) bool { return strings.HasPrefix(string(c), basePrefix) }

// isReservedName reports whether an interface name could be mistaken for
// one of vmfw's own chain or set names (it starts like a base or group
// chain).
func isReservedName(name string) bool {
	return strings.HasPrefix(name, basePrefix) || strings.HasPrefix(name, groupPrefix)
}

// ParseTapChain splits a tap's chain name into the tap and the kind of
// chain ("in", "out", "lin", "src", "nd", "l2" or "l2d"). ok is false for any
// other name.
func ParseTapChain(c Chain) (tap, kind string, ok bool) {
	s := string(c)
	if isReservedName(s) {
		return "", "", false
	}
	i := strings.LastIndexByte(s, '-')
	if i <= 0 {
		return "", "", false
	}
	for _, k := range tapChainKinds {
		if s[i+1:] == k {
			return s[:i], k, true
		}
	}
	return "", "", false
}

// InstalledTap returns the tap whose out chain c is: every installed tap
// has one, in both families.
func InstalledTap(c Chain) (string, bool) {
	tap, kind, ok := ParseTapChain(c)
	return tap, ok && kind == "out"
}

// IsInChain reports whether c is a tap's in chain for forwarded or
// hypervisor-sent packets (TAP-in, TAP-lin): its drops count as dropped in.
func IsInChain(c Chain) bool {
	_, kind, ok := ParseTapChain(c)
	return ok && (kind == "in" || kind == "lin")
}

// ParseGroupChain splits a group chain's name into the group and the
// direction ("in", "out", "lin"). ok is false for any other name.
func ParseGroupChain(c Chain) (group, dir string, ok bool) {
	rest, found := strings.CutPrefix(string(c), groupPrefix)
	i := strings.LastIndexByte(rest, '-')
	if !found || i <= 0 {
		return "", "", false
	}
	return rest[:i], rest[i+1:], true
}

// SetKind tells the two kinds of vmfw's ipsets apart.
type SetKind int

// The kinds of vmfw's ipsets.
const (
	// GroupSet holds a group's members' addresses (sg-GROUP-v4/-v6).
	GroupSet SetKind = iota + 1
	// AddressSet holds an address set's networks (as-SET-v4/-v6).
	AddressSet
)

// ParseSetName splits an ipset name of vmfw's (sg-GROUP-v4, sg-GROUP-v6,
// as-SET-v4, as-SET-v6) into its kind, the group's or set's name and the
// family. The family is read from the end, so dashed names split right.
func ParseSetName(name string) (kind SetKind, owner string, f ruleset.Family, ok bool) {
	if !IsOwnedSet(name) {
		return 0, "", 0, false
	}
	kind = GroupSet
	rest, isAddr := strings.CutPrefix(name, addressSetPrefix)
	if isAddr {
		kind = AddressSet
	} else {
		rest = strings.TrimPrefix(name, groupPrefix)
	}
	owner, fam := rest[:len(rest)-3], rest[len(rest)-2:]
	if fam == "v6" {
		return kind, owner, ruleset.IPv6, true
	}
	return kind, owner, ruleset.IPv4, true
}
