package pvefw

import (
	"slices"
	"strings"
	"testing"
)

// TestParseFwNamedSections: a group or ipset header starts its section
// only in the files that have it, and a name pve-firewall rejects leaves
// the lines after it without a section.
func TestParseFwNamedSections(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		kind       Kind
		want       []string
	}{
		{"group in a guest file", "[group web]\n", GuestFile, []string{"skip line - no section"}},
		{"ipset in host.fw", "[ipset web]\n", Host, []string{"skip line - no section"}},
		{"group name too long", "[group " + strings.Repeat("g", 19) + "]\nIN ACCEPT\n", Cluster,
			[]string{"security group name too long (at most 18 characters)", "skip line - no section"}},
		{"ipset name too long", "[ipset " + strings.Repeat("s", 65) + "]\n192.0.2.1\n", GuestFile,
			[]string{"ipset name too long (at most 64 characters)", "skip line - no section"}},
		{"invalid ipset name", "[ipset 1web]\n", Cluster, []string{"invalid ipset name '1web'"}},
		{"a bad header ends the section before", "[group web]\n[group -]\nIN ACCEPT\n", Cluster,
			[]string{"invalid security group name '-'", "skip line - no section"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, p := range ParseFw("f.fw", tc.kind, tc.text).Problems {
				got = append(got, p.Reason)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("problems %q, want %q", got, tc.want)
			}
		})
	}
}
