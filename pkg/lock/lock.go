// Package lock serialises vmfw runs within one network namespace. QEMU may
// start twenty VMs at once, each running "vmfw ifup"; every run reads the
// kernel state, computes a change and applies it, so runs must not
// interleave. The lock is per network namespace because each namespace has
// its own firewall, and tests in separate namespaces must not wait for each
// other.
package lock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/rundir"
)

// pollInterval is how often a waiting run retries; flock itself cannot be
// cancelled, so waiting is a bounded loop of non-blocking attempts.
const pollInterval = 5 * time.Millisecond

// Acquire takes the lock of the calling thread's network namespace in the
// run directory dir ("" for rundir.FromEnv), waiting until ctx is done.
// The returned function releases it. The kernel drops the lock when the
// process dies, so a crashed run never blocks the next.
func Acquire(ctx context.Context, dir string) (release func(), err error) {
	if dir == "" {
		dir = rundir.FromEnv()
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return nil, fmt.Errorf("identifying network namespace: %w", err)
	}
	if err := rundir.Ensure(dir); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, fmt.Sprintf("netns-%d-%d.lock", st.Dev, st.Ino))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for lock %s (another vmfw run holds it): %w", path, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}
