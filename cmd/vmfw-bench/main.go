// Command vmfw-bench measures vmfw at scale and prints one table: the cost
// of tap changes, applies and status at 0, 1000 and 5000 installed taps on
// iptables-nft, iptables-legacy and the nftables backend, next to the naive way (one iptables
// command per rule through go-iptables), and the forwarding cost of the
// dispatch trees against a flat list of physdev jumps: for packets bridged
// between two VMs, and for packets the hypervisor routes to a VM (the
// address tree vmfw-route against a flat list of -d jumps, in IPv6).
//
// It runs as root, only inside network namespaces it creates and deletes
// (also when interrupted), with addresses from the documentation ranges;
// nothing is sent outside them. See docs/performance.md.
//
// The cluster part measures cluster mode's membership fan-out: simulated
// hosts on a real etcd in a namespace (cluster.go); the sets part an
// address set of 100,000 entries (sets.go).
//
//	vmfw-bench [--vmfw bin/vmfw] [--quick] [--runs N] [--backends nft,legacy,nftables] [--sizes 0,1000,5000] [--parts control,data,agent,worst,cluster,sets]
//	           [--cluster-hosts 100] [--cluster-vms 50] [--cluster-joins 100]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command-line settings.
type options struct {
	vmfw      string
	runs      int
	backends  []string
	sizes     []int
	dataSizes map[int]bool
	// slowRuns is the number of runs of rows that read the whole table
	// (apply, status) at the largest size, where one run takes seconds.
	slowRuns int
	// fullApplyTimeout bounds one "full apply from empty".
	fullApplyTimeout time.Duration
	// fullApplyMax is the largest tap count "full apply from empty" runs at.
	fullApplyMax int
	quick        bool
	// hold keeps the first lab after its setup, until interrupted, for
	// looking at it with other tools.
	hold bool
	// slow also runs what takes minutes: the full apply from empty above
	// 1000 taps, the legacy baseline above 1000 taps.
	slow bool
	// control, data, agent, worst, cluster and sets select the parts to run.
	control, data, agent, worst, cluster, sets bool
	// clusterHosts, clusterVMs and clusterJoins size the cluster part.
	clusterHosts, clusterVMs, clusterJoins int
}

func main() {
	var o options
	var backends, sizes, parts string
	flag.StringVar(&o.vmfw, "vmfw", "bin/vmfw", "the vmfw binary to measure")
	flag.BoolVar(&o.quick, "quick", false, "a short run: nft and nftables, 0 and 1000 taps, 3 runs; cluster: 25 hosts, 20 joins (about 5 minutes); flags given explicitly win")
	flag.IntVar(&o.runs, "runs", 5, "runs per row; the table shows medians")
	flag.StringVar(&backends, "backends", "nft,legacy,nftables", "backends to measure: the iptables backend's flavours nft and legacy, and nftables")
	flag.StringVar(&sizes, "sizes", "0,1000,5000", "numbers of installed taps")
	flag.StringVar(&parts, "parts", "control,data,cluster,sets", "what to measure: control (with the baseline), data, agent (vmfw agent against no agent), worst (nftables: every tap its own group), cluster (membership fan-out on etcd), sets (a 100,000-entry address set)")
	flag.IntVar(&o.clusterHosts, "cluster-hosts", 100, "cluster part: simulated hosts")
	flag.IntVar(&o.clusterVMs, "cluster-vms", 50, "cluster part: VMs per host")
	flag.IntVar(&o.clusterJoins, "cluster-joins", 100, "cluster part: joins (and leaves) measured")
	flag.BoolVar(&o.hold, "hold", false, "set up the first backend and size only, print how to reach the lab, and keep it until interrupted")
	flag.BoolVar(&o.slow, "slow", false, "also run what takes minutes: full apply from empty and the legacy baseline above 1000 taps")
	flag.Parse()
	if o.quick {
		// --quick shortens what the command line leaves at its default:
		// "--quick --backends nftables" is a short run of nftables alone.
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quick := func(name string, apply func()) {
			if !set[name] {
				apply()
			}
		}
		quick("runs", func() { o.runs = 3 })
		quick("backends", func() { backends = "nft,nftables" })
		quick("sizes", func() { sizes = "0,1000" })
		quick("cluster-hosts", func() { o.clusterHosts = 25 })
		quick("cluster-joins", func() { o.clusterJoins = 20 })
	}
	o.backends = strings.Split(backends, ",")
	partFlags := map[string]*bool{"control": &o.control, "data": &o.data, "agent": &o.agent, "worst": &o.worst, "cluster": &o.cluster, "sets": &o.sets}
	for _, p := range strings.Split(parts, ",") {
		on, ok := partFlags[p]
		if !ok {
			fatalf("unknown part %q (want control, data, agent, worst, cluster or sets)", p)
		}
		*on = true
	}
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			fatalf("bad size %q", s)
		}
		o.sizes = append(o.sizes, n)
	}
	largest := o.sizes[len(o.sizes)-1]
	o.dataSizes = map[int]bool{o.sizes[0]: true, largest: true}
	o.slowRuns = min(o.runs, 3)
	o.fullApplyTimeout = 10 * time.Minute
	o.fullApplyMax = 1000
	if o.slow {
		o.fullApplyMax = 1 << 30
	}
	if abs, err := filepath.Abs(o.vmfw); err == nil {
		o.vmfw = abs
	}
	if err := preflight(o); err != nil {
		fatalf("%v", err)
	}

	// iptables-legacy serializes on one lock file for the whole machine,
	// though each namespace has its own tables; other work on the machine
	// would stall the bench for minutes. The bench's namespaces are its
	// own, so its commands and vmfw take a lock of their own.
	lockDir, err := os.MkdirTemp("", "vmfwbench-lock-")
	if err != nil {
		fatalf("%v", err)
	}
	atExit = append(atExit, func() { os.RemoveAll(lockDir) })
	defer os.RemoveAll(lockDir)
	os.Setenv("XTABLES_LOCKFILE", filepath.Join(lockDir, "xtables.lock"))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer removeAll()
	start := time.Now()
	var table results
	labs := o.backends
	if !o.control && !o.data {
		labs = nil // the agent part sets up labs of its own
	}
	for _, backend := range labs {
		for _, n := range o.sizes {
			if err := benchSize(ctx, o, backend, n, &table); err != nil {
				removeAll()
				table.print(os.Stdout, o, time.Since(start)) // what was measured so far
				fatalf("%s, %d taps: %v", backend, n, err)
			}
		}
	}
	if len(labs) > 0 {
		table.print(os.Stdout, o, time.Since(start))
	}
	if o.agent || o.worst {
		var at agentResults
		err := agentPart(ctx, o, &at)
		at.evaluate()
		at.print(os.Stdout, time.Since(start))
		if err != nil {
			removeAll()
			fatalf("%v", err)
		}
	}
	if o.cluster {
		var cr clusterResults
		cstart := time.Now()
		err := clusterPart(ctx, o, &cr)
		if err != nil {
			removeAll()
			fatalf("cluster: %v", err)
		}
		cr.print(os.Stdout, time.Since(cstart))
	}
	if o.sets {
		var sr setResults
		sstart := time.Now()
		err := setsPart(ctx, o, &sr)
		sr.print(os.Stdout, time.Since(sstart))
		if err != nil {
			removeAll()
			fatalf("sets: %v", err)
		}
	}
}

// nftablesBackend names the nftables backend among --backends; the others
// are the iptables backend's flavours.
const nftablesBackend = "nftables"

// preflight checks what the bench needs before creating anything.
func preflight(o options) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: it creates network namespaces")
	}
	progs := []string{o.vmfw}
	if o.agent {
		// The agent part runs what QEMU runs (agentLab.script).
		progs = append(progs, filepath.Join(filepath.Dir(o.vmfw), "vmfw-ifup"), filepath.Join(filepath.Dir(o.vmfw), "vmfw-ifdown"))
	}
	for _, prog := range progs {
		if _, err := os.Stat(prog); err != nil {
			return fmt.Errorf("%v (run make build first, or pass --vmfw; the agent part needs vmfw-ifup and vmfw-ifdown beside it)", err)
		}
	}
	tools := []string{"ip", "ipset", "conntrack", "ping", "ebtables-nft-restore"}
	for _, b := range o.backends {
		switch b {
		case nftablesBackend:
			// Foreign rules go in with iptables-nft, beside its tables.
			tools = append(tools, "nft", "iptables-nft-restore", "ip6tables-nft-restore", "iptables-nft")
			continue
		case "nft", "legacy":
		default:
			return fmt.Errorf("unknown backend %q (want nft, legacy or nftables)", b)
		}
		tools = append(tools, "iptables-"+b+"-restore", "ip6tables-"+b+"-restore", "iptables-"+b)
	}
	if o.cluster {
		tools = append(tools, "etcd")
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found (make deps installs it)", t)
		}
	}
	return nil
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vmfw-bench: "+format+"\n", args...)
	for _, f := range atExit {
		f()
	}
	os.Exit(1)
}

// atExit holds what fatalf undoes before exiting, since os.Exit runs no
// deferred call: the bench's own directories outside the labs (an
// interrupted --hold ends there too).
var atExit []func()

// progress says what is running, on stderr, so a long run shows life.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
