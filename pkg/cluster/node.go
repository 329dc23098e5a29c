package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/vmfw/vmfw/pkg/config"
)

// retry is the pause before an etcd request that failed is tried again.
const retry = 300 * time.Millisecond

// Node is an agent's part of the cluster. It follows the configuration
// in etcd (every revision is stored in the Cache, then ConfigChanged
// fires), follows every other host's members (MembersChanged fires;
// Remote returns them by group), and publishes this host's members and
// revision under a lease it keeps alive. While etcd is unreachable it
// keeps what it last saw: nothing is forgotten because the store is
// silent, and a watch that breaks or falls behind a compaction is
// followed by a full read, never by a diff against a stale view.
type Node struct {
	Cfg   *config.Cluster
	Cache Cache
	Log   *slog.Logger
	// DialOptions are passed to Dial by Start (nil for an agent).
	DialOptions []grpc.DialOption

	// ConfigChanged and MembersChanged are signalled (never closed)
	// when the cached configuration or the remote members change.
	ConfigChanged  chan struct{}
	MembersChanged chan struct{}

	cli  *clientv3.Client
	keys Keys
	kick chan struct{}
	// running counts the goroutines Start started (Wait).
	running sync.WaitGroup

	mu     sync.Mutex
	remote map[string]map[string]Member // host -> tap -> member, other hosts only
	// byGroup is remote's addresses by group, kept up to date with it,
	// so that Remote copies sets instead of building and sorting them
	// for every change.
	byGroup  groupIndex
	want     map[string]Member // this host's members, by tap
	revision int64             // the revision this host enforces
	// leaving holds this host's members that were detached, published
	// until their grace ends.
	leaving map[string]departure
}

// departure is a member this host detached, still published until.
type departure struct {
	m     Member
	until time.Time
}

// Grace is how long a member stays published after its interface was
// detached: a live migration whose source host runs ifdown before the
// destination runs ifup then never drops the VM from third hosts' sets.
// A VM that stops is still out of every set within a second. A host
// whose lease expires loses its members at once, without grace.
const Grace = 500 * time.Millisecond

// NewNode returns a node for c; Start runs it.
func NewNode(c *config.Cluster, log *slog.Logger) *Node {
	return &Node{
		Cfg:            c,
		Cache:          Cache{Dir: c.CacheDir},
		Log:            log,
		ConfigChanged:  make(chan struct{}, 1),
		MembersChanged: make(chan struct{}, 1),
		keys:           Keys{Prefix: c.Prefix},
		kick:           make(chan struct{}, 1),
		remote:         map[string]map[string]Member{},
		byGroup:        groupIndex{},
		leaving:        map[string]departure{},
		want:           map[string]Member{},
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Start connects in the background and runs until ctx is done; Wait then
// waits for it to end. It first tries, for at most initialWait, to bring
// the cache up to date, so that an agent starting with etcd reachable
// enforces the current revision from its first apply; with etcd
// unreachable it goes on with the cache.
func (n *Node) Start(ctx context.Context, initialWait time.Duration) error {
	cli, err := Dial(n.Cfg, false, n.DialOptions...)
	if err != nil {
		return err
	}
	n.cli = cli
	n.running.Go(func() {
		<-ctx.Done()
		cli.Close()
	})
	first, cancel := context.WithTimeout(ctx, initialWait)
	rev, err := n.syncConfig(first)
	cancel()
	if err != nil {
		n.Log.Warn("etcd unreachable at start; enforcing the cached configuration", "revision", n.Cache.Revision(), "error", err.Error())
	}
	n.running.Go(func() { n.followConfig(ctx, rev) })
	n.running.Go(func() { n.followMembers(ctx) })
	n.running.Go(func() { n.publish(ctx) })
	return nil
}

// Wait returns once every goroutine Start started has ended, the etcd
// client closed: after the context given to Start is done. Without a
// Start it returns at once.
func (n *Node) Wait() {
	n.running.Wait()
}

// syncConfig reads the configuration and caches it when it is new. It
// returns the etcd revision it read at.
func (n *Node) syncConfig(ctx context.Context) (int64, error) {
	s, rev, err := Fetch(ctx, n.cli, n.keys)
	if err != nil {
		return 0, err
	}
	if s.Revision == 0 || s.Revision == n.Cache.Revision() {
		return rev, nil
	}
	if err := n.Cache.Store(s); err != nil {
		n.Log.Error("caching the configuration", "revision", s.Revision, "error", err.Error())
		return rev, err
	}
	n.Log.Info("configuration received", "revision", s.Revision, "files", len(s.Files), "pushed_by", s.Meta.PushedBy)
	signal(n.ConfigChanged)
	return rev, nil
}

// followConfig watches the configuration's meta key from revision rev+1
// on; any event reads the configuration whole again. Every push writes the
// meta key last, in the transaction that makes its files current, so the
// parts a large push writes before it start no read of their own.
func (n *Node) followConfig(ctx context.Context, rev int64) {
	for ctx.Err() == nil {
		if rev == 0 {
			var err error
			if rev, err = n.syncConfig(ctx); err != nil {
				sleep(ctx, retry)
				continue
			}
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range n.cli.Watch(wctx, n.keys.ConfigMeta(), clientv3.WithRev(rev+1)) {
			if wr.Err() != nil || wr.Canceled {
				break
			}
			if len(wr.Events) > 0 {
				if _, err := n.syncConfig(ctx); err != nil {
					break
				}
			}
		}
		cancel()
		rev = 0 // a broken watch: read everything again
		sleep(ctx, retry)
	}
}

// followMembers keeps n.remote equal to every other host's members: a
// full read, then a watch from the revision after it; a broken watch or
// one behind a compaction starts over with a full read.
func (n *Node) followMembers(ctx context.Context) {
	for ctx.Err() == nil {
		tctx, cancel := withTimeout(ctx)
		resp, err := n.cli.Get(tctx, n.keys.Members(), clientv3.WithPrefix())
		cancel()
		if err != nil {
			sleep(ctx, retry)
			continue
		}
		all := map[string]map[string]Member{}
		for _, kv := range resp.Kvs {
			n.apply(all, string(kv.Key), kv.Value)
		}
		n.setRemote(all)
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range n.cli.Watch(wctx, n.keys.Members(), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Err() != nil || wr.Canceled {
				if wr.CompactRevision != 0 {
					n.Log.Warn("membership watch fell behind a compaction; reading it whole", "compact_revision", wr.CompactRevision)
				}
				break
			}
			// The events change the view in place: their cost is that
			// of the members they name, not of the whole cluster's
			// (every host takes every event; at 100 hosts of 50 VMs,
			// copying and comparing the whole view per event cost
			// each host tens of milliseconds of CPU per VM started).
			changed := false
			n.mu.Lock()
			for _, ev := range wr.Events {
				var value []byte
				if ev.Type != clientv3.EventTypeDelete {
					value = ev.Kv.Value
				}
				if n.applyIndexed(string(ev.Kv.Key), value) {
					changed = true
				}
			}
			n.mu.Unlock()
			if changed {
				signal(n.MembersChanged)
			}
		}
		wcancel()
		sleep(ctx, retry)
	}
}

// apply records one member key (value nil: deleted) in all, leaving out
// this host's own, and reports whether all changed.
func (n *Node) apply(all map[string]map[string]Member, key string, value []byte) bool {
	rest, ok := strings.CutPrefix(key, n.keys.Members())
	if !ok {
		return false
	}
	host, tap, ok := strings.Cut(rest, "/")
	if !ok || host == n.Cfg.Host {
		return false
	}
	if value == nil {
		if _, ok := all[host][tap]; !ok {
			return false
		}
		delete(all[host], tap)
		if len(all[host]) == 0 {
			delete(all, host)
		}
		return true
	}
	var m Member
	if err := json.Unmarshal(value, &m); err != nil {
		n.Log.Warn("ignoring a member key that is not vmfw's", "key", key, "error", err.Error())
		return false
	}
	if old, ok := all[host][tap]; ok && reflect.DeepEqual(old, m) {
		return false
	}
	if all[host] == nil {
		all[host] = map[string]Member{}
	}
	all[host][tap] = m
	return true
}

func (n *Node) setRemote(all map[string]map[string]Member) {
	n.mu.Lock()
	changed := !reflect.DeepEqual(n.remote, all)
	if changed {
		n.remote = all
		n.byGroup = groupIndex{}
		for _, taps := range all {
			for _, m := range taps {
				n.byGroup.add(m)
			}
		}
	}
	n.mu.Unlock()
	if changed {
		signal(n.MembersChanged)
	}
}

// applyIndexed applies one member event to n.remote and n.byGroup
// (caller holds n.mu) and reports whether they changed.
func (n *Node) applyIndexed(key string, value []byte) bool {
	host, tap, ok := strings.Cut(strings.TrimPrefix(key, n.keys.Members()), "/")
	old, had := n.remote[host][tap]
	if !ok || !n.apply(n.remote, key, value) {
		return false
	}
	if had {
		n.byGroup.remove(old)
	}
	if m, has := n.remote[host][tap]; has {
		n.byGroup.add(m)
	}
	return true
}

// groupIndex holds addresses by group, each group's sorted, with the
// number of members that hold each (an address can be two members' for
// a moment: a VM migrating is published by both hosts).
type groupIndex map[string]*groupSet

type groupSet struct {
	sorted []netip.Addr
	count  map[netip.Addr]int
}

func (x groupIndex) add(m Member) {
	for _, g := range m.Groups {
		s := x[g]
		if s == nil {
			s = &groupSet{count: map[netip.Addr]int{}}
			x[g] = s
		}
		for _, ip := range m.IPs {
			if s.count[ip]++; s.count[ip] == 1 {
				i, _ := slices.BinarySearchFunc(s.sorted, ip, netip.Addr.Compare)
				s.sorted = slices.Insert(s.sorted, i, ip)
			}
		}
	}
}

func (x groupIndex) remove(m Member) {
	for _, g := range m.Groups {
		s := x[g]
		if s == nil {
			continue
		}
		for _, ip := range m.IPs {
			if s.count[ip]--; s.count[ip] > 0 {
				continue
			}
			delete(s.count, ip)
			if i, ok := slices.BinarySearchFunc(s.sorted, ip, netip.Addr.Compare); ok {
				s.sorted = slices.Delete(s.sorted, i, i+1)
			}
		}
		if len(s.sorted) == 0 {
			delete(x, g)
		}
	}
}

// Remote returns the other hosts' members' addresses by group, sorted;
// the caller may keep and change them.
func (n *Node) Remote() map[string][]netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string][]netip.Addr, len(n.byGroup))
	for g, s := range n.byGroup {
		out[g] = slices.Clone(s.sorted)
	}
	return out
}

// RemoteCount returns how many interfaces other hosts have attached.
func (n *Node) RemoteCount() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, taps := range n.remote {
		c += len(taps)
	}
	return c
}

// Publish sets this host's members and the revision it enforces; they
// are written to etcd in the background, and again whenever the lease
// had to be renewed.
func (n *Node) Publish(members []Member, revision int64) {
	want := make(map[string]Member, len(members))
	for _, m := range members {
		m.Host = n.Cfg.Host
		want[m.Tap] = m
	}
	n.mu.Lock()
	if reflect.DeepEqual(want, n.want) && revision == n.revision {
		n.mu.Unlock()
		return
	}
	for tap, m := range n.want {
		if _, ok := want[tap]; !ok {
			n.leaving[tap] = departure{m: m, until: time.Now().Add(Grace)}
		}
	}
	for tap := range want {
		delete(n.leaving, tap)
	}
	n.want, n.revision = want, revision
	n.mu.Unlock()
	signal(n.kick)
}

// published returns what this host's keys should hold now: its members
// and those still in their grace (caller holds n.mu).
func (n *Node) published() map[string]Member {
	if len(n.leaving) == 0 {
		return n.want
	}
	out := make(map[string]Member, len(n.want)+len(n.leaving))
	now := time.Now()
	for tap, d := range n.leaving {
		if now.Before(d.until) {
			out[tap] = d.m
		} else {
			delete(n.leaving, tap)
		}
	}
	for tap, m := range n.want {
		out[tap] = m
	}
	return out
}

// graceEnds fires when the grace of the first member still published
// after it left ends, which publish then unpublishes; nil when none is.
// publish waits for it itself, rather than a timer's goroutine kicking it,
// so that nothing of the node runs after Wait.
func (n *Node) graceEnds() <-chan time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	var first time.Time
	for _, d := range n.leaving {
		if first.IsZero() || d.until.Before(first) {
			first = d.until
		}
	}
	if first.IsZero() {
		return nil
	}
	return time.After(time.Until(first))
}

// publish keeps this host's lease alive and its keys equal to n.want.
// A new lease (at start, or after the old one expired during an outage)
// replaces every key the host had.
func (n *Node) publish(ctx context.Context) {
	since := time.Now().UTC()
	var lease clientv3.LeaseID
	var alive <-chan *clientv3.LeaseKeepAliveResponse
	var kaCancel context.CancelFunc = func() {}
	defer func() { kaCancel() }()
	written := map[string]Member(nil) // what the keys hold under lease
	writtenRev := int64(-1)
	for ctx.Err() == nil {
		if lease == 0 {
			tctx, cancel := withTimeout(ctx)
			gr, err := n.cli.Grant(tctx, int64(n.Cfg.LeaseTTL/time.Second))
			cancel()
			if err != nil {
				sleep(ctx, retry)
				continue
			}
			kctx, kc := context.WithCancel(ctx)
			ka, err := n.cli.KeepAlive(kctx, gr.ID)
			if err != nil {
				kc()
				sleep(ctx, retry)
				continue
			}
			lease, alive, kaCancel, written, writtenRev = gr.ID, ka, kc, nil, -1
			n.Log.Info("cluster lease granted", "host", n.Cfg.Host, "ttl", n.Cfg.LeaseTTL.String())
		}
		n.mu.Lock()
		want, rev := n.published(), n.revision
		n.mu.Unlock()
		if written == nil || !reflect.DeepEqual(want, written) || rev != writtenRev {
			if err := n.write(ctx, lease, written, want, rev, since); err != nil {
				n.Log.Warn("publishing this host's members", "error", err.Error())
				// Some of the write's transactions may have committed
				// (or the last one, with its answer lost): what the
				// keys hold is unknown, so the next write reads them
				// and replaces them all, as under a new lease, and
				// leaves no key behind that a diff would not delete.
				written = nil
				select {
				case _, ok := <-alive:
					if !ok {
						lease = 0
						kaCancel()
					}
				case <-time.After(retry):
				case <-ctx.Done():
				}
				continue
			}
			written, writtenRev = want, rev
		}
		select {
		case <-ctx.Done():
		case <-n.kick:
		case <-n.graceEnds():
		case _, ok := <-alive:
			if !ok {
				n.Log.Warn("cluster lease lost; publishing again under a new one")
				lease = 0
				kaCancel()
			}
		}
	}
}

// write makes this host's keys equal to want under lease: with written
// nil (a new lease, or after a failed write) it reads the host's member
// keys and replaces them all.
//
// The operations go in transactions of at most txnOps (etcd caps the
// operations of one transaction), in an order that keeps every state
// other hosts can see between two of them consistent: first the puts
// (new and changed members), then the deletes of members that left, and
// last hosts/HOST with the member count and revision. A member that
// stays is never missing in between (its key is overwritten, never
// deleted and re-created), one that joins is added before any other
// goes, and one that leaves goes only after every new one is in: a
// watcher sees at most the union of the old and new members, as during
// the migration grace. Each member is one key whose value is whole, so
// an intermediate state never holds half a member. A join or a leave is
// one transaction of three operations (the member, hosts/HOST,
// known/HOST); only a host rewriting more than txnOps keys (a new lease
// on a host with many interfaces) takes several.
func (n *Node) write(ctx context.Context, lease clientv3.LeaseID, written, want map[string]Member, rev int64, since time.Time) error {
	var puts, deletes []clientv3.Op
	stale := map[string]bool{}
	for tap := range written {
		stale[tap] = true
	}
	if written == nil {
		// Whatever keys the host has (an earlier lease's, or a
		// previous agent's) are replaced; they are deleted after the
		// new ones are put, so that other hosts never see this host's
		// members missing in between.
		tctx, cancel := withTimeout(ctx)
		resp, err := n.cli.Get(tctx, n.keys.MembersOf(n.Cfg.Host), clientv3.WithPrefix(), clientv3.WithKeysOnly())
		cancel()
		if err != nil {
			return fmt.Errorf("reading this host's member keys: %w", err)
		}
		for _, kv := range resp.Kvs {
			stale[strings.TrimPrefix(string(kv.Key), n.keys.MembersOf(n.Cfg.Host))] = true
		}
	}
	for _, tap := range slices.Sorted(maps.Keys(stale)) {
		if _, ok := want[tap]; !ok {
			deletes = append(deletes, clientv3.OpDelete(n.keys.MembersOf(n.Cfg.Host)+tap))
		}
	}
	for _, tap := range slices.Sorted(maps.Keys(want)) {
		m := want[tap]
		if old, ok := written[tap]; ok && reflect.DeepEqual(old, m) {
			continue
		}
		v, err := json.Marshal(m)
		if err != nil {
			return fmt.Errorf("encoding member %s: %w", tap, err)
		}
		puts = append(puts, clientv3.OpPut(n.keys.MembersOf(n.Cfg.Host)+tap, string(v), clientv3.WithLease(lease)))
	}
	info, err := json.Marshal(HostInfo{Host: n.Cfg.Host, Revision: rev, Members: len(want), LeaseTTL: int64(n.Cfg.LeaseTTL / time.Second), Since: since})
	if err != nil {
		return fmt.Errorf("encoding host info: %w", err)
	}
	ops := append(append(puts, deletes...),
		clientv3.OpPut(n.keys.Hosts()+n.Cfg.Host, string(info), clientv3.WithLease(lease)),
		clientv3.OpPut(n.keys.Known()+n.Cfg.Host, string(info)))
	for chunk := range slices.Chunk(ops, txnOps) {
		tctx, cancel := withTimeout(ctx)
		_, err := n.cli.Txn(tctx).Then(chunk...).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("writing %d of this host's keys: %w", len(chunk), err)
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// ErrNoCluster says vmfw.toml has no [cluster] table.
var ErrNoCluster = errors.New("vmfw.toml has no [cluster] table: cluster mode is off")
