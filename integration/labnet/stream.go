package labnet

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Stream parameters.
const (
	// StreamInterval is how often a Stream sends a message.
	StreamInterval = 10 * time.Millisecond
	// streamConnectTimeout bounds the connection set-up of a Stream.
	streamConnectTimeout = 2 * time.Second
	// streamDrain bounds how long Stop waits for outstanding echoes.
	streamDrain = time.Second
	// streamMsgLen is the size of one message: 8-byte sequence + marker.
	streamMsgLen = 8 + markerLen
)

// StreamStats is what a Stream observed.
type StreamStats struct {
	// Sent is the number of messages written.
	Sent uint64
	// Echoed is the number of messages echoed back, in order.
	Echoed uint64
	// Lost is Sent-Echoed: messages still outstanding (while running) or
	// never echoed (after Stop).
	Lost uint64
	// MaxGap is the longest time the stream went without an echo while a
	// message was outstanding; about StreamInterval for a healthy flow.
	MaxGap time.Duration
	// Err is the first error the stream hit (connection reset, echo out
	// of order), nil if none.
	Err error
}

// Stream is a long-lived TCP flow: it sends a small sequence-numbered
// message every StreamInterval to an echo server (ServeTCP) and counts the
// echoes, so a test can tell whether an established connection survived a
// firewall change.
type Stream struct {
	conn     net.Conn
	marker   []byte
	stopSend chan struct{}
	sendDone chan struct{}
	readDone chan struct{}
	echoed   chan struct{} // pulsed after each echo

	mu       sync.Mutex
	st       StreamStats
	lastEcho time.Time

	stopOnce sync.Once
	final    StreamStats
}

// StartStream connects from ns to the TCP echo server at addr ("ip:port")
// and starts the flow. It fails if the connection cannot be set up within
// 2 s. Lab.Close stops streams in the lab's namespaces.
func StartStream(ns *NS, addr string) (*Stream, error) {
	ap, err := parseTarget(addr)
	if err != nil {
		return nil, err
	}
	var conn net.Conn
	err = ns.Do(func() error {
		fd, err := probeSocket(ap.Addr(), unix.SOCK_STREAM)
		if err != nil {
			return err
		}
		// From here on f owns fd: closing it twice, or leaving it to a
		// finalizer, could close an unrelated descriptor that reused the
		// number.
		f := os.NewFile(uintptr(fd), "stream")
		defer f.Close()
		res, err := connectFD(context.Background(), fd, ap, streamConnectTimeout)
		if err != nil {
			return err
		}
		if res != Connected {
			return fmt.Errorf("connect: %v", res)
		}
		// Back to ordinary TCP error semantics for the established flow.
		level, opt := unix.SOL_IP, unix.IP_RECVERR
		if ap.Addr().Is6() {
			level, opt = unix.SOL_IPV6, unix.IPV6_RECVERR
		}
		if err := unix.SetsockoptInt(fd, level, opt, 0); err != nil {
			return fmt.Errorf("clearing RECVERR: %w", err)
		}
		conn, err = net.FileConn(f) // works on a duplicate of fd
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s -> %s: %w", ns.Name, addr, err)
	}
	s := &Stream{
		conn:     conn,
		marker:   NewMarker(),
		stopSend: make(chan struct{}),
		sendDone: make(chan struct{}),
		readDone: make(chan struct{}),
		echoed:   make(chan struct{}, 1),
		lastEcho: time.Now(),
	}
	go s.send()
	go s.read()
	ns.track(func() { s.Stop() })
	return s, nil
}

func (s *Stream) send() {
	defer close(s.sendDone)
	t := time.NewTicker(StreamInterval)
	defer t.Stop()
	msg := make([]byte, streamMsgLen)
	copy(msg[8:], s.marker)
	for seq := uint64(1); ; seq++ {
		select {
		case <-s.stopSend:
			return
		case <-t.C:
		}
		binary.BigEndian.PutUint64(msg, seq)
		// Count the message before writing it: its echo may arrive before
		// Write returns.
		s.mu.Lock()
		if s.st.Sent == s.st.Echoed {
			s.lastEcho = time.Now() // a gap starts with the first outstanding message
		}
		s.st.Sent = seq
		s.mu.Unlock()
		_ = s.conn.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := s.conn.Write(msg); err != nil {
			s.mu.Lock()
			s.st.Sent = seq - 1
			s.mu.Unlock()
			s.fail(fmt.Errorf("write: %w", err))
			return
		}
	}
}

func (s *Stream) read() {
	defer close(s.readDone)
	buf := make([]byte, streamMsgLen)
	for {
		if _, err := io.ReadFull(s.conn, buf); err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.fail(fmt.Errorf("read: %w", err))
			}
			return
		}
		seq := binary.BigEndian.Uint64(buf)
		now := time.Now()
		s.mu.Lock()
		if !bytes.Equal(buf[8:], s.marker) || seq != s.st.Echoed+1 {
			s.mu.Unlock()
			s.fail(fmt.Errorf("echo out of order: got message %d, want %d", seq, s.st.Echoed+1))
			return
		}
		s.st.Echoed = seq
		s.st.MaxGap = max(s.st.MaxGap, now.Sub(s.lastEcho))
		s.lastEcho = now
		s.mu.Unlock()
		select {
		case s.echoed <- struct{}{}:
		default:
		}
	}
}

func (s *Stream) fail(err error) {
	s.mu.Lock()
	if s.st.Err == nil {
		s.st.Err = err
	}
	s.mu.Unlock()
}

// Stats returns what the stream observed so far. MaxGap includes the
// current wait if a message is outstanding.
func (s *Stream) Stats() StreamStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.Lost = st.Sent - st.Echoed
	if st.Lost > 0 {
		st.MaxGap = max(st.MaxGap, time.Since(s.lastEcho))
	}
	return st
}

// Stop stops sending, waits up to 1 s for outstanding echoes, closes the
// connection and returns the final statistics. It is idempotent.
func (s *Stream) Stop() StreamStats {
	s.stopOnce.Do(func() {
		close(s.stopSend)
		<-s.sendDone
		timer := time.NewTimer(streamDrain)
		defer timer.Stop()
	drain:
		for {
			s.mu.Lock()
			done := s.st.Echoed == s.st.Sent || s.st.Err != nil
			s.mu.Unlock()
			if done {
				break
			}
			select {
			case <-s.echoed:
			case <-s.readDone:
				break drain
			case <-timer.C:
				break drain
			}
		}
		s.final = s.Stats()
		s.conn.Close()
		<-s.readDone
	})
	return s.final
}
