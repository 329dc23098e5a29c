package labnet

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SendFrame transmits a complete Ethernet frame (destination MAC first, no
// FCS) on interface ifname of ns through an AF_PACKET socket, bypassing the
// sender's IP stack and firewall: what leaves is exactly frame.
func SendFrame(ns *NS, ifname string, frame []byte) error {
	if len(frame) < 14 {
		return fmt.Errorf("sending frame on %s in %s: %d bytes is shorter than an Ethernet header", ifname, ns.Name, len(frame))
	}
	err := ns.Do(func() error {
		idx, err := ifindex(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening packet socket: %w", err)
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{
			Protocol: htons(uint16(frame[12])<<8 | uint16(frame[13])),
			Ifindex:  idx,
			Halen:    6,
		}
		copy(sa.Addr[:], frame[:6])
		return unix.Sendto(fd, frame, 0, sa)
	})
	if err != nil {
		return fmt.Errorf("sending frame on %s in %s: %w", ifname, ns.Name, err)
	}
	return nil
}

// Capture watches one interface for a frame accepted by a match function.
// The socket is open when StartCapture returns, so a probe sent after that
// is seen if it reaches the interface.
type Capture struct {
	f    *os.File
	done chan struct{} // closed when the reader stops

	mu    sync.Mutex
	frame []byte
	err   error

	closeOnce sync.Once
}

// StartCapture opens an AF_PACKET socket on interface ifname of ns and
// starts looking for the first frame that the interface receives (frames it
// transmits are ignored) and for which match returns true; HasMarker builds
// a match function. Use Wait to get the verdict. Lab.Close closes captures
// in the lab's namespaces.
func StartCapture(ns *NS, ifname string, match func(frame []byte) bool) (*Capture, error) {
	var fd int
	err := ns.Do(func() error {
		idx, err := ifindex(ifname)
		if err != nil {
			return err
		}
		// Protocol 0 receives nothing until bind names the interface, so
		// frames of other interfaces never reach the socket.
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: idx}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("binding packet socket: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capturing on %s in %s: %w", ifname, ns.Name, err)
	}
	// A non-blocking descriptor is handed to the runtime poller, so reads
	// wait without a thread and Close interrupts them.
	f := os.NewFile(uintptr(fd), "capture:"+ns.Name+":"+ifname)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("capturing on %s in %s: %w", ifname, ns.Name, err)
	}
	c := &Capture{f: f, done: make(chan struct{})}
	go c.read(rc, match)
	ns.track(func() { c.Close() })
	return c, nil
}

func (c *Capture) read(rc syscall.RawConn, match func([]byte) bool) {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil {
			return // closed
		}
		if rerr != nil {
			if errors.Is(rerr, unix.EINTR) {
				continue
			}
			c.mu.Lock()
			c.err = fmt.Errorf("reading packet socket: %w", rerr)
			c.mu.Unlock()
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if match(buf[:n]) {
			c.mu.Lock()
			c.frame = bytes.Clone(buf[:n])
			c.mu.Unlock()
			return
		}
	}
}

// Wait waits up to timeout for a matching frame, then closes the capture. It
// returns true if one was seen; an error means the capture broke and its
// false says nothing about the network.
func (c *Capture) Wait(timeout time.Duration) (bool, error) {
	t := time.NewTimer(timeout)
	select {
	case <-c.done:
	case <-t.C:
	}
	t.Stop()
	c.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frame != nil, c.err
}

// Frame returns the matching frame, or nil if none was seen (yet).
func (c *Capture) Frame() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frame
}

// Close stops the capture and releases its socket. It is idempotent.
func (c *Capture) Close() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.f.Close()
		<-c.done
	})
	return err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
