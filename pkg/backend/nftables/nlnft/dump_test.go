package nlnft

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/vmfw/vmfw/pkg/backend/internal/backendtest"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/internal/nlmsg"
)

// TestSetElementsAgreeWithLibrary: the dump vmfw reads sets with gives,
// for every kind of set vmfw lays out (elements with comments, per-element
// counters, a verdict map, a data map, an interval set) and for sets of
// more elements than one message holds, what the library's
// GetSetElements gives.
func TestSetElementsAgreeWithLibrary(t *testing.T) {
	var els []string
	for i := range 700 {
		els = append(els, fmt.Sprintf(`"tap%di0" comment "vmfw:settings %016x"`, i, i*7919))
	}
	script := `table bridge vmfw {
	chain gl-a { }
	set ports { type ifname; elements = { ` + strings.Join(els, ", ") + ` } }
	set drops { type ifname; counter; elements = { "tap1i0" counter packets 3 bytes 180, "tap2i0" } }
	map gl-out { type ifname : verdict; elements = { "tap1i0" : jump gl-a, "tap2i0" : accept } }
	map owners { type ipv4_addr : ifname; elements = { 192.0.2.1 : "tap1i0" } }
	set nets { type ipv4_addr; flags interval; elements = { 192.0.2.0/25, 198.51.100.7 } }
}
`
	backendtest.InNamespace(t, func() {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft -f: %v: %s", err, out)
		}
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseLasting()
		sets, err := c.GetSets(table(layout.Bridge))
		if err != nil {
			t.Fatal(err)
		}
		if len(sets) != 5 {
			t.Fatalf("%d sets, want 5", len(sets))
		}
		for _, s := range sets {
			want, err := c.GetSetElements(s)
			if err != nil {
				t.Fatal(err)
			}
			var got []nftables.SetElement
			err = nlmsg.With(context.Background(), func(nc *nlmsg.Conn) error {
				got = nil
				return setElements(nc, layout.Bridge, s.Name, func(e *nftables.SetElement) {
					e.Key, e.Val = bytes.Clone(e.Key), bytes.Clone(e.Val)
					got = append(got, *e)
				})
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) || len(got) == 0 {
				t.Fatalf("set %s: %d elements, the library reads %d", s.Name, len(got), len(want))
			}
			for i := range want {
				w := nftables.SetElement{Key: want[i].Key, Val: want[i].Val, IntervalEnd: want[i].IntervalEnd, Comment: want[i].Comment, Counter: want[i].Counter}
				if !reflect.DeepEqual(got[i], w) {
					t.Errorf("set %s element %d: %+v, the library reads %+v", s.Name, i, got[i], w)
				}
			}
		}
	})
}
