package config

import (
	"bytes"
	"unicode/utf8"
)

// scanSetFast reads a set file written in the shape set files have: blank
// lines, comments, and the keys description (a string), entries and
// except (arrays of strings, one or many per line, with comments between
// them and an optional trailing comma), each at most once, in lower case,
// bare, at the start of a line, every string a basic string without
// escapes. That is what operators and generators write, and it is read
// here byte by byte, without go-toml: of a load of a set of 100,000
// networks (BenchmarkLoadSet100000, 55 ms on a 2-core machine), scanSet's
// walk of the parser took 20 ms, this takes 5 (BenchmarkScanSet).
//
// ok is false for anything outside that shape, valid TOML or not, and
// scanSet then reads the file: the result is the same as scanSet's
// whenever ok is true (FuzzSetFastPath compares the two), so the set, or
// the error with its file and line, does not depend on which reader read
// it.
//
// places says where the elements of entries (places[0]) and except
// (places[1]) are, for reading the next version of the file from its
// difference (reloadSet).
func scanSetFast(data []byte) (sf scannedSet, places [2]arrayPlaces, ok bool) {
	s := fastScanner{data: data, line: 1, all: string(data)}
	sf.keys = make(map[string]int, 3)
	for {
		if !s.skipBlank(nil) {
			return sf, places, false
		}
		if s.pos == len(s.data) {
			return sf, places, true
		}
		key := s.bareKey()
		switch key {
		case "description", "entries", "except":
		default:
			return sf, places, false
		}
		if _, twice := sf.keys[key]; twice {
			return sf, places, false // an error: the full reader words it
		}
		sf.keys[key] = s.line
		s.spaces()
		if !s.take('=') {
			return sf, places, false
		}
		s.spaces()
		switch key {
		case "description":
			v, ok := s.basicString()
			if !ok {
				return sf, places, false
			}
			sf.Description = v
		case "entries", "except":
			a, ok := s.array()
			if !ok {
				return sf, places, false
			}
			if key == "entries" {
				sf.Entries, sf.entryLines, places[0] = a.values, a.lines, a.arrayPlaces
			} else {
				sf.Except, sf.exceptLines, places[1] = a.values, a.lines, a.arrayPlaces
			}
		}
		// A key-value pair ends its line: spaces, a comment, the newline
		// (or the end of the file).
		s.spaces()
		if !s.comment() || !s.newline() && s.pos != len(s.data) {
			return sf, places, false
		}
	}
}

// arrayPlaces is where the elements of an array of a set file are: what
// reading the next version of the file from its difference needs
// (reloadSet). Offsets fit 32 bits: a set file has at most 32 MiB.
type arrayPlaces struct {
	// at holds the offset of each element (of its opening quote).
	at []int32
	// starts holds, in order, the offsets of the lines that start where
	// the array expects an element or its "]": after "[" or a comma,
	// with only blanks and comments between.
	starts []int32
}

// arrayScan is an array as the scanner read it.
type arrayScan struct {
	values []string
	lines  []int
	arrayPlaces
}

// fastScanner is scanSetFast's position in a set file.
type fastScanner struct {
	data []byte
	pos  int
	// line is the line of pos.
	line int
	// all is data from base on as one string: every value read is a
	// substring of it, so 100,000 networks cost no allocation each.
	all  string
	base int
}

// spaces skips TOML whitespace: spaces and tabs.
func (s *fastScanner) spaces() {
	for s.pos < len(s.data) && (s.data[s.pos] == ' ' || s.data[s.pos] == '\t') {
		s.pos++
	}
}

// take skips c if it is next.
func (s *fastScanner) take(c byte) bool {
	if s.pos < len(s.data) && s.data[s.pos] == c {
		s.pos++
		return true
	}
	return false
}

// newline skips a newline, LF or CRLF; a CR alone is not one.
func (s *fastScanner) newline() bool {
	switch {
	case s.take('\n'):
	case s.pos+1 < len(s.data) && s.data[s.pos] == '\r' && s.data[s.pos+1] == '\n':
		s.pos += 2
	default:
		return false
	}
	s.line++
	return true
}

// comment skips a comment up to its newline, if one starts here. It is
// false for a character TOML does not allow in a comment (a control
// character other than tab, DEL) or one this scanner leaves to the full
// reader (bytes that are not valid UTF-8).
func (s *fastScanner) comment() bool {
	if !s.take('#') {
		return true
	}
	end := bytes.IndexByte(s.data[s.pos:], '\n')
	if end < 0 {
		end = len(s.data)
	} else {
		end += s.pos
		if end > s.pos && s.data[end-1] == '\r' {
			end-- // CRLF: newline takes both
		}
	}
	if !plainText(s.data[s.pos:end]) {
		return false
	}
	s.pos = end
	return true
}

// plainText reports whether b holds only characters TOML allows in a
// comment or a basic string without escapes: tab, printable ASCII but
// DEL, and valid UTF-8 beyond ASCII (this scanner's choice: the full
// reader has the last word on anything else).
func plainText(b []byte) bool {
	ascii := true
	for _, c := range b {
		switch {
		case c >= 0x80:
			ascii = false
		case c < 0x20 && c != '\t' || c == 0x7f:
			return false
		}
	}
	return ascii || utf8.Valid(b)
}

// skipBlank skips whitespace, comments and newlines: the blank lines
// between key-value pairs or between the elements of an array. It is
// false for a character the scanner does not take in a comment (see
// comment). It stops at anything else, a CR alone included, which the
// caller then finds unexpected; so is the end of the file after a comment
// inside an array, where "]" must follow.
//
// starts, when not nil, gets the offset of every line skipped to.
func (s *fastScanner) skipBlank(starts *[]int32) bool {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t':
			s.pos++
		case '\n', '\r':
			if !s.newline() {
				return true
			}
			if starts != nil {
				*starts = append(*starts, int32(s.pos))
			}
		case '#':
			if !s.comment() {
				return false
			}
		default:
			return true
		}
	}
	return true
}

// bareKey reads a bare key: letters, digits, '-' and '_'.
func (s *fastScanner) bareKey() string {
	start := s.pos
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			s.pos++
			continue
		}
		break
	}
	return s.all[start-s.base : s.pos-s.base]
}

// Classes of the bytes of a basic string (stringClass): taken as they
// are (0), the closing quote, part of a multi-byte UTF-8 character (the
// string is then checked whole), or refused: what TOML does not allow
// (control characters but tab, DEL) and the escapes, which the full
// reader unescapes.
const (
	stringQuote = 1 + iota
	stringUTF8
	stringRefused
)

var stringClass = func() (class [256]uint8) {
	for c := range 256 {
		switch {
		case c == '"':
			class[c] = stringQuote
		case c >= 0x80:
			class[c] = stringUTF8
		case c < 0x20 && c != '\t' || c == 0x7f || c == '\\':
			class[c] = stringRefused
		}
	}
	return class
}()

// basicString reads a basic string without escapes ("..." on one line);
// false for anything else, including a string with a backslash. One
// table lookup per byte: the values are most of a set file.
func (s *fastScanner) basicString() (string, bool) {
	if !s.take('"') {
		return "", false
	}
	start, multi := s.pos, false
	for i := start; i < len(s.data); i++ {
		switch stringClass[s.data[i]] {
		case 0:
		case stringQuote:
			if multi && !utf8.Valid(s.data[start:i]) {
				return "", false
			}
			s.pos = i + 1
			return s.all[start-s.base : i-s.base], true
		case stringUTF8:
			multi = true
		default:
			return "", false
		}
	}
	return "", false
}

// array reads an array of basic strings and where each is: elements
// separated by commas, an optional comma after the last, whitespace,
// newlines and comments anywhere between.
func (s *fastScanner) array() (a arrayScan, ok bool) {
	if !s.take('[') {
		return a, false
	}
	// Most arrays list one network per line: the lines from here to the
	// next "]" bound the elements, and sizing the lists once saves
	// growing them through 100,000 elements.
	end := bytes.IndexByte(s.data[s.pos:], ']')
	if end < 0 {
		return a, false
	}
	n := bytes.Count(s.data[s.pos:s.pos+end], []byte{'\n'}) + 1
	a = arrayScan{values: make([]string, 0, n), lines: make([]int, 0, n),
		arrayPlaces: arrayPlaces{at: make([]int32, 0, n), starts: make([]int32, 0, n)}}
	closed, ok := s.elements(&a)
	return a, closed && ok
}

// elements reads the elements of an array from where one or "]" is
// expected, up to its "]" (closed), or to the end of the data when that
// is again where an element or "]" is expected (not closed): reloadSet
// reads the lines an edit changed so, up to the lines it did not change.
func (s *fastScanner) elements(a *arrayScan) (closed, ok bool) {
	for {
		if !s.skipBlank(&a.starts) {
			return false, false
		}
		if s.pos == len(s.data) {
			return false, true
		}
		if s.take(']') {
			return true, true
		}
		line, at := s.line, s.pos
		v, ok := s.basicString()
		if !ok {
			return false, false
		}
		a.values, a.lines, a.at = append(a.values, v), append(a.lines, line), append(a.at, int32(at))
		if !s.skipBlank(nil) {
			return false, false
		}
		if s.take(']') {
			return true, true
		}
		if !s.take(',') {
			return false, false
		}
	}
}
