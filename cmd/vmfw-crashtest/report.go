package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// result is what one backend's run found.
type result struct {
	backend   string
	taps      int
	applyTime time.Duration
	trials    int
	// fresh counts the trials that killed the first apply on a kernel
	// vmfw never touched.
	fresh      int
	outcomes   map[string]int
	violations []string
	converged  int
	// delays are the kill delays, for the report.
	delays []time.Duration
}

// outcomeOrder lists the outcomes in the order an apply reaches them.
var outcomeOrder = []string{
	"killed before any change",
	"ipsets partly updated, rules old",
	"ipsets updated, rules old",
	"ipv4 new, ipv6 old, ebtables old",
	"ipv4 new, ipv6 new, ebtables old",
	"rules new, unused ipsets not yet removed",
	"everything new, killed while finishing",
	"apply finished before the kill",
}

func (r *result) print(w io.Writer) {
	longest := time.Duration(0)
	for _, d := range r.delays {
		longest = max(longest, d)
	}
	fmt.Fprintf(w, "\nbackend %s: %d interfaces, a full apply took %v at the start; kills at random from 0 to 1.2 times the recent full applies (latest kill at %v)\n",
		r.backend, r.taps, r.applyTime.Round(time.Millisecond), longest.Round(time.Millisecond))
	fmt.Fprintf(w, "  %-45s %6s\n", "state after the kill", "kills")
	for _, o := range outcomeOrder {
		if r.backend == nftablesBackend && strings.Contains(o, "ipset") || strings.Contains(o, "ebtables old") && r.backend == nftablesBackend {
			continue // states only the iptables backend passes through
		}
		fmt.Fprintf(w, "  %-45s %6d\n", o, r.outcomes[o])
	}
	// Outcomes the order does not know yet follow, sorted.
	for _, o := range slices.Sorted(maps.Keys(r.outcomes)) {
		if !slices.Contains(outcomeOrder, o) {
			fmt.Fprintf(w, "  %-45s %6d\n", o, r.outcomes[o])
		}
	}
	fmt.Fprintf(w, "  %-45s %6d\n", "of which from an empty kernel (first apply)", r.fresh)
	fmt.Fprintf(w, "  %-45s %6d\n", "violations", len(r.violations))
	fmt.Fprintf(w, "  %-45s %2d/%d\n", "next apply converged", r.converged, r.trials)
	for _, v := range r.violations {
		fmt.Fprintln(w, "  VIOLATION:", v)
	}
}
