// Command vmfw-crashtest kills "vmfw apply" with SIGKILL at random moments
// and checks after every kill that the host holds, per iptables family and
// for ebtables (for the nftables backend: both of its tables, which one
// transaction changes), either the whole old ruleset or the whole new one, that the
// ipsets are in a state the interrupted apply could have left (see
// checkSets), and that the next apply converges to exactly the new state.
// The first trial and every tenth after it kill the first apply on a host
// vmfw never ran on (a fresh namespace with the same interfaces), whose old
// state is an empty kernel.
//
// It is a benchmark-style harness, not a test: a trial takes about a
// second and a useful run has hundreds. It runs as root, only inside
// network namespaces it creates and deletes (also when interrupted), with
// documentation addresses, and prints one table per backend.
//
//	vmfw-crashtest [--vmfw bin/vmfw] [--trials 100] [--backends nft,legacy,nftables] [--taps 300] [--seed N]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	bin := flag.String("vmfw", "bin/vmfw", "path of the vmfw binary")
	trials := flag.Int("trials", 100, "kills per backend")
	backends := flag.String("backends", "nft,legacy,nftables", "backends to test, comma-separated: the iptables backend's flavours nft and legacy, and nftables")
	taps := flag.Int("taps", 300, "interfaces in the scenario; more make an apply last longer")
	seed := flag.Int64("seed", time.Now().UnixNano(), "seed of the random kill moments")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "vmfw-crashtest: needs root (network namespaces, iptables)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("vmfw-crashtest: %d trials per backend, %d interfaces, seed %d\n", *trials, *taps, *seed)
	failed := false
	for _, b := range strings.Split(*backends, ",") {
		r, err := runBackend(ctx, options{vmfw: *bin, backend: b, trials: *trials, taps: *taps, seed: *seed})
		if r != nil {
			r.print(os.Stdout)
			failed = failed || len(r.violations) > 0
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "vmfw-crashtest: %s: %v\n", b, err)
			os.Exit(1)
		}
	}
	if failed {
		os.Exit(1)
	}
}
