package nlnft

import (
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/internal/backendtest"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

func prefixes(list ...string) []layout.Element {
	var out []layout.Element
	for _, s := range list {
		out = append(out, layout.PrefixElement(netip.MustParsePrefix(s)))
	}
	return out
}

func keys(elems []layout.Element) []string {
	var out []string
	for _, e := range elems {
		out = append(out, string(e.KeyBytes()))
	}
	slices.Sort(out)
	return out
}

// TestIntervalSetsWithKernel writes interval sets (address sets' effective
// prefixes) to the kernel and reads them back as the same ranges: adjacent
// prefixes stay two, a prefix at the end of the address space has no end
// element, one at its start none before it; deleting one prefix and adding
// others changes those alone, and nft lists what vmfw wrote.
func TestIntervalSetsWithKernel(t *testing.T) {
	backendtest.InNamespace(t, func() {
		v4 := &layout.Set{Name: "as-x-v4", Key: []layout.Type{layout.TypeIPv4}, Interval: true,
			Elements: prefixes("0.0.0.0/8", "192.0.2.0/25", "192.0.2.128/26", "198.51.100.7/32", "255.255.255.255/32")}
		v6 := &layout.Set{Name: "as-x-v6", Key: []layout.Type{layout.TypeIPv6}, Interval: true,
			Elements: prefixes("2001:db8::/64", "2001:db8:0:1::/64", "8000::/1")}
		sets := []*layout.Set{v4, v6}
		c := Client{}
		err := c.Write(&Batch{Tables: []*TableChange{{Family: layout.Bridge, Create: true, Sets: sets, NewSets: sets}}})
		if err != nil {
			t.Fatal(err)
		}
		check := func(when string, want ...*layout.Set) {
			t.Helper()
			obs, err := c.Read(true)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range want {
				o := obs.Tables[layout.Bridge].Sets[s.Name]
				if o == nil {
					t.Fatalf("%s: set %s not read", when, s.Name)
				}
				if got := slices.Sorted(maps.Keys(o.Elements)); !slices.Equal(got, keys(s.Elements)) {
					var text []string
					for _, k := range got {
						e, _ := s.Decode([]byte(k))
						text = append(text, e.Text())
					}
					t.Errorf("%s: %s reads back as %v", when, s.Name, text)
				}
				if o.Signature != s.Signature() {
					t.Errorf("%s: %s signature %q, want %q", when, s.Name, o.Signature, s.Signature())
				}
			}
		}
		check("written", v4, v6)

		err = c.Write(&Batch{Tables: []*TableChange{{Family: layout.Bridge, Sets: sets,
			DelElements: map[string][]layout.Element{"as-x-v4": prefixes("192.0.2.0/25")},
			AddElements: map[string][]layout.Element{"as-x-v4": prefixes("192.0.2.64/26", "203.0.113.0/24")}}}})
		if err != nil {
			t.Fatal(err)
		}
		v4.Elements = prefixes("0.0.0.0/8", "192.0.2.64/26", "192.0.2.128/26", "198.51.100.7/32", "203.0.113.0/24", "255.255.255.255/32")
		check("edited", v4, v6)

		out, err := exec.Command("nft", "list", "set", "bridge", "vmfw", "as-x-v4").CombinedOutput()
		if err != nil {
			t.Fatalf("nft: %v\n%s", err, out)
		}
		for _, want := range []string{"flags interval", "0.0.0.0/8", "192.0.2.64/26", "192.0.2.128/26", "198.51.100.7", "203.0.113.0/24", "255.255.255.255"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("nft lists no %s:\n%s", want, out)
			}
		}
		if strings.Contains(string(out), "192.0.2.0/25") {
			t.Errorf("the deleted prefix is still listed:\n%s", out)
		}
	})
}
