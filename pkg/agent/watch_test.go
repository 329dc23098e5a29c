package agent

import (
	"encoding/binary"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// event encodes one inotify event as the kernel returns it.
func event(wd int, mask uint32, name string) []byte {
	n := 0
	if name != "" {
		n = (len(name) + 1 + 15) / 16 * 16
	}
	b := make([]byte, unix.SizeofInotifyEvent+n)
	binary.NativeEndian.PutUint32(b[0:], uint32(int32(wd)))
	binary.NativeEndian.PutUint32(b[4:], mask)
	binary.NativeEndian.PutUint32(b[12:], uint32(n))
	copy(b[unix.SizeofInotifyEvent:], name)
	return b
}

// TestWatcherNotesFiles checks what the watcher makes of events: the
// set, group and VM files they name, a full reload for anything a file name
// cannot describe, and whether a writer may not be done.
func TestWatcherNotesFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vmfw")
	newW := func() *watcher {
		w := &watcher{dir: dir, watches: map[string]int{}, changed: map[string]bool{}, writing: map[string]bool{}}
		for i, p := range w.paths() {
			w.watches[p] = i + 1 // parent 1, dir 2, groups 3, vms 4, sets 5
		}
		return w
	}
	join := func(evs ...[]byte) []byte {
		var b []byte
		for _, e := range evs {
			b = append(b, e...)
		}
		return b
	}
	for _, tc := range []struct {
		what     string
		events   []byte
		relevant bool
		changed  []string
		full     bool
		busy     bool
	}{
		{"rename into groups/", event(3, unix.IN_MOVED_TO, "web.toml"), true, []string{"groups/web.toml"}, false, false},
		{"written in place, still open", join(event(4, unix.IN_CREATE, "7.toml"), event(4, unix.IN_MODIFY, "7.toml")), true, []string{"vms/7.toml"}, false, true},
		{"written in place and closed", join(event(4, unix.IN_MODIFY, "7.toml"), event(4, unix.IN_CLOSE_WRITE, "7.toml")), true, []string{"vms/7.toml"}, false, false},
		{"deleted", event(3, unix.IN_DELETE, "db.toml"), true, []string{"groups/db.toml"}, false, false},
		{"rename into sets/", event(5, unix.IN_MOVED_TO, "blocked.toml"), true, []string{"sets/blocked.toml"}, false, false},
		{"sets/ created", event(2, unix.IN_CREATE|unix.IN_ISDIR, "sets"), true, nil, true, false},
		{"vmfw.toml edited", event(2, unix.IN_CLOSE_WRITE, "vmfw.toml"), true, []string{"vmfw.toml"}, false, false},
		{"groups/ replaced", event(2, unix.IN_MOVED_TO, "groups"), true, nil, true, false},
		{"the directory swapped", event(1, unix.IN_MOVED_TO, "vmfw"), true, nil, true, false},
		{"a sibling in the parent", event(1, unix.IN_CLOSE_WRITE, "other"), false, nil, false, false},
		{"groups/ itself deleted", event(3, unix.IN_DELETE_SELF, ""), true, nil, true, false},
		{"an unknown watch", event(9, unix.IN_IGNORED, ""), true, nil, true, false},
		{"lost events", event(-1, unix.IN_Q_OVERFLOW, ""), true, nil, true, false},
	} {
		w := newW()
		if got := w.note(tc.events); got != tc.relevant {
			t.Errorf("%s: relevant = %v, want %v", tc.what, got, tc.relevant)
		}
		busy := w.busy()
		changed, full := w.take()
		if !reflect.DeepEqual(changed, tc.changed) || full != tc.full || busy != tc.busy {
			t.Errorf("%s: changed %v, full %v, busy %v; want %v, %v, %v", tc.what, changed, full, busy, tc.changed, tc.full, tc.busy)
		}
	}
}
