package labnet

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Result classifies what a probe saw.
type Result int

// Probe results. A probe that returns a non-nil error could not run (bad
// address, socket failure) and returns Failed: it says nothing about the
// network, so tests should treat it as an error, never as "blocked".
const (
	// Failed means the probe could not run; the error says why.
	Failed Result = iota
	// Connected means the peer answered: TCP handshake completed, UDP echo
	// received, ICMP echo reply received.
	Connected
	// Refused means a TCP RST came back (closed port, or REJECT with
	// tcp-reset).
	Refused
	// Timeout means nothing came back before the timeout (dropped).
	Timeout
	// Unreachable means an ICMP/ICMPv6 error came back (REJECT with an ICMP
	// type, closed UDP port), or the sender's kernel gave up: no route, or
	// no answer to address resolution (about 300 ms in a Lab).
	Unreachable
)

// String returns the result's name.
func (r Result) String() string {
	switch r {
	case Failed:
		return "Failed"
	case Connected:
		return "Connected"
	case Refused:
		return "Refused"
	case Timeout:
		return "Timeout"
	case Unreachable:
		return "Unreachable"
	}
	return fmt.Sprintf("Result(%d)", int(r))
}

const (
	// maxPollSlice bounds one poll so that context cancellation is noticed.
	maxPollSlice = 50 * time.Millisecond
	// resendInterval is how often UDP and ICMP probes resend while waiting.
	resendInterval = 200 * time.Millisecond
)

// TCPConnect opens a TCP connection from ns to addr ("192.0.2.10:22",
// "[2001:db8::10]:22"; documentation or loopback addresses only) and
// classifies the outcome: Connected when the
// handshake completes (the connection is then closed), Refused on a RST,
// Unreachable on an ICMP error, Timeout when nothing came back within
// timeout. Cancelling ctx aborts the probe with an error.
func TCPConnect(ctx context.Context, ns *NS, addr string, timeout time.Duration) (Result, error) {
	ap, err := parseTarget(addr)
	if err != nil {
		return Failed, err
	}
	res, err := probeOn(ns, ap.Addr(), unix.SOCK_STREAM, func(fd int) (Result, error) {
		return connectFD(ctx, fd, ap, timeout)
	})
	if err != nil {
		return Failed, fmt.Errorf("tcp probe %s -> %s: %w", ns.Name, addr, err)
	}
	return res, nil
}

// probeOn runs probe on a fresh probe socket of sotype for dst inside ns
// and closes the socket afterwards.
func probeOn(ns *NS, dst netip.Addr, sotype int, probe func(fd int) (Result, error)) (Result, error) {
	var res Result
	err := ns.Do(func() error {
		fd, err := probeSocket(dst, sotype)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		res, err = probe(fd)
		return err
	})
	return res, err
}

// connectFD connects a non-blocking TCP socket and waits for the outcome.
func connectFD(ctx context.Context, fd int, ap netip.AddrPort, timeout time.Duration) (Result, error) {
	err := unix.Connect(fd, sockaddr(ap))
	if err == nil {
		return Connected, nil
	}
	if !errors.Is(err, unix.EINPROGRESS) {
		return classifyErr(fd, err, true)
	}
	ready, err := pollFD(ctx, fd, unix.POLLOUT, time.Now().Add(timeout))
	if err != nil {
		return Failed, err
	}
	if !ready {
		return Timeout, nil
	}
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return Failed, fmt.Errorf("reading SO_ERROR: %w", err)
	}
	if soerr == 0 {
		return Connected, nil
	}
	return classifyErr(fd, unix.Errno(soerr), true)
}

// UDPProbe sends a datagram carrying a fresh marker from ns to addr, resending
// every 200 ms, and classifies the outcome: Connected when the marker is
// echoed back (see ServeUDP), Unreachable on an ICMP error (closed port,
// REJECT), Timeout when nothing came back within timeout.
func UDPProbe(ctx context.Context, ns *NS, addr string, timeout time.Duration) (Result, error) {
	ap, err := parseTarget(addr)
	if err != nil {
		return Failed, err
	}
	res, err := probeOn(ns, ap.Addr(), unix.SOCK_DGRAM, func(fd int) (Result, error) {
		if err := unix.Connect(fd, sockaddr(ap)); err != nil {
			return classifyErr(fd, err, false)
		}
		return udpExchange(ctx, fd, timeout)
	})
	if err != nil {
		return Failed, fmt.Errorf("udp probe %s -> %s: %w", ns.Name, addr, err)
	}
	return res, nil
}

func udpExchange(ctx context.Context, fd int, timeout time.Duration) (Result, error) {
	marker := NewMarker()
	buf := make([]byte, 2048)
	send := func() (time.Duration, Result, bool, error) {
		if _, err := unix.Write(fd, marker); err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return pollInterval, Failed, false, nil
			}
			res, err := classifyErr(fd, err, false)
			return 0, res, true, err
		}
		return resendInterval, Failed, false, nil
	}
	recv := func() (Result, bool, error) {
		n, err := unix.Read(fd, buf)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				// Woken by POLLERR with the error already reported: the
				// error queue tells what it was.
				if icmpQueued(fd) {
					return Unreachable, true, nil
				}
				return Failed, false, nil
			}
			res, err := classifyErr(fd, err, false)
			return res, true, err
		}
		return Connected, bytes.Equal(buf[:n], marker), nil
	}
	return resendLoop(ctx, fd, timeout, send, recv)
}

// Ping sends ICMP (IPv4) or ICMPv6 echo requests from ns to the address addr
// (no port), one every 200 ms, and classifies the outcome: Connected on an
// echo reply, Unreachable on an ICMP error about the request, Timeout when
// nothing came back within timeout. It uses a raw socket, so it needs no
// ping binary and works for IPv4 and IPv6 alike.
func Ping(ctx context.Context, ns *NS, addr string, timeout time.Duration) (Result, error) {
	dst, err := parseProbeAddr("ping target", addr)
	if err != nil {
		return Failed, err
	}
	res, err := doValue(ns, func() (Result, error) { return ping(ctx, dst, timeout) })
	if err != nil {
		return Failed, fmt.Errorf("ping %s -> %s: %w", ns.Name, addr, err)
	}
	return res, nil
}

func ping(ctx context.Context, dst netip.Addr, timeout time.Duration) (Result, error) {
	family, proto, reqType := unix.AF_INET, unix.IPPROTO_ICMP, byte(8)
	if dst.Is6() {
		family, proto, reqType = unix.AF_INET6, unix.IPPROTO_ICMPV6, 128
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return Failed, fmt.Errorf("opening raw ICMP socket: %w", err)
	}
	defer unix.Close(fd)

	marker := NewMarker()
	var idb [2]byte
	_, _ = rand.Read(idb[:]) // crypto/rand.Read never fails on Linux
	id := binary.BigEndian.Uint16(idb[:])
	sa := sockaddr(netip.AddrPortFrom(dst, 0))
	buf := make([]byte, 2048)
	var seq uint16
	send := func() (time.Duration, Result, bool, error) {
		seq++
		msg := make([]byte, 8+len(marker))
		msg[0] = reqType
		binary.BigEndian.PutUint16(msg[4:], id)
		binary.BigEndian.PutUint16(msg[6:], seq)
		copy(msg[8:], marker)
		if dst.Is4() {
			binary.BigEndian.PutUint16(msg[2:], checksum(msg, 0))
		} // the kernel fills in the ICMPv6 checksum
		if err := unix.Sendto(fd, msg, 0, sa); err != nil {
			switch {
			case errors.Is(err, unix.EAGAIN):
			case isUnreachErrno(err):
				return 0, Unreachable, true, nil
			default:
				return 0, Failed, true, fmt.Errorf("sending echo request: %w", err)
			}
		}
		return resendInterval, Failed, false, nil
	}
	recv := func() (Result, bool, error) {
		for {
			n, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
			if err != nil {
				return Failed, false, nil // EAGAIN: drained
			}
			if r := classifyICMP(buf[:n], from, dst, id, marker); r != Failed {
				return r, true, nil
			}
		}
	}
	return resendLoop(ctx, fd, timeout, send, recv)
}

// resendLoop runs a probe that repeats its request until an answer comes:
// it calls send at once and again each time the wait send returned has
// passed, and recv each time fd is readable, until one of them is done
// with the probe's outcome or timeout passes (Timeout).
func resendLoop(ctx context.Context, fd int, timeout time.Duration,
	send func() (wait time.Duration, res Result, done bool, err error),
	recv func() (res Result, done bool, err error)) (Result, error) {
	deadline := time.Now().Add(timeout)
	var nextSend time.Time
	for {
		now := time.Now()
		if !now.Before(deadline) {
			return Timeout, nil
		}
		if !now.Before(nextSend) {
			wait, res, done, err := send()
			if done {
				return res, err
			}
			nextSend = now.Add(wait)
		}
		ready, err := pollFD(ctx, fd, unix.POLLIN, earlier(nextSend, deadline))
		if err != nil {
			return Failed, err
		}
		if !ready {
			continue
		}
		if res, done, err := recv(); done {
			return res, err
		}
	}
}

// classifyICMP looks at one packet received on a raw ICMP socket and returns
// Connected for our echo reply, Unreachable for an ICMP error about one of
// our requests, Failed for anything else.
func classifyICMP(pkt []byte, from unix.Sockaddr, dst netip.Addr, id uint16, marker []byte) Result {
	var msg []byte
	var src netip.Addr
	replyType, reqType, innerHdr, innerProto := byte(0), byte(8), 0, byte(unix.IPPROTO_ICMP)
	if dst.Is4() {
		// IPv4 raw sockets deliver the IP header.
		if len(pkt) < 20 || pkt[0]>>4 != 4 {
			return Failed
		}
		ihl := int(pkt[0]&0x0f) * 4
		if len(pkt) < ihl+8 {
			return Failed
		}
		src = netip.AddrFrom4([4]byte(pkt[12:16]))
		msg = pkt[ihl:]
	} else {
		sa, ok := from.(*unix.SockaddrInet6)
		if !ok || len(pkt) < 8 {
			return Failed
		}
		src = netip.AddrFrom16(sa.Addr)
		msg = pkt
		replyType, reqType, innerHdr, innerProto = 129, 128, 40, unix.IPPROTO_ICMPV6
	}
	typ := msg[0]
	if typ == replyType {
		if src == dst && binary.BigEndian.Uint16(msg[4:]) == id && bytes.Contains(msg[8:], marker) {
			return Connected
		}
		return Failed
	}
	isErr := typ == 3 || typ == 11 || typ == 12 // IPv4 errors
	if dst.Is6() {
		isErr = typ >= 1 && typ <= 4 // ICMPv6 errors
	}
	if !isErr {
		return Failed
	}
	inner := msg[8:]
	if dst.Is4() {
		if len(inner) < 20 {
			return Failed
		}
		innerHdr = int(inner[0]&0x0f) * 4
		if inner[9] != innerProto || netip.AddrFrom4([4]byte(inner[16:20])) != dst {
			return Failed
		}
	} else {
		if len(inner) < 40 || inner[6] != innerProto || netip.AddrFrom16([16]byte(inner[24:40])) != dst {
			return Failed
		}
	}
	if len(inner) < innerHdr+8 {
		return Failed
	}
	echo := inner[innerHdr:]
	if echo[0] == reqType && binary.BigEndian.Uint16(echo[4:]) == id {
		return Unreachable
	}
	return Failed
}

// probeSocket opens a non-blocking socket for dst's family in the current
// namespace with IP_RECVERR/IPV6_RECVERR set, so that ICMP errors are queued
// on the socket's error queue and can be told apart from a TCP RST.
func probeSocket(dst netip.Addr, sotype int) (int, error) {
	family, level, opt := unix.AF_INET, unix.SOL_IP, unix.IP_RECVERR
	if dst.Is6() {
		family, level, opt = unix.AF_INET6, unix.SOL_IPV6, unix.IPV6_RECVERR
	}
	fd, err := unix.Socket(family, sotype|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("setting RECVERR: %w", err)
	}
	return fd, nil
}

// classifyErr maps a socket error to a Result. An ICMP error on the socket's
// error queue means Unreachable; otherwise ECONNREFUSED is a RST for TCP
// (Refused) and an ICMP port unreachable for UDP.
func classifyErr(fd int, err error, tcp bool) (Result, error) {
	if icmpQueued(fd) {
		return Unreachable, nil
	}
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		if tcp {
			return Refused, nil
		}
		return Unreachable, nil
	case errors.Is(err, unix.ETIMEDOUT):
		return Timeout, nil
	case isUnreachErrno(err):
		return Unreachable, nil
	}
	return Failed, err
}

// isUnreachErrno reports errors the kernel gives for an ICMP error or for a
// destination it cannot route to.
func isUnreachErrno(err error) bool {
	for _, e := range []unix.Errno{unix.EHOSTUNREACH, unix.ENETUNREACH, unix.EHOSTDOWN,
		unix.ENONET, unix.EACCES, unix.EPROTO, unix.ENOPROTOOPT} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// icmpQueued drains the socket's error queue and reports whether it held an
// error that came from an ICMP or ICMPv6 message.
func icmpQueued(fd int) bool {
	buf := make([]byte, 512)
	oob := make([]byte, 512)
	found := false
	for range 16 {
		_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			return found
		}
		cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			continue
		}
		for _, m := range cmsgs {
			isErr := (m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_RECVERR) ||
				(m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_RECVERR)
			if !isErr || len(m.Data) < int(unsafe.Sizeof(unix.SockExtendedErr{})) {
				continue
			}
			// struct sock_extended_err: ee_errno (4 bytes), then ee_origin.
			origin := m.Data[4]
			if origin == unix.SO_EE_ORIGIN_ICMP || origin == unix.SO_EE_ORIGIN_ICMP6 {
				found = true
			}
		}
	}
	return found
}

// earlier returns the earlier of a and b.
func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// pollFD waits until fd has one of events, the deadline passes (false) or ctx
// is done (error). It polls in slices of at most maxPollSlice.
func pollFD(ctx context.Context, fd int, events int16, deadline time.Time) (bool, error) {
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		left = min(left, maxPollSlice)
		ms := max(int((left+time.Millisecond-1)/time.Millisecond), 1)
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, ms)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return false, fmt.Errorf("poll: %w", err)
		}
		if n > 0 {
			return true, nil
		}
	}
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// ProbeAll runs n probes at once, at most 24 at a time, and returns each
// one's result and error. A blocked probe waits for its timeout, so a
// test's probes run one by one would take minutes.
func ProbeAll(n int, probe func(ctx context.Context, i int) (Result, error)) ([]Result, []error) {
	results := make([]Result, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 24)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			results[i], errs[i] = probe(context.Background(), i)
		})
	}
	wg.Wait()
	return results, errs
}
