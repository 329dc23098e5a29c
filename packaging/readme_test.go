package packaging

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// readme holds what the README says about the command line and the
// configuration: the reference the man pages, the default vmfw.toml and
// the bash completion are checked against.
type readme struct {
	// commands are the subcommands as the Commands block spells them,
	// e.g. "ifup", "hook proxmox" or "import proxmox".
	commands []string
	// commandOptions are the options of subcommands, e.g. "--dry-run".
	commandOptions []string
	// globalOptions are the options before the command, e.g. "--config-dir".
	globalOptions []string
	// exitStatuses are the documented exit statuses.
	exitStatuses []string
	// env are the VMFW_* variables the README mentions.
	env []string
	// files are the configuration paths of the Configuration block.
	files []string
	// hostKeys, ruleKeys, vmKeys and cniKeys are the keys of vmfw.toml, of
	// a group's rules, of a VM file and of the CNI configuration.
	hostKeys, ruleKeys, vmKeys, cniKeys []string
}

// section returns the text of the "## title" section.
func section(t *testing.T, text, title string) string {
	t.Helper()
	start := strings.Index(text, "\n## "+title+"\n")
	if start < 0 {
		t.Fatalf("README has no section %q", title)
	}
	rest := text[start+len(title)+5:]
	if end := strings.Index(rest, "\n## "); end >= 0 {
		rest = rest[:end]
	}
	return rest
}

// fenced returns the contents of the code blocks of text.
func fenced(text string) []string {
	var blocks []string
	parts := strings.Split(text, "\n```")
	for i := 1; i < len(parts); i += 2 {
		body := parts[i]
		if nl := strings.IndexByte(body, '\n'); nl >= 0 {
			body = body[nl+1:] // the info string: toml, sh
		}
		blocks = append(blocks, body)
	}
	return blocks
}

// tableKeys returns the backquoted names of the first column of the table
// whose header row starts with header.
func tableKeys(t *testing.T, text, header string) []string {
	t.Helper()
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		if !strings.HasPrefix(l, header) {
			continue
		}
		var keys []string
		for _, row := range lines[i+2:] {
			if !strings.HasPrefix(row, "|") {
				break
			}
			first := strings.Split(row, "|")[1]
			for _, m := range backquoted.FindAllStringSubmatch(first, -1) {
				keys = append(keys, m[1])
			}
		}
		return keys
	}
	t.Fatalf("README has no table starting %q", header)
	return nil
}

var (
	backquoted = regexp.MustCompile("`([^`]+)`")
	tomlKey    = regexp.MustCompile(`(?m)^([a-z_0-9]+) *=`)
	envVar     = regexp.MustCompile(`VMFW_[A-Z_]+`)
	option     = regexp.MustCompile(`(^|[\s\[|])(--?[a-z][a-z-]*)`)
)

// readREADME parses the repository's README.
func readREADME(t *testing.T) readme {
	t.Helper()
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	var r readme

	cmds := section(t, text, "Commands")
	for _, line := range strings.Split(fenced(cmds)[0], "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "vmfw" {
			continue
		}
		name := f[1]
		if name == "hook" || name == "import" {
			name += " " + f[2] // the command names its subject: hook proxmox
		}
		r.commands = append(r.commands, name)
		synopsis := line
		if i := strings.Index(line, "  "); i >= 0 {
			synopsis = line[:i] // the description follows two spaces
		}
		for _, m := range option.FindAllStringSubmatch(synopsis, -1) {
			r.commandOptions = append(r.commandOptions, m[2])
		}
	}
	for _, para := range strings.Split(cmds, "\n\n") {
		switch {
		case strings.HasPrefix(para, "Global options"):
			for _, m := range backquoted.FindAllStringSubmatch(para, -1) {
				if strings.HasPrefix(m[1], "--") {
					r.globalOptions = append(r.globalOptions, strings.Fields(m[1])[0])
				}
			}
		case strings.HasPrefix(para, "Exit status"):
			for _, m := range regexp.MustCompile(`\*\*(\d+)\*\*`).FindAllStringSubmatch(para, -1) {
				r.exitStatuses = append(r.exitStatuses, m[1])
			}
		}
	}
	seen := map[string]bool{}
	for _, v := range envVar.FindAllString(text, -1) {
		if !seen[v] {
			seen[v] = true
			r.env = append(r.env, v)
		}
	}

	conf := section(t, text, "Configuration")
	blocks := fenced(conf)
	for _, line := range strings.Split(blocks[0], "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			r.files = append(r.files, f[0])
		}
	}
	for _, b := range blocks[1:] {
		if strings.Contains(b, "[net0]") {
			for _, m := range tomlKey.FindAllStringSubmatch(b, -1) {
				r.vmKeys = append(r.vmKeys, m[1])
			}
		}
	}
	r.ruleKeys = tableKeys(t, conf, "| rule key |")
	r.hostKeys = tableKeys(t, conf, "| key | default |")
	r.cniKeys = tableKeys(t, section(t, text, "CNI"), "| key | default |")

	// The parse must find what the README certainly has, or the checks
	// built on it would pass on nothing.
	for what, got := range map[string][]string{
		"commands": r.commands, "global options": r.globalOptions, "exit statuses": r.exitStatuses,
		"environment": r.env, "files": r.files, "host keys": r.hostKeys, "rule keys": r.ruleKeys,
		"VM keys": r.vmKeys, "CNI keys": r.cniKeys, "command options": r.commandOptions,
	} {
		if len(got) < 2 {
			t.Fatalf("README parse found %d %s (%q): the parser no longer fits the README", len(got), what, got)
		}
	}
	return r
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestManPagesFollowREADME: every command, option, exit status, variable,
// file and configuration key the README documents is in the man pages, and
// every host option is in the default vmfw.toml (commented out).
func TestManPagesFollowREADME(t *testing.T) {
	r := readREADME(t)
	vmfw8 := readFile(t, "../docs/man/vmfw.8.md")
	toml5 := readFile(t, "../docs/man/vmfw.toml.5.md")
	conffile := readFile(t, "vmfw.toml")

	exit := vmfw8[strings.Index(vmfw8, "# EXIT STATUS"):]
	exit = exit[:strings.Index(exit, "\n# ")]
	// Each page's items, with the form the page writes an item in ("%s"
	// stands for it): bold, as a plain word, or as a commented-out key.
	type items struct {
		what   string
		names  []string
		format string
	}
	for _, page := range []struct {
		name, text string
		items      []items
	}{
		{"vmfw.8.md", vmfw8, []items{
			{"command", r.commands, "**%s**"},
			{"command option", r.commandOptions, "**%s**"},
			{"global option", r.globalOptions, "**%s**"},
			{"environment variable", r.env, "**%s**"},
			{"CNI key", r.cniKeys, "**%s**"},
			{"file", r.files, "%s"},
		}},
		{"vmfw.8.md's EXIT STATUS", exit, []items{{"exit status", r.exitStatuses, "**%s**\n:"}}},
		{"vmfw.toml.5.md", toml5, []items{
			{"host key", r.hostKeys, "**%s**"},
			{"rule key", r.ruleKeys, "**%s**"},
			{"VM key", r.vmKeys, "**%s**"},
			{"file", r.files, "%s"},
		}},
		{"packaging/vmfw.toml", conffile, []items{{"host key", r.hostKeys, "\n#%s = "}}},
	} {
		for _, it := range page.items {
			for _, name := range it.names {
				if s := strings.ReplaceAll(it.format, "%s", name); !strings.Contains(page.text, s) {
					t.Errorf("%s lacks the %s %s (looked for %q)", page.name, it.what, name, s)
				}
			}
		}
	}
	for _, line := range strings.Split(conffile, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			t.Errorf("packaging/vmfw.toml sets %q: the default file must only comment, so that it means the defaults", line)
		}
	}
}

// usage is the command line as vmfw's own usage text (pkg/cli) states it:
// the code's word, which the README may lag behind.
type usage struct {
	// commands are the subcommands, e.g. "ifup", "hook proxmox" or
	// "import proxmox".
	commands []string
	// options maps a subcommand ("" for the global ones) to its options
	// and each option to the values it takes, e.g. "-o": json, prometheus.
	options map[string]map[string][]string
}

var (
	usageConst = regexp.MustCompile("(?s)const usage = `(.*?)`")
	// usageOption is an option in a synopsis, with the value it takes:
	// "[--path bridged|routed]", "--from X", "[-4|-6]", "--help".
	usageOption = regexp.MustCompile(`(?:^|[\s\[|])(--?[a-z0-9][a-z0-9-]*)(?: ([A-Za-z][A-Za-z|]*))?`)
	lowerWord   = regexp.MustCompile(`^[a-z]+$`)
)

// descriptionColumn is where the usage text's descriptions start; lines
// indented less are synopses, continued on lines indented more than 2.
const descriptionColumn = 28

// readUsage parses the usage text in pkg/cli/cli.go.
func readUsage(t *testing.T) usage {
	t.Helper()
	m := usageConst.FindStringSubmatch(readFile(t, "../pkg/cli/cli.go"))
	if m == nil {
		t.Fatal("pkg/cli/cli.go has no usage constant: update the parser")
	}
	u := usage{options: map[string]map[string][]string{}}
	addOptions := func(cmd, synopsis string) {
		for _, o := range usageOption.FindAllStringSubmatch(synopsis, -1) {
			if u.options[cmd] == nil {
				u.options[cmd] = map[string][]string{}
			}
			var values []string
			if lowerWord.MatchString(strings.ReplaceAll(o[2], "|", "")) {
				values = strings.Split(o[2], "|") // not a placeholder like DIR
			}
			u.options[cmd][o[1]] = values
		}
	}
	// synopsis cuts the description off a line.
	synopsis := func(line string) string {
		text := strings.TrimLeft(line, " ")
		if i := strings.Index(text, "   "); i >= 0 {
			text = text[:i]
		}
		return text
	}
	section, cmd := "head", ""
	for _, line := range strings.Split(m[1], "\n") {
		indent := len(line) - len(strings.TrimLeft(line, " "))
		switch {
		case line == "commands:":
			section = "commands"
		case line == "":
			if section == "commands" {
				section = "tail"
			}
		case section == "head":
			text := strings.TrimPrefix(strings.TrimSpace(line), "usage:")
			addOptions("", strings.TrimPrefix(strings.TrimSpace(text), "vmfw"))
		case section != "commands" || indent >= descriptionColumn:
			// the text after the commands, or a description
		case indent == 2:
			f := strings.Fields(line)
			cmd = f[0]
			if !lowerWord.MatchString(cmd) {
				t.Fatalf("usage line %q does not start with a command", line)
			}
			name := cmd
			if (cmd == "hook" || cmd == "import") && len(f) > 1 {
				name += " " + f[1]
			}
			u.commands = append(u.commands, name)
			addOptions(cmd, synopsis(line))
		default:
			addOptions(cmd, synopsis(line)) // a synopsis continued
		}
	}
	if len(u.commands) < 5 || len(u.options[""]) < 3 {
		t.Fatalf("usage parse found commands %q and global options %v: the parser no longer fits", u.commands, u.options[""])
	}
	return u
}

// TestManPagesFollowUsage: every command, option and option value of the
// usage text is in vmfw(8).
func TestManPagesFollowUsage(t *testing.T) {
	u := readUsage(t)
	vmfw8 := readFile(t, "../docs/man/vmfw.8.md")
	for _, c := range u.commands {
		if !strings.Contains(vmfw8, "**"+c+"**") {
			t.Errorf("vmfw.8.md lacks the command %s", c)
		}
	}
	for cmd, opts := range u.options {
		for o, values := range opts {
			if !strings.Contains(vmfw8, "**"+o+"**") && !strings.Contains(vmfw8, "**"+o+" ") {
				t.Errorf("vmfw.8.md lacks the option %s of %q", o, cmd)
			}
			for _, v := range values {
				if !strings.Contains(vmfw8, "**"+v+"**") && !strings.Contains(vmfw8, o+" "+v+"**") {
					t.Errorf("vmfw.8.md lacks the value %s of %s", v, o)
				}
			}
		}
	}
}
