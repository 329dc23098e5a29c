package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testDir writes files (paths relative to the directory, slash-separated)
// into a new temporary directory and returns it. It is configtest.Dir,
// which this package's own tests cannot import: configtest imports
// config (configtest.Load).
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

// mustLoad loads dir and fails the test on any error.
func mustLoad(t testing.TB, dir string) *Model {
	t.Helper()
	m, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return m
}

// checkError asserts that err is an *Error whose text starts with prefix
// ("groups/web.toml:7: ") and contains phrase.
func checkError(t *testing.T, err error, prefix, phrase string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Load succeeded, want error %q...%q", prefix, phrase)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v is a %T, want *Error", err, err)
	}
	if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(ce.Msg, phrase) {
		t.Fatalf("error %q, want prefix %q and phrase %q", err, prefix, phrase)
	}
}
