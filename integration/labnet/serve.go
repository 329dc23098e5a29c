package labnet

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// ServeTCP listens on addr ("192.0.2.10:22", "[2001:db8::10]:22", ":22")
// in ns and echoes back whatever each accepted connection sends. The
// listener is bound when ServeTCP returns. stop closes the listener and
// every open connection and waits for the server's goroutines; it is
// idempotent, and Lab.Close calls it for servers in the lab's namespaces.
func ServeTCP(ns *NS, addr string) (stop func(), err error) {
	ln, err := doValue(ns, func() (net.Listener, error) { return net.Listen("tcp", addr) })
	if err != nil {
		return nil, fmt.Errorf("tcp server in %s on %s: %w", ns.Name, addr, err)
	}
	s := &echoServer{conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // a transient accept error (e.g. aborted connection)
			}
			if !s.add(c) {
				c.Close()
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer s.remove(c)
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	stop = s.stopper(ln)
	ns.track(stop)
	return stop, nil
}

// ServeUDP listens on addr in ns and echoes every datagram back to its
// sender. The socket is bound when ServeUDP returns. stop closes it and
// waits for the server's goroutine; it is idempotent, and Lab.Close calls it
// for servers in the lab's namespaces.
func ServeUDP(ns *NS, addr string) (stop func(), err error) {
	pc, err := doValue(ns, func() (net.PacketConn, error) { return net.ListenPacket("udp", addr) })
	if err != nil {
		return nil, fmt.Errorf("udp server in %s on %s: %w", ns.Name, addr, err)
	}
	s := &echoServer{}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // e.g. ECONNREFUSED from an earlier reply
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	stop = s.stopper(pc)
	ns.track(stop)
	return stop, nil
}

// echoServer tracks a server's connections so that stop can close them.
type echoServer struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]bool
	stopped bool
}

func (s *echoServer) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.conns[c] = true
	return true
}

func (s *echoServer) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

func (s *echoServer) stopper(l io.Closer) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.stopped = true
			for c := range s.conns {
				c.Close()
			}
			s.mu.Unlock()
			l.Close()
			s.wg.Wait()
		})
	}
}

// track registers fn with the namespace's lab, if it has one.
func (n *NS) track(fn func()) {
	if n.lab != nil {
		n.lab.track(n.Name, fn)
	}
}
