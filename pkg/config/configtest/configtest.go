// Package configtest writes configuration directories for tests: the
// group and VM files (and vmfw.toml) a test's scenario needs, as an
// operator would have them under /etc/vmfw.
package configtest

import (
	"os"
	"path/filepath"
	"testing"
)

// Write writes files into dir, each content under its path relative to
// dir ("vms/110.toml", slash-separated), creating the subdirectories it
// needs. Any error fails t.
func Write(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for rel, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Dir writes files (as Write does) into a new temporary directory, removed
// when the test ends, and returns it.
func Dir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	Write(t, dir, files)
	return dir
}
