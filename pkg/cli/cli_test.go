package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run1 runs Main with args and returns its exit status and output. None
// of the commands the tests run reach the kernel: they stop at the
// command line or the configuration.
func run1(args ...string) (code int, stdout, stderr string) {
	var o, e strings.Builder
	code = Main(context.Background(), append([]string{"vmfw"}, args...), &o, &e)
	return code, o.String(), e.String()
}

// TestHelp: the help and the version go to standard output with exit
// status 0, wherever --help stands; the hooks' arguments are not looked
// at.
func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"trace", "--help"}, {"--config-dir", "/x", "status", "-h"}, {"--iptables", "nft", "log", "-help"}} {
		code, out, errOut := run1(args...)
		if code != 0 || !strings.HasPrefix(out, "usage: vmfw") || errOut != "" {
			t.Errorf("%v: exit %d, stdout %.40q, stderr %q", args, code, out, errOut)
		}
	}
	for _, args := range [][]string{{"--version"}, {"version"}, {"--config-dir", "/x", "--version"}} {
		code, out, _ := run1(args...)
		if code != 0 || out != "vmfw "+Version+"\n" {
			t.Errorf("%v: exit %d, %q", args, code, out)
		}
	}
	for _, args := range [][]string{{"hook", "libvirt", "-h", "started", "begin", "-"}, {"--", "--help"}, {"apply", "--", "-h"}} {
		if got := wantsHelp(append([]string{"vmfw"}, args...)); got != "" {
			t.Errorf("%v taken for %s", args, got)
		}
	}
	if got := wantsHelp([]string{"vmfw-ifup", "-h"}); got != "" {
		t.Errorf("vmfw-ifup -h taken for %s", got)
	}
	for _, cmd := range []string{"trace", "log", "apply [--dry-run] [-o json]", "check [-o json]"} {
		if !strings.Contains(usage, cmd) {
			t.Errorf("usage lacks %q", cmd)
		}
	}
}

// configDir writes a configuration directory with the given files.
func configDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for _, sub := range []string{"groups", "vms"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestUsageErrors: bad trace and log command lines exit 2 before anything
// reads the kernel, saying what is wrong.
func TestUsageErrors(t *testing.T) {
	dir := configDir(t, nil)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"trace", "--to", "101", "--proto", "tcp"}, "trace needs --from, --to and --proto"},
		{[]string{"trace", "--from", "1", "--to", "2", "-p", "tcp", "-4", "-6"}, "exclude each other"},
		{[]string{"trace", "--from", "1", "--to", "2", "-p", "tcp", "-o", "yaml"}, "unknown output format"},
		{[]string{"trace", "extra"}, "unexpected argument"},
		{[]string{"log"}, "set log_group in vmfw.toml"},
		{[]string{"apply", "-o", "xml"}, "unknown output format"},
		{[]string{"check", "-o", "xml"}, "unknown output format"},
	} {
		code, _, errOut := run1(append([]string{"--config-dir", dir}, c.args...)...)
		if code != ExitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
}

// TestCheckJSONInvalid: an invalid configuration prints JSON saying so,
// with the file and line, and exits 2 as the text form does.
func TestCheckJSONInvalid(t *testing.T) {
	dir := configDir(t, map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"99999\"\n"})
	code, out, errOut := run1("--config-dir", dir, "check", "-o", "json")
	var r struct {
		Valid   bool   `json:"valid"`
		Error   string `json:"error"`
		Changed bool   `json:"changed"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if code != ExitUsage || r.Valid || r.Changed || !strings.Contains(r.Error, "web.toml:3") || !strings.Contains(errOut, "web.toml:3") {
		t.Errorf("exit %d, %+v, stderr %q", code, r, errOut)
	}
}

// TestImportProxmox: the import writes DEST and exits 0; a tree with lines
// it cannot translate exits 2 naming them and writes nothing; DEST must be
// new.
func TestImportProxmox(t *testing.T) {
	src := filepath.Join("..", "pveimport", "testdata")
	dest := filepath.Join(t.TempDir(), "vmfw")
	code, out, errOut := run1("import", "proxmox", filepath.Join(src, "plain", "src"), dest)
	if code != 0 || !strings.Contains(out, "firewall/201.fw:7: translated -> groups/VM201_1.toml:") {
		t.Fatalf("exit %d, stdout %.300q, stderr %q", code, out, errOut)
	}
	if code, _, errOut := run1("--config-dir", dest, "check"); code != 0 {
		t.Errorf("vmfw check of the import: exit %d: %s", code, errOut)
	}
	code, _, errOut = run1("import", "proxmox", filepath.Join(src, "plain", "src"), dest)
	if code != ExitUsage || !strings.Contains(errOut, "not empty") {
		t.Errorf("import into a filled DEST: exit %d, %q", code, errOut)
	}
	bad := filepath.Join(t.TempDir(), "bad")
	code, out, errOut = run1("import", "proxmox", "-o", "json", filepath.Join(src, "errors", "src"), bad)
	if code != ExitUsage || !strings.Contains(errOut, "firewall/301.fw:4: cannot be translated exactly") || !strings.Contains(out, `"written": false`) {
		t.Errorf("exit %d, stdout %.200q, stderr %.300q", code, out, errOut)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Errorf("a failed import wrote %s", bad)
	}
	if code, _, errOut := run1("import", "libvirt", "a", "b"); code != ExitUsage || !strings.Contains(errOut, "only source is proxmox") {
		t.Errorf("exit %d, %q", code, errOut)
	}
}

// TestOneChange: only ifup and ifdown, however they are named or
// whatever options come first, run without the garbage collector; the
// agent and every other command keep it.
func TestOneChange(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"vmfw", "ifup", "tap100i0"}, true},
		{[]string{"/usr/sbin/vmfw", "--backend", "nftables", "--config-dir=/etc/x", "ifdown", "tap100i0"}, true},
		{[]string{"/usr/libexec/vmfw/vmfw-ifup", "tap100i0"}, true},
		{[]string{"vmfw-ifdown", "tap100i0"}, true},
		{[]string{"vmfw", "agent"}, false},
		{[]string{"vmfw", "apply"}, false},
		{[]string{"vmfw", "--config-dir", "ifup"}, false}, // "ifup" is the option's value
		{[]string{"vmfw", "--no-such-option", "ifup", "tap100i0"}, false},
		{[]string{"vmfw"}, false},
	} {
		if got := OneChange(c.args); got != c.want {
			t.Errorf("OneChange(%q) = %v, want %v", c.args, got, c.want)
		}
	}
}
