package explain

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/vmfw/vmfw/pkg/policy"
)

// WriteText prints the report for a person: the flow, the configuration's
// steps, the kernel's rules, drift, and the verdict last.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "flow:   %s, %s\n", r.flowText(), r.Path)
	fmt.Fprintf(&b, "from:   %s\n", r.From.text())
	fmt.Fprintf(&b, "to:     %s\n", r.To.text())
	b.WriteString("\nconfiguration:\n")
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, s := range append(append([]policy.Step{}, r.Config.Out...), r.Config.In...) {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", s.Chain, stepKind(s), stepResult(s), stepWhere(s))
	}
	tw.Flush()
	fmt.Fprintf(&b, "  => %s\n", r.Config.Verdict)
	if k := r.Kernel; k != nil {
		fmt.Fprintf(&b, "\nkernel (%s):\n", k.Backend)
		fmt.Fprintf(&b, "  chains: %s\n", strings.Join(k.Chains, " > "))
		for _, h := range k.Rules {
			fmt.Fprintf(&b, "  %s/%s #%d: %s", h.Table, h.Chain, h.Index, h.Rule)
			if h.Origin != "" {
				fmt.Fprintf(&b, "  [%s]", h.Origin)
			}
			b.WriteString("\n")
		}
		if k.Error != "" {
			fmt.Fprintf(&b, "  => cannot tell: %s\n", k.Error)
		} else {
			fmt.Fprintf(&b, "  => %s: %s\n", k.Verdict, k.DecidedBy)
		}
		if len(r.Drift) == 0 {
			b.WriteString("\ndrift: none on this path\n")
		}
		for _, d := range r.Drift {
			fmt.Fprintf(&b, "\ndrift: %s", d)
		}
		if len(r.Drift) > 0 {
			b.WriteString("\n")
		}
	}
	if len(r.Alternatives) > 0 {
		b.WriteString("\nother values:\n")
		for _, a := range r.Alternatives {
			fmt.Fprintf(&b, "  %s: %s\n", a.When, a.Verdict)
		}
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "note: %s\n", n)
		}
	}
	fmt.Fprintf(&b, "\nverdict: %s\n", r.Verdict)
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) flowText() string {
	f := r.Flow
	s := f.Proto + " "
	switch {
	case f.SPort != nil:
		s += fmt.Sprintf("%s -> %s", hostPort(f.Src.String(), *f.SPort), hostPort(f.Dst.String(), *f.DPort))
	case f.ICMPType != nil:
		s += fmt.Sprintf("%s -> %s type %d code %d", f.Src, f.Dst, *f.ICMPType, *f.ICMPCode)
	default:
		s += fmt.Sprintf("%s -> %s", f.Src, f.Dst)
	}
	return fmt.Sprintf("%s (IPv%d)", s, f.Family)
}

func hostPort(a string, p int) string {
	if strings.Contains(a, ":") {
		return fmt.Sprintf("[%s]:%d", a, p)
	}
	return fmt.Sprintf("%s:%d", a, p)
}

func (e Endpoint) text() string {
	switch e.Kind {
	case "vm":
		s := e.Tap
		if e.VM != nil {
			s = fmt.Sprintf("VM %d", *e.VM)
			if e.VMName != "" {
				s += " (" + e.VMName + ")"
			}
			s += " " + e.Tap
		}
		s += ", " + e.Address.String()
		if !e.Attached {
			s += " (not attached)"
		}
		return s
	case "hypervisor":
		return "the hypervisor, " + e.Address.String()
	}
	return e.Address.String() + " (not a VM)"
}

func stepKind(s policy.Step) string {
	if s.What == "rule" {
		return fmt.Sprintf("%s #%d", s.What, s.Rule)
	}
	return s.What
}

func stepResult(s policy.Step) string {
	switch {
	case s.Match == "no":
		return "-"
	case s.Match == "maybe":
		return "maybe " + string(s.Action)
	}
	return string(s.Action)
}

func stepWhere(s policy.Step) string {
	where := ""
	if s.File != "" {
		where = s.File
		if s.Line > 0 {
			where += fmt.Sprintf(":%d", s.Line)
		}
	}
	if s.Note != "" {
		if where != "" {
			where += "  "
		}
		where += s.Note
	}
	if s.Set != "" {
		if where != "" {
			where += "  "
		}
		where += stepSet(s)
	}
	return where
}

// stepSet says which address set a rule looked the packet up in and the
// entry that decided, with its file and line: "set blocked: entry
// 198.51.100.0/24 (sets/blocked.toml:4)".
func stepSet(s policy.Step) string {
	if s.SetEntry == "" {
		return "set " + s.Set + ": no entry contains the address"
	}
	entry := s.SetEntry
	if !strings.HasPrefix(entry, "except ") {
		entry = "entry " + entry
	}
	return fmt.Sprintf("set %s: %s (%s:%d)", s.Set, entry, s.SetFile, s.SetLine)
}
