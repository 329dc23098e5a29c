package config

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
)

// file is one configuration file being loaded.
type file struct {
	// rel is the path relative to the configuration directory, used in
	// messages; path is the path it was read from.
	rel, path string
	data      []byte
	lines     *keyLines
	schema    *schema
}

// schema lists the keys a kind of file allows, for "did you mean" hints on
// unknown keys.
type schema struct {
	// top describes the allowed top-level keys.
	top string
	// sub describes the keys allowed in the sub-table named table, "" if
	// that table takes no keys.
	sub func(table string) string
	// maxSize bounds the file's size in bytes; 0 is maxFileSize. Only
	// set files, which list networks by the thousand, have more room.
	maxSize int
	// sizeNote follows "file is larger than N MiB" in the error for a
	// file over maxSize, "" for none.
	sizeNote string
	// ownWalk leaves the file's lines unscanned when it is opened: its
	// loader walks the file once itself and fills them in.
	ownWalk bool
}

// limit returns the most bytes a file of this kind may have.
func (s *schema) limit() int {
	if s.maxSize > 0 {
		return s.maxSize
	}
	return maxFileSize
}

// tooLarge words the error for a file over limit.
func (s *schema) tooLarge() string {
	return "file is larger than " + strconv.Itoa(s.limit()>>20) + " MiB" + s.sizeNote
}

// errorf returns an error at line.
func (f *file) errorf(line int, format string, args ...any) *Error {
	return &Error{File: f.rel, Line: line, Msg: fmt.Sprintf(format, args...)}
}

// errorAt returns an error at the line of the key path (see keyLines).
func (f *file) errorAt(path, format string, args ...any) *Error {
	return f.errorf(f.lines.line(path), format, args...)
}

// decode decodes the file into v, which must be a pointer to a struct whose
// fields name every allowed key. go-toml's errors carry positions; they are
// reworded for operators.
func (f *file) decode(v any) *Error {
	err := toml.NewDecoder(bytes.NewReader(f.data)).DisallowUnknownFields().Decode(v)
	if err == nil {
		return nil
	}
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		first := &strict.Errors[0]
		for i := range strict.Errors {
			if before(&strict.Errors[i], first) {
				first = &strict.Errors[i]
			}
		}
		return f.unknownKey(first)
	}
	var de *toml.DecodeError
	if !errors.As(err, &de) {
		return f.errorf(0, "%s", strings.TrimPrefix(err.Error(), "toml: "))
	}
	line, _ := de.Position()
	msg := strings.TrimPrefix(de.Error(), "toml: ")
	switch {
	case msg == "unknown field" || msg == "missing table":
		return f.unknownKey(de)
	case strings.HasPrefix(msg, "cannot decode TOML "):
		return f.errorf(line, "%s", typeMismatch(de.Key(), msg))
	}
	return f.errorf(line, "%s", msg)
}

func before(a, b *toml.DecodeError) bool {
	al, ac := a.Position()
	bl, bc := b.Position()
	return al < bl || al == bl && ac < bc
}

// unknownKey words an unknown-key error and lists the keys allowed where it
// was found, the likely fix for a typo.
func (f *file) unknownKey(de *toml.DecodeError) *Error {
	line, _ := de.Position()
	key := de.Key()
	name := strings.Join(key, ".")
	hint := ""
	switch {
	case len(key) == 2 && f.schema.sub != nil:
		hint = f.schema.sub(key[0])
	case len(key) == 1 && f.lines.line(key[0]) == line:
		// go-toml names keys of inline tables without their table; the
		// line tells a real top-level key from those.
		hint = f.schema.top
	}
	if hint != "" {
		return f.errorf(line, "unknown key %q; %s", name, hint)
	}
	return f.errorf(line, "unknown key %q", name)
}

// typeMismatch rewords go-toml's "cannot decode TOML string into struct
// field config.vmHead.Enable of type *bool" as "enable: expected a boolean,
// got a string".
func typeMismatch(key []string, msg string) string {
	rest := strings.TrimPrefix(msg, "cannot decode TOML ")
	got, target, ok := strings.Cut(rest, " into ")
	if !ok {
		return msg
	}
	if i := strings.LastIndex(target, " of type "); i >= 0 {
		target = target[i+len(" of type "):]
	}
	want := goTypeKind(target)
	out := "expected " + want + ", got " + article(got)
	if len(key) > 0 {
		out = strings.Join(key, ".") + ": " + out
	}
	return out
}

// goTypeKind names the TOML type a Go field type takes.
func goTypeKind(t string) string {
	t = strings.TrimLeft(t, "*")
	switch {
	case strings.HasPrefix(t, "[]config."):
		return "an array of tables"
	case strings.HasPrefix(t, "[]"):
		return "an array"
	case t == "bool":
		return "a boolean"
	case t == "string":
		return "a string"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "an integer"
	case strings.HasPrefix(t, "float"):
		return "a number"
	default:
		return "a table"
	}
}

func article(word string) string {
	if word != "" && strings.ContainsRune("aeiou", rune(word[0])) {
		return "an " + word
	}
	return "a " + word
}
