package layout

import (
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
			got, fam, ok := ParseSetName(SetName(g, f))
			if g != "a_b-c" && (!ok || got != g || fam != f) {
				t.Errorf("ParseSetName(%s) = %q, %v, %v", SetName(g, f), got, fam, ok)
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
	if _, _, ok := ParseSetName("blocklist"); ok {
		t.Error("a foreign set parsed as vmfw's")
	}
}
