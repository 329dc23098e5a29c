package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// row is one measured line of the table.
type row struct {
	backend string
	taps    int
	what    string
	// vmfw and base are the samples of vmfw and of the baseline (none
	// for rows without a baseline).
	vmfw, base []time.Duration
	// note is printed after the numbers.
	note string
}

// dataRow is one data-plane measurement.
type dataRow struct {
	backend  string
	taps     int
	dispatch string
	// wall and cpu are the new-flow rates of the bursts, in thousands
	// per second of wall clock and of the sender's CPU time.
	wall, cpu []float64
	// rtt is the mean ping round trip.
	rtt time.Duration
}

type results struct {
	rows  []row
	data  []dataRow
	notes []string
}

func median[T int64 | float64 | time.Duration](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= 100*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
}

func (r *results) print(w io.Writer, o options, took time.Duration) {
	fmt.Fprintf(w, "vmfw-bench: medians of the runs shown (fewer where a run takes seconds); wall clock per command, fork to exit\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "backend\ttaps\toperation\tvmfw\tbaseline\tbaseline/vmfw\truns\t")
	for _, x := range r.rows {
		vm, base, ratio := "-", "-", "-"
		if len(x.vmfw) > 0 {
			vm = ms(median(x.vmfw))
		}
		if len(x.base) > 0 {
			base = ms(median(x.base))
			if len(x.vmfw) > 0 {
				ratio = fmt.Sprintf("%.0fx", float64(median(x.base))/float64(median(x.vmfw)))
			}
		}
		what := x.what
		if x.note != "" {
			what += " (" + x.note + ")"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%d\t\n", x.backend, x.taps, what, vm, base, ratio, len(x.vmfw))
	}
	tw.Flush()
	if len(r.data) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "data plane: two VMs on one bridge; new UDP flows per second (bursts of distinct flows, median), per second of the")
		fmt.Fprintln(w, "sending core's CPU time (the whole path runs there) and of wall clock; ping round trip")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "backend\ttaps\tdispatch\tnew flows/s (CPU)\tvs 0 taps\tnew flows/s (wall)\tping RTT\t")
		zero := map[string]float64{}
		for _, d := range r.data {
			if d.taps == 0 {
				zero[d.backend+"/"+d.dispatch] = median(d.cpu)
			}
		}
		for _, d := range r.data {
			rel := "-"
			if z := zero[d.backend+"/"+d.dispatch]; z > 0 {
				rel = fmt.Sprintf("%.0f%%", 100*median(d.cpu)/z)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%.1fk\t%s\t%.1fk\t%.0f µs\t\n", d.backend, d.taps, d.dispatch, median(d.cpu), rel, median(d.wall), float64(d.rtt)/float64(time.Microsecond))
		}
		tw.Flush()
	}
	for _, n := range r.notes {
		fmt.Fprintln(w, strings.TrimSpace(n))
	}
	fmt.Fprintf(w, "total bench time %s\n", took.Round(time.Second))
}
