package engine

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/conntrack"
)

// fakeFlows is a connection tracking table held in memory.
type fakeFlows struct {
	flows   []conntrack.Flow
	local   []netip.Addr
	deletes int
	// asked holds the addresses of each DeleteAt.
	asked [][]netip.Addr
	err   error
}

func (f *fakeFlows) LocalAddrs() ([]netip.Addr, error) { return f.local, nil }

func (f *fakeFlows) Delete(cut func(conntrack.Flow) bool) (int, error) {
	return f.delete(func(conntrack.Flow) bool { return true }, cut)
}

func (f *fakeFlows) DeleteAt(addrs []netip.Addr, cut func(conntrack.Flow) bool) (int, error) {
	f.asked = append(f.asked, addrs)
	return f.delete(func(fl conntrack.Flow) bool { return slices.Contains(addrs, fl.Src) || slices.Contains(addrs, fl.Dst) }, cut)
}

// delete removes the flows of shown that cut selects.
func (f *fakeFlows) delete(shown, cut func(conntrack.Flow) bool) (int, error) {
	f.deletes++
	if f.err != nil {
		return 0, f.err
	}
	kept := f.flows[:0]
	n := 0
	for _, fl := range f.flows {
		if shown(fl) && cut(fl) {
			n++
			continue
		}
		kept = append(kept, fl)
	}
	f.flows = kept
	return n, nil
}

// writeConfig writes the file rel of e's configuration directory.
func writeConfig(t *testing.T, e *Engine, rel, content string) {
	t.Helper()
	configtest.Write(t, e.ConfigDir, map[string]string{rel: content})
}

func tcpFlow(src, dst string, dport uint16) conntrack.Flow {
	return conntrack.Flow{Proto: 6, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SPort: 40000, DPort: dport, Ports: true}
}

// TestSyncCutsWithdrawnFlows: after a group loses its ssh rule, apply
// deletes the tracked ssh connections to the VM, the hypervisor's own
// included (it meets the VM's in rules, docs/routing.md), and keeps the
// http ones, the VM's own outbound connection (whose replies pass only as
// established) and flows of other hosts.
func TestSyncCutsWithdrawnFlows(t *testing.T) {
	e, _, table := testEngine(t)
	writeConfig(t, e, "groups/app.toml", "[[in]]\nproto = \"tcp\"\ndport = \"22\"\n\n[[in]]\nproto = \"tcp\"\ndport = \"80\"\n")
	ssh := tcpFlow("198.51.100.7", "192.0.2.1", 22)
	http := tcpFlow("198.51.100.7", "192.0.2.1", 80)
	outbound := tcpFlow("192.0.2.1", "198.51.100.7", 443)
	hostOwn := tcpFlow("192.0.2.254", "192.0.2.1", 80)
	hostSSH := tcpFlow("192.0.2.254", "192.0.2.1", 22)
	others := tcpFlow("198.51.100.7", "198.51.100.8", 3306)
	table.flows = []conntrack.Flow{ssh, http, outbound, hostOwn, hostSSH, others}
	table.local = []netip.Addr{netip.MustParseAddr("192.0.2.254")}
	if _, err := e.Sync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if len(table.flows) != 6 {
		t.Fatalf("apply of a config allowing every flow cut some: left %v", table.flows)
	}

	writeConfig(t, e, "groups/app.toml", "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n")
	if _, err := e.Sync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	want := []conntrack.Flow{http, outbound, hostOwn, others}
	if !slices.Equal(table.flows, want) {
		t.Errorf("flows left after removing the ssh rule:\n got %v\nwant %v", table.flows, want)
	}
}

// TestDryRunCutsNothing: a dry run neither reads nor changes the table.
func TestDryRunCutsNothing(t *testing.T) {
	e, _, table := testEngine(t)
	table.flows = []conntrack.Flow{tcpFlow("198.51.100.7", "192.0.2.1", 3306)}
	if _, err := e.Sync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if table.deletes != 0 || len(table.flows) != 1 {
		t.Errorf("dry run touched the table: %d deletes, %d flows left", table.deletes, len(table.flows))
	}
}

// TestCutFailureIsReported: the rules are in place but the apply fails,
// saying so, when the connections cannot be cut.
func TestCutFailureIsReported(t *testing.T) {
	e, be, table := testEngine(t)
	table.err = errors.New("netlink: operation not permitted")
	_, err := e.Sync(context.Background(), false)
	if err == nil || !strings.Contains(err.Error(), "rules applied, but cutting the connections") || !strings.Contains(err.Error(), "operation not permitted") {
		t.Fatalf("Sync error = %v, want the cut failure", err)
	}
	if be.Applies != 1 {
		t.Error("the rules were not applied")
	}
}

// TestEditSetsCutsWhatTheEditDenies: an edit of an address set alone,
// through EditSets, tells the backend the sets' configuration before and
// after, and cuts the flows from addresses the edit put into a drop
// rule's set (a new entry, an except removed), keeping those it let out
// of the set or left out. Flows of addresses no changed prefix contains
// are not decided again, since the edit cannot have changed their
// verdict: here a flow that other rules deny, which appeared after the
// last apply, stays.
func TestEditSetsCutsWhatTheEditDenies(t *testing.T) {
	e, be, table := testEngine(t)
	ctx := context.Background()
	writeConfig(t, e, "groups/app.toml", "[[in]]\nproto = \"tcp\"\ndport = \"3306\"\naction = \"drop\"\n\n[[in]]\nsource_set = \"blocked\"\naction = \"drop\"\n\n[[in]]\n")
	writeConfig(t, e, "sets/blocked.toml", "entries = [\"198.51.100.0/25\", \"203.0.113.5\"]\nexcept = [\"198.51.100.64/26\"]\n")
	was, err := e.load()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	added := tcpFlow("198.51.100.130", "192.0.2.1", 22)         // in a new entry
	unexcepted := tcpFlow("198.51.100.70", "192.0.2.1", 22)     // its except removed
	released := tcpFlow("203.0.113.5", "192.0.2.1", 22)         // its entry removed
	stillExcepted := tcpFlow("198.51.100.100", "192.0.2.1", 22) // in a new except
	untouched := tcpFlow("192.0.2.77", "192.0.2.1", 22)
	mysql := tcpFlow("192.0.2.254", "192.0.2.1", 3306) // denied by another rule
	table.flows = []conntrack.Flow{added, unexcepted, released, stillExcepted, untouched, mysql}

	writeConfig(t, e, "sets/blocked.toml", "entries = [\"198.51.100.0/25\", \"198.51.100.128/26\"]\nexcept = [\"198.51.100.96/27\"]\n")
	ch, err := e.EditSets(ctx, was, []string{"blocked"})
	if err != nil {
		t.Fatal(err)
	}
	hint := be.Hints[len(be.Hints)-1]
	if hint == nil || !hint.Members || len(hint.Sets) != 1 || hint.Sets[0].Name != "blocked" || hint.Sets[0].Was != was.Sets["blocked"] || hint.Sets[0].Now == nil || len(hint.Sets[0].Now.Except) != 1 {
		t.Fatalf("hint %+v", hint)
	}
	if ch.FlowsCut != 2 {
		t.Errorf("cut %d flows, want 2", ch.FlowsCut)
	}
	if want := []conntrack.Flow{released, stillExcepted, untouched, mysql}; !slices.Equal(table.flows, want) {
		t.Errorf("flows left after the edit:\n got %v\nwant %v", table.flows, want)
	}
}

// TestIfdownCutsOnlyItsFlows: an ifdown cuts the flows its change
// denies, those from the detached member's address that source_group
// allowed, and decides no other flow: a flow between addresses it did not
// change stays, even one the rules deny (it was not allowed by this
// change's rules before either).
func TestIfdownCutsOnlyItsFlows(t *testing.T) {
	e, _, table := testEngine(t)
	if err := os.WriteFile(filepath.Join(e.ConfigDir, "vms/102.toml"), []byte("[net0]\nips = [\"192.0.2.2\"]\ngroups = [\"app\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tap := range []string{"tap101i0", "tap102i0"} {
		if err := e.Attach(ctx, tap); err != nil {
			t.Fatal(err)
		}
	}
	member := tcpFlow("192.0.2.2", "192.0.2.1", 22)
	denied := tcpFlow("198.51.100.7", "192.0.2.1", 3306)
	table.flows = []conntrack.Flow{member, denied}
	if err := e.Detach(ctx, "tap102i0"); err != nil {
		t.Fatal(err)
	}
	if want := []conntrack.Flow{denied}; !slices.Equal(table.flows, want) {
		t.Errorf("flows left after tap102i0's ifdown:\n got %v\nwant %v", table.flows, want)
	}
	// Its one address is asked of the kernel, not the whole table.
	if n := len(table.asked); n == 0 || !slices.Equal(table.asked[n-1], []netip.Addr{netip.MustParseAddr("192.0.2.2")}) {
		t.Errorf("the flows asked for by address: %v, want [192.0.2.2] last", table.asked)
	}
}

// TestGroupEditCutsOnlyItsFlows: a group edit decides the flows of the
// interfaces listing the group, whose rules changed, and no other.
func TestGroupEditCutsOnlyItsFlows(t *testing.T) {
	e, _, table := testEngine(t)
	writeConfig(t, e, "groups/app.toml", "[[in]]\nproto = \"tcp\"\ndport = \"22\"\n")
	writeConfig(t, e, "groups/db.toml", "[[in]]\nproto = \"tcp\"\ndport = \"5432\"\n")
	writeConfig(t, e, "vms/102.toml", "[net0]\nips = [\"192.0.2.2\"]\ngroups = [\"db\"]\n")
	ctx := context.Background()
	for _, tap := range []string{"tap101i0", "tap102i0"} {
		if err := e.Attach(ctx, tap); err != nil {
			t.Fatal(err)
		}
	}
	was, err := config.Load(e.ConfigDir)
	if err != nil {
		t.Fatal(err)
	}
	ssh := tcpFlow("198.51.100.7", "192.0.2.1", 22)
	other := tcpFlow("198.51.100.7", "192.0.2.2", 3306) // denied by db, which is not edited
	table.flows = []conntrack.Flow{ssh, other}
	writeConfig(t, e, "groups/app.toml", "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n")
	if _, err := e.SyncGroups(ctx, was, []string{"app"}); err != nil {
		t.Fatal(err)
	}
	if want := []conntrack.Flow{other}; !slices.Equal(table.flows, want) {
		t.Errorf("flows left after the edit of app:\n got %v\nwant %v", table.flows, want)
	}
}
