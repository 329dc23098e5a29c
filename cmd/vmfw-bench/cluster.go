package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/pkg/cluster"
	"github.com/vmfw/vmfw/pkg/config"
)

// The cluster part (--parts cluster): the fan-out of cluster mode
// (docs/cluster.md) at --cluster-hosts hosts of --cluster-vms VMs each.
// A real etcd runs in a namespace of its own; each simulated host is a
// pkg/cluster Node in this process, as vmfw agent runs it (its own etcd
// client and connection, its own lease kept alive, the watch of every
// host's members), without a data plane: what is measured is how a
// membership change travels, not how ipset writes it. A host's "sets"
// are what its agent would write into them: Node.Remote, the other
// hosts' addresses by group, computed at every change the node reports.
//
// Measured: the time from one host publishing a new VM (Node.Publish)
// to every other host's sets holding its address, p50 and p99 over
// --cluster-joins joins, and per host; the same for the VM leaving
// (which includes cluster.Grace); etcd's own counters (transactions,
// puts, deletes, watch events, bytes sent) per join; the heap and
// goroutines each simulated host adds to this process; etcd's memory
// and CPU.

// clusterGroups is the number of groups; each VM is in 3 of them.
const clusterGroups = 20

// coldStartLimit bounds the cold start. On a loaded machine it takes
// minutes: the simulated hosts share its cores, and leases that expire
// while their keepalives wait make hosts publish everything again.
const coldStartLimit = 10 * time.Minute

// clusterResults is what the cluster part measured.
type clusterResults struct {
	hosts, vms, joins int
	// join and leave are, per change, the time until the last host's
	// sets were right; joinEach and leaveEach per host and change.
	join, leave, joinEach, leaveEach []time.Duration
	// joinWake is, per host and join, the time until the node reported
	// the change (its view updated, before the sets are computed).
	joinWake []time.Duration
	// coldStart is the time from starting every host to every host
	// seeing all the others' members.
	coldStart time.Duration
	// perJoin and perLeave are etcd's counters per change (averages).
	perJoin, perLeave etcdCounters
	// heapPerHost and goroutinesPerHost are what one simulated host
	// adds to this process, after a garbage collection.
	heapPerHost       uint64
	goroutinesPerHost float64
	// etcdRSS is etcd's resident memory at the end; etcdCPU its CPU time
	// per join and leave.
	etcdRSS uint64
	etcdCPU time.Duration
	// benchCPU is this process's CPU time (every simulated host) per
	// join and leave.
	benchCPU time.Duration
	// logged counts the nodes' log records by message ("cluster lease
	// granted" once per host when nothing went wrong).
	logged     sync.Map
	loadBefore string
	loadAfter  string
	// loads are the 1-minute load averages sampled during the run.
	loadMu  sync.Mutex
	loads   []float64
	etcdVer string
}

// etcdCounters are etcd's counters that a membership write moves.
type etcdCounters struct {
	txns, puts, deletes, events, sentBytes float64
}

func (c etcdCounters) sub(o etcdCounters) etcdCounters {
	return etcdCounters{c.txns - o.txns, c.puts - o.puts, c.deletes - o.deletes, c.events - o.events, c.sentBytes - o.sentBytes}
}

func (c etcdCounters) div(n int) etcdCounters {
	f := float64(n)
	return etcdCounters{c.txns / f, c.puts / f, c.deletes / f, c.events / f, c.sentBytes / f}
}

// simHost is one simulated host.
type simHost struct {
	i    int
	node *cluster.Node
	base []cluster.Member
}

// change is one VM joining or leaving, followed by every other host.
type change struct {
	from  int
	addr  netip.Addr
	group string
	join  bool
	start time.Time
	// sets and woke are per host: the time until its sets were right
	// and until the node reported the change that made them right.
	sets, woke []time.Duration
	left       atomic.Int32
	done       chan struct{}
}

// clusterPart runs the cluster part.
func clusterPart(ctx context.Context, o options, r *clusterResults) (err error) {
	r.hosts, r.vms, r.joins = o.clusterHosts, o.clusterVMs, o.clusterJoins
	r.loadBefore = loadAverage()
	// The machine may be shared: the load average is sampled through
	// the run and printed with the results.
	lctx, lstop := context.WithCancel(ctx)
	defer lstop()
	go func() {
		for sleepCtx(lctx, 5*time.Second) == nil {
			if l, err := strconv.ParseFloat(loadAverage(), 64); err == nil {
				r.loadMu.Lock()
				r.loads = append(r.loads, l)
				r.loadMu.Unlock()
			}
		}
	}()
	progress("cluster: %d hosts x %d VMs: starting etcd", r.hosts, r.vms)
	c, err := labnet.NewCluster(0)
	if err != nil {
		return fmt.Errorf("the etcd namespace: %w", err)
	}
	defer func() {
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	data, err := os.MkdirTemp("", "vmfwbench-etcd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(data)
	e, err := labnet.StartEtcd(c.Core, labnet.EtcdURL("http", labnet.CoreAddr), data)
	if err != nil {
		return err
	}
	defer e.Stop()
	if out, err := c.Core.Exec(ctx, "etcd", "--version"); err == nil {
		r.etcdVer = strings.TrimPrefix(strings.SplitN(string(out), "\n", 2)[0], "etcd Version: ")
	}
	metrics := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return c.Core.Dial(ctx, addr) },
	}}
	counters := func() (etcdCounters, error) { return readEtcdCounters(ctx, metrics, e.URL+"/metrics") }

	cache, err := os.MkdirTemp("", "vmfwbench-cluster-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cache)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()

	nctx, stop := context.WithCancel(ctx)
	defer stop()
	var cur atomic.Pointer[change]
	hosts := make([]*simHost, r.hosts)
	start := time.Now()
	for i := range hosts {
		h := &simHost{i: i}
		h.node = cluster.NewNode(&config.Cluster{Endpoints: []string{e.URL}, Prefix: config.DefaultClusterPrefix,
			Host: fmt.Sprintf("hv%03d", i), LeaseTTL: config.DefaultClusterLeaseTTL,
			CacheDir: fmt.Sprintf("%s/hv%03d", cache, i)}, slog.New(logCounter{&r.logged}))
		h.node.DialOptions = []grpc.DialOption{grpc.WithContextDialer(c.Core.Dial)}
		if err := h.node.Start(nctx, 3*time.Second); err != nil {
			return fmt.Errorf("host %d: %w", i, err)
		}
		for v := range r.vms {
			h.base = append(h.base, simMember(i, v, groupName((i+v)%clusterGroups), groupName((i+v+7)%clusterGroups), groupName((i+v+13)%clusterGroups)))
		}
		go h.follow(nctx, &cur)
		hosts[i] = h
	}
	progress("cluster: %d hosts started in %s; each publishes its VMs", r.hosts, time.Since(start).Round(time.Millisecond))
	// Cold start: every host publishes at once, as after a power cut.
	start = time.Now()
	for _, h := range hosts {
		h.node.Publish(h.base, 0)
	}
	want := (r.hosts - 1) * r.vms
	for {
		all := true
		for _, h := range hosts {
			all = all && h.node.RemoteCount() == want
		}
		if all {
			break
		}
		if time.Since(start) > coldStartLimit {
			lo, hi := want, 0
			for _, h := range hosts {
				lo, hi = min(lo, h.node.RemoteCount()), max(hi, h.node.RemoteCount())
			}
			return fmt.Errorf("the hosts did not see each other's %d members within %s (they see %d to %d; the nodes logged %s)", want, coldStartLimit, lo, hi, logSummary(&r.logged))
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	r.coldStart = time.Since(start)
	progress("cluster: every host sees %d remote VMs after %s", want, r.coldStart.Round(time.Millisecond))
	// Let the last sets computations finish before measuring memory.
	if err := sleepCtx(ctx, time.Second); err != nil {
		return err
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	r.heapPerHost = (after.HeapInuse - min(before.HeapInuse, after.HeapInuse)) / uint64(r.hosts)
	r.goroutinesPerHost = float64(runtime.NumGoroutine()-goroutines) / float64(r.hosts)

	// One VM joins on one host and leaves again, every other host
	// following. With count, etcd's counters are read before and after
	// (reading them costs etcd CPU time, so the timed changes do not).
	one := func(k int, join, count bool) (last time.Duration, each, woke []time.Duration, moved etcdCounters, err error) {
		from := hosts[k%r.hosts]
		m := simMember(from.i, r.vms+k%100, groupName(k%clusterGroups))
		ch := &change{from: from.i, addr: m.IPs[0], group: m.Groups[0], join: join,
			sets: make([]time.Duration, r.hosts), woke: make([]time.Duration, r.hosts), done: make(chan struct{})}
		ch.left.Store(int32(r.hosts - 1))
		var before etcdCounters
		if count {
			if before, err = counters(); err != nil {
				return
			}
		}
		cur.Store(ch)
		defer cur.Store(nil)
		ch.start = time.Now()
		if join {
			from.node.Publish(append(slices.Clone(from.base), m), 0)
		} else {
			from.node.Publish(from.base, 0)
		}
		select {
		case <-ch.done:
		case <-time.After(30 * time.Second):
			err = fmt.Errorf("change %d (join %v): %d hosts did not follow within 30 s", k, join, ch.left.Load())
			return
		case <-ctx.Done():
			err = ctx.Err()
			return
		}
		if count {
			var after etcdCounters
			if after, err = counters(); err != nil {
				return
			}
			moved = after.sub(before)
		}
		for i := range ch.sets {
			if i != from.i {
				each, woke = append(each, ch.sets[i]), append(woke, ch.woke[i])
			}
		}
		return slices.Max(each), each, woke, moved, nil
	}
	cpu0, ecpu0 := processCPU(os.Getpid()), processCPU(e.Pid())
	for k := range r.joins {
		last, each, woke, _, err := one(k, true, false)
		if err != nil {
			return err
		}
		r.join, r.joinEach, r.joinWake = append(r.join, last), append(r.joinEach, each...), append(r.joinWake, woke...)
		if last, each, _, _, err = one(k, false, false); err != nil {
			return err
		}
		r.leave, r.leaveEach = append(r.leave, last), append(r.leaveEach, each...)
		if (k+1)%10 == 0 {
			progress("cluster: %d of %d joins; last: join %s, leave %s", k+1, r.joins, ms(r.join[k]), ms(r.leave[k]))
		}
	}
	r.benchCPU = (processCPU(os.Getpid()) - cpu0) / time.Duration(r.joins)
	r.etcdCPU = (processCPU(e.Pid()) - ecpu0) / time.Duration(r.joins)
	// etcd's counters, over a few more changes.
	const counted = 5
	var joinSum, leaveSum etcdCounters
	for k := r.joins; k < r.joins+counted; k++ {
		_, _, _, moved, err := one(k, true, true)
		if err != nil {
			return err
		}
		joinSum = addCounters(joinSum, moved)
		if _, _, _, moved, err = one(k, false, true); err != nil {
			return err
		}
		leaveSum = addCounters(leaveSum, moved)
	}
	r.perJoin, r.perLeave = joinSum.div(counted), leaveSum.div(counted)
	r.etcdRSS = processRSS(e.Pid())
	r.loadAfter = loadAverage()
	return nil
}

func addCounters(a, b etcdCounters) etcdCounters {
	return etcdCounters{a.txns + b.txns, a.puts + b.puts, a.deletes + b.deletes, a.events + b.events, a.sentBytes + b.sentBytes}
}

// logCounter is a slog handler that counts records by message.
type logCounter struct{ counts *sync.Map }

func (logCounter) Enabled(context.Context, slog.Level) bool { return true }

func (l logCounter) Handle(_ context.Context, rec slog.Record) error {
	v, _ := l.counts.LoadOrStore(rec.Message, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	return nil
}

func (l logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logCounter) WithGroup(string) slog.Handler      { return l }

// logSummary returns the counted messages, sorted.
func logSummary(m *sync.Map) string {
	var out []string
	m.Range(func(k, v any) bool {
		out = append(out, fmt.Sprintf("%q x%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// simMember is VM v of simulated host h: tap tapVi0 (VM ids start at
// 100), one IPv6 address 2001:db8:c:h::v, in groups.
func simMember(h, v int, groups ...string) cluster.Member {
	ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x0c, byte(h >> 8), byte(h), 14: byte(v >> 8), 15: byte(v)})
	return cluster.Member{Tap: fmt.Sprintf("tap%di0", 100+v), VM: 100 + v, IPs: []netip.Addr{ip}, Groups: groups}
}

// follow is what the host's agent does when its node reports a
// membership change: it computes the group sets (Node.Remote). The
// current change is then checked against them.
func (h *simHost) follow(ctx context.Context, cur *atomic.Pointer[change]) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.node.MembersChanged:
		}
		woke := time.Now()
		sets := h.node.Remote()
		ch := cur.Load()
		if ch == nil || ch.from == h.i || ch.sets[h.i] != 0 {
			continue
		}
		_, has := slices.BinarySearchFunc(sets[ch.group], ch.addr, func(a, b netip.Addr) int { return a.Compare(b) })
		if has != ch.join {
			continue
		}
		ch.sets[h.i] = time.Since(ch.start)
		ch.woke[h.i] = max(woke.Sub(ch.start), time.Nanosecond)
		if ch.left.Add(-1) == 0 {
			close(ch.done)
		}
	}
}

// readEtcdCounters reads etcd's Prometheus metrics.
func readEtcdCounters(ctx context.Context, c *http.Client, url string) (etcdCounters, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return etcdCounters{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return etcdCounters{}, fmt.Errorf("reading etcd's metrics: %w", err)
	}
	defer resp.Body.Close()
	var out etcdCounters
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		switch {
		case name == "etcd_mvcc_txn_total":
			out.txns, found = v, found+1
		case name == "etcd_mvcc_put_total":
			out.puts, found = v, found+1
		case name == "etcd_mvcc_delete_total":
			out.deletes, found = v, found+1
		case name == "etcd_debugging_mvcc_events_total":
			out.events, found = v, found+1
		case strings.HasPrefix(name, "etcd_network_client_grpc_sent_bytes_total"):
			out.sentBytes, found = out.sentBytes+v, found+1
		}
	}
	if err := sc.Err(); err != nil {
		return etcdCounters{}, fmt.Errorf("reading etcd's metrics: %w", err)
	}
	if found < 5 {
		return out, fmt.Errorf("etcd's metrics lack the counters the bench reads (found %d of 5)", found)
	}
	return out, nil
}

// processCPU returns the user and system CPU time of process pid.
func processCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks
}

// processRSS returns the resident memory of process pid, in bytes.
func processRSS(pid int) uint64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func (r *clusterResults) print(w io.Writer, took time.Duration) {
	fmt.Fprintf(w, "vmfw-bench, cluster: %d simulated hosts x %d VMs (each a pkg/cluster Node in this process with its own etcd client,\n", r.hosts, r.vms)
	fmt.Fprintf(w, "lease and watch; no data plane), etcd %s in a namespace; %d joins and leaves of one VM, each by another host;\n", r.etcdVer, r.joins)
	fmt.Fprintln(w, "\"sets\": the other hosts' addresses by group (Node.Remote), what the agent writes into its ipsets")
	tw := newTable(w, "what\tp50\tp99\tmax\tsamples\t")
	row := func(what string, xs []time.Duration) {
		if len(xs) == 0 {
			return
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t\n", what, ms(percentile(xs, 50)), ms(percentile(xs, 99)), ms(slices.Max(xs)), len(xs))
	}
	row("join: publish to every other host's sets holding the VM", r.join)
	row("join: publish to one host's sets (each host, each join)", r.joinEach)
	row("join: publish to one host's node reporting it (view updated)", r.joinWake)
	row(fmt.Sprintf("leave: publish to every other host's sets without it (%s grace)", cluster.Grace), r.leave)
	row("leave: publish to one host's sets (each host, each leave)", r.leaveEach)
	tw.Flush()
	fmt.Fprintf(w, "cold start: %d hosts publishing %d VMs each at once, until every host sees all %d others' VMs: %s\n",
		r.hosts, r.vms, (r.hosts-1)*r.vms, ms(r.coldStart))
	for _, x := range []struct {
		what string
		c    etcdCounters
	}{{"join", r.perJoin}, {"leave", r.perLeave}} {
		fmt.Fprintf(w, "etcd per %s: %.1f transactions, %.1f puts, %.1f deletes; %.0f watch events and %.0f KiB sent to clients\n",
			x.what, x.c.txns, x.c.puts, x.c.deletes, x.c.events, x.c.sentBytes/1024)
	}
	fmt.Fprintf(w, "memory per simulated host: %.0f KiB of heap in use (its view of %d remote members, etcd client, watches), %.1f goroutines\n",
		float64(r.heapPerHost)/1024, (r.hosts-1)*r.vms, r.goroutinesPerHost)
	fmt.Fprintf(w, "etcd: %.0f MiB resident; CPU per join and leave: etcd %s, all simulated hosts together %s\n",
		float64(r.etcdRSS)/(1<<20), ms(r.etcdCPU), ms(r.benchCPU))
	fmt.Fprintf(w, "the simulated hosts logged: %s\n", logSummary(&r.logged))
	r.loadMu.Lock()
	loads := slices.Clone(r.loads)
	r.loadMu.Unlock()
	during := "-"
	if len(loads) > 0 {
		during = fmt.Sprintf("%.1f to %.1f, median %.1f", slices.Min(loads), slices.Max(loads), median(loads))
	}
	fmt.Fprintf(w, "load average (1 min) before %s, after %s, during (every 5 s) %s; total cluster bench time %s\n", r.loadBefore, r.loadAfter, during, took.Round(time.Second))
}
