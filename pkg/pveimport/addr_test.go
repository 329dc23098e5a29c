package pveimport

import (
	"net/netip"
	"testing"
)

// TestRangePrefixes: a range becomes the fewest prefixes covering exactly
// its addresses.
func TestRangePrefixes(t *testing.T) {
	for _, c := range []struct {
		lo, hi string
		want   []string
	}{
		{"192.0.2.5", "192.0.2.9", []string{"192.0.2.5/32", "192.0.2.6/31", "192.0.2.8/31"}},
		{"192.0.2.0", "192.0.2.255", []string{"192.0.2.0/24"}},
		{"192.0.2.7", "192.0.2.7", []string{"192.0.2.7/32"}},
		{"0.0.0.0", "255.255.255.255", []string{"0.0.0.0/0"}},
		{"2001:db8::1", "2001:db8::4", []string{"2001:db8::1/128", "2001:db8::2/127", "2001:db8::4/128"}},
	} {
		got := rangePrefixes(netip.MustParseAddr(c.lo), netip.MustParseAddr(c.hi))
		if len(got) != len(c.want) {
			t.Errorf("%s-%s: %v, want %v", c.lo, c.hi, got, c.want)
			continue
		}
		for i := range got {
			if got[i].String() != c.want[i] {
				t.Errorf("%s-%s: %v, want %v", c.lo, c.hi, got, c.want)
			}
		}
	}
}

// TestVMFWName: names that fit stay; longer ones keep their beginning and
// a hash of the whole, so two long names with one beginning differ.
func TestVMFWName(t *testing.T) {
	if got := vmfwName("webserver"); got != "webserver" {
		t.Errorf("got %q", got)
	}
	a, b := vmfwName("G100_a-very-long-ipset-name-1"), vmfwName("G100_a-very-long-ipset-name-2")
	if len(a) != maxName || len(b) != maxName || a == b || a[:13] != "G100_a-very-l" {
		t.Errorf("got %q and %q", a, b)
	}
}
