package pveimport

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/vmfw/vmfw/pkg/pveimport/pvefw"
)

// File is one file of the imported configuration.
type File struct {
	// Path is relative to the configuration directory.
	Path string
	// Data is the file's content.
	Data []byte
}

// doc builds a file line by line, so that every source line can be told
// the line it became.
type doc struct {
	path  string
	lines []string
	rep   *reporter
}

// newDoc starts the file at path with the comment lines of header.
func newDoc(path string, header []string, rep *reporter) *doc {
	d := &doc{path: path, rep: rep}
	for _, h := range header {
		d.comment(h)
	}
	return d
}

// add appends a line and returns its number.
func (d *doc) add(format string, args ...any) int {
	d.lines = append(d.lines, fmt.Sprintf(format, args...))
	return len(d.lines)
}

// from records that the line just added comes from src.
func (d *doc) from(src ...pvefw.Line) {
	for _, s := range src {
		if s.Line != 0 {
			d.rep.became(s.Pos, d.path+":"+strconv.Itoa(len(d.lines)))
		}
	}
}

// optional adds key = value, value as a TOML string, unless value is
// empty (the key then keeps its default); it reports whether it added it.
func (d *doc) optional(key, value string) bool {
	if value == "" {
		return false
	}
	d.add("%s = %s", key, tomlString(value))
	return true
}

func (d *doc) file() File {
	return File{Path: d.path, Data: []byte(strings.Join(d.lines, "\n") + "\n")}
}

// comment adds "# text", the text made safe for one TOML comment line.
func (d *doc) comment(text string) {
	d.add("# %s", commentText(text))
}

// commentText drops what cannot stand in a TOML comment: control
// characters (a newline would end it) and invalid UTF-8.
func commentText(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == utf8.RuneError || r < 0x20 && r != '\t' || r == 0x7f {
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		case r == utf8.RuneError:
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func tomlList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = tomlString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// writeGroup renders a group file.
func writeGroup(g *outGroup, rep *reporter) File {
	d := newDoc("groups/"+g.name+".toml", g.header, rep)
	d.optional("description", g.description)
	d.from(g.src)
	for _, dir := range []string{"in", "out"} {
		rules := g.in
		if dir == "out" {
			rules = g.out
		}
		for _, r := range rules {
			d.add("")
			if r.src.Line != 0 {
				d.comment(r.src.Pos.String() + ": " + r.src.Text)
			}
			if r.note != "" {
				d.comment("  " + r.note)
			}
			d.add("[[%s]]", dir)
			d.from(r.src)
			d.from(r.also...)
			writeRule(d, &r)
		}
	}
	return d.file()
}

func writeRule(d *doc, r *outRule) {
	d.add("action = %s", tomlString(r.action))
	d.optional("proto", r.proto)
	d.optional("dport", r.dport)
	d.optional("sport", r.sport)
	d.optional("icmp_type", r.icmpType)
	if len(r.source) > 0 {
		d.add("source = %s", tomlList(r.source))
	}
	d.optional("source_set", r.sourceSet)
	if len(r.dest) > 0 {
		d.add("dest = %s", tomlList(r.dest))
	}
	d.optional("dest_set", r.destSet)
	d.optional("log", r.log)
	d.optional("comment", r.comment)
}

// writeSet renders a set file.
func writeSet(s *outSet, rep *reporter) File {
	d := newDoc("sets/"+s.name+".toml", s.header, rep)
	d.optional("description", s.description)
	d.from(s.src)
	for _, part := range []struct {
		key     string
		entries []setEntry
	}{{"entries", s.entries}, {"except", s.except}} {
		if part.key == "except" && len(part.entries) == 0 {
			continue
		}
		if len(part.entries) == 0 {
			d.add("%s = []", part.key)
			continue
		}
		d.add("%s = [", part.key)
		for _, e := range part.entries {
			why := e.src.Pos.String()
			if e.note != "" {
				why += " (" + e.note + ")"
			}
			d.add("  %s, # %s", tomlString(e.prefix), commentText(why))
			d.from(e.src)
			d.from(e.also...)
		}
		d.add("]")
	}
	return d.file()
}

// writeVM renders a VM file.
func writeVM(vm *outVM, rep *reporter) File {
	d := newDoc("vms/"+strconv.Itoa(vm.id)+".toml", vm.header, rep)
	d.optional("name", vm.name)
	d.add("enable = %t", vm.enable)
	d.from(vm.optionSrc...)
	if !vm.enable && vm.dropInvalid {
		d.comment("PVEFW-FORWARD drops what conntrack finds INVALID of every bridged packet while the cluster firewall is on.")
		d.add("drop_invalid = true")
		d.from(vm.optionSrc...)
	}
	if vm.enable {
		d.add("policy_in = %s", tomlString(vm.policyIn))
		d.from(vm.policyInSrc)
		d.add("policy_out = %s", tomlString(vm.policyOut))
		d.from(vm.policyOutSrc)
		if d.optional("log_in", vm.logIn) {
			d.from(vm.logInSrc)
		}
		if d.optional("log_out", vm.logOut) {
			d.from(vm.logOutSrc)
		}
	}
	for _, n := range vm.nics {
		d.add("")
		d.comment(n.src.Pos.String() + ": " + n.src.Text)
		d.add("[net%d]", n.index)
		d.from(n.src)
		d.optional("mac", n.mac)
		d.optional("bridge", n.bridge)
		if !vm.enable {
			continue
		}
		if n.antispoof == "mac" {
			d.add(`antispoof = "mac"`)
		} else {
			d.add("antispoof = false")
		}
		d.from(n.antispoofSrc)
		d.add("dhcp = false")
		d.from(n.srcs...)
		d.add("ndp = false")
		d.from(n.ndpSrcs...)
		if len(n.groups) == 0 {
			d.add("groups = []")
			continue
		}
		d.add("groups = [")
		for _, g := range n.groups {
			d.add("  %s, # %s", tomlString(g.name), commentText(g.why))
			d.from(g.src...)
		}
		d.add("]")
	}
	return d.file()
}

// writeHost renders vmfw.toml.
func writeHost(limit string, burst int, header []string, src []pvefw.Line, rep *reporter) File {
	d := newDoc("vmfw.toml", header, rep)
	d.add("log_limit = %s", tomlString(limit))
	d.from(src...)
	d.add("log_burst = %d", burst)
	d.from(src...)
	return d.file()
}

// prefixText writes a prefix as an address when it is a single one.
func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func prefixTexts(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = prefixText(p)
	}
	return slices.Compact(out)
}
