package config

import (
	"os"
	"path/filepath"
	"testing"
)

// testDir writes files (content by slash-separated path) into a new
// temporary directory and returns it: configtest.Dir, which this package's
// own tests cannot import (configtest imports config).
func testDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for rel, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
