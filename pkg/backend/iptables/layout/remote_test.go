package layout

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// TestRemoteMembersFillSetsOnly: members attached on other hosts (cluster
// mode) are in their groups' sets, sorted and without duplicates, and get
// no chains; BuildScope keeps them too.
func TestRemoteMembersFillSetsOnly(t *testing.T) {
	m, nics := scenario.Load(t, "../../../../conf/examples/reference")
	local := buildFor(t, m, nics)
	var group string
	for _, s := range local.Sets {
		if s.Family == ruleset.IPv4 {
			group = s.Name[len("sg-") : len(s.Name)-len("-v4")]
			break
		}
	}
	if group == "" {
		t.Fatal("the reference scenario references no set")
	}
	remote := []netip.Addr{netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("2001:db8:ffff::9"), netip.MustParseAddr("203.0.113.9")}
	m.RemoteMembers = map[string][]netip.Addr{group: remote}
	rs := buildFor(t, m, nics)
	for f, tbl := range rs.Tables {
		if len(tbl.Chains) != len(local.Tables[f].Chains) {
			t.Errorf("%s: remote members changed the chains: %d, want %d", f, len(tbl.Chains), len(local.Tables[f].Chains))
		}
	}
	for i, s := range rs.Sets {
		want := slices.Clone(local.Sets[i].Members)
		if s.Name == SetName(group, ruleset.IPv4) {
			want = append(want, "203.0.113.9")
		}
		if s.Name == SetName(group, ruleset.IPv6) {
			want = append(want, "2001:db8:ffff::9")
		}
		slices.Sort(want)
		if !slices.Equal(s.Members, want) {
			t.Errorf("%s: %v, want %v", s.Name, s.Members, want)
		}
	}
	sc := buildScopeFor(t, m, nics, nics, []string{nics[0].Tap})
	for _, s := range sc.Sets {
		if s.Name == SetName(group, ruleset.IPv4) && !slices.Contains(s.Members, "203.0.113.9") {
			t.Errorf("BuildScope lost the remote member: %v", s.Members)
		}
	}
}
