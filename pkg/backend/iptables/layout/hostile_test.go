package layout

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// smuggling are values that try to end an argument, a line or a quoted
// string early, add iptables arguments, or run shell syntax, should any of
// them reach a command line.
var smuggling = []string{
	`x" -j ACCEPT`,
	`x' -j ACCEPT`,
	"x -j ACCEPT",
	"-j ACCEPT",
	"--physdev-in tap1",
	"x\n-A FORWARD -j ACCEPT",
	"x\r\nCOMMIT",
	"x\nCOMMIT\n*filter",
	"$(reboot)",
	"${IFS}reboot",
	"`reboot`",
	"x;reboot",
	"x|reboot",
	"x&&reboot",
	"x>/etc/passwd",
	`x\" -j ACCEPT`,
	"x\ty",
	"x\x00y",
	"x\x1b[2Jy",
	"x\u0085y",
	"x\u2028y",
	"x\u00a0y",
}

// hostileField is one place a configuration value goes: a file and its
// content, where P stands for the value.
type hostileField struct {
	name, file, content string
	// confined fields end up inside one quoted iptables argument
	// (comments) or nowhere in the rules (descriptions); a value without
	// control characters is harmless there and may be accepted as long
	// as the rules keep their arguments.
	confined bool
}

var hostileFields = []hostileField{
	{"rule comment", "groups/web.toml", "[[in]]\nproto = \"tcp\"\ncomment = P\n", true},
	{"rule proto", "groups/web.toml", "[[in]]\nproto = P\n", false},
	{"rule dport", "groups/web.toml", "[[in]]\nproto = \"tcp\"\ndport = P\n", false},
	{"rule sport", "groups/web.toml", "[[in]]\nproto = \"udp\"\nsport = P\n", false},
	{"rule icmp_type", "groups/web.toml", "[[in]]\nproto = \"icmp\"\nicmp_type = P\n", false},
	{"rule action", "groups/web.toml", "[[in]]\naction = P\n", false},
	{"rule source", "groups/web.toml", "[[in]]\nsource = [P]\n", false},
	{"rule dest", "groups/web.toml", "[[out]]\ndest = P\n", false},
	{"rule source_group", "groups/web.toml", "[[in]]\nsource_group = P\n", false},
	{"rule dest_group", "groups/web.toml", "[[out]]\ndest_group = P\n", false},
	{"rule source_mac", "groups/web.toml", "[[in]]\nsource_mac = P\n", false},
	{"group description", "groups/web.toml", "description = P\n", true},
	{"VM name", "vms/110.toml", "name = P\n[net0]\ngroups = [\"web\"]\n", false},
	{"VM policy_in", "vms/110.toml", "policy_in = P\n", false},
	{"VM policy_out", "vms/110.toml", "\npolicy_out = P\n", false},
	{"interface mac", "vms/110.toml", "[net0]\nmac = P\n", false},
	{"interface ips", "vms/110.toml", "[net0]\nips = [\"192.0.2.10\", P]\n", false},
	{"interface bridge", "vms/110.toml", "[net0]\nbridge = P\n", false},
	{"interface groups", "vms/110.toml", "[net0]\ngroups = [\"web\", P]\n", false},
	{"interface l2_protocols", "vms/110.toml", "[net0]\nl2_protocols = [P]\n", false},
	{"interface table", "vms/110.toml", "name = \"x\"\n[P]\nips = [\"192.0.2.10\"]\n", false},
	{"host managed", "vmfw.toml", "managed = [\"tap+\", P]\n", false},
	{"host mark", "vmfw.toml", "mark = P\n", false},
	{"host log_limit", "vmfw.toml", "log_limit = P\n", false},
}

// tomlString writes s as a TOML basic string, escaping what TOML requires,
// so the loader sees exactly s.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// hostileDir writes a configuration with group web, VM 110 and the field's
// file holding value (or, with value "", a harmless word).
func hostileDir(t *testing.T, f hostileField, value string) string {
	t.Helper()
	files := map[string]string{
		"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n",
		"vms/110.toml":    "[net0]\nmac = \"02:00:00:00:01:10\"\nips = [\"192.0.2.110\"]\ngroups = [\"web\"]\n",
	}
	content := strings.Replace(f.content, "P", tomlString(value), 1)
	if f.name == "interface table" {
		content = strings.Replace(f.content, "P", tomlString(value), 1) // a quoted key
	}
	files[f.file] = content
	return configtest.Dir(t, files)
}

// lineOf returns the line of the field's file that holds P.
func lineOf(content string) int {
	return strings.Count(content[:strings.Index(content, "P")], "\n") + 1
}

// restoreLines renders every table as iptables-restore arguments per line.
func restoreLines(t *testing.T, dir string) [][]string {
	t.Helper()
	m, nics := scenario.Load(t, dir)
	rs := buildFor(t, m, nics)
	checkRendered(t, rs)
	var out [][]string
	for _, f := range ruleset.Families {
		for _, l := range strings.Split(rs.Tables[f].Render(), "\n") {
			args, _ := restoreArgs(l)
			out = append(out, args)
		}
	}
	return out
}

// TestHostileValuesAreRefusedOrConfined: every smuggling attempt in every
// field is refused with the FILE:LINE of the value — except in fields that
// end up inside one quoted argument (comments) or in no rule at all
// (descriptions), where a value without control characters may be
// accepted: the rules then have exactly the arguments they have with a
// harmless value.
func TestHostileValuesAreRefusedOrConfined(t *testing.T) {
	for _, f := range hostileFields {
		for _, v := range smuggling {
			dir := hostileDir(t, f, v)
			_, err := config.Load(dir)
			if err == nil {
				if !f.confined || hasControl(v) {
					t.Errorf("%s %q: accepted", f.name, v)
					continue
				}
				got, want := restoreLines(t, dir), restoreLines(t, hostileDir(t, f, "harmless"))
				if len(got) != len(want) {
					t.Errorf("%s %q: %d rules, %d with a harmless value", f.name, v, len(got), len(want))
					continue
				}
				for i := range got {
					if len(got[i]) != len(want[i]) {
						t.Errorf("%s %q: rule %q has other arguments than %q", f.name, v, got[i], want[i])
					}
				}
				continue
			}
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Errorf("%s %q: error %v is a %T, want *config.Error", f.name, v, err, err)
				continue
			}
			if ce.File != f.file || ce.Line != lineOf(f.content) || !printable(err.Error()) {
				t.Errorf("%s %q: error %q, want %s:%d and a printable message", f.name, v, err, f.file, lineOf(f.content))
			}
		}
	}
}

// hasControl reports whether s has a control character, which no field
// may hold: it would break a line of iptables-restore input or garble a
// terminal.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, unicode.IsControl)
}

// TestHostileFileNames: group and VM names come from file names, and end
// up in chain names, ipset names and log prefixes; a file whose name is
// not a valid group name or VM id is refused, naming the file.
func TestHostileFileNames(t *testing.T) {
	for _, v := range smuggling {
		if strings.ContainsAny(v, "/\x00") {
			continue // not a possible file name
		}
		for _, rel := range []string{"groups/" + v + ".toml", "vms/" + v + ".toml", "groups/web" + v + ".toml", "vms/110" + v + ".toml"} {
			_, err := config.Load(configtest.Dir(t, map[string]string{rel: "\n"}))
			var ce *config.Error
			if !errors.As(err, &ce) || ce.File != rel || !printable(err.Error()) {
				t.Errorf("file %q: error %v, want a printable *config.Error naming it", rel, err)
			}
		}
	}
}

// TestLogPrefixesStayInTheirArgument: log prefixes are built from tap and
// group names; the longest names there are keep the prefix one quoted
// argument of at most 28 characters, with the verdict in it.
func TestLogPrefixesStayInTheirArgument(t *testing.T) {
	group := "Abcdefghij_klmnopqrs"
	dir := configtest.Dir(t, map[string]string{
		"groups/" + group + ".toml": "[[in]]\nlog = true\naction = \"reject\"\n\n[[out]]\nlog = true\n",
		"vms/999999999.toml":        "log = true\npolicy_in = \"drop\"\npolicy_out = \"reject\"\n[net99]\ngroups = [\"" + group + "\"]\n",
	})
	n := 0
	for _, args := range restoreLines(t, dir) {
		i := slices.Index(args, "--log-prefix")
		if i < 0 {
			continue
		}
		n++
		prefix := args[i+1]
		if len(prefix) > 28 || !strings.HasSuffix(prefix, " ") || !strings.ContainsAny(prefix, "ADR") || strings.ContainsAny(prefix, "\"'\\$`") {
			t.Errorf("log prefix %q", prefix)
		}
	}
	if n == 0 {
		t.Fatal("no LOG rule generated")
	}
}
