// Package configtest writes configuration directories for tests: the
// group and VM files (and vmfw.toml) a test's scenario needs, as an
// operator would have them under /etc/vmfw. It imports no package of
// vmfw, so that package config's own tests can use it too.
package configtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Write writes files into dir, each content under its path relative to
// dir ("vms/110.toml", slash-separated), creating the subdirectories it
// needs. Any error fails t.
func Write(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for rel, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Dir writes files (as Write does) into a new temporary directory, removed
// when the test ends, and returns it.
func Dir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	Write(t, dir, files)
	return dir
}

// Large returns the files of a host with vms VMs (ids from 1000) on 20
// groups (g00 to g19, each admitting SSH from its own members and HTTP
// from anyone), each VM one interface with a MAC, an IPv6
// address and three groups: what benchmarks at thousands of taps load.
func Large(vms int) map[string]string {
	files := map[string]string{}
	for g := range 20 {
		files[fmt.Sprintf("groups/g%02d.toml", g)] = fmt.Sprintf("[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"g%02d\"\n[[in]]\nproto = \"tcp\"\ndport = \"80,443\"\n", g)
	}
	for k := range vms {
		id := 1000 + k
		files[fmt.Sprintf("vms/%d.toml", id)] = fmt.Sprintf("[net0]\nmac = \"02:00:00:%02x:%02x:01\"\nips = [\"2001:db8:1::%x\"]\ngroups = [\"g%02d\", \"g%02d\", \"g%02d\"]\n",
			(id>>8)&0xff, id&0xff, id, k%20, (k+7)%20, (k+13)%20)
	}
	return files
}

// SetFile renders a set file (sets/NAME.toml) as a generator writes one:
// the description when there is one, then the entries and the excepts one
// per line.
func SetFile(description string, entries, except []string) string {
	var b strings.Builder
	if description != "" {
		fmt.Fprintf(&b, "description = %q\n", description)
	}
	b.WriteString("entries = [\n")
	for _, e := range entries {
		fmt.Fprintf(&b, "  %q,\n", e)
	}
	b.WriteString("]\nexcept = [\n")
	for _, e := range except {
		fmt.Fprintf(&b, "  %q,\n", e)
	}
	b.WriteString("]\n")
	return b.String()
}

// Blocklist returns n IPv6 entries as a generated blocklist has them:
// single addresses and /64 networks in turn, with a /65 carved out of
// every hundredth network (the excepts).
func Blocklist(n int) (entries, except []string) {
	for i := range n {
		if i%2 == 0 {
			entries = append(entries, fmt.Sprintf("2001:db8:a000:%x::%x", i>>16, i&0xffff))
			continue
		}
		entries = append(entries, fmt.Sprintf("2001:db8:b%03x:%x::/64", (i>>16)&0xfff, i&0xffff))
		if i%200 == 1 {
			except = append(except, fmt.Sprintf("2001:db8:b%03x:%x:8000::/65", (i>>16)&0xfff, i&0xffff))
		}
	}
	return entries, except
}
