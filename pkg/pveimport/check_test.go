package pveimport_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
)

// importedTrees are the trees whose import succeeds.
var importedTrees = []string{"guide", "off", "cluster", "plain"}

// TestCheckAcceptsImport: every imported tree is a configuration vmfw
// check accepts, and together the trees use every configuration key an
// import writes, so that none of them goes unchecked.
func TestCheckAcceptsImport(t *testing.T) {
	uses := map[string]bool{}
	keys := []struct {
		name string
		in   func(path, data string) bool
	}{
		{"a set with except", func(path, data string) bool {
			return strings.HasPrefix(path, "sets/") && strings.Contains(data, "\nexcept = [")
		}},
		{"a rule with source_set", func(path, data string) bool { return strings.Contains(data, "\nsource_set = ") }},
		{"a rule with dest_set", func(path, data string) bool { return strings.Contains(data, "\ndest_set = ") }},
		{"a group or set name with '-'", func(path, data string) bool { return strings.Contains(filepath.Base(path), "-") }},
		{`antispoof = "mac"`, func(path, data string) bool { return strings.Contains(data, "\nantispoof = \"mac\"\n") }},
		{"a rule logging at a level", func(path, data string) bool { return strings.Contains(data, "\nlog = \"") }},
		{"log_in", func(path, data string) bool { return strings.Contains(data, "\nlog_in = \"") }},
		{"ndp = false", func(path, data string) bool { return strings.Contains(data, "\nndp = false\n") }},
		{"drop_invalid = true", func(path, data string) bool { return strings.Contains(data, "\ndrop_invalid = true\n") }},
	}
	for _, name := range importedTrees {
		t.Run(name, func(t *testing.T) {
			dir := writeImport(t, name)
			if _, err := config.Load(dir); err != nil {
				t.Fatalf("vmfw check refuses the import: %v", err)
			}
			err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				data, err := os.ReadFile(p)
				rel, _ := filepath.Rel(dir, p)
				for _, k := range keys {
					if k.in(filepath.ToSlash(rel), string(data)) {
						uses[k.name] = true
					}
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, k := range keys {
		if !uses[k.name] {
			t.Errorf("no imported tree writes %s: the check above does not cover it", k.name)
		}
	}
}
