package ipset

import (
	"context"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/internal/backendtest"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// TestWithKernel runs List, Plan and Restore against the real ipset in a
// network namespace of its own (ipsets are per namespace), next to sets
// of other tools: vmfw reads and changes its sets, rebuilds one that
// outgrew its capacity under a temporary name that ipset accepts, removes a leftover of a crash, and
// leaves the other sets exactly as they were.
func TestWithKernel(t *testing.T) {
	withIpset(t, func() {
		longest := "sg-" + strings.Repeat("g", 20) + "-v6"
		ipset(t, "restore", `create blocklist hash:net family inet
add blocklist 203.0.113.0/24
create vmfw-blocklist hash:ip family inet
add vmfw-blocklist 198.51.100.1
create sg-web-v4 hash:ip family inet maxelem 65536
add sg-web-v4 192.0.2.10
add sg-web-v4 192.0.2.11
create `+longest+` hash:ip family inet6 maxelem 1
create vmfw-sg-web-v6 hash:ip family inet6
`)
		foreign := ipset(t, "save", "blocklist") + ipset(t, "save", "vmfw-blocklist")

		ctx := context.Background()
		c := New(nil)
		have, err := c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(sortedNames(have), " "); got != "sg-gggggggggggggggggggg-v6 sg-web-v4 vmfw-sg-web-v6" {
			t.Fatalf("List found %s; want vmfw's sets and the leftover only", got)
		}
		if m := have["sg-web-v4"].Members; len(m) != 2 || !m["192.0.2.11"] {
			t.Errorf("sg-web-v4 members %v", m)
		}

		// The longest group's set outgrows its capacity: it is rebuilt under
		// the temporary name and swapped in.
		want := []layout.Set{
			{Name: "sg-web-v4", Type: layout.HashIP, Family: ruleset.IPv4, Members: []string{"192.0.2.10", "192.0.2.12"}},
			{Name: longest, Type: layout.HashIP, Family: ruleset.IPv6, Members: []string{"2001:db8::1", "2001:db8::2"}},
		}
		pre, post := Plan(want, have)
		if err := c.Restore(ctx, pre); err != nil {
			t.Fatalf("pre script:\n%s\n%v", pre, err)
		}
		if err := c.Restore(ctx, post); err != nil {
			t.Fatalf("post script:\n%s\n%v", post, err)
		}

		after, err := c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(sortedNames(after), " "); got != "sg-gggggggggggggggggggg-v6 sg-web-v4" {
			t.Errorf("after the change List found %s", got)
		}
		if o := after[longest]; o == nil || o.MaxElem < 2 || len(o.Members) != 2 {
			t.Errorf("%s after the rebuild: %+v", longest, o)
		}
		if m := after["sg-web-v4"].Members; len(m) != 2 || !m["192.0.2.12"] || m["192.0.2.11"] {
			t.Errorf("sg-web-v4 members %v, want 192.0.2.10 and 192.0.2.12", m)
		}
		if again, _ := Plan(want, after); again != "" {
			t.Errorf("a second plan is not empty:\n%s", again)
		}
		if got := ipset(t, "save", "blocklist") + ipset(t, "save", "vmfw-blocklist"); got != foreign {
			t.Errorf("other sets changed:\nbefore:\n%s\nafter:\n%s", foreign, got)
		}
	})
}

// withIpset runs fn in a network namespace of its own (ipsets are per
// namespace), with the real ipset; it skips unless root with ipset
// installed.
func withIpset(t *testing.T, fn func()) {
	t.Helper()
	if _, err := exec.LookPath("ipset"); err != nil {
		t.Skip("ipset is not installed")
	}
	backendtest.InNamespace(t, fn)
}

// ipset runs the ipset command; a single argument after "restore" is its
// input.
func ipset(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("ipset", args...)
	if args[0] == "restore" {
		cmd = exec.Command("ipset", "restore")
		cmd.Stdin = strings.NewReader(args[1])
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ipset %s: %v\n%s", args[0], err, out)
	}
	return string(out)
}

// TestAddressSetWithKernel runs an address set's hash:net ipset through
// Plan, Restore and List against the real ipset: excepts go in as nomatch
// members and are read back as such, the kernel decides by the most
// specific member, a member that turns from except into entry or back is
// deleted and added with its new flag, and a plan after each change is
// empty.
func TestAddressSetWithKernel(t *testing.T) {
	withIpset(t, func() {
		ctx := context.Background()
		c := New(nil)
		set := func(members ...string) []layout.Set {
			return []layout.Set{{Name: "as-blocked-v4", Type: layout.HashNet, Family: ruleset.IPv4, Members: members}}
		}
		apply := func(want []layout.Set) (string, map[string]*Observed) {
			t.Helper()
			have, err := c.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			pre, post := Plan(want, have)
			if err := c.Restore(ctx, pre+post); err != nil {
				t.Fatalf("script:\n%s\n%v", pre+post, err)
			}
			after, err := c.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if again, _ := Plan(want, after); again != "" {
				t.Errorf("a second plan is not empty:\n%s", again)
			}
			return pre + post, after
		}
		inSet := func(addr string) bool {
			return exec.Command("ipset", "test", "as-blocked-v4", addr).Run() == nil
		}

		first := set("10.0.0.0/8", "10.1.2.0/24", "192.0.2.5", "10.1.0.0/16"+layout.NoMatch)
		_, got := apply(first)
		if m := got["as-blocked-v4"].Members; !reflect.DeepEqual(m, map[string]bool{"10.0.0.0/8": true, "10.1.2.0/24": true, "192.0.2.5": true, "10.1.0.0/16 nomatch": true}) {
			t.Errorf("members read back: %v", m)
		}
		for addr, want := range map[string]bool{"10.9.9.9": true, "10.1.3.5": false, "10.1.2.5": true, "192.0.2.5": true, "192.0.2.6": false} {
			if inSet(addr) != want {
				t.Errorf("%s in the set: %v, want %v", addr, !want, want)
			}
		}

		script, got := apply(set("10.0.0.0/8", "10.1.0.0/16", "192.0.2.6"))
		if !strings.Contains(script, "del as-blocked-v4 10.1.0.0/16\nadd as-blocked-v4 10.1.0.0/16\n") {
			t.Errorf("the except turned entry is not deleted and added:\n%s", script)
		}
		if m := got["as-blocked-v4"].Members; !reflect.DeepEqual(m, map[string]bool{"10.0.0.0/8": true, "10.1.0.0/16": true, "192.0.2.6": true}) {
			t.Errorf("members after the edit: %v", m)
		}
		for addr, want := range map[string]bool{"10.1.3.5": true, "192.0.2.5": false, "192.0.2.6": true} {
			if inSet(addr) != want {
				t.Errorf("after the edit %s in the set: %v, want %v", addr, !want, want)
			}
		}
		script, _ = apply(set("10.0.0.0/8", "10.1.0.0/16"+layout.NoMatch, "192.0.2.6"))
		if !strings.Contains(script, "del as-blocked-v4 10.1.0.0/16\nadd as-blocked-v4 10.1.0.0/16 nomatch\n") {
			t.Errorf("the entry turned except is not deleted and added:\n%s", script)
		}
		if inSet("10.1.3.5") {
			t.Error("10.1.3.5 still matches after its prefix became an except")
		}
	})
}

// TestHeadsWithKernel runs a script and reads headers and names in one
// ipset restore against the real ipset: the headers are those after the
// script, the names vmfw's sets and leftovers but no other tool's, and a
// script that adds a member the set has fails, as a plan from stale state
// must.
func TestHeadsWithKernel(t *testing.T) {
	withIpset(t, func() {
		ipset(t, "restore", `create blocklist hash:net family inet
create as-big-v4 hash:net family inet hashsize 1024 maxelem 65536
add as-big-v4 192.0.2.0/24
add as-big-v4 192.0.2.128/25 nomatch
create as-big-v6 hash:net family inet6 hashsize 1024 maxelem 131072
create vmfw-as-big-v6 hash:net family inet6
create sg-web-v4 hash:ip family inet
`)
		ctx := context.Background()
		c := New(nil)
		heads, names, err := c.Heads(ctx, "add as-big-v4 198.51.100.7\ndel as-big-v4 192.0.2.128/25\nadd as-big-v4 192.0.2.128/25\nadd as-big-v6 2001:db8::/64\n", []string{"as-big-v4", "as-big-v6"})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]Head{
			"as-big-v4": {Type: layout.HashNet, Family: "inet", MaxElem: 65536, Entries: 3},
			"as-big-v6": {Type: layout.HashNet, Family: "inet6", MaxElem: 131072, Entries: 1},
		}
		if !reflect.DeepEqual(heads, want) {
			t.Errorf("heads %+v, want %+v", heads, want)
		}
		if got := strings.Join(names, " "); got != "as-big-v4 as-big-v6 sg-web-v4 vmfw-as-big-v6" {
			t.Errorf("names %s", got)
		}
		if _, _, err := c.Heads(ctx, "add as-big-v4 198.51.100.7\n", []string{"as-big-v4"}); err == nil {
			t.Error("adding a member the set has succeeded")
		}
		if _, _, err := c.Heads(ctx, "", []string{"as-gone-v4"}); err == nil {
			t.Error("the header of a set that does not exist was read")
		}
	})
}
