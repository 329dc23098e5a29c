package layout

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// fuzzFiles are the files FuzzBuild writes: a fixed group the fuzzed ones
// may refer to, a fuzzed group, a fuzzed VM and fuzzed host options.
var fuzzFiles = []string{"groups/web.toml", "groups/fuzz.toml", "vms/110.toml", "vmfw.toml"}

const fuzzWeb = "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n"

// FuzzBuild feeds a fuzzed group, VM and vmfw.toml through config.Load and
// Build. Nothing may panic; a configuration Load refuses must be refused
// with a clean FILE:LINE message; one it accepts must compile into
// iptables-restore, ebtables-restore and ipset input whose every line is
// one line with balanced quotes, names within the kernel's limits.
func FuzzBuild(f *testing.F) {
	seeds := [][3]string{
		{"", "", ""},
		{"[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"web\"\ncomment = \"ssh from web\"\nlog = true\n\n[[out]]\naction = \"reject\"\ndest = [\"0.0.0.0/0\", \"2001:db8::/32\"]\n",
			"policy_in = \"reject\"\nlog = true\n\n[net0]\nmac = \"1e:0b:85:27:8d:65\"\nips = [\"192.0.2.10\", \"2001:db8::10\"]\ngroups = [\"fuzz\", \"web\"]\nl2_protocols = [\"LLDP\"]\n",
			"managed = [\"tap+\", \"veth+\"]\nmark = \"0x20000\"\nlog_limit = \"1/hour\"\nlog_burst = 3\n"},
		{"[[in]]\nproto = \"icmpv6\"\nicmp_type = \"echo-request\"\nsource_mac = \"02:00:00:00:00:01\"\n\n[[in]]\nproto = 0\n",
			"enable = false\n[net0]\nips = [\"192.0.2.11\"]\ngroups = [\"fuzz\"]\n[net1]\nantispoof = false\ndhcp = false\ngroups = [\"web\"]\n", ""},
		{"[[in]]\ncomment = 'x\" -j ACCEPT'\n", "name = \"a;b\"\n", "managed = [\"-j+\"]\n"},
		{"[[in]]\nproto = \"udp\"\nsport = \"1:2,3,4:5\"\ndport = 53\n", "[net0]\nbridge = \"vmbr0\"\nips = [\"198.51.100.1\"]\ngroups = [\"web\", \"fuzz\"]\n", "log_limit = \"10/second\"\n"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1], s[2])
	}
	dir := f.TempDir()
	for _, d := range []string{"groups", "vms"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			f.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "groups", "web.toml"), []byte(fuzzWeb), 0o644); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, group, vm, host string) {
		contents := map[string]string{"groups/fuzz.toml": group, "vms/110.toml": vm, "vmfw.toml": host}
		for rel, c := range contents {
			if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(rel)), []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		m, err := config.Load(dir)
		if err != nil {
			checkConfigError(t, err, contents)
			return
		}
		var nics []*config.NIC
		for _, v := range m.VMs {
			nics = append(nics, v.NICs...)
		}
		p, err := ruleset.Compile(m, nics)
		if err != nil {
			t.Fatalf("Build refused a configuration Load accepted: %v", err)
		}
		checkRendered(t, Build(p))
	})
}

// checkConfigError asserts that err is a *config.Error naming one of the
// files, a line within it, and a one-line printable message.
func checkConfigError(t *testing.T, err error, contents map[string]string) {
	t.Helper()
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %q is a %T, want *config.Error", err, err)
	}
	content, known := contents[ce.File]
	if ce.File == "groups/web.toml" {
		content, known = fuzzWeb, true
	}
	if !known && ce.File != "groups" && ce.File != "vms" {
		t.Fatalf("error %q names %q, not one of %v", err, ce.File, fuzzFiles)
	}
	if lines := strings.Count(content, "\n") + 1; ce.Line < 0 || ce.Line > lines {
		t.Fatalf("error %q: line %d, but the file has %d lines", err, ce.Line, lines)
	}
	if ce.Msg == "" || !printable(err.Error()) {
		t.Fatalf("error %q is empty or has control characters", err)
	}
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 || r == '\u2028' || r == '\u2029' {
			return false
		}
	}
	return true
}

// Kernel limits on names: iptables chains 28 characters
// (XT_EXTENSION_MAXNAMELEN - 1), ebtables chains 31, ipsets 31.
const (
	maxChainName   = 28
	maxEbChainName = 31
	maxSetName     = 31
)

// checkRendered asserts that every line vmfw would feed to
// iptables-restore, ebtables-restore and ipset is one printable line whose
// quotes balance, and that names fit the kernel's limits.
func checkRendered(t *testing.T, rs *Ruleset) {
	t.Helper()
	type doc struct {
		name     string
		text     string
		maxChain int
	}
	var docs []doc
	for _, f := range ruleset.Families {
		docs = append(docs, doc{f.String(), rs.Tables[f].Render(), maxChainName})
	}
	if rs.Bridge != nil {
		docs = append(docs, doc{"ebtables", rs.Bridge.Render(), maxEbChainName})
	}
	for _, d := range docs {
		if !strings.HasSuffix(d.text, "\n") {
			t.Fatalf("%s: input does not end with a newline", d.name)
		}
		for _, line := range strings.Split(strings.TrimSuffix(d.text, "\n"), "\n") {
			if !printable(line) || strings.ContainsRune(line, '\r') {
				t.Fatalf("%s: line %q has control characters", d.name, line)
			}
			if _, ok := restoreArgs(line); !ok {
				t.Fatalf("%s: line %q has unbalanced quotes", d.name, line)
			}
			if name, ok := strings.CutPrefix(line, ":"); ok {
				name, _, _ = strings.Cut(name, " ")
				if len(name) > d.maxChain {
					t.Fatalf("%s: chain %q is longer than %d characters", d.name, name, d.maxChain)
				}
			}
		}
	}
	for _, s := range rs.Sets {
		if len(s.Name) > maxSetName || !printable(s.Name) || strings.ContainsAny(s.Name, " \t\"'") {
			t.Fatalf("ipset name %q", s.Name)
		}
		for _, m := range s.Members {
			if strings.ContainsAny(m, " \t\"'\n") || m == "" {
				t.Fatalf("ipset %s member %q", s.Name, m)
			}
		}
	}
}

// restoreArgs splits a line the way iptables-restore does: on blanks,
// except inside double quotes, where a backslash escapes the next
// character. ok is false when a quote is left open.
func restoreArgs(line string) (args []string, ok bool) {
	var cur strings.Builder
	quoted, escaped, inArg := false, false, false
	for _, r := range line {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case quoted && r == '\\':
			escaped = true
		case r == '"':
			quoted = !quoted
			inArg = true
		case !quoted && (r == ' ' || r == '\t'):
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, !quoted && !escaped
}
