package pveimport

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/vmfw/vmfw/pkg/pveimport/pvefw"
)

// Status says what became of a source line.
type Status string

// The statuses of a source line.
const (
	// Translated lines became the configuration lines listed in Became.
	Translated Status = "translated"
	// Inlined lines (aliases) were written into the rules and set
	// entries that use them, listed in Became.
	Inlined Status = "inlined"
	// Disabled rules ("|IN ...") are not enforced by pve-firewall and
	// not written.
	Disabled Status = "disabled"
	// Skipped lines were left out by --skip-untranslatable; Note says why
	// they could not be translated.
	Skipped Status = "skipped"
	// Failed lines could not be translated and failed the import.
	Failed Status = "error"
	// Host lines configure the host's own firewall, which vmfw does not
	// manage.
	Host Status = "host"
	// NoEffect lines change nothing pve-firewall does to guest traffic
	// (a rule of a guest nothing filters, an unused group's forward
	// rule); Note says why.
	NoEffect Status = "no-effect"
	// unhandled marks a line no step of the import looked at; the tests
	// require that none is left.
	unhandled Status = "unhandled"
)

// LineReport is what became of one source line.
type LineReport struct {
	pvefw.Line
	Status Status `json:"status"`
	// Became lists the written lines (FILE:LINE) the source line became.
	Became []string `json:"became,omitempty"`
	// Note says more: why a line was skipped or has no effect, what the
	// translation changed ("range ... as 3 prefixes").
	Note string `json:"note,omitempty"`
}

// Report says what each source line became.
type Report struct {
	// Source and Dest are the directories read and written.
	Source string `json:"source"`
	Dest   string `json:"dest"`
	// Files are the files written, relative to Dest.
	Files []string `json:"files"`
	// Lines are every non-blank, non-comment source line, by file and
	// line.
	Lines []LineReport `json:"lines"`
}

// reporter collects line reports as the translation goes.
type reporter struct {
	lines map[pvefw.Pos]*LineReport
}

func newReporter() *reporter { return &reporter{lines: map[pvefw.Pos]*LineReport{}} }

// add registers a source line, unhandled until a step sets its status.
func (r *reporter) add(l pvefw.Line) {
	if _, ok := r.lines[l.Pos]; !ok {
		r.lines[l.Pos] = &LineReport{Line: l, Status: unhandled}
	}
}

// set gives line l a status and a note (appended to any earlier note).
func (r *reporter) set(l pvefw.Line, s Status, note string) {
	r.add(l)
	lr := r.lines[l.Pos]
	// An error or skip outranks what another step said of the line.
	if lr.Status == Failed || (lr.Status == Skipped && s != Failed) {
		return
	}
	if lr.Status != s {
		// What an earlier step said explained the earlier status.
		lr.Note = ""
	}
	lr.Status = s
	r.note(l, note)
}

// note adds a note to line l.
func (r *reporter) note(l pvefw.Line, note string) {
	r.add(l)
	lr := r.lines[l.Pos]
	if note == "" || slices.Contains(strings.Split(lr.Note, "; "), note) {
		return
	}
	if lr.Note != "" {
		lr.Note += "; "
	}
	lr.Note += note
}

// became records that line src was written at dest (FILE:LINE).
func (r *reporter) became(src pvefw.Pos, dest string) {
	lr := r.lines[src]
	if lr == nil || slices.Contains(lr.Became, dest) {
		return
	}
	lr.Became = append(lr.Became, dest)
}

// report returns the lines sorted by file and line.
func (r *reporter) report() []LineReport {
	out := make([]LineReport, 0, len(r.lines))
	for _, lr := range r.lines {
		out = append(out, *lr)
	}
	slices.SortFunc(out, func(a, b LineReport) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Pos.Line, b.Pos.Line))
	})
	return out
}

// WriteText prints the report for people: one line per source line,
// FILE:LINE STATUS -> DESTINATIONS, with the note indented below.
func (rep *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "imported %s into %s: %d files\n", rep.Source, rep.Dest, len(rep.Files))
	for _, l := range rep.Lines {
		fmt.Fprintf(&b, "%s: %s", l.Pos, l.Status)
		if len(l.Became) > 0 {
			fmt.Fprintf(&b, " -> %s", strings.Join(l.Became, ", "))
		}
		fmt.Fprintf(&b, "\n    %s\n", l.Text)
		if l.Note != "" {
			fmt.Fprintf(&b, "    (%s)\n", l.Note)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
