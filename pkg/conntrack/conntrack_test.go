package conntrack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inNewNetns runs fn on a thread of its own in a new, empty network
// namespace, so the test never reads or changes the conntrack table of the
// namespace it was started in. The thread is never returned to the
// runtime: it exits with its goroutine.
func inNewNetns(t testing.TB, fn func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace of its own)")
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	err := <-done
	var skip skipError
	if errors.As(err, &skip) {
		t.Skip(skip.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
}

// skipError makes inNewNetns skip the test: t.Skip may only be called on
// the test's own goroutine.
type skipError struct{ error }

func entry(proto uint8, src, dst, replySrc string, sport, dport, replySport uint16) *netlink.ConntrackFlow {
	f := &netlink.ConntrackFlow{FamilyType: unix.AF_INET, TimeOut: 100}
	if netip.MustParseAddr(src).Is6() {
		f.FamilyType = unix.AF_INET6
	}
	// The kernel reads as many bytes as the family's addresses have.
	ip := func(s string) net.IP { return netip.MustParseAddr(s).AsSlice() }
	f.Forward = netlink.IPTuple{Protocol: proto, SrcIP: ip(src), DstIP: ip(dst), SrcPort: sport, DstPort: dport}
	f.Reverse = netlink.IPTuple{Protocol: proto, SrcIP: ip(replySrc), DstIP: ip(src), SrcPort: replySport, DstPort: sport}
	if proto == unix.IPPROTO_TCP {
		f.ProtoInfo = &netlink.ProtoInfoTCP{State: 3} // established
	}
	return f
}

// create adds entries to the table, or says to skip the test.
func create(entries []*netlink.ConntrackFlow) error {
	for _, e := range entries {
		if err := netlink.ConntrackCreate(netlink.ConntrackTable, netlink.InetFamily(e.FamilyType), e); err != nil {
			return skipError{fmt.Errorf("creating conntrack entries (no ctnetlink?): %w", err)}
		}
	}
	return nil
}

// expectLeft fails t unless the entries left in the table have the
// original source ports want, in order.
func expectLeft(t *testing.T, want ...uint16) error {
	var left []uint16
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		list, err := netlink.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			return err
		}
		for _, f := range list {
			left = append(left, f.Forward.SrcPort)
		}
	}
	slices.Sort(left)
	if !slices.Equal(left, want) {
		t.Errorf("entries left (by source port): %v, want %v", left, want)
	}
	return nil
}

// TestDeleteSelectsByForwardView creates entries in a fresh namespace and
// deletes some: the selection sees the destination after DNAT, ports for
// TCP and UDP only, and only the selected entries go.
func TestDeleteSelectsByForwardView(t *testing.T) {
	inNewNetns(t, func() error {
		entries := []*netlink.ConntrackFlow{
			entry(unix.IPPROTO_TCP, "192.0.2.10", "192.0.2.20", "192.0.2.20", 40000, 22, 22),
			entry(unix.IPPROTO_TCP, "192.0.2.10", "192.0.2.20", "192.0.2.20", 40001, 80, 80),
			// A port forward: sent to 198.51.100.1:8080, delivered to 192.0.2.30:80.
			entry(unix.IPPROTO_TCP, "203.0.113.5", "198.51.100.1", "192.0.2.30", 40002, 8080, 80),
			entry(unix.IPPROTO_UDP, "2001:db8::10", "2001:db8::20", "2001:db8::20", 5353, 53, 53),
			entry(unix.IPPROTO_SCTP, "192.0.2.10", "192.0.2.20", "192.0.2.20", 5000, 9899, 9899),
		}
		if err := create(entries); err != nil {
			return err
		}
		var seen []Flow
		n, err := Table{}.Delete(func(f Flow) bool {
			seen = append(seen, f)
			return f.DPort == 22 || f.Dst == netip.MustParseAddr("192.0.2.30") || f.Proto == unix.IPPROTO_SCTP
		})
		if err != nil {
			return err
		}
		if n != 3 {
			t.Errorf("deleted %d entries, want 3", n)
		}
		want := []Flow{
			{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddr("192.0.2.10"), Dst: netip.MustParseAddr("192.0.2.20"), SPort: 40000, DPort: 22, Ports: true},
			{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddr("203.0.113.5"), Dst: netip.MustParseAddr("192.0.2.30"), SPort: 40002, DPort: 80, Ports: true},
			{Proto: unix.IPPROTO_UDP, Src: netip.MustParseAddr("2001:db8::10"), Dst: netip.MustParseAddr("2001:db8::20"), SPort: 5353, DPort: 53, Ports: true},
			{Proto: unix.IPPROTO_SCTP, Src: netip.MustParseAddr("192.0.2.10"), Dst: netip.MustParseAddr("192.0.2.20")},
		}
		for _, w := range want {
			if !slices.Contains(seen, w) {
				t.Errorf("selection never saw %+v; saw %+v", w, seen)
			}
		}
		return expectLeft(t, 5353, 40001)
	})
}

// TestLocalAddrs lists the addresses of a namespace with one address.
func TestLocalAddrs(t *testing.T) {
	inNewNetns(t, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("192.0.2.1/32")
		if err := netlink.AddrAdd(lo, a); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		addrs, err := Table{}.LocalAddrs()
		if err != nil {
			return err
		}
		if !slices.Contains(addrs, netip.MustParseAddr("192.0.2.1")) {
			t.Errorf("LocalAddrs = %v, want 192.0.2.1 among them", addrs)
		}
		return nil
	})
}

// TestDeleteAtSelectsByAddress: only the flows from or to the addresses
// given reach the selection (by original source, or by the destination
// after DNAT), a flow between two of them is deleted once, and the
// others stay whatever the selection would say of them: whether the
// table is read whole (as DeleteAt does for a table this small) or the
// kernel is asked (deleteAsked).
func TestDeleteAtSelectsByAddress(t *testing.T) {
	for name, del := range map[string]func([]netip.Addr, func(Flow) bool) (int, error){
		"DeleteAt": Table{}.DeleteAt,
		"asked": func(addrs []netip.Addr, cut func(Flow) bool) (int, error) {
			return deleteAsked(addrs[:2], addrs[2:], cut)
		},
	} {
		t.Run(name, func(t *testing.T) { deletesByAddress(t, del) })
	}
}

func deletesByAddress(t *testing.T, del func([]netip.Addr, func(Flow) bool) (int, error)) {
	inNewNetns(t, func() error {
		entries := []*netlink.ConntrackFlow{
			entry(unix.IPPROTO_TCP, "192.0.2.10", "192.0.2.20", "192.0.2.20", 40000, 22, 22),
			entry(unix.IPPROTO_TCP, "192.0.2.10", "192.0.2.21", "192.0.2.21", 40001, 22, 22),
			// A port forward: sent to 198.51.100.1:8080, delivered to 192.0.2.30:80.
			entry(unix.IPPROTO_TCP, "203.0.113.5", "198.51.100.1", "192.0.2.30", 40002, 8080, 80),
			// Between two of the addresses.
			entry(unix.IPPROTO_UDP, "192.0.2.20", "192.0.2.30", "192.0.2.30", 40003, 53, 53),
			entry(unix.IPPROTO_UDP, "2001:db8::10", "2001:db8::20", "2001:db8::20", 5353, 53, 53),
			entry(unix.IPPROTO_UDP, "2001:db8::11", "2001:db8::21", "2001:db8::21", 5354, 53, 53),
		}
		if err := create(entries); err != nil {
			return err
		}
		addrs := []netip.Addr{netip.MustParseAddr("192.0.2.20"), netip.MustParseAddr("192.0.2.30"), netip.MustParseAddr("2001:db8::20")}
		var seen []uint16
		n, err := del(addrs, func(f Flow) bool {
			if !slices.Contains(addrs, f.Src) && !slices.Contains(addrs, f.Dst) {
				t.Errorf("the selection saw %+v, of none of the addresses", f)
			}
			seen = append(seen, f.SPort)
			return true
		})
		if err != nil {
			return err
		}
		if n != 4 {
			t.Errorf("deleted %d entries, want 4", n)
		}
		slices.Sort(seen)
		if seen = slices.Compact(seen); !slices.Equal(seen, []uint16{5353, 40000, 40002, 40003}) {
			t.Errorf("the selection saw the flows of source ports %v, want [5353 40000 40002 40003]", seen)
		}
		return expectLeft(t, 5354, 40001)
	})
}

// BenchmarkCut reads a table of 1 and then 20,001 IPv4 flows for the
// flows of one IPv4 and one IPv6 address, as the cut of a dual-stack
// tap's ifup does: whole (Delete, what every cut did) and asked of the
// kernel (deleteAsked, which DeleteAt takes when askKernel says so), b.N
// times each, reported as ms per read at each size. Nothing is selected,
// so the table stays. The reads run on the namespace's thread (a
// sub-benchmark would run elsewhere): go test -bench Cut -benchtime 20x.
func BenchmarkCut(b *testing.B) {
	inNewNetns(b, func() error {
		none := func(Flow) bool { return false }
		v4 := []netip.Addr{netip.MustParseAddr("192.0.2.10")}
		v6 := []netip.Addr{netip.MustParseAddr("2001:db8::10")}
		for _, size := range []int{1, 20000} {
			var entries []*netlink.ConntrackFlow
			for i := range size {
				entries = append(entries, entry(unix.IPPROTO_TCP, fmt.Sprintf("198.51.100.%d", i%250), "203.0.113.1", "203.0.113.1", uint16(10000+i), 443, 443))
			}
			if err := create(entries); err != nil {
				return err
			}
			for _, read := range []struct {
				name string
				fn   func() (int, error)
			}{
				{"whole", func() (int, error) { return Table{}.Delete(none) }},
				{"asked", func() (int, error) { return deleteAsked(v4, v6, none) }},
			} {
				start := time.Now()
				for range b.N {
					if _, err := read.fn(); err != nil {
						return err
					}
				}
				b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), fmt.Sprintf("%s-ms@%d", read.name, procInt("nf_conntrack_count")))
			}
		}
		return nil
	})
}

// TestAskKernel: asking the kernel pays when it walks the table no more
// often than a whole read, or when the table holds enough flows for the
// walks it adds; never for many addresses of a quiet host.
func TestAskKernel(t *testing.T) {
	for _, c := range []struct {
		v4             int
		v6             bool
		flows, buckets int
		want           bool
	}{
		{1, false, 1, 262144, true},      // as many walks, each passing over flows
		{2, false, 1, 262144, false},     // two more walks for nothing
		{1, true, 1, 262144, false},      // one more walk
		{1, true, 20000, 262144, true},   // 10 ms more walking, 80 ms less copying
		{8, false, 20000, 262144, false}, // 14 more walks
		{1, true, -1, 262144, false},     // unknown: whole, as before
	} {
		if got := askKernel(c.v4, c.v6, c.flows, c.buckets); got != c.want {
			t.Errorf("askKernel(%d, %v, %d, %d) = %v, want %v", c.v4, c.v6, c.flows, c.buckets, got, c.want)
		}
	}
}
