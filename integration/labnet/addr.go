package labnet

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// docPrefixes are the only ranges a lab assigns or probes: the IPv4
// documentation networks (RFC 5737) and the IPv6 documentation prefix
// (RFC 3849).
var docPrefixes = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("2001:db8::/32"),
}

// IsDocAddr reports whether a is in one of the documentation ranges a lab
// may use: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32.
func IsDocAddr(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range docPrefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// HostPort joins an address and a port into the target the probes take,
// with brackets around an IPv6 address ("[2001:db8::10]:22").
func HostPort(addr string, port int) string { return net.JoinHostPort(addr, strconv.Itoa(port)) }

// parseIfaceAddr parses an interface address such as "192.0.2.10/24" and
// checks that it is a documentation address.
func parseIfaceAddr(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("address %q: want ADDR/PREFIXLEN: %w", s, err)
	}
	if !IsDocAddr(p.Addr()) {
		return netip.Prefix{}, fmt.Errorf("address %q is outside the documentation ranges a lab may use", s)
	}
	return p, nil
}

// parseTarget parses a probe destination "ip:port" (IPv6 in brackets) and
// checks that it is a documentation or loopback address.
func parseTarget(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("probe target %q: want IP:PORT: %w", s, err)
	}
	if err := checkTarget(ap.Addr()); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// parseProbeAddr parses an address without a port that a probe sends to
// or from (what names it in an error: "ping target") and checks it as
// parseTarget does.
func parseProbeAddr(what, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s %q: %w", what, s, err)
	}
	a = a.Unmap()
	return a, checkTarget(a)
}

func checkTarget(a netip.Addr) error {
	if a.Zone() != "" {
		return fmt.Errorf("probe target %s: zoned addresses are not supported", a)
	}
	if !IsDocAddr(a) && !a.IsLoopback() {
		return fmt.Errorf("probe target %s is outside the documentation ranges a lab may use", a)
	}
	return nil
}
