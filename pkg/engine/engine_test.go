package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// fakeHost has the links it is given; it records in bridges, when not
// nil, each tap's last attachment.
type fakeHost struct {
	links   map[string]bool
	bridges map[string][]string
}

func (h fakeHost) Links() (map[string]bool, error) { return h.links, nil }
func (h fakeHost) EnableBridgeNetfilter() error    { return nil }

func (h fakeHost) Attach(tap, bridge string) error {
	if h.bridges != nil {
		h.bridges[tap] = append(h.bridges[tap], bridge)
	}
	return nil
}

// testEngine returns an engine on a backend.Fake and an empty connection
// tracking table, with VM 101 configured and its tap present.
func testEngine(t *testing.T) (*Engine, *backend.Fake, *fakeFlows) {
	t.Helper()
	dir := configtest.Dir(t, map[string]string{
		"groups/app.toml": "[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"app\"\n",
		"vms/101.toml":    "[net0]\nips = [\"192.0.2.1\", \"2001:db8::1\"]\ngroups = [\"app\"]\n",
	})
	be, flows := &backend.Fake{}, &fakeFlows{}
	e := New(Kernel{
		Backend: be,
		Host:    fakeHost{links: map[string]bool{"tap101i0": true}},
		Lock:    func(context.Context) (func(), error) { return func() {}, nil },
		Flows:   flows,
	}, dir)
	return e, be, flows
}

// A dry run computes the change and writes nothing.
func TestSyncDryRunWritesNothing(t *testing.T) {
	e, be, _ := testEngine(t)
	ch, err := e.Sync(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if ch.Empty() {
		t.Fatal("dry run on an empty host reports no change")
	}
	if be.Applies != 0 || be.Dump() != "" {
		t.Errorf("dry run wrote: %d applies, holding\n%s", be.Applies, be.Dump())
	}
	var b strings.Builder
	ch.WriteTo(&b)
	for _, want := range []string{"create iface/tap101i0", "create group/app", "add app-v4 192.0.2.1"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("dry-run output lacks %q:\n%s", want, b.String())
		}
	}
	rep := ch.Report(true)
	if !rep.Changed || !rep.DryRun || len(rep.Sets.Added["app-v4"]) != 1 || rep.FlowsCut != 0 {
		t.Errorf("report %+v", rep)
	}
}

// Sync installs the configured taps that exist; a second Sync changes
// nothing and applies nothing.
func TestSyncConverges(t *testing.T) {
	e, be, _ := testEngine(t)
	ctx := context.Background()
	if _, err := e.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	want := "iface tap101i0 enabled=true groups=[app] ips=[192.0.2.1 2001:db8::1]\ngroup app in=1 out=0\nmembers app [192.0.2.1] [2001:db8::1]\n"
	if got := be.Dump(); got != want {
		t.Errorf("installed:\n%s\nwant:\n%s", got, want)
	}
	ch, err := e.Sync(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if !ch.Empty() || be.Applies != 1 {
		t.Errorf("second Sync: empty=%v, %d applies", ch.Empty(), be.Applies)
	}
}

// A failed apply fails the operation and leaves the backend as it was.
func TestSyncApplyFailure(t *testing.T) {
	e, be, _ := testEngine(t)
	be.FailApply = errors.New("kernel refused")
	if _, err := e.Sync(context.Background(), false); err == nil || !strings.Contains(err.Error(), "kernel refused") {
		t.Fatalf("Sync error = %v, want the apply failure", err)
	}
	if be.Dump() != "" {
		t.Errorf("backend holds after a failed apply:\n%s", be.Dump())
	}
}

// A plan made from remembered state that the backend cannot write is made
// once more from a fresh read; a second failure is the operation's.
func TestApplyRetriesStalePlanOnce(t *testing.T) {
	e, be, _ := testEngine(t)
	be.FailApply = &backend.StaleError{Err: errors.New("ipset add: element already exists")}
	if _, err := e.Sync(context.Background(), false); err != nil {
		t.Fatalf("Sync after one stale failure: %v", err)
	}
	if be.Plans != 2 || be.Applies != 1 {
		t.Errorf("%d plans and %d applies, want 2 and 1", be.Plans, be.Applies)
	}
}

// Flush removes everything and needs no configuration.
func TestFlush(t *testing.T) {
	e, be, _ := testEngine(t)
	ctx := context.Background()
	if _, err := e.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.ConfigDir, "groups", "app.toml"), []byte("broken ="), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Flush(ctx, false); err != nil {
		t.Fatal(err)
	}
	if be.Dump() != "" {
		t.Errorf("after flush the backend holds:\n%s", be.Dump())
	}
}

// Attach of a tap without configuration names the file it looked for and
// touches nothing.
func TestAttachWithoutConfig(t *testing.T) {
	e, be, _ := testEngine(t)
	err := e.Attach(context.Background(), "tap999i0")
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), filepath.Join(e.ConfigDir, "vms", "999.toml")) {
		t.Fatalf("error = %v, want a ConfigError naming vms/999.toml", err)
	}
	// The narrow read beside the load (beginChange) is made before the
	// configuration says anything; nothing may be written.
	if be.Applies != 0 || be.Plans != 0 {
		t.Errorf("the backend was planned (%d) or written (%d)", be.Plans, be.Applies)
	}
	for _, bad := range []string{"eth0", "tap01i0", "tap1i"} {
		if err := e.Attach(context.Background(), bad); !errors.As(err, &ce) {
			t.Errorf("Attach(%q) = %v, want a ConfigError", bad, err)
		}
	}
}

// An interface change reads the backend beside the configuration's load,
// before the lock (beginChange), and uses that read when nothing
// committed before the lock was taken; a commit in between (another
// process's change, a hand edit) makes it read again under the lock, or
// the change would trust what the kernel no longer holds.
func TestChangeReadsBesideTheLoad(t *testing.T) {
	e, be, _ := testEngine(t)
	ctx := context.Background()
	if err := e.Attach(ctx, "tap101i0"); err != nil {
		t.Fatal(err)
	}
	if be.Reads != 1 {
		t.Errorf("an attach read the backend %d times, want once", be.Reads)
	}
	// Someone removes the interface's filtering after the early read and
	// before the lock.
	e.kernel.Lock = func(context.Context) (func(), error) {
		be.Tamper("tap101i0")
		return func() {}, nil
	}
	reads := be.Reads
	if err := e.Attach(ctx, "tap101i0"); err != nil {
		t.Fatal(err)
	}
	if be.Reads != reads+2 {
		t.Errorf("an attach after a commit before the lock read the backend %d times, want twice", be.Reads-reads)
	}
	if !strings.Contains(be.Dump(), "iface tap101i0 ") {
		t.Errorf("the attach trusted the read before the lock; the backend holds:\n%s", be.Dump())
	}
}

// TestChangeSettlesTheIndex: an interface change computes from the
// configuration index before its files are checked, and settles it before
// it writes: a file edited since the index was written (the change made
// from the index's settings is dropped) or added since (the tap the index
// does not know is found) is what the change installs.
func TestChangeSettlesTheIndex(t *testing.T) {
	e, be, _ := testEngine(t)
	e.ConfigIndex = filepath.Join(t.TempDir(), "config.index")
	ctx := context.Background()
	attach := func(tap, want string) {
		t.Helper()
		if err := e.Attach(ctx, tap); err != nil {
			t.Fatalf("attach %s: %v", tap, err)
		}
		if dump := be.Dump(); !strings.Contains(dump, want) {
			t.Errorf("after attaching %s the backend does not hold %q; it holds:\n%s", tap, want, dump)
		}
	}
	attach("tap101i0", "iface tap101i0 enabled=true groups=[app] ips=[192.0.2.1 2001:db8::1]")
	if err := e.Detach(ctx, "tap101i0"); err != nil {
		t.Fatal(err)
	}
	configtest.Write(t, e.ConfigDir, map[string]string{"vms/101.toml": "[net0]\nips = [\"192.0.2.9\"]\ngroups = [\"app\"]\n"})
	attach("tap101i0", "iface tap101i0 enabled=true groups=[app] ips=[192.0.2.9]")
	configtest.Write(t, e.ConfigDir, map[string]string{"vms/102.toml": "[net0]\nips = [\"192.0.2.2\"]\ngroups = [\"app\"]\n"})
	attach("tap102i0", "iface tap102i0 enabled=true groups=[app] ips=[192.0.2.2]")
}

// TestAttachSettlesBeforeTheBridge: an attach whose plan is empty (the tap
// installed as the configuration says) writes nothing to the backend, and
// still settles the configuration before it attaches the tap to its
// bridge: a bridge edited since the index was written is the one used.
func TestAttachSettlesBeforeTheBridge(t *testing.T) {
	e, be, _ := testEngine(t)
	bridges := map[string][]string{}
	e.kernel.Host = fakeHost{links: map[string]bool{"tap101i0": true}, bridges: bridges}
	e.ConfigIndex = filepath.Join(t.TempDir(), "config.index")
	ctx := context.Background()
	if err := e.Attach(ctx, "tap101i0"); err != nil {
		t.Fatal(err)
	}
	applies := be.Applies
	configtest.Write(t, e.ConfigDir, map[string]string{"vms/101.toml": "[net0]\nips = [\"192.0.2.1\", \"2001:db8::1\"]\ngroups = [\"app\"]\nbridge = \"vmbr9\"\n"})
	if err := e.Attach(ctx, "tap101i0"); err != nil {
		t.Fatal(err)
	}
	if be.Applies != applies {
		t.Errorf("a bridge edit applied %d plans; the firewall is the same", be.Applies-applies)
	}
	if got := bridges["tap101i0"]; len(got) != 2 || got[1] != "vmbr9" {
		t.Errorf("tap101i0 attached to %v, want the edited vmbr9 last", got)
	}
}
