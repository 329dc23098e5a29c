package packaging

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeIP stands in for "ip -o link show": taps, a tap with a peer suffix,
// and interfaces that are not taps.
const fakeIP = `#!/bin/sh
cat <<'LINKS'
1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
2: vmbr0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\    link/ether 1e:0b:85:27:8d:00 brd ff:ff:ff:ff:ff:ff
5: tap110i0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel master vmbr0 state UNKNOWN mode DEFAULT group default qlen 1000\    link/ether 9e:3f:aa:01:02:03 brd ff:ff:ff:ff:ff:ff
6: tap110i1: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN mode DEFAULT group default qlen 1000\    link/ether 9e:3f:aa:01:02:04 brd ff:ff:ff:ff:ff:ff
7: tap7i0@if2: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN mode DEFAULT group default qlen 1000\    link/ether 9e:3f:aa:01:02:05 brd ff:ff:ff:ff:ff:ff
8: vnet0: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN mode DEFAULT group default qlen 1000\    link/ether 9e:3f:aa:01:02:06 brd ff:ff:ff:ff:ff:ff
LINKS
`

// completer runs the completion script in bash the way readline does:
// COMP_WORDS and COMP_CWORD set, then the function complete registered.
type completer struct {
	t    *testing.T
	bin  string // holds the fake ip
	cwd  string
	conf string // $VMFW_CONFIG_DIR
	// script is the completion file, by absolute path: bash runs in cwd.
	script string
}

func newCompleter(t *testing.T) *completer {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed")
	}
	script, err := filepath.Abs("../conf/bash-completion/vmfw")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &completer{script: script, t: t, bin: filepath.Join(dir, "bin"), cwd: filepath.Join(dir, "cwd"), conf: filepath.Join(dir, "envconf")}
	for _, d := range []string{c.bin, filepath.Join(c.cwd, "confdir", "vms"), filepath.Join(c.cwd, "other"), filepath.Join(c.conf, "vms")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		filepath.Join(c.bin, "ip"):                           fakeIP,
		filepath.Join(c.cwd, "confdir", "vms", "101.toml"):   "",
		filepath.Join(c.cwd, "confdir", "vms", "110.toml"):   "",
		filepath.Join(c.cwd, "confdir", "vms", "notes.toml"): "", // not a VM id
		filepath.Join(c.cwd, "confdir", "vms", "120.toml~"):  "", // an editor's backup
		filepath.Join(c.cwd, "cfile"):                        "", // not a directory
		filepath.Join(c.conf, "vms", "300.toml"):             "",
	}
	for p, content := range files {
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// complete returns the candidates for the command line words, whose last
// word is the one being completed ("" for a new word).
func (c *completer) complete(words ...string) []string {
	c.t.Helper()
	script := `source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
_vmfw
printf '%s\n' "${COMPREPLY[@]}"`
	cmd := exec.Command("bash", append([]string{"--norc", "--noprofile", "-c", script, "bash", c.script}, words...)...)
	cmd.Dir = c.cwd
	cmd.Env = []string{"PATH=" + c.bin + ":/usr/bin:/bin", "HOME=" + c.cwd, "VMFW_CONFIG_DIR=" + c.conf}
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("completing %q: %v\n%s", words, err, out)
	}
	var got []string
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" {
			got = append(got, l)
		}
	}
	slices.Sort(got)
	return got
}

func sorted(s ...string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestCompletionFollowsUsage: the completion offers exactly the
// subcommands of vmfw's usage text, and every option and option value of
// it; the README's commands are among them.
func TestCompletionFollowsUsage(t *testing.T) {
	u := readUsage(t)
	var subcommands []string
	for _, cmd := range u.commands {
		if name := strings.Fields(cmd)[0]; !slices.Contains(subcommands, name) {
			subcommands = append(subcommands, name)
		}
	}
	c := newCompleter(t)
	if got := c.complete("vmfw", ""); !slices.Equal(got, sorted(subcommands...)) {
		t.Errorf("subcommands: got %q, want %q", got, sorted(subcommands...))
	}
	for _, cmd := range readREADME(t).commands {
		if !slices.Contains(subcommands, strings.Fields(cmd)[0]) {
			t.Errorf("the README's command %s is not in the usage text", cmd)
		}
	}
	for cmd, opts := range u.options {
		for o, values := range opts {
			words := []string{"vmfw", cmd}
			if cmd == "" {
				words = words[:1]
			}
			if got := c.complete(append(words, o[:1])...); !slices.Contains(got, o) {
				t.Errorf("%q: got %q, want %s among them", append(words, o[:1]), got, o)
			}
			if len(values) > 0 {
				if got := c.complete(append(words, o, "")...); !containsAll(got, values) {
					t.Errorf("%q: got %q, want %q among them", append(words, o, ""), got, values)
				}
			}
		}
	}
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// TestCompletion checks the candidates for each position of the command
// line.
func TestCompletion(t *testing.T) {
	globals := slices.Sorted(maps.Keys(readUsage(t).options[""]))
	c := newCompleter(t)
	taps := []string{"tap110i0", "tap110i1", "tap7i0"}
	cases := []struct {
		words []string
		want  []string
	}{
		{[]string{"vmfw", "--"}, globals},
		{[]string{"vmfw", "--iptables", ""}, sorted("nft", "legacy")},
		{[]string{"vmfw", "--iptables", "=", "l"}, []string{"legacy"}},
		{[]string{"vmfw", "--config-dir", "c"}, []string{"confdir"}},
		{[]string{"vmfw", "--state-dir", "=", ""}, sorted("confdir", "other")},
		{[]string{"vmfw", "--iptables", "nft", "st"}, []string{"status"}},
		{[]string{"vmfw", "ifup", ""}, taps},
		{[]string{"vmfw", "ifdown", "tap110"}, sorted("tap110i0", "tap110i1")},
		{[]string{"vmfw", "ifup", "tap110i0", ""}, nil},
		{[]string{"/usr/sbin/vmfw-ifup", ""}, taps},
		{[]string{"vmfw-ifdown", "tap7"}, []string{"tap7i0"}},
		{[]string{"vmfw", "apply", "--"}, []string{"--dry-run"}},
		{[]string{"vmfw", "flush", ""}, sorted("--dry-run", "-o")},
		{[]string{"vmfw", "flush", "--dry-run", ""}, []string{"-o"}}, // not twice
		{[]string{"vmfw", "check", "-o", ""}, sorted("json", "text")},
		{[]string{"vmfw", "status", ""}, taps},
		{[]string{"vmfw", "status", "-"}, []string{"-o"}},
		{[]string{"vmfw", "status", "-o", ""}, sorted("json", "prometheus", "text")},
		{[]string{"vmfw", "agent", ""}, []string{"--log-format", "--log-packets"}},
		{[]string{"vmfw", "agent", "--log-format", ""}, sorted("json", "text")},
		{[]string{"vmfw", "status", "tap110i0", ""}, nil},
		{[]string{"vmfw", "hook", ""}, sorted("libvirt", "proxmox")},
		{[]string{"vmfw", "trace", "--from", ""}, sorted("300", "hypervisor", "tap110i0", "tap110i1", "tap7i0")},
		{[]string{"vmfw", "--config-dir", "confdir", "trace", "--from", "110", "--to", "1"}, sorted("101", "110")},
		{[]string{"vmfw", "trace", "--proto", "icmp"}, sorted("icmp", "icmpv6")},
		{[]string{"vmfw", "trace", "--path", ""}, sorted("bridged", "routed")},
		{[]string{"vmfw", "trace", "--dport", ""}, nil},
		{[]string{"vmfw", "trace", "--from", "110", "--to", "hypervisor", "--"}, sorted("--proto", "--dport", "--sport", "--icmp-type", "--path", "--mac", "--batch")},
		{[]string{"vmfw", "log", ""}, sorted("--count", "--group")},
		{[]string{"vmfw", "log", "--group", ""}, nil},
		// VM ids come from the --config-dir of the command line, in both
		// spellings, or else from $VMFW_CONFIG_DIR.
		{[]string{"vmfw", "--config-dir", "confdir", "hook", "proxmox", ""}, sorted("101", "110")},
		{[]string{"vmfw", "--config-dir", "=", "confdir", "hook", "proxmox", "11"}, []string{"110"}},
		{[]string{"vmfw", "hook", "proxmox", ""}, []string{"300"}},
		{[]string{"vmfw", "hook", "proxmox", "110", "post"}, sorted("post-start", "post-stop")},
		{[]string{"vmfw", "hook", "libvirt", "web", "st"}, sorted("start", "started", "stopped")},
		{[]string{"vmfw", "hook", "libvirt", "web", "started", ""}, sorted("-", "begin", "end")},
		{[]string{"vmfw", "version", ""}, nil},
	}
	for _, tc := range cases {
		if got := c.complete(tc.words...); !slices.Equal(got, tc.want) {
			t.Errorf("%q: got %q, want %q", tc.words, got, tc.want)
		}
	}
}
