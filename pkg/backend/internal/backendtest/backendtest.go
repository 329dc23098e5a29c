// Package backendtest holds what the backends' tests share: running a
// test in a network namespace of its own, and comparing generated rules
// with golden files.
package backendtest

import (
	"flag"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// update is go test's -update: every test binary that compares with
// golden files registers it once, here.
var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// InNamespace runs fn with the calling thread in a new network namespace
// of its own (nf_tables and ipsets are per namespace); commands fn starts
// from this goroutine run there too. It skips unless root.
func InNamespace(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer ns.Close()
	defer func() {
		// A thread that cannot go back stays locked and exits with the test.
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	fn()
}

// Golden compares got with testdata/name, or rewrites it with -update;
// what names the generated text in the message of a difference ("the
// generated tables").
func Golden(t *testing.T, name, got, what string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from %s (run go test -update after checking the change):\n%s", path, what, lineDiff(string(want), got))
	}
}

// Features runs test as a subtest for each configuration directory in
// dir (one small configuration per rule feature), named as the
// directory; it fails when dir holds none.
func Features(t *testing.T, dir string, test func(t *testing.T, name, dir string)) {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatal("no feature configs in " + dir)
	}
	for _, d := range dirs {
		name := filepath.Base(d)
		t.Run(name, func(t *testing.T) { test(t, name, d) })
	}
}

// lineDiff lists the lines that differ, by number.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want " + wl + "\n  got  " + gl + "\n")
		}
	}
	return b.String()
}
