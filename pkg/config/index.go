package config

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// A persistent index of the parsed configuration.
//
// Every vmfw process that runs without the agent (QEMU's script=, a
// hook, the CNI plugin) used to parse every file of the configuration
// directory: at 5000 VM files that is 150–400 ms, most of what an ifup
// costs (docs/performance.md). The files change rarely and the parsed
// Model is small, so LoadIndexed keeps the last Model it loaded in a file,
// with what identified then every file the load read and every directory
// it listed (size, modification and change times, inode; a directory's
// times change when an entry is added, removed or renamed), and the
// program that loaded it. A load that finds them all as recorded decodes
// the Model instead of parsing; anything else loads from the files and
// writes a new index.
//
// Each file and directory is identified before it is read: an edit during
// a load leaves an index whose record no longer matches, and the next load
// reads the files again. Only a complete, valid load is recorded, so the
// checks across files (an address claimed twice) keep their all-or-nothing
// verdict: an index holds a whole valid configuration or nothing.

// fileID identifies a file's or directory's content without reading it;
// the zero Size with Missing set records a path that did not exist.
type fileID struct {
	Path              string
	Missing           bool
	Size              int64
	ModTime, ChangeNS int64
	Dev, Ino          uint64
}

// indexFile is the index file's header: the paths the load read and the
// VMs follow it (writeIndex).
type indexFile struct {
	// Dir is the configuration directory, absolute.
	Dir string
	// Program identifies the vmfw that wrote the index: another build may
	// read the same files into another Model.
	Program fileID
	Model   *Model
}

// LoadIndexed is Load, answered from the index at path when everything
// the last load through it read is as it was, and the program too. A
// missing, stale or unreadable index is not an error: the files are loaded
// and the index rewritten (a failure to write it is ignored: it is a
// cache).
func LoadIndexed(dir, path string) (*Model, error) {
	_, confirm, err := LoadIndexedLater(dir, path)
	if err != nil {
		return nil, err
	}
	return confirm()
}

// LoadIndexedLater is LoadIndexed without waiting for the check that the
// index's files are as it recorded them, a stat each (5 ms of an ifup at
// 5000 VM files on two cores): m is the Model the index holds, and
// confirm waits for the check. confirm returns m itself when every file
// is as recorded and otherwise what LoadIndexed returns, a Model that
// Load reads from the files (or its error). The caller may compute from
// m while the stats run, but must call confirm, once, before it acts on
// anything m says. When the index cannot be used, m is Load's and confirm
// returns it at once.
func LoadIndexedLater(dir, path string) (m *Model, confirm func() (*Model, error), err error) {
	loaded := func(m *Model, err error) (*Model, func() (*Model, error), error) {
		if err != nil {
			return nil, nil, err
		}
		return m, func() (*Model, error) { return m, nil }, nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return loaded(Load(dir))
	}
	program, err := programID()
	if err != nil {
		return loaded(Load(dir))
	}
	m, paths := readIndex(path, abs, program)
	if m == nil {
		return loaded(reindex(dir, path, abs, program))
	}
	m.Dir = dir
	unchanged := statAll(paths)
	return m, func() (*Model, error) {
		if unchanged() {
			return m, nil
		}
		return reindex(dir, path, abs, program)
	}, nil
}

// reindex loads dir and writes the index of what it read.
func reindex(dir, path, abs string, program fileID) (*Model, error) {
	var mu sync.Mutex // VM files are read concurrently
	var paths []fileID
	note := func(p string) {
		id := identify(p)
		mu.Lock()
		defer mu.Unlock()
		paths = append(paths, id)
	}
	l := &loader{read: func(p string, limit int) ([]byte, error) { note(p); return readFile(p, limit) }, listing: note}
	note(filepath.Join(dir, "vmfw.toml")) // read only when it exists
	m, lerr := l.load(dir)
	if lerr != nil {
		return nil, lerr
	}
	writeIndex(path, &indexFile{Dir: abs, Program: program, Model: m}, paths)
	return m, nil
}

// identify stats path, following links: a link re-pointed elsewhere is
// another file.
func identify(path string) fileID { return identifyAt(unix.AT_FDCWD, path, path) }

// programID identifies the running program.
func programID() (fileID, error) {
	exe, err := os.Executable()
	if err != nil {
		return fileID{}, err
	}
	return identify(exe), nil
}

// indexMagic starts an index file; its last digits change when the
// layout does. The file ends with the CRC-32C of what is between them.
const indexMagic = "vmfw config index 3\n"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// readIndex returns the Model the index at path holds when it was written
// for dir by program, and the files it records, which the caller checks
// (statAll); nil when there is no such index.
//
// The file is mapped, not read: the Model's strings are its bytes
// (decoder), and a mapping of the page cache spares copying a megabyte
// at 5000 VMs into memory a process pays for in page faults. The mapping
// stays while the Model may be used, the rest of the process: readIndex
// serves one-shot processes (the agent loads once and keeps its Model),
// and the index is replaced by a rename, never written in place.
func readIndex(path, dir string, program fileID) (m *Model, paths []fileID) {
	data, err := mapFile(path)
	if err != nil {
		return nil, nil
	}
	defer func() {
		if m == nil {
			unix.Munmap(data)
		}
	}()
	body, ok := bytes.CutPrefix(data, []byte(indexMagic))
	if !ok || len(body) < crc32.Size {
		return nil, nil
	}
	body, sum := body[:len(body)-crc32.Size], body[len(body)-crc32.Size:]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(sum) {
		return nil, nil // a disk's corruption, or a file not written by vmfw
	}
	d := newDecoder(body)
	var ix indexFile
	if json.Unmarshal(d.raw(d.uvarint()), &ix) != nil || d.err != nil {
		return nil, nil
	}
	if ix.Dir != dir || ix.Program != program || ix.Model == nil || program.ModTime == -1 {
		return nil, nil
	}
	n, _ := d.count()
	paths = make([]fileID, n)
	for i := range paths {
		fileIDLayout(d, &paths[i])
	}
	vms := d.vms()
	if d.err != nil || len(d.buf) != 0 {
		return nil, nil
	}
	m = ix.Model
	m.VMs = make(map[int]*VM, len(vms))
	for i := range vms {
		m.VMs[vms[i].ID] = &vms[i]
	}
	if m.Groups == nil {
		m.Groups = map[string]*Group{}
	}
	if m.Sets == nil {
		m.Sets = map[string]*Set{}
	}
	for _, s := range m.Sets {
		s.reindex()
	}
	return m, paths
}

// writeIndex writes ix to path atomically: a reader sees the old index
// or the new one, never part of one.
func writeIndex(path string, ix *indexFile, paths []fileID) {
	// The header, small, in JSON (which keeps an empty list apart from a
	// missing one, so the Model read back is the one Load returned); the
	// VMs and paths, which grow with the VMs, in the binary layout of
	// indexcodec.go.
	head := *ix
	m := *ix.Model
	m.VMs = nil
	head.Model = &m
	js, err := json.Marshal(&head)
	if err != nil {
		return
	}
	e := &encoder{buf: make([]byte, 0, len(indexMagic)+len(js)+100*len(paths)+200*len(ix.Model.VMs))}
	e.buf = append(e.buf, indexMagic...)
	e.uvarint(uint64(len(js)))
	e.buf = append(e.buf, js...)
	e.count(len(paths), false)
	for i := range paths {
		fileIDLayout(e, &paths[i])
	}
	vms := make([]*VM, 0, len(ix.Model.VMs))
	for _, id := range slices.Sorted(maps.Keys(ix.Model.VMs)) {
		vms = append(vms, ix.Model.VMs[id])
	}
	e.vms(vms)
	e.buf = binary.BigEndian.AppendUint32(e.buf, crc32.Checksum(e.buf[len(indexMagic):], castagnoli))
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-index-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(e.buf)
	if cerr := tmp.Close(); werr != nil || cerr != nil || os.Rename(tmp.Name(), path) != nil {
		os.Remove(tmp.Name())
	}
}

// mapFile maps the file at path, read-only.
func mapFile(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Size <= 0 || st.Size != int64(int(st.Size)) {
		return nil, errors.New("not an index")
	}
	return unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED)
}

// statAll starts checking that every path is as recorded, and returns
// the function that waits for the check and says whether it held, to be
// called once. It is a stat per file, 7.8 ms at 5000 VM files on one
// thread (10 ms through the paths): the stats are made relative to each
// directory's descriptor, which spares resolving the path again for each
// file, and split among threads, which unchanged joins.
func statAll(paths []fileID) (unchanged func() bool) {
	// Each path's directory is opened, and each path split, once before
	// the threads start: splitting in the threads cleaned every path
	// twice, a tenth of the stats' time at 5000 files.
	dirs := map[string]int{}
	type target struct {
		dirfd int
		name  string
	}
	targets := make([]target, len(paths))
	for i, id := range paths {
		dir, name := filepath.Split(id.Path)
		fd, ok := dirs[dir]
		if !ok {
			var err error
			if fd, err = unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
				fd = unix.AT_FDCWD
			}
			dirs[dir] = fd
		}
		if fd == unix.AT_FDCWD || name == "" {
			fd, name = unix.AT_FDCWD, id.Path // the path is stat'ed whole
		}
		targets[i] = target{fd, name}
	}
	closeDirs := func() {
		for _, fd := range dirs {
			if fd != unix.AT_FDCWD {
				unix.Close(fd)
			}
		}
	}
	workers := min(runtime.GOMAXPROCS(0), 4, 1+len(paths)/500)
	var stale atomic.Bool
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(paths) && !stale.Load(); i += workers {
				if identifyAt(targets[i].dirfd, targets[i].name, paths[i].Path) != paths[i] {
					stale.Store(true)
				}
			}
		})
	}
	return func() bool {
		wg.Wait()
		closeDirs()
		return !stale.Load()
	}
}

// identifyAt is identify of path, which is name in the directory open as
// dirfd (unix.AT_FDCWD: name is the path itself).
func identifyAt(dirfd int, name, path string) fileID {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return fileID{Path: path, Missing: true}
	case err != nil:
		// Unidentifiable: a fresh ModTime of -1 never matches a record.
		return fileID{Path: path, ModTime: -1}
	}
	return fileID{Path: path, Size: st.Size, ModTime: st.Mtim.Sec*1e9 + st.Mtim.Nsec,
		ChangeNS: st.Ctim.Sec*1e9 + st.Ctim.Nsec, Dev: st.Dev, Ino: st.Ino}
}
