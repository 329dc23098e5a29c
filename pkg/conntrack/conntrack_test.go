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

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inNewNetns runs fn on a thread of its own in a new, empty network
// namespace, so the test never reads or changes the conntrack table of the
// namespace it was started in. The thread is never returned to the
// runtime: it exits with its goroutine.
func inNewNetns(t *testing.T, fn func() error) {
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
		for _, e := range entries {
			if err := netlink.ConntrackCreate(netlink.ConntrackTable, netlink.InetFamily(e.FamilyType), e); err != nil {
				return skipError{fmt.Errorf("creating conntrack entries (no ctnetlink?): %w", err)}
			}
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
		if !slices.Equal(left, []uint16{5353, 40001}) {
			t.Errorf("entries left (by source port): %v, want [5353 40001]", left)
		}
		return nil
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
