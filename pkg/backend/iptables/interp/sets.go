package interp

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
)

// NetSet is a hash:net ipset, an address set's (docs/design.md, "Address
// sets"), as the interpreter looks addresses up in it: each member's
// prefix, true for a nomatch member.
type NetSet map[netip.Prefix]bool

// Has reports whether a matches the set as the kernel's hash:net lookup
// decides: it tries the prefix lengths from the longest, and the first
// member found decides, a nomatch one by not matching.
func (s NetSet) Has(a netip.Addr) bool {
	for bits := a.BitLen(); bits > 0; bits-- {
		p, _ := a.Prefix(bits)
		if nomatch, ok := s[p]; ok {
			return !nomatch
		}
	}
	return false
}

// member writes a member as ipset save prints it.
func (s NetSet) member(p netip.Prefix) string {
	if s[p] {
		return layout.SetMember(p) + layout.NoMatch
	}
	return layout.SetMember(p)
}

// ParseNetMember reads a member of a hash:net set as ipset save prints
// it (layout.SetMember, followed by layout.NoMatch for a nomatch member).
func ParseNetMember(m string) (p netip.Prefix, nomatch bool, err error) {
	bare, nomatch := strings.CutSuffix(m, layout.NoMatch)
	if a, err := netip.ParseAddr(bare); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nomatch, nil
	}
	if p, err = netip.ParsePrefix(bare); err != nil {
		return netip.Prefix{}, false, fmt.Errorf("%q is not an address or prefix", m)
	}
	return p, nomatch, nil
}

// Sets splits laid-out ipsets into what a Kernel holds: the members of
// the hash:ip sets (groups') and the hash:net sets (address sets').
func Sets(sets []layout.Set) (addrs map[string]map[netip.Addr]bool, nets map[string]NetSet) {
	addrs, nets = map[string]map[netip.Addr]bool{}, map[string]NetSet{}
	for _, s := range sets {
		if s.Type == layout.HashNet {
			n := NetSet{}
			for _, m := range s.Members {
				if p, nomatch, err := ParseNetMember(m); err == nil {
					n[p] = nomatch
				}
			}
			nets[s.Name] = n
			continue
		}
		m := map[netip.Addr]bool{}
		for _, a := range s.Members {
			if ip, err := netip.ParseAddr(a); err == nil {
				m[ip] = true
			}
		}
		addrs[s.Name] = m
	}
	return addrs, nets
}
