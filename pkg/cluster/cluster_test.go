package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/leaktest"
)

var sample = map[string]string{
	"vmfw.toml":          "repair_interval = \"5s\"\n",
	"groups/web.toml":    "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n\n[[in]]\nsource_set = \"office\"\n",
	"sets/office.toml":   "entries = [\"198.51.100.0/24\"]\n",
	"vms/101.toml":       "[net0]\nips = [\"192.0.2.101\"]\ngroups = [\"web\"]\n",
	"vms/.101.toml~":     "editor junk",
	"sets/.#office.toml": "lock file",
	"vms/.#101.toml":     "lock file",
	"README":             "not configuration",
}

// TestReadDirReadsWhatLoadReads: the files pushed are exactly those
// config.Load reads.
func TestReadDirReadsWhatLoadReads(t *testing.T) {
	files, err := ReadDir(configtest.Dir(t, sample))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rel := range files {
		got = append(got, rel)
	}
	if len(got) != 4 || files["vms/101.toml"] == nil || files["groups/web.toml"] == nil || files["vmfw.toml"] == nil || files["sets/office.toml"] == nil {
		t.Fatalf("ReadDir: %v", got)
	}
}

func TestValidRel(t *testing.T) {
	for rel, ok := range map[string]bool{
		"vmfw.toml": true, "groups/web.toml": true, "vms/101.toml": true, "sets/office.toml": true,
		"sets/../x.toml": false, "sets/a/b.toml": false, "set/x.toml": false,
		"../etc/passwd": false, "groups/../../x.toml": false, "vms/a/b.toml": false, "other/x.toml": false,
		"groups/.x.toml": false, "groups/x.txt": false, "/abs.toml": false, "groups/": false,
	} {
		if validRel(rel) != ok {
			t.Errorf("validRel(%q) = %v, want %v", rel, !ok, ok)
		}
	}
}

// TestPushRefusesBadConfiguration: Push validates as Load does and
// returns Load's error before it talks to etcd (no client is needed).
func TestPushRefusesBadConfiguration(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcpp\"\n"})
	_, err := Push(context.Background(), nil, Keys{Prefix: "/vmfw/"}, dir, "test")
	var fe *config.Error
	if !errors.As(err, &fe) || fe.Line != 2 || fe.File != "groups/web.toml" {
		t.Fatalf("Push: %v", err)
	}
}

func kvs(k Keys, files map[string][]byte, meta Meta, rev int64) []*mvccpb.KeyValue {
	archive, err := encodeFiles(files)
	if err != nil {
		panic(err)
	}
	m, _ := json.Marshal(meta)
	return []*mvccpb.KeyValue{
		{Key: []byte(k.ConfigFiles()), Value: archive, ModRevision: rev},
		{Key: []byte(k.ConfigMeta()), Value: m, ModRevision: rev},
	}
}

// TestSnapshotChecksDigestAndNames: a snapshot whose files do not match
// the digest pushed with them, or that names a file outside the
// configuration's layout, is refused.
func TestSnapshotChecksDigestAndNames(t *testing.T) {
	k := Keys{Prefix: "/vmfw/"}
	files := map[string][]byte{"groups/web.toml": []byte("[[in]]\nproto = \"tcp\"\n")}
	s, err := snapshotOf(k, kvs(k, files, Meta{Files: 1, SHA256: digest(files)}, 7))
	if err != nil || s.Revision != 7 || string(s.Files["groups/web.toml"]) != string(files["groups/web.toml"]) {
		t.Fatalf("snapshot: %+v, %v", s, err)
	}
	if _, err := snapshotOf(k, kvs(k, files, Meta{Files: 1, SHA256: "0000"}, 7)); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("a wrong digest: %v", err)
	}
	bad := map[string][]byte{"../x.toml": []byte("x")}
	if _, err := snapshotOf(k, kvs(k, bad, Meta{Files: 1, SHA256: digest(bad)}, 7)); err == nil {
		t.Fatal("a file outside the layout was accepted")
	}
}

// TestCacheStoresRevisionsAtomically: each revision is a whole directory
// that config.Load reads; the link moves to the newest; older ones go.
func TestCacheStoresRevisionsAtomically(t *testing.T) {
	c := Cache{Dir: filepath.Join(t.TempDir(), "cache")}
	if c.Revision() != 0 {
		t.Fatal("an empty cache has a revision")
	}
	files, err := ReadDir(configtest.Dir(t, sample))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Store(&Snapshot{Revision: 5, Files: files}); err != nil {
		t.Fatal(err)
	}
	m, err := config.Load(c.ConfigDir())
	if err != nil || len(m.VMs) != 1 || len(m.Groups) != 1 || len(m.Sets) != 1 || m.Host.RepairInterval != 5*time.Second {
		t.Fatalf("loading revision 5: %+v, %v", m, err)
	}
	delete(files, "vms/101.toml")
	if err := c.Store(&Snapshot{Revision: 9, Files: files}); err != nil {
		t.Fatal(err)
	}
	if c.Revision() != 9 {
		t.Fatalf("revision %d, want 9", c.Revision())
	}
	if m, err := config.Load(c.ConfigDir()); err != nil || len(m.VMs) != 0 {
		t.Fatalf("loading revision 9: %+v, %v", m, err)
	}
	des, _ := os.ReadDir(c.Dir)
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	if !reflect.DeepEqual(names, []string{"config", "rev-9"}) {
		t.Fatalf("cache holds %v", names)
	}
}

// TestNodeMembership: other hosts' member keys become group members,
// this host's own are left out, deletions remove them, and a member
// this host detaches stays published for Grace.
func TestNodeMembership(t *testing.T) {
	n := NewNode(&config.Cluster{Host: "a", Prefix: "/p/", LeaseTTL: 3 * time.Second}, slog.New(slog.DiscardHandler))
	put := func(all map[string]map[string]Member, host, tap string, ips []string, groups ...string) {
		m := Member{Host: host, Tap: tap, Groups: groups}
		for _, ip := range ips {
			m.IPs = append(m.IPs, netip.MustParseAddr(ip))
		}
		v, _ := json.Marshal(m)
		n.apply(all, n.keys.MembersOf(host)+tap, v)
	}
	all := map[string]map[string]Member{}
	put(all, "a", "tap1i0", []string{"192.0.2.1"}, "web")
	put(all, "b", "tap2i0", []string{"192.0.2.2", "2001:db8::2"}, "web", "app")
	put(all, "c", "tap3i0", []string{"192.0.2.3"}, "app")
	n.apply(all, "/p/members/c/tap9i0", []byte("not json"))
	n.setRemote(all)
	select {
	case <-n.MembersChanged:
	default:
		t.Fatal("no signal")
	}
	got := n.Remote()
	want := map[string][]netip.Addr{
		"web": {netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::2")},
		"app": {netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("2001:db8::2")},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Remote() = %v, want %v", got, want)
	}
	n.mu.Lock()
	deleted := n.applyIndexed(n.keys.MembersOf("c")+"tap3i0", nil)
	again := n.applyIndexed(n.keys.MembersOf("c")+"tap3i0", nil)
	n.mu.Unlock()
	if !deleted || again {
		t.Fatalf("deleting a member: changed %v, deleting it again: changed %v", deleted, again)
	}
	if got := n.Remote()["app"]; len(got) != 2 {
		t.Fatalf("after a deletion app = %v", got)
	}

	n.Publish([]Member{{Tap: "tap1i0"}, {Tap: "tap4i0"}}, 3)
	n.Publish([]Member{{Tap: "tap1i0"}}, 3)
	n.mu.Lock()
	during := n.published()
	n.mu.Unlock()
	if len(during) != 2 {
		t.Fatalf("a detached member left at once: %v", during)
	}
	time.Sleep(Grace + 50*time.Millisecond)
	n.mu.Lock()
	after := n.published()
	n.mu.Unlock()
	if len(after) != 1 || after["tap1i0"].Host != "a" {
		t.Fatalf("after the grace: %v", after)
	}
}

// remoteFromScratch is Remote computed from the members alone.
func remoteFromScratch(n *Node) map[string][]netip.Addr {
	out := map[string][]netip.Addr{}
	for _, taps := range n.remote {
		for _, m := range taps {
			for _, g := range m.Groups {
				out[g] = append(out[g], m.IPs...)
			}
		}
	}
	for g, ips := range out {
		slices.SortFunc(ips, netip.Addr.Compare)
		out[g] = slices.Compact(ips)
	}
	return out
}

// TestRemoteFollowsEvents: the group sets kept up to date event by event
// equal those computed from the members, through joins, leaves, group
// changes and an address held by two hosts at once (a migration).
func TestRemoteFollowsEvents(t *testing.T) {
	n := NewNode(&config.Cluster{Host: "self", Prefix: "/p/", LeaseTTL: 3 * time.Second}, slog.New(slog.DiscardHandler))
	rng := rand.New(rand.NewPCG(1, 2))
	hosts := []string{"self", "a", "b", "c"}
	groups := []string{"g0", "g1", "g2"}
	for i := range 3000 {
		host, tap := hosts[rng.IntN(len(hosts))], fmt.Sprintf("tap%di0", rng.IntN(8))
		key := n.keys.MembersOf(host) + tap
		var value []byte
		if rng.IntN(3) > 0 {
			m := Member{Host: host, Tap: tap, IPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(12))})}}
			for _, g := range groups {
				if rng.IntN(2) == 0 {
					m.Groups = append(m.Groups, g)
				}
			}
			value, _ = json.Marshal(m)
		}
		n.mu.Lock()
		n.applyIndexed(key, value)
		n.mu.Unlock()
		if got, want := n.Remote(), remoteFromScratch(n); !reflect.DeepEqual(got, want) {
			t.Fatalf("after event %d (%s): Remote() = %v, want %v", i, key, got, want)
		}
	}
}

// BenchmarkRemote: one host's sets at 100 hosts of 50 VMs in 3 of 20
// groups, read after every membership change.
func BenchmarkRemote(b *testing.B) {
	n := NewNode(&config.Cluster{Host: "self", Prefix: "/p/", LeaseTTL: 3 * time.Second}, slog.New(slog.DiscardHandler))
	for h := range 99 {
		for v := range 50 {
			m := Member{Host: fmt.Sprint(h), Tap: fmt.Sprintf("tap%di0", v),
				IPs:    []netip.Addr{netip.AddrFrom16([16]byte{0x20, 1, 13, 0xb8, 0, 12, byte(h), 15: byte(v)})},
				Groups: []string{fmt.Sprintf("g%02d", (h+v)%20), fmt.Sprintf("g%02d", (h+v+7)%20), fmt.Sprintf("g%02d", (h+v+13)%20)}}
			value, _ := json.Marshal(m)
			n.applyIndexed(n.keys.MembersOf(m.Host)+m.Tap, value)
		}
	}
	for b.Loop() {
		n.Remote()
	}
}

// TestNodeWaitJoinsItsGoroutines: once the context given to Start is done,
// Wait returns only after every goroutine of the node has ended, the etcd
// client's with it; a member still in its grace leaves nothing behind.
// etcd is unreachable, so the node runs its retry loops meanwhile.
func TestNodeWaitJoinsItsGoroutines(t *testing.T) {
	before := leaktest.Take()
	n := NewNode(&config.Cluster{Host: "a", Prefix: "/p/", LeaseTTL: 3 * time.Second,
		Endpoints: []string{"unix://" + filepath.Join(t.TempDir(), "no-etcd.sock")}, CacheDir: t.TempDir()},
		slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	if err := n.Start(ctx, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	n.Publish([]Member{{Tap: "tap1i0"}}, 1)
	n.Publish(nil, 1)
	cancel()
	n.Wait()
	before.Check(t)
}
