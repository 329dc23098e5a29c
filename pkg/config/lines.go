package config

import (
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// keyLines remembers the line each key, table header and array element of a
// document is defined on. Decoding into structs loses positions, yet a
// semantic error ("unknown group") must still name a line, so the document
// is walked once more with go-toml's parser.
//
// Paths are dotted keys with array indexes: "description", "in[2]" (the
// third [[in]] header), "in[2].dport", "net0.ips[1]".
type keyLines struct {
	at map[string]int
	// folded maps the lower-case form of each path written in another
	// case to its line: decoding matches keys to fields in any case
	// ([[In]] is an in rule), so a value it decoded must be found by its
	// lower-case path too.
	folded map[string]int
	// top lists the top-level keys and table names in order of appearance;
	// a VM file's [netN] tables are only known from it.
	top []string
	// newlines holds the offsets of '\n', to turn offsets into lines by
	// binary search rather than by rescanning the document per key.
	newlines []int
	// arrays counts the [[x]] headers seen per path, to index them.
	arrays map[string]int
}

// scanLines walks data with p. A syntax error ends the walk early; decoding
// reports it with its position, so it is not returned here.
func scanLines(p *unstable.Parser, data []byte) *keyLines {
	k := &keyLines{at: make(map[string]int), arrays: make(map[string]int)}
	for i, c := range data {
		if c == '\n' {
			k.newlines = append(k.newlines, i)
		}
	}
	p.Reset(data)
	table := ""
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.KeyValue:
			k.keyValue(table, e)
		case unstable.Table, unstable.ArrayTable:
			table = k.header(e)
		}
	}
	return k
}

// header records a [table] or [[array]] header and returns the path that
// the key-values below it extend.
func (k *keyLines) header(e *unstable.Node) string {
	path := ""
	it := e.Key()
	for it.Next() {
		part := it.Node()
		path = join(path, string(part.Data))
		line := k.offsetLine(part.Raw)
		if it.IsLast() {
			if e.Kind == unstable.ArrayTable {
				k.set(path, line)
				n := k.arrays[path]
				k.arrays[path] = n + 1
				path = index(path, n)
			}
			k.set(path, line)
			break
		}
		// [in.x] after [[in]] continues the last element of "in".
		if n, ok := k.arrays[path]; ok {
			path = index(path, n-1)
		}
		k.set(path, line)
	}
	return path
}

// keyValue records a key = value expression under table and descends into
// inline tables and arrays.
func (k *keyLines) keyValue(table string, e *unstable.Node) {
	path := table
	line := 0
	it := e.Key()
	for it.Next() {
		part := it.Node()
		path = join(path, string(part.Data))
		line = k.offsetLine(part.Raw)
		k.set(path, line)
	}
	k.value(path, e.Value(), line)
}

func (k *keyLines) value(path string, v *unstable.Node, line int) {
	switch v.Kind {
	case unstable.InlineTable:
		it := v.Children()
		for it.Next() {
			if c := it.Node(); c.Kind == unstable.KeyValue {
				k.keyValue(path, c)
			}
		}
	case unstable.Array:
		i := 0
		it := v.Children()
		for it.Next() {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			elem := index(path, i)
			i++
			l := line
			if c.Raw.Length > 0 {
				l = k.offsetLine(c.Raw)
			}
			k.set(elem, l)
			k.value(elem, c, l)
		}
	}
}

// set records the first definition of path; later ones are redefinitions
// that decoding rejects anyway.
func (k *keyLines) set(path string, line int) {
	if _, ok := k.at[path]; ok {
		return
	}
	k.at[path] = line
	if lower := strings.ToLower(path); lower != path {
		if k.folded == nil {
			k.folded = make(map[string]int)
		}
		if _, ok := k.folded[lower]; !ok {
			k.folded[lower] = line
		}
	}
	if !strings.ContainsAny(path, ".[") {
		k.top = append(k.top, path)
	}
}

func (k *keyLines) offsetLine(r unstable.Range) int {
	return sort.SearchInts(k.newlines, int(r.Offset)) + 1
}

// line returns the line of path or, when path has no line of its own (a
// default, or a key inside a value written differently than expected), of
// the nearest enclosing key. 0 means the document does not mention it.
func (k *keyLines) line(path string) int {
	for path != "" {
		if l, ok := k.at[path]; ok {
			return l
		}
		if l, ok := k.folded[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

// join appends key to path with a dot.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// index returns path[i], the path of an array element.
func index(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}
