package main

import (
	"fmt"
	"io"
	"sort"
	"time"
)

// result is what one backend's run found.
type result struct {
	backend    string
	taps       int
	applyTime  time.Duration
	trials     int
	outcomes   map[string]int
	violations []string
	converged  int
}

// outcomeOrder lists the outcomes in the order an apply reaches them.
var outcomeOrder = []string{
	"killed before any change",
	"ipsets partly updated, rules old",
	"ipsets updated, rules old",
	"ipv4 new, ipv6 old, ebtables old",
	"ipv4 new, ipv6 new, ebtables old",
	"rules new, unused ipsets not yet removed",
	"apply complete",
}

func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "\nbackend %s: %d interfaces, a full apply takes %v, kills at random in 0..%v\n",
		r.backend, r.taps, r.applyTime.Round(time.Millisecond), (r.applyTime * 6 / 5).Round(time.Millisecond))
	fmt.Fprintf(w, "  %-45s %6s\n", "state after the kill", "kills")
	seen := map[string]bool{}
	for _, o := range outcomeOrder {
		seen[o] = true
		fmt.Fprintf(w, "  %-45s %6d\n", o, r.outcomes[o])
	}
	var other []string
	for o := range r.outcomes {
		if !seen[o] {
			other = append(other, o)
		}
	}
	sort.Strings(other)
	for _, o := range other {
		fmt.Fprintf(w, "  %-45s %6d\n", o, r.outcomes[o])
	}
	fmt.Fprintf(w, "  %-45s %6d\n", "violations", len(r.violations))
	fmt.Fprintf(w, "  %-45s %2d/%d\n", "next apply converged", r.converged, r.trials)
	for _, v := range r.violations {
		fmt.Fprintln(w, "  VIOLATION:", v)
	}
}
