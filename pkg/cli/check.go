package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// CheckReport is what check -o json prints.
type CheckReport struct {
	// Valid says whether the configuration loads; Error says why not.
	Valid bool   `json:"valid"`
	Error string `json:"error,omitempty"`
	// ConfigDir is the directory checked; Groups, VMs and NICs count
	// what it defines.
	ConfigDir string `json:"config_dir"`
	Groups    int    `json:"groups"`
	VMs       int    `json:"vms"`
	NICs      int    `json:"interfaces"`
	// Notices name interfaces whose routed traffic is not fully
	// filtered (docs/routing.md).
	Notices []CheckNotice `json:"notices"`
	// The embedded report is what an apply would change now; Changed
	// says whether it would change anything. KernelError says why the
	// kernel could not be compared (not root, no iptables): Changed is
	// then false.
	*engine.Report
	KernelError string `json:"kernel_error,omitempty"`
	// Warnings are what the host does that keeps the ruleset from
	// working as intended without being drift (engine.Warnings).
	Warnings []string `json:"warnings,omitempty"`
}

// CheckNotice is one notice of check: an interface (its tap, and the
// file and line of its [netN]) whose routed traffic is not fully filtered,
// how it is filtered (Routed: listed-only, dropped, unfiltered) and what
// that means (Note).
type CheckNotice struct {
	Tap    string `json:"tap"`
	File   string `json:"file"`
	Line   int    `json:"line"`
	Routed string `json:"routed"`
	Note   string `json:"note"`
}

// checkCmd validates the configuration. With -o json it also compares it
// with the kernel, as apply --dry-run does, and says what an apply would
// change; the text form reads no kernel state, so it works without root.
func checkCmd(ctx context.Context, newEngine func() (Engine, error), configDir, backendName string, args []string, stdout io.Writer) error {
	byPort := backendName == config.BackendNFTables
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	format := fs.String("o", "text", "output format: text or json")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if *format != "text" && *format != "json" {
		return &usageError{fmt.Sprintf("check: unknown output format %q (want text or json)", *format)}
	}
	m, err := config.Load(configDir)
	if *format == "text" {
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: ok (%d groups, %d VMs, %d interfaces)\n", configDir, len(m.Groups), len(m.VMs), countNICs(m))
		printUnattributed(stdout, m, byPort)
		// The host's part is best effort: check validates the
		// configuration even where the kernel cannot be read (no root).
		if e, err := newEngine(); err == nil {
			if ws, err := e.Warnings(ctx); err == nil {
				for _, w := range ws {
					fmt.Fprintf(stdout, "warning: %s\n", w)
				}
			}
		}
		return nil
	}
	rep := CheckReport{ConfigDir: configDir, Notices: []CheckNotice{}}
	if err != nil {
		rep.Error = err.Error()
		rep.Report = (&engine.Change{}).Report(true)
		if jerr := writeJSON(stdout, rep); jerr != nil {
			return jerr
		}
		return err
	}
	rep.Valid, rep.Groups, rep.VMs, rep.NICs = true, len(m.Groups), len(m.VMs), countNICs(m)
	for _, id := range slices.Sorted(maps.Keys(m.VMs)) {
		for _, n := range m.VMs[id].NICs {
			if a := ruleset.AttributeFor(n, byPort); a != ruleset.Filtered {
				rep.Notices = append(rep.Notices, CheckNotice{Tap: n.Tap, File: n.VM.File, Line: n.Line, Routed: string(a), Note: a.Explain()})
			}
		}
	}
	ch, err := func() (*engine.Change, error) {
		e, err := newEngine()
		if err != nil {
			return nil, err
		}
		return e.Sync(ctx, true)
	}()
	if err != nil {
		rep.KernelError = err.Error()
		rep.Report = (&engine.Change{}).Report(true)
	} else {
		rep.Report = ch.Report(true)
		if e, err := newEngine(); err == nil {
			if rep.Warnings, err = e.Warnings(ctx); err != nil {
				rep.KernelError = err.Error()
			}
		}
	}
	return writeJSON(stdout, rep)
}

func countNICs(m *config.Model) int {
	n := 0
	for _, vm := range m.VMs {
		n += len(vm.NICs)
	}
	return n
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
