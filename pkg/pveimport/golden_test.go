package pveimport_test

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/pveimport"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/*/want*")

// importCase imports testdata/name/src and returns what the test compares:
// the written files, REPORT.txt and, for a failed import, ERRORS.txt.
func importCase(t *testing.T, name string, opts pveimport.Options) map[string][]byte {
	t.Helper()
	res, err := pveimport.Import(filepath.Join("testdata", name, "src"), opts)
	out := map[string][]byte{}
	var ie *pveimport.Error
	var rep *pveimport.Report
	switch {
	case errors.As(err, &ie):
		var b strings.Builder
		b.WriteString(ie.Error() + "\n")
		out["ERRORS.txt"] = []byte(b.String())
		rep = &ie.Report
	case err != nil:
		t.Fatalf("%s: %v", name, err)
	default:
		for _, f := range res.Files {
			out[f.Path] = f.Data
		}
		rep = &res.Report
	}
	rep.Source, rep.Dest = "SRC", "DEST"
	var b bytes.Buffer
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out["REPORT.txt"] = b.Bytes()
	return out
}

// cases lists the test trees and, for each, whether it is also imported
// with SkipUntranslatable (golden files in want-skip).
var cases = []struct {
	name string
	skip bool
}{{"guide", false}, {"off", false}, {"cluster", false}, {"plain", false}, {"errors", false}, {"errors", true}}

func wantDir(name string, skip bool) string {
	if skip {
		return filepath.Join("testdata", name, "want-skip")
	}
	return filepath.Join("testdata", name, "want")
}

// TestGolden compares each import with the files in testdata/*/want:
// the configuration written, the report and the errors.
func TestGolden(t *testing.T) {
	for _, c := range cases {
		got := importCase(t, c.name, pveimport.Options{SkipUntranslatable: c.skip})
		dir := wantDir(c.name, c.skip)
		if *update {
			os.RemoveAll(dir)
			for path, data := range got {
				p := filepath.Join(dir, path)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		want := map[string][]byte{}
		err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			want[filepath.ToSlash(rel)] = data
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v (run go test -update to create it)", dir, err)
		}
		for path, data := range got {
			if w, ok := want[path]; !ok {
				t.Errorf("%s: unexpected file %s", dir, path)
			} else if !bytes.Equal(w, data) {
				t.Errorf("%s/%s differs:\n--- got\n%s\n--- want\n%s", dir, path, data, w)
			}
		}
		for path := range want {
			if _, ok := got[path]; !ok {
				t.Errorf("%s: missing file %s", dir, path)
			}
		}
	}
}

// TestDeterministic: importing the same tree twice gives byte-identical
// files and reports.
func TestDeterministic(t *testing.T) {
	for _, c := range cases {
		a := importCase(t, c.name, pveimport.Options{SkipUntranslatable: c.skip})
		for range 5 {
			b := importCase(t, c.name, pveimport.Options{SkipUntranslatable: c.skip})
			for path, data := range a {
				if !bytes.Equal(b[path], data) {
					t.Fatalf("%s: %s differs between two imports", c.name, path)
				}
			}
		}
	}
}

// TestEveryLineAccountedFor: every non-blank, non-comment line of every
// tree has a status; none is left unhandled, so nothing is dropped
// silently.
func TestEveryLineAccountedFor(t *testing.T) {
	for _, c := range cases {
		res, err := pveimport.Import(filepath.Join("testdata", c.name, "src"), pveimport.Options{SkipUntranslatable: c.skip})
		rep := reportOf(res, err)
		if rep == nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(rep.Lines) == 0 {
			t.Fatalf("%s: empty report", c.name)
		}
		for _, l := range rep.Lines {
			if l.Status == "unhandled" {
				t.Errorf("%s: %s: no status: %s", c.name, l.Pos, l.Text)
			}
			if l.Status == pveimport.Translated && len(l.Became) == 0 && !strings.HasPrefix(l.Text, "[") {
				t.Errorf("%s: %s: translated, but into nothing: %s", c.name, l.Pos, l.Text)
			}
		}
	}
}

func reportOf(res *pveimport.Result, err error) *pveimport.Report {
	var ie *pveimport.Error
	if errors.As(err, &ie) {
		return &ie.Report
	}
	if err != nil {
		return nil
	}
	return &res.Report
}

// TestSkipLeavesNoDenialOut: with SkipUntranslatable, a line that cannot be
// translated is skipped only when it accepts (or pve-firewall ignores it
// anyway); DROP and REJECT rules and restricting options still fail.
func TestSkipLeavesNoDenialOut(t *testing.T) {
	res, err := pveimport.Import(filepath.Join("testdata", "errors", "src"), pveimport.Options{SkipUntranslatable: true})
	rep := reportOf(res, err)
	var ie *pveimport.Error
	if !errors.As(err, &ie) {
		t.Fatalf("want the import to fail on the lines it may not skip, got %v", err)
	}
	skipped := 0
	for _, l := range rep.Lines {
		if l.Status != pveimport.Skipped {
			continue
		}
		skipped++
		if strings.Contains(l.Note, string(pveimport.Untranslatable)) && !strings.Contains(l.Text, "ACCEPT") && !strings.Contains(l.Note, "only drops more") && !strings.Contains(l.Note, "logging") {
			t.Errorf("%s: skipped although it may deny traffic: %s (%s)", l.Pos, l.Text, l.Note)
		}
	}
	if skipped == 0 {
		t.Fatal("nothing skipped")
	}
	for _, p := range ie.Problems {
		if p.Kind == pveimport.Ignored {
			t.Errorf("%s: a line pve-firewall ignores fails the import with --skip-untranslatable", p.Pos)
		}
		if strings.Contains(p.Text, "ACCEPT") && !strings.Contains(p.Text, "GROUP") && p.Kind == pveimport.Untranslatable && strings.HasPrefix(p.Text, "IN ACCEPT") {
			t.Errorf("%s: an ACCEPT rule was not skipped", p.Pos)
		}
	}
	wantFail := []string{"ipfilter: 1", "OUT DROP -source 192.0.2.1", "tcpflags: 1", "IN DROP -p tcp -dport 0", "net0: name=eth0"}
	for _, w := range wantFail {
		if !slices.ContainsFunc(ie.Problems, func(p pveimport.Problem) bool { return strings.Contains(p.Text, w) }) {
			t.Errorf("%q should still fail the import", w)
		}
	}
}
