package layout

import (
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/ruleset"
)

// TestNamesRoundTrip: what the builders name, the parsers read back, and
// nothing else passes for a tap's, a group's chain or a set.
func TestNamesRoundTrip(t *testing.T) {
	for _, tap := range []string{"tap110i0", "vnet3", "veth-a.b_c", "x"} {
		for _, c := range append(TapChains(tap), L2Chain(tap)) {
			got, kind, ok := ParseTapChain(c)
			if !ok || got != tap || TapChain(got, kind) != c {
				t.Errorf("ParseTapChain(%s) = %q, %q, %v", c, got, kind, ok)
			}
			if IsBaseChain(c) {
				t.Errorf("%s taken for a base chain", c)
			}
		}
		if got, ok := InstalledTap(TapChain(tap, "out")); !ok || got != tap {
			t.Errorf("InstalledTap(%s-out) = %q, %v", tap, got, ok)
		}
		if _, ok := InstalledTap(TapChain(tap, "in")); ok {
			t.Errorf("%s-in taken for an installed tap's out chain", tap)
		}
	}
	for _, g := range []string{"web", "a_b-c", "x"} {
		for _, dir := range []string{"in", "out", "lin"} {
			got, d, ok := ParseGroupChain(GroupChain(g, dir))
			if !ok || got != g || d != dir {
				t.Errorf("ParseGroupChain(%s) = %q, %q, %v", GroupChain(g, dir), got, d, ok)
			}
			if _, _, ok := ParseTapChain(GroupChain(g, dir)); ok {
				t.Errorf("%s taken for a tap's chain", GroupChain(g, dir))
			}
		}
		for _, f := range ruleset.Families {
			kind, got, fam, ok := ParseSetName(SetName(g, f))
			if !ok || kind != GroupSet || got != g || fam != f {
				t.Errorf("ParseSetName(%s) = %v, %q, %v, %v", SetName(g, f), kind, got, fam, ok)
			}
			kind, got, fam, ok = ParseSetName(AddressSetName(g, f))
			if !ok || kind != AddressSet || got != g || fam != f {
				t.Errorf("ParseSetName(%s) = %v, %q, %v, %v", AddressSetName(g, f), kind, got, fam, ok)
			}
			if SetName(g, f) == AddressSetName(g, f) {
				t.Errorf("group and address set %s share the ipset %s", g, SetName(g, f))
			}
		}
		for _, dir := range []string{"in", "out", "lin"} {
			if !IsOwnedName(string(GroupChain(g, dir))) {
				t.Errorf("%s not taken for vmfw's", GroupChain(g, dir))
			}
		}
	}
	for _, c := range []Chain{ChainForward, ChainInput, ChainOutput, ChainOut, ChainIn, ChainRoute, ChainLocal, ChainAccept, ChainL2, ChainL2Out, "vmfw-tap1-out", "vmfw-c00002-rt"} {
		if !IsBaseChain(c) {
			t.Errorf("%s not taken for a base chain", c)
		}
		if _, _, ok := ParseTapChain(c); ok {
			t.Errorf("%s taken for a tap's chain", c)
		}
	}
	for _, name := range []string{"FORWARD", "web", "tap1i0-foo", "-in", "sg-web-v4"} {
		if tap, kind, ok := ParseTapChain(Chain(name)); ok {
			t.Errorf("%s parsed as tap %q kind %q", name, tap, kind)
		}
	}
	for _, name := range []string{"blocklist", "as-", "as--v4", "as-1x-v4", "sg-web-v5", "vmfw-as-x-v4"} {
		if _, _, _, ok := ParseSetName(name); ok {
			t.Errorf("foreign set %s parsed as vmfw's", name)
		}
	}
	// The longest names fit ipset's 31 characters with the prefix of a
	// set being rebuilt.
	long := strings.Repeat("a", 19) + "-"
	for _, name := range []string{SetName(long, ruleset.IPv6), AddressSetName(long, ruleset.IPv6)} {
		if n := len("vmfw-" + name); n > 31 {
			t.Errorf("vmfw-%s is %d characters, ipset takes 31", name, n)
		}
	}
}
