package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watcher reports changes under the configuration directory with inotify:
// files written in place (close after write), written by rename (editors
// write a temporary file and rename it over the old one), created and
// deleted; and the directory itself swapped by rename or by a symlink
// switched to another directory, which only its parent sees. Each batch
// of events is one signal on Changed; the agent then re-reads everything,
// so which file changed does not matter and lost details cost nothing.
//
// The watches are re-added after every change: a swapped directory is
// another inode, and a watch follows the inode, not the path.
type watcher struct {
	dir     string
	fd      int
	Changed chan struct{}

	mu      sync.Mutex
	watches map[string]int // path → watch descriptor
}

// watchMask is every event that can change what a directory holds.
const watchMask = unix.IN_CLOSE_WRITE | unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_CREATE | unix.IN_DELETE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// newWatcher starts watching dir.
func newWatcher(dir string) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &watcher{dir: dir, fd: fd, Changed: make(chan struct{}, 1), watches: map[string]int{}}
	if err := w.rewatch(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return w, nil
}

// paths are the directories watched: the configuration directory's
// parent (for swaps), the directory and its two subdirectories.
func (w *watcher) paths() []string {
	return []string{filepath.Dir(filepath.Clean(w.dir)), w.dir, filepath.Join(w.dir, "groups"), filepath.Join(w.dir, "vms")}
}

// rewatch (re)adds a watch on every path that exists, following symlinks,
// and drops watches whose path now names another inode. A missing
// subdirectory is not an error: loading the configuration reports it.
func (w *watcher) rewatch() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, p := range w.paths() {
		wd, err := unix.InotifyAddWatch(w.fd, p, watchMask)
		if err != nil {
			if i == 0 || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
				if i == 0 && !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("watching %s: %w", p, err)
				}
				continue
			}
			return fmt.Errorf("watching %s: %w", p, err)
		}
		if old, ok := w.watches[p]; ok && old != wd {
			unix.InotifyRmWatch(w.fd, uint32(old)) // the old inode; it may be gone already
		}
		w.watches[p] = wd
	}
	return nil
}

// run reads events until ctx is done, signalling Changed for each read
// that returned any. Events on the parent are for every name in it; only
// those naming the configuration directory matter, but telling them
// apart is not worth the risk of missing a swap: a spurious reload of an
// unchanged configuration writes nothing.
func (w *watcher) run(ctx context.Context) {
	defer unix.Close(w.fd)
	buf := make([]byte, 64*1024)
	for ctx.Err() == nil {
		fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		if err != nil || n == 0 {
			continue
		}
		got, err := unix.Read(w.fd, buf)
		if err != nil || got <= 0 {
			continue
		}
		if !w.relevant(buf[:got]) {
			continue
		}
		select {
		case w.Changed <- struct{}{}:
		default: // a signal is pending already
		}
	}
}

// relevant reports whether a read of events holds one that can change
// the configuration: anything in the watched directories themselves, and
// in the parent only events naming the configuration directory.
func (w *watcher) relevant(buf []byte) bool {
	w.mu.Lock()
	parent := w.watches[w.paths()[0]]
	w.mu.Unlock()
	base := filepath.Base(filepath.Clean(w.dir))
	for off := 0; off+unix.SizeofInotifyEvent <= len(buf); {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := ""
		if ev.Len > 0 {
			raw := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			for i, c := range raw {
				if c == 0 {
					raw = raw[:i]
					break
				}
			}
			name = string(raw)
		}
		off += unix.SizeofInotifyEvent + int(ev.Len)
		if int(ev.Wd) != parent || name == base {
			return true
		}
	}
	return false
}
