package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/iptables/ipset"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// fakeFirewall serves saved snapshots and records restores; it can fail
// the restore of one family to exercise the revert path.
type fakeFirewall struct {
	mu       sync.Mutex // the engine writes the families side by side
	snap     map[ruleset.Family]*xtables.Snapshot
	restores map[ruleset.Family][]string
	failOn   ruleset.Family
}

func newFakeFirewall() *fakeFirewall {
	f := &fakeFirewall{snap: map[ruleset.Family]*xtables.Snapshot{}, restores: map[ruleset.Family][]string{}}
	for _, fam := range ruleset.Families {
		s, _ := xtables.Parse([]byte("*filter\n:FORWARD ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\nCOMMIT\n"))
		f.snap[fam] = s
	}
	return f
}

func (f *fakeFirewall) Save(_ context.Context, fam ruleset.Family) (*xtables.Snapshot, error) {
	return f.snap[fam], nil
}

func (f *fakeFirewall) Restore(_ context.Context, fam ruleset.Family, text string) error {
	if text == "" {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores[fam] = append(f.restores[fam], text)
	if fam == f.failOn && len(f.restores[fam]) == 1 {
		return errors.New("ip6tables-restore: line 3 failed")
	}
	return nil
}

type fakeSets struct{ scripts []string }

func (s *fakeSets) List(context.Context) (map[string]*ipset.Observed, error) {
	return map[string]*ipset.Observed{}, nil
}

func (s *fakeSets) Restore(_ context.Context, script string) error {
	if script != "" {
		s.scripts = append(s.scripts, script)
	}
	return nil
}

type fakeHost struct{ links map[string]bool }

func (h fakeHost) Links() (map[string]bool, error) { return h.links, nil }
func (h fakeHost) Attach(tap, bridge string) error { return nil }
func (h fakeHost) EnableBridgeNetfilter() error    { return nil }

func testEngine(t *testing.T) (*Engine, *fakeFirewall, *fakeSets) {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"groups/app.toml": "[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"app\"\n",
		"vms/101.toml":    "[net0]\nips = [\"192.0.2.1\", \"2001:db8::1\"]\ngroups = [\"app\"]\n",
	}
	for rel, content := range files {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(rel)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, rel), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fw, sets := newFakeFirewall(), &fakeSets{}
	e := New(Kernel{
		Firewall: fw,
		Sets:     sets,
		Host:     fakeHost{links: map[string]bool{"tap101i0": true}},
		Lock:     func(context.Context) (func(), error) { return func() {}, nil },
	}, dir)
	return e, fw, sets
}

// A failed IPv6 restore reverts the IPv4 change already applied and leaves
// the sets that would have become unused alone.
func TestSyncRevertsIPv4WhenIPv6Fails(t *testing.T) {
	e, fw, sets := testEngine(t)
	fw.failOn = ruleset.IPv6
	_, err := e.Sync(context.Background(), false)
	if err == nil || !strings.Contains(err.Error(), "line 3 failed") {
		t.Fatalf("Sync error = %v, want the ip6tables-restore failure", err)
	}
	v4 := fw.restores[ruleset.IPv4]
	if len(v4) != 2 {
		t.Fatalf("IPv4 restores = %d, want apply then revert", len(v4))
	}
	for _, want := range []string{"-X tap101i0-in", "-X vmfw-FORWARD", "-D FORWARD -j vmfw-FORWARD -m comment"} {
		if !strings.Contains(v4[1], want) {
			t.Errorf("revert lacks %q:\n%s", want, v4[1])
		}
	}
	if len(sets.scripts) != 1 {
		t.Errorf("ipset scripts = %q, want only the one before the rules", sets.scripts)
	}
}

// A dry run computes the change and writes nothing.
func TestSyncDryRunWritesNothing(t *testing.T) {
	e, fw, sets := testEngine(t)
	ch, err := e.Sync(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if ch.Empty() {
		t.Fatal("dry run on an empty host reports no change")
	}
	if len(fw.restores) != 0 || len(sets.scripts) != 0 {
		t.Errorf("dry run wrote: %v %v", fw.restores, sets.scripts)
	}
	var b strings.Builder
	ch.WriteTo(&b)
	for _, want := range []string{"# ipset restore", "create sg-app-v4 hash:ip family inet", "add sg-app-v4 192.0.2.1", "# iptables-restore --noflush", "# ip6tables-restore --noflush", ":tap101i0-in - [0:0]"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("dry-run output lacks %q", want)
		}
	}
}

// Attach of a tap without configuration names the file it looked for and
// touches nothing.
func TestAttachWithoutConfig(t *testing.T) {
	e, fw, _ := testEngine(t)
	err := e.Attach(context.Background(), "tap999i0")
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), filepath.Join(e.ConfigDir, "vms", "999.toml")) {
		t.Fatalf("error = %v, want a ConfigError naming vms/999.toml", err)
	}
	if len(fw.restores) != 0 {
		t.Errorf("restores happened: %v", fw.restores)
	}
	for _, bad := range []string{"eth0", "tap01i0", "tap1i"} {
		if err := e.Attach(context.Background(), bad); !errors.As(err, &ce) {
			t.Errorf("Attach(%q) = %v, want a ConfigError", bad, err)
		}
	}
}
