package integration

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
)

// Two versions of one group that both allow udp 5001 (flow X) and forbid
// udp 5002 (flow Y) from A to B, written differently so that every apply
// rewrites both of the group's chains.
var blinkVersions = [2]string{`
description = "version one"

[[in]]
proto = "udp"
dport = "5001"
comment = "x"

[[in]]
proto = "udp"
dport = "5002"
action = "drop"

[[out]]
proto = "udp"
dport = "5001"
comment = "x"
`, `
description = "version two"

[[in]]
proto = "udp"
dport = "5002"
action = "reject"

[[in]]
proto = "udp"
dport = "5001,6000"
comment = "x and more"

[[out]]
proto = "udp"
dport = "5002"
action = "drop"

[[out]]
proto = "udp"
dport = "5001:5001"
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
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s.to = to
	if err := ns.Do(func() error {
		var err error
		s.conn, err = net.ListenPacket("udp", ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
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
// alternating between two versions that both allow flow X and forbid flow
// Y, a continuous flow X loses no datagram and a continuous flow Y gets
// none through. Both directions of the group are rewritten each time (A's
// out chain needs it for X, B's in chain for X), so a moment with a flushed
// or half-written chain would drop X or let Y through.
func TestNoBlink(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		h := newHV(t, backend, "")
		h.write("groups/g.toml", blinkVersions[0])
		h.write("vms/531.toml", "policy_out = \"drop\"\n"+vmFile("02:00:00:00:05:31", "192.0.2.71", "2001:db8::71", "g"))
		h.write("vms/532.toml", vmFile("02:00:00:00:05:32", "192.0.2.72", "2001:db8::72", "g"))
		a := h.vm("tap531i0", "02:00:00:00:05:31", "192.0.2.71", "2001:db8::71")
		b := h.vm("tap532i0", "02:00:00:00:05:32", "192.0.2.72", "2001:db8::72")
		h.firstV4(530, "192.0.2.9")
		h.vmfw("ifup", "tap531i0")
		h.vmfw("ifup", "tap532i0")

		type flow struct {
			name string
			recv *udpCounter
			send *udpSender
		}
		var allowed, forbidden []flow
		for _, addr := range []string{"192.0.2.72", "2001:db8::72"} {
			x := listenUDP(t, b, hostPort(addr, 5001))
			y := listenUDP(t, b, hostPort(addr, 5002))
			allowed = append(allowed, flow{"X " + addr, x, sendUDP(t, a, hostPort(addr, 5001), 2*time.Millisecond)})
			forbidden = append(forbidden, flow{"Y " + addr, y, sendUDP(t, a, hostPort(addr, 5002), 2*time.Millisecond)})
		}
		// Both flows are under way before the first edit.
		if !waitFor(func() bool { return allowed[0].recv.count() > 0 && allowed[1].recv.count() > 0 }) {
			t.Fatal("flow X does not arrive before any edit")
		}

		applies := blinkApplies()
		for i := 1; i <= applies; i++ {
			h.write("groups/g.toml", blinkVersions[i%2])
			h.vmfw("apply")
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
			waitFor(func() bool { return uint64(f.recv.count()) >= sent })
			if got := uint64(f.recv.count()); got != sent {
				t.Errorf("%s: %d of %d datagrams arrived during %d applies: %d lost", f.name, got, sent, applies, sent-got)
			} else {
				t.Logf("%s: all %d datagrams arrived during %d applies", f.name, sent, applies)
			}
		}
		for _, f := range forbidden {
			if got := f.recv.count(); got != 0 {
				t.Errorf("%s: %d of %d forbidden datagrams got through during %d applies", f.name, got, f.send.sent, applies)
			}
		}
	})
}
