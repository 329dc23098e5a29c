package integration

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
)

// Two versions of one group that both allow udp 5001 (flow X) and forbid
// udp 5002 (flow Y) and udp 5003 (flow Z) from A to B, written
// differently so that every apply rewrites both of the group's chains.
// X is allowed and Z forbidden by port lists holding ranges, which the
// nftables backend writes as interval sets: a set new in the transaction
// of the rule that uses it is not yet filled for the packets that meet the
// rule at the commit (docs/nftables.md, "Sets a rule meets new"). The
// accept of 5003 behind Z's drop is what such a missed drop would fall
// through to.
var blinkVersions = [2]string{`
description = "version one"

[[in]]
proto = "udp"
dport = "5001,6000:6010"
comment = "x"

[[in]]
proto = "udp"
dport = "5002"
action = "drop"

[[in]]
proto = "udp"
dport = "5003,7000:7010"
action = "drop"

[[in]]
proto = "udp"
dport = "5003"

[[out]]
proto = "udp"
dport = "5001"
comment = "x"

[[out]]
proto = "udp"
dport = "5003"
`, `
description = "version two"

[[in]]
proto = "udp"
dport = "5002"
action = "reject"

[[in]]
proto = "udp"
dport = "7000:7020,5003"
action = "drop"

[[in]]
proto = "udp"
dport = "5001,6000:6020"
comment = "x and more"

[[in]]
proto = "udp"
dport = "5003:5003"

[[out]]
proto = "udp"
dport = "5002"
action = "drop"

[[out]]
proto = "udp"
dport = "5001:5001"

[[out]]
proto = "udp"
dport = "5003,5003"
`}

// udpCounter counts the datagrams one socket receives, by sequence number.
type udpCounter struct {
	conn net.PacketConn
	mu   sync.Mutex
	seen map[uint64]bool
	dup  int
	done chan struct{}
}

func listenUDP(t *testing.T, ns *labnet.NS, addr string) *udpCounter {
	t.Helper()
	c := &udpCounter{seen: map[uint64]bool{}, done: make(chan struct{})}
	if err := ns.Do(func() error {
		var err error
		c.conn, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.done)
		buf := make([]byte, 64)
		for {
			n, _, err := c.conn.ReadFrom(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil || n < 8 {
				continue
			}
			seq := binary.BigEndian.Uint64(buf)
			c.mu.Lock()
			if c.seen[seq] {
				c.dup++
			}
			c.seen[seq] = true
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.conn.Close(); <-c.done })
	return c
}

// socketDrops returns how many datagrams the kernel dropped at c's socket
// in ns because its receive buffer was full: the drops column of
// /proc/net/udp (udp6), read from the namespace. A loaded machine can
// starve the reader for longer than the buffer lasts; such a loss is the
// socket's, not the firewall's.
func (c *udpCounter) socketDrops(ns *labnet.NS) (uint64, error) {
	local := c.conn.LocalAddr().(*net.UDPAddr)
	file := "/proc/thread-self/net/udp"
	if local.IP.To4() == nil {
		file += "6"
	}
	var data []byte
	if err := ns.Do(func() error {
		var err error
		data, err = os.ReadFile(file)
		return err
	}); err != nil {
		return 0, err
	}
	port := fmt.Sprintf(":%04X", local.Port)
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 13 || !strings.HasSuffix(f[1], port) {
			continue
		}
		return strconv.ParseUint(f[len(f)-1], 10, 64)
	}
	return 0, fmt.Errorf("no socket on port %d in %s", local.Port, file)
}

func (c *udpCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// udpSender sends sequence-numbered datagrams from ns to addr, one per
// interval, until stopped. It never waits for an answer: a UDP flow without
// replies is never "established", so every datagram passes the groups'
// rules again, which is what makes a moment without rules visible. The
// socket is not connected, so a reject's ICMP error does not fail a send.
type udpSender struct {
	conn net.PacketConn
	to   net.Addr
	stop chan struct{}
	done chan struct{}
	sent uint64
	err  error
}

func sendUDP(t *testing.T, ns *labnet.NS, addr string, interval time.Duration) *udpSender {
	t.Helper()
	s := &udpSender{stop: make(chan struct{}), done: make(chan struct{})}
	s.conn, s.to = udpSocket(t, ns, addr)
	go func() {
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		msg := make([]byte, 16)
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			binary.BigEndian.PutUint64(msg, s.sent+1)
			if _, err := s.conn.WriteTo(msg, s.to); err != nil {
				s.err = err
				return
			}
			s.sent++
		}
	}()
	t.Cleanup(func() { s.halt(); s.conn.Close() })
	return s
}

// halt stops sending and returns the number of datagrams sent.
func (s *udpSender) halt() uint64 {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	return s.sent
}

// udpSocket opens an unconnected UDP socket in ns and resolves addr, the
// destination a sender writes to.
func udpSocket(t *testing.T, ns *labnet.NS, addr string) (net.PacketConn, net.Addr) {
	t.Helper()
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var conn net.PacketConn
	if err := ns.Do(func() error {
		conn, err = net.ListenPacket("udp", ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return conn, to
}

// floodUDP sends sequence-numbered datagrams from ns to addr as fast as it
// can until stop is called, which returns how many it sent. A moment of a
// few microseconds in which a rule misses its packets shows only under
// such a rate (2 ms between datagrams met it once in hundreds of
// applies), so the test floods during each apply alone. The test's end
// stops a flood its failure left running.
func floodUDP(t *testing.T, ns *labnet.NS, addr string) (stop func() uint64) {
	t.Helper()
	conn, to := udpSocket(t, ns, addr)
	quit, done := make(chan struct{}), make(chan struct{})
	var n uint64
	go func() {
		defer close(done)
		msg := make([]byte, 16)
		for {
			select {
			case <-quit:
				return
			default:
			}
			binary.BigEndian.PutUint64(msg, n+1)
			if _, err := conn.WriteTo(msg, to); err == nil {
				n++
			}
		}
	}()
	var once sync.Once
	stop = func() uint64 {
		once.Do(func() {
			close(quit)
			<-done
			conn.Close()
		})
		return n
	}
	t.Cleanup(func() { stop() })
	return stop
}

// blinkApplies is how many times the test edits and applies the group:
// 40 per backend in make test (three backends share two CPUs there), 200
// with VMFW_LONG=1.
func blinkApplies() int {
	if os.Getenv("VMFW_LONG") != "" {
		return 200
	}
	return 40
}

// TestNoBlink: while a group is rewritten and applied again and again,
// alternating between two versions that both allow flow X and forbid
// flows Y and Z, a continuous flow X loses no datagram, a continuous flow
// Y gets none through, and a flood of Z during each apply gets none
// through. Both directions of the group are rewritten each time (A's out
// chain needs it for X, B's in chain for X), so a moment with a flushed or
// half-written chain, or a rule whose set is not filled yet, would drop X
// or let Y or Z through.
func TestNoBlink(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("groups/g.toml", blinkVersions[0])
		h.write("vms/531.toml", "policy_out = \"drop\"\n"+vmFile("02:00:00:00:05:31", "192.0.2.71", "2001:db8::71", "g"))
		b := h.guest(532, "02:00:00:00:05:32", "192.0.2.72", "2001:db8::72", "g")
		a := h.vm("tap531i0", "02:00:00:00:05:31", "192.0.2.71", "2001:db8::71")
		h.firstV4(530, "192.0.2.9")
		h.vmfw("ifup", "tap531i0")
		h.vmfw("ifup", "tap532i0")

		type flow struct {
			name string
			recv *udpCounter
			send *udpSender
		}
		var allowed, forbidden []flow
		var flooded []*udpCounter
		for _, addr := range []string{"192.0.2.72", "2001:db8::72"} {
			flooded = append(flooded, listenUDP(t, b, labnet.HostPort(addr, 5003)))
			x := listenUDP(t, b, labnet.HostPort(addr, 5001))
			y := listenUDP(t, b, labnet.HostPort(addr, 5002))
			allowed = append(allowed, flow{"X " + addr, x, sendUDP(t, a, labnet.HostPort(addr, 5001), 2*time.Millisecond)})
			forbidden = append(forbidden, flow{"Y " + addr, y, sendUDP(t, a, labnet.HostPort(addr, 5002), 2*time.Millisecond)})
		}
		// Both flows are under way before the first edit.
		if !eventually(func() bool { return allowed[0].recv.count() > 0 && allowed[1].recv.count() > 0 }) {
			t.Fatal("flow X does not arrive before any edit")
		}

		applies := blinkApplies()
		var floodSent uint64
		for i := 1; i <= applies; i++ {
			h.write("groups/g.toml", blinkVersions[i%2])
			stop4 := floodUDP(t, a, labnet.HostPort("192.0.2.72", 5003))
			stop6 := floodUDP(t, a, labnet.HostPort("2001:db8::72", 5003))
			h.vmfw("apply")
			floodSent += stop4() + stop6()
			if i == 1 && !strings.Contains(h.snapshot(), "x and more") {
				t.Fatalf("apply did not install version two:\n%s", h.snapshot())
			}
		}

		for _, f := range append(allowed, forbidden...) {
			f.send.halt()
			if f.send.err != nil {
				t.Errorf("%s: sending: %v", f.name, f.send.err)
			}
		}
		for _, f := range allowed {
			sent := f.send.sent
			eventually(func() bool { return uint64(f.recv.count()) >= sent })
			if got := uint64(f.recv.count()); got != sent {
				drops, err := f.recv.socketDrops(b)
				switch {
				case err != nil:
					t.Errorf("%s: %d of %d datagrams arrived during %d applies: %d lost (socket drops unknown: %v)", f.name, got, sent, applies, sent-got, err)
				case drops >= sent-got:
					t.Logf("%s: %d of %d datagrams arrived during %d applies; the %d lost were dropped at the receiver's full socket buffer (%d socket drops), not by the firewall", f.name, got, sent, applies, sent-got, drops)
				default:
					t.Errorf("%s: %d of %d datagrams arrived during %d applies: %d lost, %d of them at the receiver's socket", f.name, got, sent, applies, sent-got, drops)
				}
			} else {
				t.Logf("%s: all %d datagrams arrived during %d applies", f.name, sent, applies)
			}
		}
		for _, f := range forbidden {
			if got := f.recv.count(); got != 0 {
				t.Errorf("%s: %d of %d forbidden datagrams got through during %d applies", f.name, got, f.send.sent, applies)
			}
		}
		through := 0
		for i, r := range flooded {
			if got := r.count(); got != 0 {
				through += got
				t.Errorf("Z %s: %d of the %d forbidden datagrams flooded during %d applies got through", []string{"192.0.2.72", "2001:db8::72"}[i], got, floodSent, applies)
			}
		}
		if through == 0 {
			t.Logf("Z: none of %d forbidden datagrams flooded during %d applies got through", floodSent, applies)
		}
	})
}
