// Package conntrack is vmfw's only access to the kernel's connection
// tracking table: it reads the tracked flows of the network namespace the
// calling thread runs in and deletes the ones a caller selects, over
// netlink. It decides nothing; the engine asks package policy which flows
// the installed rules no longer allow.
package conntrack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Flow is a tracked connection as the filter table's FORWARD and INPUT
// chains see its first packet: the source as the sender sent it (before
// any SNAT) and the destination it is delivered to (after any DNAT, e.g. a
// port forwarded to a VM).
type Flow struct {
	// Proto is the IP protocol number.
	Proto uint8
	// Src and Dst are the addresses; IPv4 addresses are never IPv4-mapped.
	Src, Dst netip.Addr
	// SPort and DPort are the ports when Ports is true.
	SPort, DPort uint16
	// Ports tells whether SPort and DPort are known: the netlink library
	// decodes them for TCP and UDP only.
	Ports bool
}

// Table is the connection tracking table of the calling thread's network
// namespace. The zero value is ready to use.
type Table struct{}

// dumpRetries bounds the retries of a dump the kernel interrupted because
// the table changed while it was read, which happens on a busy host.
const dumpRetries = 3

// Delete removes every tracked IPv4 and IPv6 flow for which cut returns
// true and returns how many it removed. A flow that ended while the table
// was read counts as removed.
func (Table) Delete(cut func(Flow) bool) (int, error) {
	total := 0
	for _, family := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		n, err := deleteFamily(family, cut)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func deleteFamily(family netlink.InetFamily, cut func(Flow) bool) (int, error) {
	f := filter(cut)
	total := 0
	for try := 0; ; try++ {
		n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, f)
		total += int(n)
		switch {
		case err == nil:
			return total, nil
		case errors.Is(err, netlink.ErrDumpInterrupted) && try < dumpRetries:
			// The matching flows of the partial dump are deleted; read
			// again for the ones it missed.
			continue
		}
		return total, fmt.Errorf("deleting %s conntrack entries: %w", familyName(family), err)
	}
}

func familyName(f netlink.InetFamily) string {
	if f == unix.AF_INET6 {
		return "IPv6"
	}
	return "IPv4"
}

// filter adapts a selection function to the netlink library.
type filter func(Flow) bool

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f filter) MatchConntrackFlow(c *netlink.ConntrackFlow) bool {
	flow, ok := fromNetlink(c)
	return ok && f(flow)
}

// fromNetlink converts a dumped entry. The reply tuple's source is the
// original packet's destination after DNAT, and its source port likewise.
func fromNetlink(c *netlink.ConntrackFlow) (Flow, bool) {
	src, ok1 := addr(c.Forward.SrcIP)
	dst, ok2 := addr(c.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return Flow{}, false
	}
	f := Flow{Proto: c.Forward.Protocol, Src: src, Dst: dst}
	if f.Proto == unix.IPPROTO_TCP || f.Proto == unix.IPPROTO_UDP {
		f.Ports = true
		f.SPort, f.DPort = c.Forward.SrcPort, c.Reverse.SrcPort
	}
	return f, true
}

func addr(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// LocalAddrs returns the addresses of every interface of the calling
// thread's network namespace: connections from them are the host's own.
func (Table) LocalAddrs() ([]netip.Addr, error) {
	list, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("listing local addresses: %w", err)
	}
	if err != nil {
		// Addresses changed while they were listed: list once more.
		if list, err = netlink.AddrList(nil, netlink.FAMILY_ALL); err != nil {
			return nil, fmt.Errorf("listing local addresses: %w", err)
		}
	}
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		if ip, ok := addr(a.IP); ok {
			out = append(out, ip)
		}
	}
	return out, nil
}
