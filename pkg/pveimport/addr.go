package pveimport

import (
	"fmt"
	"math/big"
	"net/netip"
	"regexp"
	"strings"
)

// aliasRef is how pve-firewall tells an alias from an address
// ($ip_alias_pattern with an optional scope).
var aliasRef = regexp.MustCompile(`^(dc/|guest/)?([A-Za-z][A-Za-z0-9\-_]+)$`)

// ipsetRef is "+name" with an optional scope.
var ipsetRef = regexp.MustCompile(`^\+(guest/|dc/|sdn/)?([A-Za-z][A-Za-z0-9\-_]+)$`)

// addrs is a resolved -source or -dest: prefixes, or a set.
type addrs struct {
	prefixes []netip.Prefix
	set      string
	// family is 4 or 6 when the addresses are of one family (a set is
	// of both: 0).
	family int
	// via names the alias or IP set, for comments.
	via string
}

// parsePrefix reads an address or CIDR as iptables and ipset take them:
// host bits of a CIDR are masked (iptables -s 192.0.2.5/24 matches
// 192.0.2.0/24). masked reports that.
func parsePrefix(s string) (p netip.Prefix, masked bool, err error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, false, fmt.Errorf("%q is not an IP address", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), false, nil
	}
	p, err = netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, false, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, false, fmt.Errorf("%q is an IPv4-mapped IPv6 prefix", s)
	}
	m := p.Masked()
	return m, m != p, nil
}

// rangePrefixes returns the smallest list of prefixes that covers exactly
// the addresses from lo to hi: iptables' iprange match as CIDRs.
func rangePrefixes(lo, hi netip.Addr) []netip.Prefix {
	bits := lo.BitLen()
	toInt := func(a netip.Addr) *big.Int { return new(big.Int).SetBytes(a.AsSlice()) }
	toAddr := func(n *big.Int) netip.Addr {
		b := make([]byte, bits/8)
		n.FillBytes(b)
		a, _ := netip.AddrFromSlice(b)
		return a
	}
	cur, end := toInt(lo), toInt(hi)
	one := big.NewInt(1)
	var out []netip.Prefix
	for cur.Cmp(end) <= 0 {
		// The largest block that starts at cur and ends at or before end.
		size := 0
		for size < bits {
			if cur.Bit(size) != 0 {
				break
			}
			last := new(big.Int).Add(cur, new(big.Int).Sub(new(big.Int).Lsh(one, uint(size+1)), one))
			if last.Cmp(end) > 0 {
				break
			}
			size++
		}
		out = append(out, netip.PrefixFrom(toAddr(cur), bits-size))
		cur.Add(cur, new(big.Int).Lsh(one, uint(size)))
	}
	return out
}

// familyOf is 4 or 6.
func familyOf(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// addrList reads an address list as parse_address_list does: addresses and
// CIDRs of one family separated by commas, or a single range a-b. notes
// receives what the reading changed (masked host bits).
func addrList(s string, notes *[]string) (addrs, error) {
	elems := strings.Split(s, ",")
	var out addrs
	for _, e := range elems {
		if e == "" {
			return addrs{}, fmt.Errorf("extraneous commas in list")
		}
	}
	for _, e := range elems {
		var ps []netip.Prefix
		if lo, hi, ok := strings.Cut(e, "-"); ok {
			if len(elems) > 1 {
				return addrs{}, fmt.Errorf("you can't use a range in a list")
			}
			a, err1 := netip.ParseAddr(lo)
			b, err2 := netip.ParseAddr(hi)
			if err1 != nil || err2 != nil || a.Is4() != b.Is4() || b.Less(a) {
				return addrs{}, fmt.Errorf("invalid IP address range %q", e)
			}
			ps = rangePrefixes(a.Unmap(), b.Unmap())
			*notes = append(*notes, fmt.Sprintf("range %s as %d prefixes", e, len(ps)))
		} else {
			p, masked, err := parsePrefix(e)
			if err != nil {
				return addrs{}, fmt.Errorf("invalid IP address: %v", err)
			}
			if masked {
				*notes = append(*notes, fmt.Sprintf("%s matches %s (iptables ignores host bits)", e, p))
			}
			ps = []netip.Prefix{p}
		}
		for _, p := range ps {
			f := familyOf(p.Addr())
			if out.family != 0 && out.family != f {
				return addrs{}, fmt.Errorf("detected mixed ipv4/ipv6 addresses in address list %q", s)
			}
			out.family = f
			out.prefixes = append(out.prefixes, p)
		}
	}
	return out, nil
}
