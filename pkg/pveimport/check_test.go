package pveimport_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
)

// features are the configuration keys the import writes that vmfw's
// configuration gains on branch sets21: each is probed with a minimal
// directory, so that the trees that need it are checked as soon as
// config.Load accepts it.
var features = []struct {
	name  string
	probe map[string]string
	// uses reports whether an imported file needs the feature.
	uses func(path, data string) bool
}{
	{"address sets (sets/NAME.toml, source_set, dest_set)",
		map[string]string{"sets/s.toml": "entries = [\"192.0.2.0/24\"]\n", "groups/g.toml": "[[in]]\nsource_set = \"s\"\n"},
		func(path, data string) bool { return strings.HasPrefix(path, "sets/") }},
	{"group and set names with '-'",
		map[string]string{"groups/a-b.toml": ""},
		func(path, data string) bool { return strings.Contains(filepath.Base(path), "-") }},
	{"antispoof = \"mac\"",
		map[string]string{"vms/1.toml": "[net0]\nantispoof = \"mac\"\nmac = \"02:00:00:00:00:01\"\n"},
		func(path, data string) bool { return strings.Contains(data, `antispoof = "mac"`) }},
	{"log levels (log = \"info\", log_in, log_out)",
		map[string]string{"groups/g.toml": "[[in]]\nlog = \"info\"\n", "vms/1.toml": "log_in = \"info\"\n"},
		func(path, data string) bool {
			return strings.Contains(data, "\nlog = \"") || strings.Contains(data, "\nlog_in = ") || strings.Contains(data, "\nlog_out = ")
		}},
}

// supported reports whether config.Load accepts a feature's probe.
func supported(t *testing.T, probe map[string]string) bool {
	dir := t.TempDir()
	for path, data := range probe {
		p := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, err := config.Load(dir)
	return err == nil
}

// TestCheckAcceptsImport: every imported tree is a configuration vmfw
// check accepts. Trees whose import needs a key vmfw's configuration does
// not have yet are skipped naming it, and run once it has.
func TestCheckAcceptsImport(t *testing.T) {
	for _, name := range []string{"guide", "off", "cluster", "plain"} {
		t.Run(name, func(t *testing.T) {
			dir := writeImport(t, name)
			var missing []string
			err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				data, err := os.ReadFile(p)
				rel, _ := filepath.Rel(dir, p)
				for _, f := range features {
					if f.uses(rel, string(data)) && !supported(t, f.probe) && !contains(missing, f.name) {
						missing = append(missing, f.name)
					}
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(missing) > 0 {
				t.Skipf("needs configuration keys vmfw does not have yet: %s", strings.Join(missing, "; "))
			}
			if _, err := config.Load(dir); err != nil {
				t.Fatalf("vmfw check refuses the import: %v", err)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
