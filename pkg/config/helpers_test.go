package config

import (
	"errors"
	"strings"
	"testing"
)

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
