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
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vmfw/vmfw/pkg/config"
)

// configDirs are the subdirectories whose *.toml files config.Load reads.
var configDirs = []string{"sets", "groups", "vms"}

// ReadDir returns the files config.Load reads in dir, by their path
// relative to it: vmfw.toml, sets/*.toml, groups/*.toml and vms/*.toml
// (names starting with "." are not configuration).
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
	for _, sub := range configDirs {
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
	return ok && slices.Contains(configDirs, sub) && strings.HasSuffix(name, ".toml") &&
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
// valid, replaces the configuration in etcd with its files, all at once
// for every reader. A configuration error is returned as Load's
// *config.Error and nothing is written. It returns the new revision.
//
// The files go as one archive, one value, when etcd takes it (its
// --max-request-bytes is 1.5 MiB by default; a configuration of
// thousands of VMs compresses to a few hundred kilobytes). A larger one
// (a set of 100,000 random addresses, or many large sets) is written in
// parts, each in a request of its own, before the transaction that puts
// the meta key naming them: readers, who read the configuration at the
// meta key's revision, see the old configuration or the new one whole.
// The same transaction deletes every other part, those of the
// configuration it replaces and those a push that did not finish left.
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
	meta := Meta{Files: len(files), SHA256: digest(files), PushedAt: time.Now().UTC(), PushedBy: by}
	archive, err := encodeFiles(files)
	if err != nil {
		return 0, err
	}
	if len(archive) <= maxWhole {
		rev, err := putWhole(ctx, cli, k, archive, meta)
		if err == nil || !tooLarge(err) {
			return rev, pushError(err, len(files), len(archive))
		}
	}
	rev, err := putParts(ctx, cli, k, archive, meta)
	return rev, pushError(err, len(files), len(archive))
}

// Sizes of what Push writes. etcd refuses a request over its
// --max-request-bytes, 1.5 MiB by default; the archive is tried as one
// value up to about that, and parts start at 1 MiB, leaving room for the
// key and the request around the value. A part etcd still refuses (a
// lower limit) makes Push start over with half the size, down to
// minPart.
const (
	maxWhole = 1536<<10 - 16<<10
	maxPart  = 1 << 20
	minPart  = 64 << 10
	// maxParts keeps the transaction that checks every part within
	// etcd's --max-txn-ops (128 by default).
	maxParts = txnOps
)

// tooLarge reports whether etcd or gRPC refused a request for its size.
func tooLarge(err error) bool {
	return errors.Is(err, rpctypes.ErrRequestTooLarge) || status.Code(err) == codes.ResourceExhausted
}

// pushError gives an error of writing to etcd the size of what was
// written.
func pushError(err error, files, archive int) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("writing the configuration to etcd (%d files, %d bytes compressed): %w", files, archive, err)
}

// putWhole writes the archive as one value: it and its meta key go in one
// transaction, so a reader never sees one without the other; of two
// concurrent pushes the later transaction wins whole. Nothing depends on
// what was there before, so nothing is read first. Parts of an earlier
// configuration go in the same transaction.
func putWhole(ctx context.Context, cli *clientv3.Client, k Keys, archive []byte, meta Meta) (int64, error) {
	m, err := json.Marshal(meta)
	if err != nil {
		return 0, err
	}
	tctx, cancel := withTimeout(ctx)
	defer cancel()
	resp, err := cli.Txn(tctx).Then(
		clientv3.OpPut(k.ConfigFiles(), string(archive)),
		clientv3.OpPut(k.ConfigMeta(), string(m)),
		clientv3.OpDelete(k.ConfigParts(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// putParts writes the archive in parts, starting with parts of maxPart
// bytes and halving them while etcd refuses them for their size.
func putParts(ctx context.Context, cli *clientv3.Client, k Keys, archive []byte, meta Meta) (int64, error) {
	sum := sha256.Sum256(archive)
	meta.Archive = hex.EncodeToString(sum[:])
	for size := maxPart; ; size /= 2 {
		rev, err := putPartsOf(ctx, cli, k, archive, meta, size)
		if !tooLarge(err) {
			return rev, err
		}
		if size/2 < minPart {
			return 0, fmt.Errorf("etcd refuses even parts of %d bytes (raise its --max-request-bytes): %w", size, err)
		}
	}
}

// putPartsOf writes the archive in parts of size bytes, then in one
// transaction the meta key naming them, provided every part is still
// there: the same transaction of a concurrent push deletes them, and this
// push then writes them again, so that the later push wins whole.
func putPartsOf(ctx context.Context, cli *clientv3.Client, k Keys, archive []byte, meta Meta, size int) (int64, error) {
	n := (len(archive) + size - 1) / size
	if n > maxParts {
		return 0, fmt.Errorf("it needs %d parts of %d bytes, more than the %d one transaction can check", n, size, maxParts)
	}
	meta.Parts, meta.PartSize = n, size
	m, err := json.Marshal(meta)
	if err != nil {
		return 0, err
	}
	keys := make([]string, n)
	cmps := make([]clientv3.Cmp, n)
	for i := range n {
		keys[i] = k.configPart(meta.Archive, size, i)
		cmps[i] = clientv3.Compare(clientv3.Version(keys[i]), ">", 0)
	}
	// Every part but this push's goes: an earlier configuration's, a
	// concurrent push's, one an interrupted push left. Two range deletes
	// around this push's parts say so in two operations.
	own := k.configPart(meta.Archive, size, 0)
	own = own[:strings.LastIndexByte(own, '/')+1]
	ops := []clientv3.Op{
		clientv3.OpPut(k.ConfigMeta(), string(m)),
		clientv3.OpDelete(k.ConfigFiles()),
		clientv3.OpDelete(k.ConfigParts(), clientv3.WithRange(own)),
		clientv3.OpDelete(clientv3.GetPrefixRangeEnd(own), clientv3.WithRange(clientv3.GetPrefixRangeEnd(k.ConfigParts()))),
	}
	for range 3 {
		if err := writeParts(ctx, cli, keys, archive, size); err != nil {
			return 0, err
		}
		tctx, cancel := withTimeout(ctx)
		resp, err := cli.Txn(tctx).If(cmps...).Then(ops...).Commit()
		cancel()
		if err != nil {
			return 0, err
		}
		if resp.Succeeded {
			return resp.Header.Revision, nil
		}
	}
	return 0, errors.New("concurrent pushes removed this push's parts three times; try again")
}

// writeParts puts part i of archive, cut in parts of size bytes, under
// keys[i].
func writeParts(ctx context.Context, cli *clientv3.Client, keys []string, archive []byte, size int) error {
	for i, key := range keys {
		part := archive[i*size : min((i+1)*size, len(archive))]
		tctx, cancel := withTimeout(ctx)
		_, err := cli.Put(tctx, key, string(part))
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// encodeFiles packs a file set into the value of the ConfigFiles key:
// gzip-compressed JSON of the files by relative path. Configuration files
// are small and alike (thousands of VM files compress to a few hundred
// kilobytes), so one value usually holds a large cluster's
// configuration; large sets may need parts (see Push). A set that
// inflates beyond what decodeFiles reads is refused here, so that a push
// never writes what no agent would read.
func encodeFiles(files map[string][]byte) ([]byte, error) {
	var b bytes.Buffer
	z := gzip.NewWriter(&b)
	raw := &countWriter{w: z}
	if err := json.NewEncoder(raw).Encode(files); err != nil {
		return nil, err
	}
	if err := z.Close(); err != nil {
		return nil, err
	}
	if raw.n > maxArchive {
		return nil, fmt.Errorf("the configuration's archive is %d bytes before compression; agents read at most %d", raw.n, maxArchive)
	}
	return b.Bytes(), nil
}

// countWriter counts what goes through it.
type countWriter struct {
	w io.Writer
	n int
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += n
	return n, err
}

// maxArchive bounds what decodeFiles inflates, above any configuration
// of sets within their 32 MiB each and thousands of VMs, so that a corrupt
// or hostile value cannot exhaust memory.
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
	var whole []byte
	parts := map[string][]byte{}
	for _, kv := range kvs {
		switch key := string(kv.Key); {
		case key == k.ConfigMeta():
			if err := json.Unmarshal(kv.Value, &s.Meta); err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			s.Revision = kv.ModRevision
		case key == k.ConfigFiles():
			whole = kv.Value
		case strings.HasPrefix(key, k.ConfigParts()):
			parts[key] = kv.Value
		}
	}
	key := k.ConfigFiles()
	if s.Meta.Parts > 0 {
		key = k.ConfigParts()
		var err error
		if whole, err = joinParts(k, s.Meta, parts); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
	}
	if whole != nil {
		files, err := decodeFiles(whole)
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
	if s.Revision != 0 && digest(s.Files) != s.Meta.SHA256 {
		return nil, fmt.Errorf("the configuration at revision %d does not match its digest (written by something else than vmfw cluster push?)", s.Revision)
	}
	return s, nil
}

// joinParts puts together the archive that meta says was written in
// parts, checking it against meta's digest of the archive.
func joinParts(k Keys, meta Meta, parts map[string][]byte) ([]byte, error) {
	if meta.Parts > maxParts || meta.PartSize < 1 || len(meta.Archive) != sha256.Size*2 {
		return nil, fmt.Errorf("the meta key's parts (%d of %d bytes, archive %q) are not what vmfw writes", meta.Parts, meta.PartSize, meta.Archive)
	}
	var whole []byte
	for i := range meta.Parts {
		key := k.configPart(meta.Archive, meta.PartSize, i)
		part, ok := parts[key]
		if !ok {
			return nil, fmt.Errorf("part %s is missing", key)
		}
		whole = append(whole, part...)
	}
	if sum := sha256.Sum256(whole); hex.EncodeToString(sum[:]) != meta.Archive {
		return nil, fmt.Errorf("the %d parts do not make up the archive the meta key names", meta.Parts)
	}
	return whole, nil
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
	for _, sub := range configDirs {
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
