package config

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
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

// indexVersion changes when the index's layout does.
const indexVersion = 1

// fileID identifies a file's or directory's content without reading it;
// the zero Size with Missing set records a path that did not exist.
type fileID struct {
	Path              string
	Missing           bool
	Size              int64
	ModTime, ChangeNS int64
	Dev, Ino          uint64
}

// indexFile is what the index file holds.
type indexFile struct {
	Version int
	// Dir is the configuration directory, absolute.
	Dir string
	// Program identifies the vmfw that wrote the index: another build may
	// read the same files into another Model.
	Program fileID
	// Paths are the directories listed and the files read, in order.
	Paths []fileID
	Model *Model
}

// LoadIndexed is Load, answered from the index at path when everything
// the last load through it read is as it was, and the program too. A
// missing, stale or unreadable index is not an error: the files are loaded
// and the index rewritten (a failure to write it is ignored: it is a
// cache).
func LoadIndexed(dir, path string) (*Model, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Load(dir)
	}
	program, err := programID()
	if err != nil {
		return Load(dir)
	}
	if m := readIndex(path, abs, program); m != nil {
		m.Dir = dir
		return m, nil
	}
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
	writeIndex(path, &indexFile{Version: indexVersion, Dir: abs, Program: program, Paths: paths, Model: m})
	return m, nil
}

// identify stats path, following links: a link re-pointed elsewhere is
// another file.
func identify(path string) fileID {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileID{Path: path, Missing: true}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if err != nil || !ok {
		// Unidentifiable: a fresh ModTime of -1 never matches a record.
		return fileID{Path: path, ModTime: -1}
	}
	return fileID{Path: path, Size: fi.Size(), ModTime: fi.ModTime().UnixNano(),
		ChangeNS: st.Ctim.Sec*1e9 + st.Ctim.Nsec, Dev: st.Dev, Ino: st.Ino}
}

// programID identifies the running program.
func programID() (fileID, error) {
	exe, err := os.Executable()
	if err != nil {
		return fileID{}, err
	}
	return identify(exe), nil
}

// readIndex returns the Model the index at path holds when it was written
// for dir by program and everything it records is unchanged; nil
// otherwise.
func readIndex(path, dir string, program fileID) *Model {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var ix indexFile
	if json.Unmarshal(data, &ix) != nil {
		return nil
	}
	if ix.Version != indexVersion || ix.Dir != dir || ix.Program != program || ix.Model == nil || program.ModTime == -1 {
		return nil
	}
	seen := map[string]bool{}
	for _, id := range ix.Paths {
		if !seen[id.Path] && identify(id.Path) != id {
			return nil
		}
		seen[id.Path] = true
	}
	m := ix.Model
	if m.Groups == nil {
		m.Groups = map[string]*Group{}
	}
	if m.VMs == nil {
		m.VMs = map[int]*VM{}
	}
	if m.Sets == nil {
		m.Sets = map[string]*Set{}
	}
	for _, s := range m.Sets {
		s.reindex()
	}
	for _, vm := range m.VMs {
		for _, n := range vm.NICs {
			n.VM = vm
		}
	}
	return m
}

// writeIndex writes ix to path atomically: a reader sees the old index
// or the new one, never part of one.
func writeIndex(path string, ix *indexFile) {
	// An interface points back at its VM; JSON takes no cycles, and
	// readIndex restores the pointers.
	m := *ix.Model
	m.VMs = make(map[int]*VM, len(ix.Model.VMs))
	for id, vm := range ix.Model.VMs {
		c := *vm
		c.NICs = make([]*NIC, len(vm.NICs))
		for i, n := range vm.NICs {
			nc := *n
			nc.VM = nil
			c.NICs[i] = &nc
		}
		m.VMs[id] = &c
	}
	out := *ix
	out.Model = &m
	// JSON, not gob: it keeps an empty list apart from a missing one, so
	// the Model read back is the one Load returned, not only one alike.
	data, err := json.Marshal(&out)
	if err != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-index-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(data)
	if cerr := tmp.Close(); werr != nil || cerr != nil || os.Rename(tmp.Name(), path) != nil {
		os.Remove(tmp.Name())
	}
}
