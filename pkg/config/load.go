package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/vmfw/vmfw/pkg/trace"
)

// maxFileSize bounds what Load reads per file: configuration files are a few
// kilobytes, and a runaway generator or a wrong symlink must not make every
// ifup read gigabytes.
const maxFileSize = 1 << 20

// errTooLarge reports a file over the limit its kind of file has (see
// schema.maxSize).
var errTooLarge = errors.New("file is too large")

// errNotRegular reports a file that turned out not to be a regular file
// when it was opened.
var errNotRegular = errors.New("not a regular file")

// Load reads the configuration directory dir: dir/vmfw.toml (optional),
// dir/sets/NAME.toml, dir/groups/NAME.toml and dir/vms/VMID.toml (any of
// the directories may be missing). It returns a complete, validated Model,
// or an *Error naming the file and line of the first problem, files taken
// in the order vmfw.toml, sets by name, groups by name, VMs by id: each
// kind before the kind that refers to it. It only reads files.
func Load(dir string) (*Model, error) {
	l := &loader{read: readFile}
	m, err := l.load(dir)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// loader holds the state of one Load.
type loader struct {
	// dir is the directory as given; root is its absolute, symlink-free
	// form, the boundary symlinks must resolve within.
	dir, root string
	// read reads one regular file of at most limit bytes; tests replace
	// it to simulate I/O errors that permissions cannot produce when
	// running as root.
	read func(path string, limit int) ([]byte, error)
	// parser walks vmfw.toml and the group files; VM files, read
	// concurrently, get one per worker.
	parser unstable.Parser
	// vmTypes caches decoding types per set of [netN] tables.
	vmTypes   map[string]reflect.Type
	vmTypesMu sync.Mutex
	// ips and macs record which interface claimed an address first.
	ips  map[netip.Addr]claim
	macs map[string]claim
	// cache, when set, supplies the files an earlier load parsed and
	// keeps those this one parses (Cache); changedSets are the set files
	// it must read again.
	cache       *Cache
	changedSets map[string]bool
	// listing, when set, is called with every directory the load lists,
	// before it lists it (LoadIndexed records them).
	listing func(path string)
	// linked records that the load met a symlinked file or
	// subdirectory, whose target can change without an event in the
	// configuration directory (Cache.reloadGroups).
	linked atomic.Bool
}

// claim is the interface that uses an address, for "already claimed by".
type claim struct {
	tap  string
	file string
	line int
}

func (l *loader) load(dir string) (*Model, *Error) {
	if err := l.setRoot(dir); err != nil {
		return nil, err
	}
	m := &Model{Dir: dir, Groups: map[string]*Group{}, VMs: map[int]*VM{}, Sets: map[string]*Set{}}
	host, err := l.loadHost()
	if err != nil {
		return nil, err
	}
	m.Host = *host

	setFiles, err := l.list("sets")
	if err != nil {
		return nil, err
	}
	var cachedSets map[string]cachedSet
	if l.cache != nil {
		// A set's validation depends on its file alone, so cached sets
		// stay valid whatever else changed.
		cachedSets = map[string]cachedSet{}
		defer func() { l.cache.sets = cachedSets }()
	}
	knownSets := make(map[string]bool, len(setFiles))
	for _, e := range setFiles {
		if !validGroupName(e.stem) {
			return nil, &Error{File: e.rel, Msg: fmt.Sprintf("invalid set name %q: the file name must be %s", e.stem, nameRule)}
		}
		s, src, err := l.loadSetFile(e)
		if cachedSets != nil {
			cachedSets[e.rel] = cachedSet{set: s, err: copyError(err), src: src}
		}
		if err != nil {
			return nil, err
		}
		m.Sets[s.Name] = s
		knownSets[s.Name] = true
	}

	groupFiles, err := l.list("groups")
	if err != nil {
		return nil, err
	}
	known := make(map[string]bool, len(groupFiles))
	for _, e := range groupFiles {
		if validGroupName(e.stem) {
			known[e.stem] = true
		}
	}
	var cachedGroups map[string]cachedGroup
	var cachedVMs map[string]loadedVM
	if l.cache != nil {
		cachedGroups, cachedVMs = l.cache.begin(known, knownSets)
		// What this load parsed or reused replaces the cache, also when
		// it stops at an error: files it did not reach are parsed next
		// time.
		defer func() { l.cache.groups, l.cache.vms = cachedGroups, cachedVMs }()
	}
	for _, e := range groupFiles {
		if !validGroupName(e.stem) {
			return nil, &Error{File: e.rel, Msg: fmt.Sprintf("invalid group name %q: the file name must be %s", e.stem, nameRule)}
		}
		g, err := l.loadGroupFile(e, known, knownSets)
		if cachedGroups != nil {
			cachedGroups[e.rel] = cachedGroup{group: g, err: copyError(err)}
		}
		if err != nil {
			return nil, err
		}
		m.Groups[g.Name] = g
	}

	vmFiles, err := l.list("vms")
	if err != nil {
		return nil, err
	}
	ids := make(map[string]int, len(vmFiles))
	for _, e := range vmFiles {
		id, ok := parseVMID(e.stem)
		if !ok {
			return nil, &Error{File: e.rel, Msg: fmt.Sprintf("invalid VM id %q: the file name must be a decimal number 0..999999999 without leading zeros", e.stem)}
		}
		ids[e.rel] = id
	}
	sort.SliceStable(vmFiles, func(i, j int) bool { return ids[vmFiles[i].rel] < ids[vmFiles[j].rel] })
	// Thousands of VM files are most of the time an operation spends
	// before it talks to the kernel; each is read and checked on its own,
	// on every CPU. Only address claims depend on the files before, so
	// they are recorded afterwards in id order, and the first problem is
	// the same as reading the files one after the other would find.
	loaded := make([]loadedVM, len(vmFiles))
	var todo []int // the files to parse: all of them without a cache
	for i, e := range vmFiles {
		if l.cache != nil {
			if lv, ok := l.cache.vm(e); ok {
				loaded[i] = lv
				continue
			}
		}
		todo = append(todo, i)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(todo)) {
		wg.Go(func() {
			var p unstable.Parser
			for k := int(next.Add(1)) - 1; k < len(todo); k = int(next.Add(1)) - 1 {
				i := todo[k]
				loaded[i] = l.loadVMFile(&p, vmFiles[i], ids[vmFiles[i].rel], known)
			}
		})
	}
	wg.Wait()
	if cachedVMs != nil {
		for i, e := range vmFiles {
			lv := loaded[i]
			lv.err = copyError(lv.err)
			cachedVMs[e.rel] = lv
		}
	}
	l.ips = make(map[netip.Addr]claim)
	l.macs = make(map[string]claim)
	for _, lv := range loaded {
		if lv.err != nil {
			return nil, lv.err
		}
		if err := l.claim(lv.file, lv.claims); err != nil {
			return nil, err
		}
		m.VMs[lv.vm.ID] = lv.vm
	}
	return m, nil
}

// loadGroupFile reads and validates group file e, or takes it from the
// cache.
func (l *loader) loadGroupFile(e entry, known, knownSets map[string]bool) (*Group, *Error) {
	if l.cache != nil {
		if g, ok := l.cache.group(e); ok {
			return g.group, g.err
		}
	}
	f, err := l.open(&l.parser, e, groupSchema)
	if err != nil {
		return nil, err
	}
	return loadGroup(f, e.stem, known, knownSets)
}

// loadSetFile reads and validates set file e, or takes it from the cache,
// or, when it changed, reads it from its difference with the version the
// cache holds (reloadSet). With a cache it also returns what the next
// version can be read from.
func (l *loader) loadSetFile(e entry) (*Set, *setSource, *Error) {
	var last cachedSet
	if l.cache != nil {
		s, ok := l.cache.set(e, l.changedSets[e.rel])
		if ok {
			return s.set, s.src, s.err
		}
		last = s
	}
	f, err := l.open(&l.parser, e, setSchema)
	if err != nil {
		return nil, nil, err
	}
	if l.cache == nil {
		s, err := loadSet(f, &l.parser, e.stem)
		return s, nil, err
	}
	if last.set != nil && last.src != nil {
		start := time.Now()
		if s, src, ok := reloadSet(last.set, last.src, f); ok {
			trace.Since(start, "read %s from its difference with the version before", e.rel)
			return s, src, nil
		}
	}
	return loadSetSource(f, &l.parser, e.stem)
}

// setRoot checks that dir is a directory and resolves the boundary for
// symlinks.
func (l *loader) setRoot(dir string) *Error {
	l.dir = dir
	fi, err := os.Stat(dir)
	if err != nil {
		return &Error{File: dir, Msg: "cannot read configuration directory: " + ioReason(err)}
	}
	if !fi.IsDir() {
		return &Error{File: dir, Msg: "not a directory"}
	}
	abs, err := filepath.Abs(dir)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return &Error{File: dir, Msg: "cannot resolve configuration directory: " + ioReason(err)}
	}
	l.root = abs
	return nil
}

// entry is a configuration file found in a subdirectory.
type entry struct {
	rel, path, stem string
	// mode is the type of the directory entry itself (a symlink is not
	// followed).
	mode fs.FileMode
}

// list returns the configuration files of subdirectory sub (configStem),
// sorted by name. A missing directory holds no files.
func (l *loader) list(sub string) ([]entry, *Error) {
	path := filepath.Join(l.dir, sub)
	if l.listing != nil {
		l.listing(path)
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &Error{File: sub, Msg: "cannot read directory: " + ioReason(err)}
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		l.linked.Store(true)
		if err := l.checkInside(sub, path); err != nil {
			return nil, err
		}
		if fi, err = os.Stat(path); err != nil {
			return nil, &Error{File: sub, Msg: "cannot read directory: " + ioReason(err)}
		}
	}
	if !fi.IsDir() {
		return nil, &Error{File: sub, Msg: "not a directory"}
	}
	des, err := os.ReadDir(path)
	if err != nil {
		return nil, &Error{File: sub, Msg: "cannot read directory: " + ioReason(err)}
	}
	var out []entry
	for _, de := range des {
		name := de.Name()
		stem, ok := configStem(name)
		if !ok {
			continue
		}
		out = append(out, entry{rel: sub + "/" + name, path: filepath.Join(path, name), stem: stem, mode: de.Type()})
	}
	return out, nil
}

// configStem returns the stem of a configuration file's name; ok is false
// for the names a load skips: not *.toml, or starting with "." (editor
// backups and lock files, emacs' .#web.toml).
func configStem(name string) (stem string, ok bool) {
	stem, ok = strings.CutSuffix(name, ".toml")
	return stem, ok && !strings.HasPrefix(name, ".")
}

// checkInside rejects a symlink that resolves outside the configuration
// directory: the configuration decides what reaches iptables, so it must
// not be extendable from elsewhere through a link. Entries that are not
// links are inside when their directory is.
func (l *loader) checkInside(rel, path string) *Error {
	target, err := filepath.EvalSymlinks(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Error{File: rel, Msg: "broken symlink: " + ioReason(err)}
	}
	if err != nil {
		return &Error{File: rel, Msg: "cannot resolve symlink: " + ioReason(err)}
	}
	target, err = filepath.Abs(target)
	if err != nil {
		return &Error{File: rel, Msg: "cannot resolve symlink: " + ioReason(err)}
	}
	r, err := filepath.Rel(l.root, target)
	if err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
		return &Error{File: rel, Msg: fmt.Sprintf("symlink to %q points outside the configuration directory %q", target, l.root)}
	}
	return nil
}

// open reads and checks one configuration file, walking it with p.
func (l *loader) open(p *unstable.Parser, e entry, s *schema) (*file, *Error) {
	mode := e.mode
	if mode&fs.ModeSymlink != 0 {
		l.linked.Store(true)
		if err := l.checkInside(e.rel, e.path); err != nil {
			return nil, err
		}
		fi, err := os.Stat(e.path)
		if err != nil {
			return nil, &Error{File: e.rel, Msg: "cannot read: " + ioReason(err)}
		}
		mode = fi.Mode()
	}
	// A FIFO or device would block or never end; only regular files count.
	if !mode.IsRegular() {
		return nil, &Error{File: e.rel, Msg: "not a regular file"}
	}
	data, err := l.read(e.path, s.limit())
	if errors.Is(err, errTooLarge) {
		return nil, &Error{File: e.rel, Msg: s.tooLarge()}
	}
	if errors.Is(err, errNotRegular) {
		return nil, &Error{File: e.rel, Msg: err.Error()}
	}
	if err != nil {
		return nil, &Error{File: e.rel, Msg: "cannot read: " + ioReason(err)}
	}
	// Windows editors start files with a byte order mark, which TOML does
	// not allow; it carries no meaning, so it is dropped.
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if line, ok := invalidUTF8(data); ok {
		return nil, &Error{File: e.rel, Line: line, Msg: "file is not valid UTF-8"}
	}
	f := &file{rel: e.rel, path: e.path, data: data, schema: s}
	if !s.ownWalk {
		f.lines = scanLines(p, data)
	}
	return f, nil
}

// readFile reads a regular file of at most limit bytes. It uses the
// system calls directly: a Load reads thousands of small files, and an
// os.File costs a poller registration and a finalizer each.
func readFile(path string, limit int) ([]byte, error) {
	// The file may have been replaced since its type was checked: opening
	// a FIFO blocks until a writer appears unless O_NONBLOCK is given, and
	// what was opened is checked again below.
	fd, err := openRetry(path)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, errNotRegular
	}
	if st.Size > int64(limit) {
		return nil, errTooLarge
	}
	// One byte more than the size shows in one read that the file ended
	// there; a file that grew since Fstat is read on up to the limit.
	data := make([]byte, 0, st.Size+1)
	for {
		if len(data) == cap(data) {
			data = slices.Grow(data, min(cap(data), limit+1-len(data)))
		}
		n, err := syscall.Read(fd, data[len(data):cap(data)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		data = data[:len(data)+n]
		if len(data) > limit {
			return nil, errTooLarge
		}
		if n == 0 || len(data) < cap(data) && int64(len(data)) >= st.Size {
			return data, nil
		}
	}
}

// openRetry opens path read-only, retrying when a signal interrupts it.
func openRetry(path string) (int, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// ioReason words an I/O error without the path, which the message already
// names.
func ioReason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// invalidUTF8 returns the line of the first byte that is not UTF-8.
func invalidUTF8(data []byte) (int, bool) {
	if utf8.Valid(data) {
		return 0, false
	}
	for i := 0; i < len(data); {
		r, n := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && n <= 1 {
			return bytes.Count(data[:i], []byte("\n")) + 1, true
		}
		i += n
	}
	return 0, false
}

// DefaultDir is where the configuration lives unless told otherwise.
const DefaultDir = "/etc/vmfw"

// DirFromEnv returns $VMFW_CONFIG_DIR or DefaultDir: the configuration
// directory of every entry point that is not given one.
func DirFromEnv() string {
	return cmp.Or(os.Getenv("VMFW_CONFIG_DIR"), DefaultDir)
}
