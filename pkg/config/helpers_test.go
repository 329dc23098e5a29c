package config

import (
	"errors"
	"reflect"
	"slices"
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

// sameIndexedSet reports whether two loaded sets are the same set: the
// same fields, and indexes of the same size that find every prefix where
// the other does. Their slots may lie otherwise (setIndex.replaced).
func sameIndexedSet(a, b *Set) bool {
	if a == nil || b == nil {
		return a == b
	}
	ca, cb := *a, *b
	ca.index, cb.index = nil, nil
	if !reflect.DeepEqual(ca, cb) || (a.index == nil) != (b.index == nil) {
		return false
	}
	if a.index == nil {
		return true
	}
	used := func(ix *setIndex) int {
		n := 0
		for _, s := range ix.slots {
			if s.ref != 0 {
				n++
			}
		}
		return n
	}
	if len(a.index.slots) != len(b.index.slots) || used(a.index) != used(b.index) ||
		!slices.Equal(a.index.lens4, b.index.lens4) || !slices.Equal(a.index.lens6, b.index.lens6) {
		return false
	}
	for _, e := range slices.Concat(a.Entries, a.Except) {
		k := keyOf(e.Prefix)
		if a.index.find(k, a.Entries, a.Except) != b.index.find(k, b.Entries, b.Except) {
			return false
		}
	}
	return true
}

// sameModel is reflect.DeepEqual, but for the sets' indexes, which it
// compares as sameIndexedSet does.
func sameModel(a, b *Model) bool {
	if a == nil || b == nil {
		return a == b
	}
	ca, cb := *a, *b
	ca.Sets, cb.Sets = nil, nil
	if !reflect.DeepEqual(ca, cb) || len(a.Sets) != len(b.Sets) {
		return false
	}
	for name, s := range a.Sets {
		if !sameIndexedSet(s, b.Sets[name]) {
			return false
		}
	}
	return true
}
