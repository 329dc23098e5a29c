package config

import (
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// Cache makes repeated loads of one directory cheap: it keeps what the
// last load parsed, file by file, and a load through it parses again only
// the files it is told changed (the agent learns them from inotify), the
// files it has not parsed before, and every symlinked file (a link's
// target can change without an event in the directory). Every other set,
// group and VM file is taken from the previous load, so a group edit at
// thousands of VMs parses one file instead of thousands, and an edit
// elsewhere does not parse a set of 100,000 networks again. vmfw.toml is
// read every time, and the directory listings too, so files added or
// removed are seen whatever the caller says — except for the most common
// edit, existing group files changed and nothing else named (reloadGroups):
// then only those files are read, and the caller must name every file
// that changed, as the agent's watcher does.
//
// The result is exactly what Load returns for the same files: the same
// Model (sharing the unchanged sets, groups and VMs with the previous one, which
// nothing modifies) or the same first error. What a file's validation
// depends on beyond its own text — the group and set names, for
// references — is compared, and when it differs every file that refers to
// such names is parsed.
//
// A Cache is safe for use by one goroutine at a time.
type Cache struct {
	mu sync.Mutex
	// dir is the directory the entries were loaded from; a load of another
	// directory starts afresh.
	dir string
	// known and knownSets are the group and set names the entries were
	// validated against.
	known, knownSets map[string]bool
	groups           map[string]cachedGroup // by path relative to dir
	vms              map[string]loadedVM    // by path relative to dir
	sets             map[string]cachedSet   // by path relative to dir
	// last is the model the last load returned, nil after a failed load
	// or one that met a symlink (reloadGroups starts from it).
	last *Model
}

// cachedSet is one set file's outcome. Sets are the files worth caching
// most: one can list 100,000 networks. src, for a file of the usual
// shape, is the file itself and where its elements are, from which the
// next version of the file is read when it changes (reloadSet).
type cachedSet struct {
	set *Set
	err *Error
	src *setSource
}

// cachedGroup is one group file's outcome.
type cachedGroup struct {
	group *Group
	err   *Error
}

// Load loads dir as Load does. changed lists the files that may have
// changed since the previous load through c, as paths relative to dir
// ("groups/web.toml", "vms/110.toml", "sets/blocked.toml"); names of
// files that do not exist, or are not configuration, are harmless.
func (c *Cache) Load(dir string, changed []string) (*Model, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dir != dir {
		c.reset()
		c.dir = dir
	}
	if m, err, ok := c.reloadGroups(dir, changed); ok {
		if err != nil {
			return nil, err
		}
		return m, nil
	}
	c.last = nil
	changedSets := map[string]bool{}
	for _, rel := range changed {
		delete(c.groups, rel)
		delete(c.vms, rel)
		// Kept, to read the new version from its difference.
		changedSets[rel] = true
	}
	l := &loader{read: readFile, cache: c, changedSets: changedSets}
	m, err := l.load(dir)
	if err != nil {
		return nil, err
	}
	if !l.linked.Load() {
		c.last = m
	}
	return m, nil
}

// reloadGroups loads an edit of existing group files alone, the agent's
// most common reload, from the last model: the changed files are parsed
// and every other part of the model is shared, instead of listing the
// directories and collecting the claims of every VM again (12.8 ms of a
// group edit at 5000 VMs, docs/performance.md). Nothing else can have
// changed: the caller names every changed file (vmfw.toml included), no
// group or set name came or went (a group file that is new, or gone, is not such an edit),
// and the last load met no symlink. ok is false for any other change,
// which Load then loads as usual.
func (c *Cache) reloadGroups(dir string, changed []string) (m *Model, err *Error, ok bool) {
	if c.last == nil || len(changed) == 0 {
		return nil, nil, false
	}
	l := &loader{read: readFile, dir: dir}
	var edited []entry
	for _, rel := range slices.Sorted(slices.Values(changed)) {
		sub, name, inSub := strings.Cut(rel, "/")
		stem, isConfig := configStem(name)
		switch {
		case !inSub && rel != "vmfw.toml":
			continue // not configuration: only vmfw.toml is read there
		case inSub && !isConfig && !strings.ContainsRune(name, '/'):
			continue // an editor's temporary or backup file, which list skips
		case sub != "groups" || !isConfig || strings.ContainsRune(name, '/') || !c.known[stem]:
			return nil, nil, false
		}
		path := filepath.Join(dir, "groups", name)
		fi, statErr := os.Lstat(path)
		if statErr != nil || !fi.Mode().IsRegular() {
			return nil, nil, false
		}
		edited = append(edited, entry{rel: rel, path: path, stem: stem, mode: fi.Mode().Type()})
	}
	if len(edited) == 0 {
		return nil, nil, false
	}
	groups := maps.Clone(c.last.Groups)
	for _, e := range edited {
		g, err := l.loadGroupFile(e, c.known, c.knownSets)
		c.groups[e.rel] = cachedGroup{group: g, err: copyError(err)}
		if err != nil {
			c.last = nil
			return nil, err, true
		}
		groups[g.Name] = g
	}
	next := *c.last
	next.Groups = groups
	c.last = &next
	return &next, nil, true
}

// Reset forgets every file: the next load parses them all.
func (c *Cache) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reset()
}

func (c *Cache) reset() {
	c.dir, c.known, c.knownSets, c.groups, c.vms, c.sets, c.last = "", nil, nil, nil, nil, nil, nil
}

// begin starts a load that found the group names known and the set names
// knownSets: entries validated against other names are dropped (groups
// refer to groups and sets, VMs to groups). It returns the maps the load
// fills, which replace the cache's when the load ends, so that files a
// failed load did not reach are parsed next time.
func (c *Cache) begin(known, knownSets map[string]bool) (groups map[string]cachedGroup, vms map[string]loadedVM) {
	if !maps.Equal(c.known, known) {
		c.groups, c.vms = nil, nil
	}
	if !maps.Equal(c.knownSets, knownSets) {
		c.groups = nil
	}
	c.known, c.knownSets = known, knownSets
	return map[string]cachedGroup{}, map[string]loadedVM{}
}

// group returns the cached outcome of group file e, and whether it can be
// reused: never for a symlink (Cache).
func (c *Cache) group(e entry) (cachedGroup, bool) {
	g, ok := c.groups[e.rel]
	g.err = copyError(g.err)
	return g, ok && e.mode&fs.ModeSymlink == 0
}

// set returns the cached outcome of set file e, and whether it can be
// reused as it is (else the file is read, and the outcome is the previous
// version's).
func (c *Cache) set(e entry, changed bool) (cachedSet, bool) {
	s, ok := c.sets[e.rel]
	s.err = copyError(s.err)
	return s, ok && !changed && e.mode&fs.ModeSymlink == 0
}

// vm returns the cached outcome of VM file e, and whether it can be
// reused, as group does.
func (c *Cache) vm(e entry) (loadedVM, bool) {
	lv, ok := c.vms[e.rel]
	lv.err = copyError(lv.err)
	return lv, ok && e.mode&fs.ModeSymlink == 0
}

// copyError returns a copy of err (nil for nil): callers may rewrite the
// error they get (the agent makes its file name absolute), which must not
// change the cached one.
func copyError(err *Error) *Error {
	if err == nil {
		return nil
	}
	c := *err
	return &c
}
