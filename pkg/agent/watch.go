package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watcher reports changes under the configuration directory with inotify:
// files written in place (close after write), written by rename (editors
// write a temporary file and rename it over the old one), created and
// deleted; and the directory itself swapped by rename or by a symlink
// switched to another directory, which only its parent sees. Each batch
// of events is one signal on Changed; take then says which set, group and
// VM files the events named, so that the agent parses only those again
// (config.Cache), or that something no file name describes happened (a
// swapped or recreated directory, lost events), after which it parses
// everything.
//
// The watches are re-added after every change: a swapped directory is
// another inode, and a watch follows the inode, not the path.
type watcher struct {
	dir     string
	fd      int
	Changed chan struct{}

	mu      sync.Mutex
	watches map[string]int // path → watch descriptor
	// changed holds the files named since the last take, relative to
	// dir ("groups/web.toml"); full says a file list cannot describe
	// what happened.
	changed map[string]bool
	full    bool
	// writing holds the files created or modified and not yet closed:
	// while there are any, the agent waits longer for the writer to
	// finish (see Agent.settle).
	writing map[string]bool
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
	w := &watcher{dir: dir, fd: fd, Changed: make(chan struct{}, 1), watches: map[string]int{},
		changed: map[string]bool{}, writing: map[string]bool{}}
	if err := w.rewatch(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return w, nil
}

// subdirs are the subdirectories of the configuration directory whose
// files the configuration is made of, in the order paths lists them after
// the parent and the directory.
var subdirs = []string{"groups", "vms", "sets"}

// paths are the directories watched: the configuration directory's
// parent (for swaps), the directory and its subdirectories (subdirs).
func (w *watcher) paths() []string {
	out := []string{filepath.Dir(filepath.Clean(w.dir)), w.dir}
	for _, d := range subdirs {
		out = append(out, filepath.Join(w.dir, d))
	}
	return out
}

// rewatch (re)adds a watch on every path that exists, following symlinks,
// and drops watches whose path now names another inode. A missing
// subdirectory is not an error: loading the configuration reports it. A
// watch that changed means a directory was replaced: the next take
// reports full.
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
		if old, ok := w.watches[p]; !ok || old != wd {
			w.full = true
		}
		w.watches[p] = wd
	}
	return nil
}

// run reads events until ctx is done, signalling Changed for each read
// that returned any that matter.
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
		if !w.note(buf[:got]) {
			continue
		}
		select {
		case w.Changed <- struct{}{}:
		default: // a signal is pending already
		}
	}
}

// take returns the files events named since the last take, sorted, and
// whether something a file list cannot describe happened; it forgets
// both, and the files being written.
func (w *watcher) take() (changed []string, full bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for rel := range w.changed {
		changed = append(changed, rel)
	}
	sort.Strings(changed)
	full = w.full
	w.changed, w.full, w.writing = map[string]bool{}, false, map[string]bool{}
	return changed, full
}

// busy reports whether a file was created or modified and not closed
// since the last take: a writer that may not be done.
func (w *watcher) busy() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.writing) > 0
}

// note records a read of events and reports whether any can change the
// configuration: events in the watched directories themselves, and in the
// parent only those naming the configuration directory. Events that name
// a file of sets/, groups/ or vms/ record it; anything else that matters (the
// directory or a subdirectory created, removed or swapped, an event on an
// unknown watch, lost events) records full. Events naming a file of the
// directory itself (vmfw.toml) record its name: a load usually reads
// vmfw.toml anyway, but one of edited group files alone does not
// (config.Cache).
func (w *watcher) note(buf []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	paths := w.paths()
	parent := w.watches[paths[0]]
	sub := map[int]string{}
	for i, d := range subdirs {
		// A subdirectory that does not exist has no watch: its 0 must
		// not stand for it.
		if wd, ok := w.watches[paths[2+i]]; ok {
			sub[wd] = d
		}
	}
	top := w.watches[paths[1]]
	base := filepath.Base(filepath.Clean(w.dir))
	relevant := false
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
		wd := int(ev.Wd)
		switch dir, isSub := sub[wd]; {
		case ev.Mask&unix.IN_Q_OVERFLOW != 0:
			w.full, relevant = true, true
		case wd == parent && wd != top:
			if name == base {
				w.full, relevant = true, true
			}
		case wd == top:
			relevant = true
			if name == "" || slices.Contains(subdirs, name) {
				w.full = true
			} else {
				w.changed[name] = true
			}
		case isSub && name != "":
			relevant = true
			rel := dir + "/" + name
			w.changed[rel] = true
			if ev.Mask&(unix.IN_CREATE|unix.IN_MODIFY) != 0 && ev.Mask&unix.IN_ISDIR == 0 {
				w.writing[rel] = true
			}
			if ev.Mask&(unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO|unix.IN_MOVED_FROM|unix.IN_DELETE) != 0 {
				delete(w.writing, rel)
			}
		default:
			// The subdirectory itself (deleted, moved) or a watch rewatch
			// has dropped: parse everything.
			w.full, relevant = true, true
		}
	}
	return relevant
}
