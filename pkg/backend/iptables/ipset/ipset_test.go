package ipset

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// call is one command the fake runner was asked to run.
type call struct {
	cmd   string // name and arguments, space separated
	stdin string
}

// fakeRunner answers each command with the next of its replies and
// records what it was asked.
type fakeRunner struct {
	calls   []call
	replies []reply
}

type reply struct {
	out string
	err error
}

func (f *fakeRunner) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	f.calls = append(f.calls, call{cmd: strings.Join(append([]string{name}, args...), " "), stdin: string(stdin)})
	if len(f.replies) == 0 {
		return nil, fmt.Errorf("unexpected command %s", name)
	}
	r := f.replies[0]
	f.replies = f.replies[1:]
	return []byte(r.out), r.err
}

// hostSets is "ipset list -n" on a host where other tools keep sets next
// to vmfw's: a large blocklist, a set that only looks like vmfw's, one
// whose name merely starts with vmfw-, and leftovers of interrupted
// rebuilds under the current and the old temporary prefix.
const hostSets = `blocklist
sg-web-v4
KUBE-IP-SET
sg-web-v6
sg-web-v4x
vmfw-sg-db-v4
vmfw-tmp-sg-db-v6
vmfw-blocklist
sg-db-v4
`

// ownSave is what "save" of vmfw's sets prints.
const ownSave = `create sg-db-v4 hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
create sg-web-v4 hash:ip family inet hashsize 1024 maxelem 131072 bucketsize 12 initval 0x2
add sg-web-v4 192.0.2.10
add sg-web-v4 192.0.2.11
create sg-web-v6 hash:ip family inet6 hashsize 1024 maxelem 65536 bucketsize 12 initval 0x3
add sg-web-v6 2001:DB8::10
create vmfw-sg-db-v4 hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x4
create vmfw-tmp-sg-db-v6 hash:ip family inet6 hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5
`

// TestListReadsOnlyOwnSets: List saves vmfw's sets and leftovers by name,
// in one command, and never reads another tool's set.
func TestListReadsOnlyOwnSets(t *testing.T) {
	r := &fakeRunner{replies: []reply{{out: hostSets}, {out: ownSave}}}
	got, err := New(r).List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []call{
		{cmd: "ipset list -n"},
		{cmd: "ipset restore", stdin: "save sg-db-v4\nsave sg-web-v4\nsave sg-web-v6\nsave vmfw-sg-db-v4\nsave vmfw-tmp-sg-db-v6\n"},
	}
	if !reflect.DeepEqual(r.calls, want) {
		t.Fatalf("commands:\n%q\nwant:\n%q", r.calls, want)
	}
	wantSets := map[string]*Observed{
		"sg-db-v4":          {Type: layout.HashIP, Family: "inet", MaxElem: 65536, Members: map[string]bool{}},
		"sg-web-v4":         {Type: layout.HashIP, Family: "inet", MaxElem: 131072, Members: map[string]bool{"192.0.2.10": true, "192.0.2.11": true}},
		"sg-web-v6":         {Type: layout.HashIP, Family: "inet6", MaxElem: 65536, Members: map[string]bool{"2001:db8::10": true}},
		"vmfw-sg-db-v4":     {Type: "hash:net", Family: "inet", MaxElem: 65536, Members: map[string]bool{}},
		"vmfw-tmp-sg-db-v6": {Type: layout.HashIP, Family: "inet6", MaxElem: 65536, Members: map[string]bool{}},
	}
	if !reflect.DeepEqual(got, wantSets) {
		t.Errorf("sets:\n%s\nwant:\n%s", show(got), show(wantSets))
	}
}

// TestListWithoutOwnSets: a host without vmfw's sets costs one command.
func TestListWithoutOwnSets(t *testing.T) {
	r := &fakeRunner{replies: []reply{{out: "blocklist\nKUBE-IP-SET\n"}}}
	got, err := New(r).List(context.Background())
	if err != nil || len(got) != 0 {
		t.Fatalf("List = %v, %v; want no sets", got, err)
	}
	if len(r.calls) != 1 {
		t.Errorf("ran %q, want only the name listing", r.calls)
	}
}

// TestListSetGoneMeanwhile: a set destroyed between the name listing and
// the save makes List start over, and it then reads what is there.
func TestListSetGoneMeanwhile(t *testing.T) {
	gone := errors.New("ipset v7.17: Error in line 1: The set with the given name does not exist")
	r := &fakeRunner{replies: []reply{
		{out: "sg-old-v4\nsg-web-v4\n"},
		{err: gone},
		{out: "sg-web-v4\n"},
		{out: "create sg-web-v4 hash:ip family inet maxelem 65536\nadd sg-web-v4 192.0.2.10\n"},
	}}
	got, err := New(r).List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got["sg-web-v4"].Members["192.0.2.10"] {
		t.Errorf("sets %s, want sg-web-v4 with its member", show(got))
	}
	if len(r.calls) != 4 || r.calls[3].stdin != "save sg-web-v4\n" {
		t.Errorf("commands %q, want the second save to name only the remaining set", r.calls)
	}
}

// TestListErrors: failures are reported, and a save that keeps failing
// is given up after listAttempts rounds.
func TestListErrors(t *testing.T) {
	broken := errors.New("ipset: command not found")
	r := &fakeRunner{replies: []reply{{err: broken}}}
	if _, err := New(r).List(context.Background()); !errors.Is(err, broken) {
		t.Errorf("listing failure: got %v, want it wrapped", err)
	}

	r = &fakeRunner{}
	for range listAttempts {
		r.replies = append(r.replies, reply{out: "sg-web-v4\n"}, reply{err: broken})
	}
	if _, err := New(r).List(context.Background()); !errors.Is(err, broken) {
		t.Errorf("save failure: got %v, want it wrapped", err)
	}
	if len(r.calls) != 2*listAttempts {
		t.Errorf("%d commands, want %d", len(r.calls), 2*listAttempts)
	}
}

// TestRebuildOfLongestGroupName: the temporary set of a rebuild must fit
// ipset's 31 characters when the group name has the maximum 20.
func TestRebuildOfLongestGroupName(t *testing.T) {
	name := "sg-" + strings.Repeat("g", 20) + "-v6"
	if !layout.IsOwnedSet(name) {
		t.Fatalf("%s is not a group's set name; update the test", name)
	}
	have := map[string]*Observed{name: {Type: layout.HashIP, Family: "inet6", MaxElem: 1, Members: map[string]bool{}}}
	pre, _ := Plan([]layout.Set{{Name: name, Type: layout.HashIP, Family: ruleset.IPv6, Members: []string{"2001:db8::1", "2001:db8::2"}}}, have)
	if !strings.Contains(pre, "swap ") {
		t.Fatalf("a set past its capacity must be rebuilt; got:\n%s", pre)
	}
	for _, line := range strings.Split(strings.TrimSpace(pre), "\n") {
		for _, f := range strings.Fields(line)[1:2] {
			if len(f) > 31 {
				t.Errorf("set name %s has %d characters, ipset allows 31: %s", f, len(f), line)
			}
		}
	}
}

// TestPlanDestroysLeftoversOnly: leftovers of either temporary prefix are
// destroyed before anything else; a set of vmfw's shape that no group
// wants goes after the iptables change.
func TestPlanDestroysLeftoversOnly(t *testing.T) {
	have := Parse([]byte(ownSave))
	pre, post := Plan([]layout.Set{
		{Name: "sg-web-v4", Type: layout.HashIP, Family: ruleset.IPv4, Members: []string{"192.0.2.10", "192.0.2.12"}},
		{Name: "sg-web-v6", Type: layout.HashIP, Family: ruleset.IPv6, Members: []string{"2001:db8::10"}},
	}, have)
	wantPre := "destroy vmfw-sg-db-v4\ndestroy vmfw-tmp-sg-db-v6\nadd sg-web-v4 192.0.2.12\ndel sg-web-v4 192.0.2.11\n"
	if pre != wantPre {
		t.Errorf("pre:\n%s\nwant:\n%s", pre, wantPre)
	}
	if post != "destroy sg-db-v4\n" {
		t.Errorf("post:\n%s\nwant: destroy sg-db-v4", post)
	}
}

func show(sets map[string]*Observed) string {
	var b strings.Builder
	for _, name := range sortedNames(sets) {
		fmt.Fprintf(&b, "%s %+v\n", name, *sets[name])
	}
	return b.String()
}

func sortedNames(sets map[string]*Observed) []string {
	return slices.Sorted(maps.Keys(sets))
}

// TestParseAddressSet: members of a hash:net set are read in the form
// layout writes them, nomatch flag included, whatever case and
// compression ipset prints; a plan for a set sized beyond the default
// hash creates it with room for its members.
func TestParseAddressSet(t *testing.T) {
	got := Parse([]byte(`create as-x-v6 hash:net family inet6 hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
add as-x-v6 2001:DB8:0:0::/32
add as-x-v6 2001:db8::1 nomatch
add as-x-v6 2001:db8:0:1::/64 nomatch
`))
	want := map[string]bool{"2001:db8::/32": true, "2001:db8::1 nomatch": true, "2001:db8:0:1::/64 nomatch": true}
	if o := got["as-x-v6"]; o == nil || o.Type != layout.HashNet || !reflect.DeepEqual(o.Members, want) {
		t.Errorf("parsed %+v, want members %v", o, want)
	}
	members := make([]string, 3000)
	for i := range members {
		members[i] = fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)
	}
	pre, _ := Plan([]layout.Set{{Name: "as-big-v4", Type: layout.HashNet, Family: ruleset.IPv4, Members: members}}, nil)
	if first, _, _ := strings.Cut(pre, "\n"); first != "create as-big-v4 hash:net family inet hashsize 4096 maxelem 65536" {
		t.Errorf("created with %q", first)
	}
}

// TestHeads reads headers and names from the output of ipset restore's
// list lines.
func TestHeads(t *testing.T) {
	out := "Name: as-big-v6\nType: hash:net\nRevision: 7\nHeader: family inet6 hashsize 131072 maxelem 262144 bucketsize 12 initval 0x57e5bb76\nSize in memory: 1528\nReferences: 1\nNumber of entries: 100500\n" +
		"Name: as-big-v4\nType: hash:net\nRevision: 7\nHeader: family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xcb6434a2\nSize in memory: 456\nReferences: 1\nNumber of entries: 0\n" +
		"as-big-v4\nas-big-v6\nsg-web-v4\nforeign\nvmfw-as-big-v6\n"
	heads, rest := ParseHeads([]byte(out))
	want := map[string]Head{
		"as-big-v6": {Type: layout.HashNet, Family: "inet6", MaxElem: 262144, Entries: 100500},
		"as-big-v4": {Type: layout.HashNet, Family: "inet", MaxElem: 65536, Entries: 0},
	}
	if !reflect.DeepEqual(heads, want) {
		t.Errorf("heads %+v, want %+v", heads, want)
	}
	if got := string(rest); got != "as-big-v4\nas-big-v6\nsg-web-v4\nforeign\nvmfw-as-big-v6\n\n" {
		t.Errorf("names %q", got)
	}
}
