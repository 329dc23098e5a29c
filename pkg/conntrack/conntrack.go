// Package conntrack is vmfw's only access to the kernel's connection
// tracking table: it reads the tracked flows of the network namespace the
// calling thread runs in and deletes the ones a caller selects, over
// netlink. It decides nothing; the engine asks package policy which flows
// the installed rules no longer allow.
package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/internal/nlmsg"
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
	total, err := untilComplete(func() (int, error) {
		n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, f)
		return int(n), err
	})
	if err != nil {
		return total, fmt.Errorf("deleting %s conntrack entries: %w", familyName(family), err)
	}
	return total, nil
}

// untilComplete calls del again while the kernel interrupted its dump, at
// most dumpRetries more times, and adds up what the calls deleted: the
// matching flows of a partial dump are deleted, and reading again finds
// the ones it missed.
func untilComplete(del func() (int, error)) (int, error) {
	total := 0
	for try := 0; ; try++ {
		n, err := del()
		total += n
		if errors.Is(err, netlink.ErrDumpInterrupted) && try < dumpRetries {
			continue
		}
		return total, err
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

// ctnetlink's dump filter (linux/netfilter/nfnetlink_conntrack.h, Linux
// 5.8), which vishvananda/netlink does not write.
const (
	ctaFilter           = 25     // CTA_FILTER
	ctaFilterOrigFlags  = 1      // CTA_FILTER_ORIG_FLAGS
	ctaFilterReplyFlags = 2      // CTA_FILTER_REPLY_FLAGS
	ctaFilterFlagIPSrc  = 1 << 0 // CTA_FILTER_FLAG(CTA_IP_SRC)
)

// DeleteAt is Delete for the flows from or to one of addrs: those whose
// original source, or whose reply's source (the original destination
// after any DNAT, Flow.Dst), is one of them. On a hypervisor tracking
// hundreds of thousands of flows, Delete copies and decodes every one of
// them for the few of a tap; for an IPv4 address the kernel can select
// them instead (ctnetlink's CTA_FILTER, Linux 5.8), two dumps an address,
// which DeleteAt does when that costs less (askKernel). A kernel without
// the filter answers with every flow, and those of other addresses are
// left alone all the same. IPv6 addresses are looked for in one dump of
// the IPv6 table: the kernel's filter inverts its IPv6 address match
// (ctnetlink_filter_match_tuple tests !ipv6_addr_cmp, on this project's
// 6.18 kernel too: a dump for a flow's original source returns every flow
// but that one), which would hide exactly the flows asked for.
func (Table) DeleteAt(addrs []netip.Addr, cut func(Flow) bool) (int, error) {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		if a = a.Unmap(); a.Is6() {
			v6 = append(v6, a)
		} else {
			v4 = append(v4, a)
		}
	}
	if !askKernel(len(v4), len(v6) > 0, procInt("nf_conntrack_count"), procInt("nf_conntrack_buckets")) {
		return Table{}.Delete(fromOrTo(append(v4, v6...), cut))
	}
	return deleteAsked(v4, v6, cut)
}

// fromOrTo is cut for the flows whose source or destination is one of
// addrs, false for any other.
func fromOrTo(addrs []netip.Addr, cut func(Flow) bool) func(Flow) bool {
	return func(f Flow) bool {
		return (slices.Contains(addrs, f.Src) || slices.Contains(addrs, f.Dst)) && cut(f)
	}
}

// deleteAsked is DeleteAt asking the kernel for the flows of the IPv4
// addresses v4, and reading the IPv6 table for those of v6.
func deleteAsked(v4, v6 []netip.Addr, cut func(Flow) bool) (int, error) {
	// A flow between two of addrs is dumped twice: deleted once.
	done := map[uint32]bool{}
	total := 0
	for _, a := range v4 {
		for _, dir := range []int{nl.CTA_TUPLE_ORIG, nl.CTA_TUPLE_REPLY} {
			mine := func(f Flow) bool {
				return dir == nl.CTA_TUPLE_ORIG && f.Src == a || dir == nl.CTA_TUPLE_REPLY && f.Dst == a
			}
			n, err := untilComplete(func() (int, error) {
				return deleteSelected(a, dir, func(f Flow) bool { return mine(f) && cut(f) }, done)
			})
			total += n
			if err != nil {
				return total, fmt.Errorf("deleting conntrack entries of %s: %w", a, err)
			}
		}
	}
	if len(v6) > 0 {
		n, err := deleteFamily(unix.AF_INET6, fromOrTo(v6, cut))
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// The costs askKernel weighs, from BenchmarkCut on this project's
// machine: a dump walks the whole connection hash, about 38 ns a bucket
// (10 ms at the 262,144 buckets of a 24 GiB host) however few flows it
// returns, and a flow copied out and decoded costs about 4 µs more than
// one the kernel's filter passes over.
const (
	walkNSPerBucket = 38
	savedNSPerFlow  = 4000
)

// askKernel reports whether asking the kernel for the flows of v4 IPv4
// addresses (two filtered walks each) and, with v6, reading the IPv6 table
// costs less than reading both tables whole (two walks, every flow copied
// out), with flows tracked in a hash of buckets. When either count is
// unknown (-1) it says no: the whole read is what every cut did before.
func askKernel(v4 int, v6 bool, flows, buckets int) bool {
	if flows < 0 || buckets < 0 {
		return false
	}
	walks := 2 * v4
	if v6 {
		walks++
	}
	return (walks-2)*buckets*walkNSPerBucket < flows*savedNSPerFlow
}

// procInt reads the number in /proc/sys/net/netfilter/name, of the
// network namespace of the calling thread (the one that opens the file);
// -1 when it cannot.
func procInt(name string) int {
	b, err := os.ReadFile("/proc/sys/net/netfilter/" + name)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

// deleteSelected dumps the flows whose dir tuple's source is the IPv4
// address a and deletes those cut selects and done does not hold, adding
// their ids to done.
func deleteSelected(a netip.Addr, dir int, cut func(Flow) bool, done map[uint32]bool) (int, error) {
	const family = unix.AF_INET
	req := request(nl.IPCTNL_MSG_CT_GET, unix.NLM_F_DUMP, family)
	tuple := nl.NewRtAttr(dir|unix.NLA_F_NESTED, nil)
	tuple.AddRtAttr(nl.CTA_TUPLE_IP|unix.NLA_F_NESTED, nil).AddRtAttr(nl.CTA_IP_V4_SRC, a.AsSlice())
	req.AddData(tuple)
	flags := ctaFilterOrigFlags
	if dir == nl.CTA_TUPLE_REPLY {
		flags = ctaFilterReplyFlags
	}
	filter := nl.NewRtAttr(ctaFilter|unix.NLA_F_NESTED, nil)
	filter.AddRtAttr(flags, nl.Uint32Attr(ctaFilterFlagIPSrc))
	req.AddData(filter)
	msgs, dumpErr := req.Execute(unix.NETLINK_NETFILTER, 0)
	if dumpErr != nil && !errors.Is(dumpErr, netlink.ErrDumpInterrupted) {
		return 0, dumpErr
	}
	n := 0
	for _, msg := range msgs {
		if len(msg) < 4 {
			continue
		}
		f, id, ok := decodeFlow(msg[4:])
		if !ok || done[id] || !cut(f) {
			continue
		}
		del := request(nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK, family)
		del.AddRawData(msg[4:])
		if _, err := del.Execute(unix.NETLINK_NETFILTER, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return n, err
		}
		done[id] = true
		n++
	}
	return n, dumpErr
}

// request starts a ctnetlink request of type op for family.
func request(op, flags int, family uint8) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(int(netlink.ConntrackTable)<<8|op, flags)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: family, Version: nl.NFNETLINK_V0})
	return req
}

// decodeFlow reads a dumped entry's attributes as fromNetlink reads the
// library's decoding of them, and its conntrack id.
func decodeFlow(b []byte) (f Flow, id uint32, ok bool) {
	var orig, reply tuple
	nlmsg.Attrs(b, func(typ uint16, val []byte) {
		switch typ {
		case nl.CTA_TUPLE_ORIG:
			orig = decodeTuple(val)
		case nl.CTA_TUPLE_REPLY:
			reply = decodeTuple(val)
		case nl.CTA_ID:
			if len(val) == 4 {
				id = binary.BigEndian.Uint32(val)
			}
		}
	})
	if !orig.src.IsValid() || !reply.src.IsValid() {
		return Flow{}, 0, false
	}
	f = Flow{Proto: orig.proto, Src: orig.src, Dst: reply.src}
	if f.Proto == unix.IPPROTO_TCP || f.Proto == unix.IPPROTO_UDP {
		f.Ports = true
		f.SPort, f.DPort = orig.sport, reply.sport
	}
	return f, id, true
}

// tuple is what a flow needs of one direction's tuple.
type tuple struct {
	src   netip.Addr
	proto uint8
	sport uint16
}

func decodeTuple(b []byte) (t tuple) {
	nlmsg.Attrs(b, func(typ uint16, val []byte) {
		switch typ {
		case nl.CTA_TUPLE_IP:
			nlmsg.Attrs(val, func(typ uint16, ip []byte) {
				if typ == nl.CTA_IP_V4_SRC && len(ip) == net.IPv4len || typ == nl.CTA_IP_V6_SRC && len(ip) == net.IPv6len {
					a, _ := netip.AddrFromSlice(ip)
					t.src = a.Unmap()
				}
			})
		case nl.CTA_TUPLE_PROTO:
			nlmsg.Attrs(val, func(typ uint16, v []byte) {
				switch {
				case typ == nl.CTA_PROTO_NUM && len(v) == 1:
					t.proto = v[0]
				case typ == nl.CTA_PROTO_SRC_PORT && len(v) == 2:
					t.sport = binary.BigEndian.Uint16(v)
				}
			})
		}
	})
	return t
}
