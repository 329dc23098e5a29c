package cluster

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmfw/vmfw/pkg/config"
)

// ReadDir returns the files config.Load reads in dir, by their path
// relative to it: vmfw.toml, groups/*.toml and vms/*.toml (names starting
// with "." are not configuration).
func ReadDir(dir string) (map[string][]byte, error) {
	files := map[string][]byte{}
	add := func(rel string) error {
		data, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			return err
		}
		files[rel] = data
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, "vmfw.toml")); err == nil {
		if err := add("vmfw.toml"); err != nil {
			return nil, err
		}
	}
	for _, sub := range []string{"groups", "vms"} {
		des, err := os.ReadDir(filepath.Join(dir, sub))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, de := range des {
			if !strings.HasSuffix(de.Name(), ".toml") || strings.HasPrefix(de.Name(), ".") {
				continue
			}
			if err := add(sub + "/" + de.Name()); err != nil {
				return nil, err
			}
		}
	}
	return files, nil
}

// validRel accepts the relative paths ReadDir returns, so that nothing
// read from etcd writes outside a directory.
func validRel(rel string) bool {
	if rel == "vmfw.toml" {
		return true
	}
	sub, name, ok := strings.Cut(rel, "/")
	return ok && (sub == "groups" || sub == "vms") && strings.HasSuffix(name, ".toml") &&
		!strings.HasPrefix(name, ".") && !strings.ContainsAny(name, "/\\\x00")
}

// digest is the SHA-256 of a file set, in path order.
func digest(files map[string][]byte) string {
	h := sha256.New()
	for _, rel := range slices.Sorted(mapKeys(files)) {
		fmt.Fprintf(h, "%s\x00%d\x00", rel, len(files[rel]))
		h.Write(files[rel])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// Push validates dir as config.Load does (vmfw check) and, when it is
// valid, replaces the configuration in etcd with its files in one
// transaction. A configuration error is returned as Load's *config.Error
// and nothing is written. It returns the new revision.
func Push(ctx context.Context, cli *clientv3.Client, k Keys, dir, by string) (int64, error) {
	if _, err := config.Load(dir); err != nil {
		return 0, err
	}
	files, err := ReadDir(dir)
	if err != nil {
		return 0, err
	}
	// The files read must be the ones validated: a file changed in
	// between is caught by validating the bytes pushed.
	if err := validateFiles(files); err != nil {
		return 0, err
	}
	meta, err := json.Marshal(Meta{Files: len(files), SHA256: digest(files), PushedAt: time.Now().UTC(), PushedBy: by})
	if err != nil {
		return 0, err
	}
	archive, err := encodeFiles(files)
	if err != nil {
		return 0, err
	}
	// The archive and its meta key go in one transaction, so a reader
	// never sees one without the other; of two concurrent pushes the later
	// transaction wins whole. Nothing depends on what was there before,
	// so nothing is read first.
	tctx, cancel := withTimeout(ctx)
	defer cancel()
	resp, err := cli.Txn(tctx).Then(clientv3.OpPut(k.ConfigFiles(), string(archive)), clientv3.OpPut(k.ConfigMeta(), string(meta))).Commit()
	if err != nil {
		return 0, fmt.Errorf("writing the configuration to etcd (%d files, %d bytes compressed; etcd refuses requests over its --max-request-bytes, 1.5 MiB by default): %w", len(files), len(archive), err)
	}
	return resp.Header.Revision, nil
}

// encodeFiles packs a file set into the value of the ConfigFiles key:
// gzip-compressed JSON of the files by relative path. Configuration files
// are small and alike (thousands of VM files compress to a few hundred
// kilobytes), so one value holds a large cluster's configuration.
func encodeFiles(files map[string][]byte) ([]byte, error) {
	var b bytes.Buffer
	z := gzip.NewWriter(&b)
	if err := json.NewEncoder(z).Encode(files); err != nil {
		return nil, err
	}
	if err := z.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// maxArchive bounds what decodeFiles inflates, far above what etcd
// accepts compressed, so that a corrupt or hostile value cannot exhaust
// memory.
const maxArchive = 256 << 20

// decodeFiles unpacks what encodeFiles packed.
func decodeFiles(value []byte) (map[string][]byte, error) {
	z, err := gzip.NewReader(bytes.NewReader(value))
	if err != nil {
		return nil, fmt.Errorf("not a configuration archive: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(z, maxArchive+1))
	if err != nil {
		return nil, fmt.Errorf("not a configuration archive: %w", err)
	}
	if len(data) > maxArchive {
		return nil, fmt.Errorf("the configuration archive inflates to more than %d bytes", maxArchive)
	}
	files := map[string][]byte{}
	if err := json.Unmarshal(data, &files); err != nil {
		return nil, fmt.Errorf("not a configuration archive: %w", err)
	}
	return files, nil
}

// validateFiles loads the file set from a scratch directory, as an agent
// will.
func validateFiles(files map[string][]byte) error {
	tmp, err := os.MkdirTemp("", "vmfw-push-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := writeFiles(tmp, files); err != nil {
		return err
	}
	_, err = config.Load(tmp)
	return err
}

// Snapshot is the configuration in etcd at one revision.
type Snapshot struct {
	// Revision is the configuration's revision (its meta key's
	// ModRevision); 0 when nothing was pushed.
	Revision int64
	Meta     Meta
	Files    map[string][]byte
}

// Fetch reads the configuration from etcd.
func Fetch(ctx context.Context, cli *clientv3.Client, k Keys) (*Snapshot, int64, error) {
	tctx, cancel := withTimeout(ctx)
	defer cancel()
	resp, err := cli.Get(tctx, k.ConfigPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	s, err := snapshotOf(k, resp.Kvs)
	return s, resp.Header.Revision, err
}

// snapshotOf assembles a Snapshot from the keys under the configuration
// prefix, checking it against its meta key's digest.
func snapshotOf(k Keys, kvs []*mvccpb.KeyValue) (*Snapshot, error) {
	s := &Snapshot{Files: map[string][]byte{}}
	for _, kv := range kvs {
		switch key := string(kv.Key); key {
		case k.ConfigMeta():
			if err := json.Unmarshal(kv.Value, &s.Meta); err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			s.Revision = kv.ModRevision
		case k.ConfigFiles():
			files, err := decodeFiles(kv.Value)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			for rel := range files {
				if !validRel(rel) {
					return nil, fmt.Errorf("%s: %q is not a configuration file name", key, rel)
				}
			}
			s.Files = files
		}
	}
	if s.Revision != 0 && digest(s.Files) != s.Meta.SHA256 {
		return nil, fmt.Errorf("the configuration at revision %d does not match its digest (written by something else than vmfw cluster push?)", s.Revision)
	}
	return s, nil
}

// writeFiles writes a file set into dir.
func writeFiles(dir string, files map[string][]byte) error {
	for _, rel := range slices.Sorted(mapKeys(files)) {
		if !validRel(rel) {
			return fmt.Errorf("%s: not a configuration file name", rel)
		}
		path := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, files[rel], 0o644); err != nil {
			return err
		}
	}
	for _, sub := range []string{"groups", "vms"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// Pull writes the configuration in etcd into dir, which must not exist or
// be empty. It returns the revision written.
func Pull(ctx context.Context, cli *clientv3.Client, k Keys, dir string) (int64, error) {
	s, _, err := Fetch(ctx, cli, k)
	if err != nil {
		return 0, err
	}
	if s.Revision == 0 {
		return 0, errors.New("no configuration was pushed to this cluster")
	}
	if des, err := os.ReadDir(dir); err == nil && len(des) > 0 {
		return 0, fmt.Errorf("%s: not empty; pull writes into a new or empty directory", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	return s.Revision, writeFiles(dir, s.Files)
}

// Cache is a host's copy of the last configuration it received, so that
// it can enforce it and serve ifup while etcd is unreachable. Dir/config
// is a symlink to Dir/rev-N, the configuration at revision N; a new
// revision is written beside it, synced, and the link is replaced by
// rename, so a reader always sees one whole configuration.
type Cache struct{ Dir string }

// ConfigDir is the directory to load the cached configuration from.
func (c Cache) ConfigDir() string { return filepath.Join(c.Dir, "config") }

// Revision returns the cached configuration's revision, 0 when none.
func (c Cache) Revision() int64 {
	target, err := os.Readlink(c.ConfigDir())
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimPrefix(filepath.Base(target), "rev-"), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// Store makes s the cached configuration.
func (c Cache) Store(s *Snapshot) error {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return err
	}
	name := fmt.Sprintf("rev-%d", s.Revision)
	final := filepath.Join(c.Dir, name)
	tmp, err := os.MkdirTemp(c.Dir, ".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := writeFiles(tmp, s.Files); err != nil {
		return err
	}
	if err := syncTree(tmp); err != nil {
		return err
	}
	os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	link := filepath.Join(c.Dir, ".config.tmp")
	os.Remove(link)
	if err := os.Symlink(name, link); err != nil {
		return err
	}
	if err := os.Rename(link, c.ConfigDir()); err != nil {
		return err
	}
	if d, err := os.Open(c.Dir); err == nil {
		d.Sync()
		d.Close()
	}
	// Older revisions are no longer read.
	des, _ := os.ReadDir(c.Dir)
	for _, de := range des {
		if strings.HasPrefix(de.Name(), "rev-") && de.Name() != name {
			os.RemoveAll(filepath.Join(c.Dir, de.Name()))
		}
	}
	return nil
}

// syncTree fsyncs every file and directory under dir.
func syncTree(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
}
