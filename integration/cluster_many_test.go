package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/pkg/cluster"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// manyTaps is more interfaces than etcd's default --max-txn-ops (128)
// allows in one transaction.
const manyTaps = 300

// coreEtcd starts a real etcd with its default limits in a cluster's core
// namespace (no hypervisors), both removed when the test ends.
func coreEtcd(t *testing.T) (*labnet.Cluster, *labnet.Etcd) {
	t.Helper()
	c := newCluster(t, 0)
	e, err := labnet.StartEtcd(c.Core, labnet.EtcdURL("http", labnet.CoreAddr), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	return c, e
}

// TestClusterHostWithManyInterfaces: a host with more attached
// interfaces than etcd accepts operations in one transaction publishes
// them all, against a real etcd with its default limits; when it
// replaces them under a new lease (an agent restart) and when a large
// diff changes most of them, another host never sees a member that
// stays go missing, and ends with exactly the new set.
func TestClusterHostWithManyInterfaces(t *testing.T) {
	c, e := coreEtcd(t)
	// The leases are long so that no lease expires during the test,
	// however loaded the machine: an expiry deletes keys, which the
	// checks below would take for a write that lost members.
	// The nodes run in this process and reach etcd through sockets
	// opened in the core namespace.
	dial := grpc.WithContextDialer(c.Core.Dial)
	prefix := "/vmfw/"
	node := func(host string) (*cluster.Node, context.CancelFunc) {
		t.Helper()
		n := cluster.NewNode(&config.Cluster{Endpoints: []string{e.URL}, Prefix: prefix, Host: host,
			LeaseTTL: time.Minute, CacheDir: t.TempDir()}, slog.New(slog.DiscardHandler))
		n.DialOptions = []grpc.DialOption{dial}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		if err := n.Start(ctx, 3*time.Second); err != nil {
			t.Fatal(err)
		}
		return n, cancel
	}
	members := func(from, to int) []cluster.Member {
		var out []cluster.Member
		for i := from; i < to; i++ {
			out = append(out, cluster.Member{Tap: fmt.Sprintf("tap%di0", 1000+i), VM: 1000 + i,
				IPs: []netip.Addr{netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x0c, 14: byte(i >> 8), 15: byte(i)})}, Groups: []string{"web"}})
		}
		return out
	}

	// A watcher of the raw keys checks every revision: the taps listed in
	// keep must be present in each state other hosts can see.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.URL}, DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{dial}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	type check struct {
		keep    map[string]bool
		final   map[string]bool
		reached chan int // the number of revisions it took
	}
	checks := make(chan check, 1)
	watchErr := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start, err := cli.Get(ctx, "/", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		present := map[string]bool{}
		var cur *check
		revs := 0
		for wr := range cli.Watch(ctx, prefix+"members/big/", clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1)) {
			if err := wr.Err(); err != nil {
				watchErr <- err
				return
			}
			// Events of one revision are one transaction: check the
			// state after each.
			for i := 0; i < len(wr.Events); {
				rev := wr.Events[i].Kv.ModRevision
				for ; i < len(wr.Events) && wr.Events[i].Kv.ModRevision == rev; i++ {
					tap := strings.TrimPrefix(string(wr.Events[i].Kv.Key), prefix+"members/big/")
					present[tap] = wr.Events[i].Type == clientv3.EventTypePut
					if !present[tap] {
						delete(present, tap)
					}
				}
				if cur == nil {
					select {
					case c := <-checks:
						cur, revs = &c, 0
					case <-ctx.Done():
						return
					}
				}
				revs++
				for tap := range cur.keep {
					if !present[tap] {
						watchErr <- fmt.Errorf("revision %d: member %s is missing", rev, tap)
						return
					}
				}
				if len(present) == len(cur.final) {
					same := true
					for tap := range cur.final {
						same = same && present[tap]
					}
					if same {
						cur.reached <- revs
						cur = nil
					}
				}
			}
		}
	}()
	expect := func(what string, keep, final []cluster.Member) int {
		t.Helper()
		c := check{keep: map[string]bool{}, final: map[string]bool{}, reached: make(chan int, 1)}
		for _, m := range keep {
			c.keep[m.Tap] = true
		}
		for _, m := range final {
			c.final[m.Tap] = true
		}
		checks <- c
		select {
		case revs := <-c.reached:
			t.Logf("%s: %d transactions", what, revs)
			return revs
		case err := <-watchErr:
			t.Fatalf("%s: %v", what, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: the keys did not reach the new set", what)
		}
		return 0
	}

	observer, _ := node("obs")
	big, stop := node("big")
	all := members(0, manyTaps)
	big.Publish(all, 0)
	if revs := expect("publishing all", nil, all); revs < 2 {
		t.Errorf("%d members were written in %d transaction(s)", manyTaps, revs)
	}
	within(t, 10*time.Second, "the observer sees every member", func() bool { return observer.RemoteCount() == manyTaps })
	if got := observer.Remote()["web"]; len(got) != manyTaps {
		t.Fatalf("the observer's web group has %d addresses", len(got))
	}
	// hostInfo reads hosts/big; a host that has not written it yet (its
	// last transaction still to come) has zero members.
	hostInfo := func() cluster.HostInfo {
		t.Helper()
		var h cluster.HostInfo
		resp, err := cli.Get(ctx, prefix+"hosts/big")
		if err != nil {
			t.Fatalf("reading hosts/big: %v", err)
		}
		if len(resp.Kvs) == 0 {
			return h
		}
		if err := json.Unmarshal(resp.Kvs[0].Value, &h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	// hosts/big is written last, in a transaction of its own or with
	// the last members.
	within(t, 10*time.Second, "hosts/big counts every member", func() bool { return hostInfo().Members == manyTaps })

	// An agent restart: a new node for the same host replaces every key
	// under its lease while the old lease is still alive; half of the
	// members stay, half are new.
	stop()
	big, _ = node("big")
	next := members(manyTaps/2, manyTaps+manyTaps/2)
	big.Publish(next, 0)
	expect("replacing under a new lease", members(manyTaps/2, manyTaps), next)

	// A large diff under the same lease: most members change, the leavers
	// go after the grace.
	last := append(members(manyTaps/2, manyTaps/2+20), members(2*manyTaps, 2*manyTaps+250)...)
	big.Publish(last, 0)
	expect("a diff of more than 128 keys", members(manyTaps/2, manyTaps/2+20), last)
	within(t, 10*time.Second, "the observer follows", func() bool { return observer.RemoteCount() == len(last) })
	within(t, 10*time.Second, "hosts/big counts the new members", func() bool { return hostInfo().Members == len(last) })
}

// TestClusterPushesManyFiles: a configuration of more files than etcd
// accepts operations in one transaction is pushed whole, against a real
// etcd with its default limits, and read back and pulled exactly; a
// second push that drops half of the VMs leaves exactly the new set.
func TestClusterPushesManyFiles(t *testing.T) {
	c, e := coreEtcd(t)
	cli, err := cluster.Dial(&config.Cluster{Endpoints: []string{e.URL}, Prefix: "/vmfw/"}, true, grpc.WithContextDialer(c.Core.Dial))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys := cluster.Keys{Prefix: "/vmfw/"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const vms = 600
	dir := t.TempDir()
	write := func(rel, content string) { configtest.Write(t, dir, map[string]string{rel: content}) }
	write("groups/web.toml", "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n")
	for i := range vms {
		write(fmt.Sprintf("vms/%d.toml", 1000+i), fmt.Sprintf("[net0]\nmac = \"02:00:00:00:%02x:%02x\"\nips = [\"2001:db8:0:d::%x\"]\ngroups = [\"web\"]\n", i>>8, i&0xff, i+1))
	}
	check := func(what string) {
		t.Helper()
		want, err := cluster.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		s, _, err := cluster.Fetch(ctx, cli, keys)
		if err != nil {
			t.Fatalf("%s: reading back: %v", what, err)
		}
		if len(s.Files) != len(want) {
			t.Errorf("%s: etcd holds %d files, want %d", what, len(s.Files), len(want))
		}
		for rel, data := range want {
			if string(s.Files[rel]) != string(data) {
				t.Errorf("%s: %s differs in etcd", what, rel)
			}
		}
		pulled := filepath.Join(t.TempDir(), "pulled")
		if _, err := cluster.Pull(ctx, cli, keys, pulled); err != nil {
			t.Fatalf("%s: pull: %v", what, err)
		}
		got, err := cluster.ReadDir(pulled)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Errorf("%s: pulled %d files, want %d", what, len(got), len(want))
		}
	}
	rev1, err := cluster.Push(ctx, cli, keys, dir, "test")
	if err != nil {
		t.Fatalf("pushing %d VM files: %v", vms, err)
	}
	check("first push")
	for i := range vms / 2 {
		if err := os.Remove(fmt.Sprintf("%s/vms/%d.toml", dir, 1000+2*i)); err != nil {
			t.Fatal(err)
		}
	}
	rev2, err := cluster.Push(ctx, cli, keys, dir, "test")
	if err != nil || rev2 <= rev1 {
		t.Fatalf("second push: revision %d after %d, %v", rev2, rev1, err)
	}
	check("second push")
}
