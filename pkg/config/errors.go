package config

import (
	"fmt"
	"strconv"
)

// Error is a problem in the configuration. It names the file and line of the
// offending key or table header so an operator can go straight to it, and
// quotes the offending value.
type Error struct {
	// File is the file's path relative to the configuration directory,
	// such as "groups/web.toml", or the directory itself for problems that
	// concern no single file.
	File string
	// Line is the 1-based line of the offending key or table header; 0 when
	// the problem concerns the file as a whole (unreadable, too large).
	Line int
	// Msg says what is wrong.
	Msg string
}

// Error formats the error as FILE:LINE: MSG, or FILE: MSG without a line,
// the form editors and compilers use, so tools can jump to the position.
func (e *Error) Error() string {
	file := e.File
	if q := strconv.Quote(file); q[1:len(q)-1] != file {
		// A file name with a newline or terminal escape must not split
		// or garble the message; quoted, it still names the file.
		file = q
	}
	if e.Line == 0 {
		return file + ": " + e.Msg
	}
	return file + ":" + strconv.Itoa(e.Line) + ": " + e.Msg
}

// show renders a configuration value for a message: strings quoted so that
// empty strings and stray spaces are visible, everything else as Go prints it.
func show(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprint(v)
}

// kindOf names the TOML type of a decoded value, for "expected X, got Y".
func kindOf(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	default:
		return "a date or time"
	}
}
