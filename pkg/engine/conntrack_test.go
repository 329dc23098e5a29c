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

	"github.com/vmfw/vmfw/pkg/conntrack"
)

// TestMain keeps every test of the package away from the kernel's
// connection tracking table: an engine whose apply changed something
// would otherwise read and prune the table of the namespace the test runs
// in.
func TestMain(m *testing.M) {
	flowTable = func() FlowTable { return &fakeFlows{} }
	os.Exit(m.Run())
}

// fakeFlows is a connection tracking table held in memory.
type fakeFlows struct {
	flows   []conntrack.Flow
	local   []netip.Addr
	deletes int
	err     error
}

func (f *fakeFlows) LocalAddrs() ([]netip.Addr, error) { return f.local, nil }

func (f *fakeFlows) Delete(cut func(conntrack.Flow) bool) (int, error) {
	f.deletes++
	if f.err != nil {
		return 0, f.err
	}
	kept := f.flows[:0]
	n := 0
	for _, fl := range f.flows {
		if cut(fl) {
			n++
			continue
		}
		kept = append(kept, fl)
	}
	f.flows = kept
	return n, nil
}

// useFlows makes the engine work on table for the rest of the test.
func useFlows(t *testing.T, table *fakeFlows) {
	prev := flowTable
	flowTable = func() FlowTable { return table }
	t.Cleanup(func() { flowTable = prev })
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
	e, _, _ := testEngine(t)
	write := func(rel, content string) {
		if err := os.WriteFile(filepath.Join(e.ConfigDir, rel), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("groups/app.toml", "[[in]]\nproto = \"tcp\"\ndport = \"22\"\n\n[[in]]\nproto = \"tcp\"\ndport = \"80\"\n")
	ssh := tcpFlow("198.51.100.7", "192.0.2.1", 22)
	http := tcpFlow("198.51.100.7", "192.0.2.1", 80)
	outbound := tcpFlow("192.0.2.1", "198.51.100.7", 443)
	hostOwn := tcpFlow("192.0.2.254", "192.0.2.1", 80)
	hostSSH := tcpFlow("192.0.2.254", "192.0.2.1", 22)
	others := tcpFlow("198.51.100.7", "198.51.100.8", 3306)
	table := &fakeFlows{
		flows: []conntrack.Flow{ssh, http, outbound, hostOwn, hostSSH, others},
		local: []netip.Addr{netip.MustParseAddr("192.0.2.254")},
	}
	useFlows(t, table)
	if _, err := e.Sync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if len(table.flows) != 6 {
		t.Fatalf("apply of a config allowing every flow cut some: left %v", table.flows)
	}

	write("groups/app.toml", "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n")
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
	e, _, _ := testEngine(t)
	table := &fakeFlows{flows: []conntrack.Flow{tcpFlow("198.51.100.7", "192.0.2.1", 3306)}}
	useFlows(t, table)
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
	e, fw, _ := testEngine(t)
	useFlows(t, &fakeFlows{err: errors.New("netlink: operation not permitted")})
	_, err := e.Sync(context.Background(), false)
	if err == nil || !strings.Contains(err.Error(), "rules applied, but cutting the connections") || !strings.Contains(err.Error(), "operation not permitted") {
		t.Fatalf("Sync error = %v, want the cut failure", err)
	}
	if len(fw.restores) == 0 {
		t.Error("the rules were not applied")
	}
}
