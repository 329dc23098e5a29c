package nflog

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/nflog/nflogtest"
)

// packetMessage builds an NFLOG packet message as the kernel sends it.
func packetMessage(attrs ...[]byte) []byte {
	var body []byte
	for _, a := range attrs {
		body = append(body, a...)
	}
	msg := make([]byte, unix.SizeofNlMsghdr+4)
	msg = append(msg, body...)
	binary.NativeEndian.PutUint32(msg, uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], nfnlSubsysULOG<<8|msgPacket)
	msg[16] = unix.AF_INET
	return msg
}

func ipv4UDP(src, dst string, sport, dport uint16) []byte {
	return nflogtest.IPv4(17, src, dst, sport, dport)
}

// TestDecode reads the attributes vmfw log uses from a message shaped as
// nfnetlink_log sends it: two packets in one datagram, the prefix
// NUL-terminated, the indexes big-endian.
func TestDecode(t *testing.T) {
	ts := make([]byte, 16)
	binary.BigEndian.PutUint64(ts, 1700000000)
	binary.BigEndian.PutUint64(ts[8:], 250000)
	hw := []byte{0, 6, 0, 0, 0x02, 0, 0, 0, 1, 1, 0, 0}
	one := packetMessage(
		attr(attrPacketHdr, []byte{0x08, 0x00, 2, 0}),
		attr(attrPrefix, append([]byte("vmfw sg-web-in #2 DROP"), 0)),
		attr(attrTimestamp, ts),
		attr(attrPhysInDev, be32(7)),
		attr(attrPhysOutDev, be32(9)),
		attr(attrInDev, be32(3)),
		attr(attrMark, be32(0x1000)),
		attr(attrHWAddr, hw),
		attr(attrPayload, ipv4UDP("192.0.2.101", "192.0.2.102", 40000, 53)),
	)
	two := packetMessage(attr(attrPrefix, append([]byte("vmfw tap101i0-out policy REJECT"), 0)))
	pkts, err := Decode(append(one, two...))
	if err != nil {
		t.Fatal(err)
	}
	if len(pkts) != 2 {
		t.Fatalf("got %d packets, want 2", len(pkts))
	}
	p := pkts[0]
	if p.Prefix != "vmfw sg-web-in #2 DROP" || p.Hook != 2 || p.PhysInDev != 7 || p.PhysOutDev != 9 || p.InDev != 3 || p.Mark != 0x1000 {
		t.Errorf("decoded %+v", p)
	}
	if !p.Time.Equal(time.Unix(1700000000, 250000000)) {
		t.Errorf("time %v", p.Time)
	}
	if p.HWAddr.String() != "02:00:00:00:01:01" {
		t.Errorf("hwaddr %v", p.HWAddr)
	}
	h, err := ParseHeader(p.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if h.Family != 4 || h.Proto != 17 || h.Src.String() != "192.0.2.101" || h.Dst.String() != "192.0.2.102" || !h.HasPorts || h.SPort != 40000 || h.DPort != 53 {
		t.Errorf("header %+v", h)
	}
	if pkts[1].Prefix != "vmfw tap101i0-out policy REJECT" || pkts[1].Time.IsZero() {
		t.Errorf("second packet %+v", pkts[1])
	}
}

// TestParseHeaderIPv6 skips extension headers to the transport header.
func TestParseHeaderIPv6(t *testing.T) {
	b := make([]byte, 40+8+8)
	b[0], b[6] = 0x60, 0 // hop-by-hop options next
	s, d := netip.MustParseAddr("2001:db8::101").As16(), netip.MustParseAddr("2001:db8::102").As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	b[40], b[41] = 58, 0 // next: icmpv6, length 8 bytes
	b[48], b[49] = 128, 0
	h, err := ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if h.Family != 6 || h.Proto != 58 || !h.HasICMP || h.ICMPType != 128 || h.Src != netip.MustParseAddr("2001:db8::101") {
		t.Errorf("header %+v", h)
	}
	if _, err := ParseHeader([]byte{0x45, 0}); err == nil {
		t.Error("truncated IPv4 header accepted")
	}
}

// inNewNetns runs fn on a thread in a network namespace of its own, so
// the test's iptables rule and NFLOG group touch nothing else.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is not unlocked: it leaves with the goroutine, and
		// the namespace with it.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		fn()
	}()
	<-done
}

// TestListen logs a real packet with the NFLOG target and receives it.
func TestListen(t *testing.T) {
	tool, err := exec.LookPath("iptables-nft")
	if err != nil {
		t.Skip("iptables-nft is not installed")
	}
	inNewNetns(t, func() {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Errorf("ip link set lo up: %v: %s", err, out)
			return
		}
		rule := []string{"-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9999", "-j", "NFLOG", "--nflog-group", "7", "--nflog-prefix", "vmfw sg-web-in #2 DROP"}
		if out, err := exec.Command(tool, rule...).CombinedOutput(); err != nil {
			t.Errorf("%s: %v: %s", tool, err, out)
			return
		}
		c, err := Listen(7)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		if _, err := Listen(7); !errors.Is(err, ErrBusy) {
			t.Errorf("a second listener on the group: %v, want ErrBusy", err)
		}
		conn, err := net.Dial("udp", "127.0.0.1:9999")
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("x")); err != nil {
			t.Error(err)
			return
		}
		if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Error(err)
			return
		}
		p, err := c.Read()
		if err != nil {
			t.Error(err)
			return
		}
		h, err := ParseHeader(p.Payload)
		if err != nil {
			t.Error(err)
			return
		}
		if p.Prefix != "vmfw sg-web-in #2 DROP" || h.DPort != 9999 || h.Dst.String() != "127.0.0.1" || p.Hook != 3 {
			t.Errorf("got %+v, header %+v", p, h)
		}
		if err := c.SetDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			t.Error(err)
			return
		}
		if _, err := c.Read(); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("read with nothing logged: %v, want a deadline error", err)
		}
	})
}
