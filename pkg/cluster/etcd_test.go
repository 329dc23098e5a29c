package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/syncbuf"
)

// startEtcd starts an etcd server (Debian's etcd-server) listening on
// loopback ports of its own, with its data in a temporary directory, and
// returns a client of it. args are added to etcd's command line. The
// server is killed when the test ends.
func startEtcd(t *testing.T, args ...string) *clientv3.Client {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("etcd is not installed (Debian package etcd-server; make deps installs it)")
	}
	port := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	client, peer := "http://"+port(), "http://"+port()
	cmd := exec.Command("etcd", append([]string{"--name", "test", "--data-dir", filepath.Join(t.TempDir(), "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "test=" + peer}, args...)...)
	var out syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "ready to serve client requests"); {
		select {
		case <-exited:
			t.Fatalf("etcd exited at start:\n%s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not serve within 30s:\n%s", out.String())
		}
	}
	cli, err := Dial(&config.Cluster{Endpoints: []string{client}}, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// randomSet returns a set file of n distinct random IPv6 addresses: what
// compresses worst, so that even a few of them need parts.
func randomSet(rng *rand.Rand, n int) string {
	var b strings.Builder
	b.WriteString("description = \"random\"\nentries = [\n")
	for i := range n {
		fmt.Fprintf(&b, "  \"2001:db8:%x:%x:%x:%x:%x:%x\",\n", i>>16, i&0xffff, rng.IntN(65536), rng.IntN(65536), rng.IntN(65536), rng.IntN(65536))
	}
	b.WriteString("]\nexcept = []\n")
	return b.String()
}

// withSets returns a configuration with the sets given and a group and a
// VM that use them.
func withSets(sets map[string]string) map[string]string {
	files := map[string]string{
		"vmfw.toml":       "repair_interval = \"5s\"\n",
		"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n",
		"vms/101.toml":    "[net0]\nips = [\"192.0.2.101\"]\ngroups = [\"web\"]\n",
	}
	for _, name := range slices.Sorted(maps.Keys(sets)) {
		files["sets/"+name+".toml"] = sets[name]
		files["groups/web.toml"] += fmt.Sprintf("\n[[in]]\naction = \"drop\"\nsource_set = %q\n", name)
	}
	return files
}

// configKeys returns the keys under the configuration prefix.
func configKeys(t *testing.T, cli *clientv3.Client, k Keys) []string {
	t.Helper()
	resp, err := cli.Get(context.Background(), k.ConfigPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, strings.TrimPrefix(string(kv.Key), k.ConfigPrefix()))
	}
	return keys
}

// checkPulled pulls the configuration into a new directory and checks
// that it holds exactly the files of dir.
func checkPulled(t *testing.T, cli *clientv3.Client, k Keys, dir string, rev int64) *config.Model {
	t.Helper()
	out := filepath.Join(t.TempDir(), "pulled")
	got, err := Pull(context.Background(), cli, k, out)
	if err != nil || got != rev {
		t.Fatalf("Pull: revision %d, %v; want %d", got, err, rev)
	}
	want, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	have, err := ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.EqualFunc(have, want, bytes.Equal) {
		t.Fatalf("pulled %d files, pushed %d, or their contents differ", len(have), len(want))
	}
	m, err := config.Load(out)
	if err != nil {
		t.Fatalf("loading what was pulled: %v", err)
	}
	return m
}

// TestPushPullLargeSet pushes a configuration with a set of 100,000
// random IPv6 addresses, whose archive is larger than etcd takes in one
// request with its default limits, pulls it back byte for byte, and
// checks that pushes replace each other's parts: a small configuration
// leaves no part behind, nor does a large one after an interrupted push.
func TestPushPullLargeSet(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k := Keys{Prefix: "/vmfw/"}
	rng := rand.New(rand.NewPCG(3, 4))
	big := configtest.Dir(t, withSets(map[string]string{"big": randomSet(rng, 100000), "office": "entries = [\"198.51.100.0/24\"]\n"}))

	rev, err := Push(ctx, cli, k, big, "test")
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := Fetch(ctx, cli, k)
	if err != nil {
		t.Fatal(err)
	}
	if s.Meta.Parts < 2 || s.Meta.PartSize != maxPart || s.Revision != rev {
		t.Fatalf("meta %+v at revision %d: want the archive in parts of %d bytes at %d", s.Meta, s.Revision, maxPart, rev)
	}
	t.Logf("%d parts of %d bytes", s.Meta.Parts, s.Meta.PartSize)
	for _, key := range configKeys(t, cli, k) {
		if key == "files" {
			t.Fatal("config/files left beside the parts")
		}
	}
	if m := checkPulled(t, cli, k, big, rev); len(m.Sets["big"].Entries) != 100000 || m.Groups["web"].In[1].SourceSet != "big" {
		t.Fatalf("pulled set big has %d entries", len(m.Sets["big"].Entries))
	}

	// An agent caches it and loads it from the cache.
	n := NewNode(&config.Cluster{Host: "a", Prefix: k.Prefix, LeaseTTL: 3 * time.Second, CacheDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	n.cli = cli
	if _, err := n.syncConfig(ctx); err != nil {
		t.Fatal(err)
	}
	if m, err := config.Load(n.Cache.ConfigDir()); err != nil || len(m.Sets["big"].Entries) != 100000 || n.Cache.Revision() != rev {
		t.Fatalf("the agent's cache: revision %d, %v", n.Cache.Revision(), err)
	}

	small := configtest.Dir(t, withSets(map[string]string{"office": "entries = [\"198.51.100.0/24\"]\n"}))
	rev, err = Push(ctx, cli, k, small, "test")
	if err != nil {
		t.Fatal(err)
	}
	if keys := configKeys(t, cli, k); strings.Join(keys, " ") != "files meta" {
		t.Fatalf("after a small push the configuration keys are %v, want files and meta", keys)
	}
	checkPulled(t, cli, k, small, rev)

	// Parts of a push that never finished, then a large push.
	if _, err := cli.Put(ctx, k.ConfigParts()+"0123456789abcdef-1048576/0000", "left behind"); err != nil {
		t.Fatal(err)
	}
	rev, err = Push(ctx, cli, k, big, "test")
	if err != nil {
		t.Fatal(err)
	}
	s, _, err = Fetch(ctx, cli, k)
	if err != nil {
		t.Fatal(err)
	}
	if keys := configKeys(t, cli, k); len(keys) != 1+s.Meta.Parts || keys[0] != "meta" {
		t.Fatalf("after a large push the configuration keys are %v, want meta and its %d parts", keys, s.Meta.Parts)
	}
	checkPulled(t, cli, k, big, rev)
}

// TestPushPartsSmallerWhenRefused: with etcd's --max-request-bytes far
// below its default, the archive is refused whole and in parts of 1 MiB,
// and goes in smaller parts; two pushes of different configurations at
// once leave one of them whole, every time.
func TestPushPartsSmallerWhenRefused(t *testing.T) {
	cli := startEtcd(t, "--max-request-bytes", "131072")
	ctx := context.Background()
	k := Keys{Prefix: "/vmfw/"}
	rng := rand.New(rand.NewPCG(5, 6))
	dirs := []string{
		configtest.Dir(t, withSets(map[string]string{"a": randomSet(rng, 20000)})),
		configtest.Dir(t, withSets(map[string]string{"b": randomSet(rng, 25000)})),
	}
	rev, err := Push(ctx, cli, k, dirs[0], "test")
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := Fetch(ctx, cli, k)
	if err != nil {
		t.Fatal(err)
	}
	if s.Meta.PartSize != minPart {
		t.Fatalf("parts of %d bytes, want %d (the others are over etcd's limit)", s.Meta.PartSize, minPart)
	}
	checkPulled(t, cli, k, dirs[0], rev)

	want := map[string]map[string][]byte{}
	for _, d := range dirs {
		files, err := ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		want[d] = files
	}
	for round := range 4 {
		var wg sync.WaitGroup
		errs := make([]error, len(dirs))
		for i, d := range dirs {
			wg.Go(func() { _, errs[i] = Push(ctx, cli, k, d, fmt.Sprint("pusher ", i)) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: push %d: %v", round, i, err)
			}
		}
		s, _, err := Fetch(ctx, cli, k)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if !maps.EqualFunc(s.Files, want[dirs[0]], bytes.Equal) && !maps.EqualFunc(s.Files, want[dirs[1]], bytes.Equal) {
			t.Fatalf("round %d: the configuration is neither push's", round)
		}
		if keys := configKeys(t, cli, k); len(keys) != 1+s.Meta.Parts {
			t.Fatalf("round %d: keys %v beside the %d parts of the configuration", round, keys, s.Meta.Parts)
		}
	}
}

// TestSnapshotChecksParts: a configuration in parts is read only when
// every part is there and they make up the archive the meta key names.
func TestSnapshotChecksParts(t *testing.T) {
	k := Keys{Prefix: "/vmfw/"}
	files := map[string][]byte{"sets/a.toml": []byte("entries = [\"192.0.2.1\"]\n"), "groups/web.toml": []byte("[[in]]\n")}
	archive, err := encodeFiles(files)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(archive)
	sum := hex.EncodeToString(h[:])
	const size = 40
	meta := Meta{Files: len(files), SHA256: digest(files), Archive: sum, PartSize: size, Parts: (len(archive) + size - 1) / size}
	kvsOf := func(meta Meta, edit func(parts [][]byte) [][]byte) []*mvccpb.KeyValue {
		var parts [][]byte
		for i := 0; i*size < len(archive); i++ {
			parts = append(parts, archive[i*size:min((i+1)*size, len(archive))])
		}
		parts = edit(parts)
		m, _ := json.Marshal(meta)
		out := []*mvccpb.KeyValue{{Key: []byte(k.ConfigMeta()), Value: m, ModRevision: 9}}
		for i, p := range parts {
			out = append(out, &mvccpb.KeyValue{Key: []byte(k.configPart(sum, size, i)), Value: p})
		}
		return out
	}
	same := func(p [][]byte) [][]byte { return p }
	s, err := snapshotOf(k, kvsOf(meta, same))
	if err != nil || !maps.EqualFunc(s.Files, files, bytes.Equal) {
		t.Fatalf("parts in order: %v", err)
	}
	for _, tc := range []struct {
		name   string
		meta   Meta
		edit   func([][]byte) [][]byte
		phrase string
	}{
		{"a part missing", meta, func(p [][]byte) [][]byte { return p[:len(p)-1] }, "is missing"},
		{"a part changed", meta, func(p [][]byte) [][]byte { p[0] = bytes.ToUpper(p[0]); return p }, "do not make up the archive"},
		{"parts swapped", meta, func(p [][]byte) [][]byte { p[0], p[1] = p[1], p[0]; return p }, "do not make up the archive"},
		{"too many parts", func() Meta { m := meta; m.Parts = maxParts + 1; return m }(), same, "not what vmfw writes"},
		{"no archive digest", func() Meta { m := meta; m.Archive = "abc"; return m }(), same, "not what vmfw writes"},
	} {
		if _, err := snapshotOf(k, kvsOf(tc.meta, tc.edit)); err == nil || !strings.Contains(err.Error(), tc.phrase) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.phrase)
		}
	}
}
