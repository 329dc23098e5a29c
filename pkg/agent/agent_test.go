package agent

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfw/vmfw/pkg/agent/wire"
	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/leaktest"
)

// The agent's rules for requests, run against backend.Fake: no kernel,
// the real socket, loop and engine.

// testHost is a host whose interfaces are links.
type testHost struct{ links map[string]bool }

func (h testHost) Links() (map[string]bool, error) { return maps.Clone(h.links), nil }
func (testHost) Attach(string, string) error       { return nil }
func (testHost) EnableBridgeNetfilter() error      { return nil }

// testAgent is an agent on a Fake, running until the test ends.
type testAgent struct {
	*Agent
	be     *backend.Fake
	config string
}

// startAgent runs an agent on a Fake with VMs 101 to 106 configured, and
// waits until it answers.
func startAgent(t *testing.T, be *backend.Fake) *testAgent {
	t.Helper()
	return startAgentOn(t, be, testHost{})
}

// startAgentOn starts an agent on be and host.
func startAgentOn(t *testing.T, be *backend.Fake, host testHost) *testAgent {
	t.Helper()
	snap := leaktest.Take()
	files := map[string]string{
		// No test here waits for a drift check: what repairs, repairs
		// for another reason.
		"vmfw.toml":         "repair_interval = \"1h\"\n",
		"groups/web.toml":   "[[in]]\nproto = \"tcp\"\ndport = \"80\"\nsource_group = \"web\"\n",
		"sets/blocked.toml": "entries = [\"198.51.100.0/24\"]\n",
	}
	for id := 101; id <= 106; id++ {
		files["vms/"+strconv.Itoa(id)+".toml"] = "[net0]\nips = [\"192.0.2." + strconv.Itoa(id) + "\"]\ngroups = [\"web\"]\n"
	}
	dir := configtest.Dir(t, files)
	a := &Agent{
		ConfigDir: dir,
		StateDir:  t.TempDir(),
		RunDir:    t.TempDir(),
		Kernel: engine.Kernel{Backend: be, Host: host,
			Lock: func(context.Context) (func(), error) { return func() {}, nil }},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
		snap.Check(t)
	})
	ta := &testAgent{Agent: a, be: be, config: dir}
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(a.RunDir, wire.SocketName)); err == nil {
			return ta
		}
		if i > 500 {
			t.Fatal("the agent never listened")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// call sends req to the agent, filled in with its directories.
func (ta *testAgent) call(t *testing.T, req wire.Request) *wire.Response {
	t.Helper()
	resp, err := ta.try(req)
	if err != nil {
		t.Errorf("%s %s: %v", req.Op, req.Tap, err)
		return &wire.Response{}
	}
	return resp
}

// ifup brings tap up through the agent and fails the test unless it is.
func (ta *testAgent) ifup(t *testing.T, tap string) {
	t.Helper()
	if r := ta.call(t, wire.Request{Op: Ifup, Tap: tap}); !r.OK {
		t.Fatal(r.Error)
	}
}

// try sends req and returns the answer or why there was none.
func (ta *testAgent) try(req wire.Request) (*wire.Response, error) {
	if req.ConfigDir == "" {
		req.ConfigDir = ta.config
	}
	return wire.Call(context.Background(), ta.RunDir, req)
}

// holdFirstApply makes the next write to be wait until release is called,
// so that requests queue behind it; held receives when that write waits.
// Later writes go through.
func holdFirstApply(be *backend.Fake) (held <-chan struct{}, release func()) {
	hold, waiting := make(chan struct{}), make(chan struct{}, 1)
	be.BeforeApply = func() {
		select {
		case waiting <- struct{}{}:
			<-hold // only the first write waits
		default:
		}
	}
	return waiting, func() { close(hold) }
}

// TestAgentBatchesQueuedRequests: the requests that arrive while the agent
// applies one are applied together, in one plan and one write.
func TestAgentBatchesQueuedRequests(t *testing.T) {
	be := &backend.Fake{}
	ta := startAgent(t, be)
	held, release := holdFirstApply(be)
	var wg sync.WaitGroup
	responses := make([]*wire.Response, 6)
	wg.Go(func() { responses[0] = ta.call(t, wire.Request{Op: Ifup, Tap: "tap101i0"}) })
	<-held
	applies := be.Applies
	for i := 1; i < 6; i++ {
		wg.Go(func() { responses[i] = ta.call(t, wire.Request{Op: Ifup, Tap: "tap10" + strconv.Itoa(i+1) + "i0"}) })
	}
	// The five wait for the first write; once they are queued, let it go.
	waitFor(t, "five queued requests", func() bool { return queuedRequests(ta.Agent) == 5 })
	release()
	wg.Wait()
	for i, r := range responses {
		if !r.OK {
			t.Errorf("request %d: %+v", i, r)
		}
	}
	if responses[0].Batch != 1 || responses[5].Batch != 5 {
		t.Errorf("batches %d and %d, want 1 and 5", responses[0].Batch, responses[5].Batch)
	}
	if got := be.Applies - applies; got != 2 {
		t.Errorf("%d writes for two batches", got)
	}
	if dump := be.Dump(); strings.Count(dump, "iface tap") != 6 {
		t.Errorf("installed:\n%s", dump)
	}
}

// TestAgentLastRequestWins: an ifup and an ifdown of one tap in the same
// batch leave the tap as the later one says; both callers are answered OK.
func TestAgentLastRequestWins(t *testing.T) {
	be := &backend.Fake{}
	ta := startAgent(t, be)
	ta.ifup(t, "tap102i0")
	held, release := holdFirstApply(be)
	var wg sync.WaitGroup
	wg.Go(func() { ta.call(t, wire.Request{Op: Ifup, Tap: "tap103i0"}) })
	<-held
	var up, down *wire.Response
	wg.Go(func() { up = ta.call(t, wire.Request{Op: Ifup, Tap: "tap101i0"}) })
	waitFor(t, "the ifup queued", func() bool { return queuedRequests(ta.Agent) == 1 })
	wg.Go(func() { down = ta.call(t, wire.Request{Op: Ifdown, Tap: "tap101i0"}) })
	waitFor(t, "the ifdown queued", func() bool { return queuedRequests(ta.Agent) == 2 })
	release()
	wg.Wait()
	if !up.OK || !down.OK || up.Batch != 2 {
		t.Errorf("ifup %+v, ifdown %+v: want both OK in one batch of 2", up, down)
	}
	if dump := be.Dump(); strings.Contains(dump, "tap101i0") || !strings.Contains(dump, "tap102i0") {
		t.Errorf("installed:\n%s", dump)
	}
}

// TestAgentRefuses: a request for another configuration directory, state
// directory or backend is refused untouched (the caller does the work);
// a tap without configuration is a configuration error (exit 2 for the
// caller) that changes nothing.
func TestAgentRefuses(t *testing.T) {
	be := &backend.Fake{}
	ta := startAgent(t, be)
	applies := be.Applies
	for name, req := range map[string]wire.Request{
		"config dir": {Op: Ifup, Tap: "tap101i0", ConfigDir: t.TempDir()},
		"state dir":  {Op: Ifup, Tap: "tap101i0", StateDir: t.TempDir()},
		"flavour":    {Op: Ifup, Tap: "tap101i0", IPTables: "legacy"},
		"backend":    {Op: Ifup, Tap: "tap101i0", Backend: "nftables"},
		"operation":  {Op: "frobnicate"},
	} {
		if r, err := ta.try(req); !errors.Is(err, wire.ErrNoAgent) {
			t.Errorf("%s: %+v, %v, want refused", name, r, err)
		}
	}
	r := ta.call(t, wire.Request{Op: Ifup, Tap: "tap999i0", Backend: string(be.Name())})
	if r.OK || r.Refused || !r.Config || !strings.Contains(r.Error, "999.toml") {
		t.Errorf("unconfigured tap: %+v, want a configuration error naming vms/999.toml", r)
	}
	if be.Applies != applies {
		t.Errorf("refused requests wrote %d times", be.Applies-applies)
	}
}

// TestAgentRetriesStalePlan: a batch planned from remembered state that
// the backend cannot write is planned again from a fresh read, once; the
// caller sees success.
func TestAgentRetriesStalePlan(t *testing.T) {
	be := &backend.Fake{}
	ta := startAgent(t, be)
	be.FailApply = &backend.StaleError{Err: errors.New("ipset add: element already exists")}
	if r := ta.call(t, wire.Request{Op: Ifup, Tap: "tap104i0"}); !r.OK {
		t.Fatalf("ifup after a stale plan: %+v", r)
	}
	be.FailApply = errors.New("kernel refused")
	if r := ta.call(t, wire.Request{Op: Ifup, Tap: "tap105i0"}); r.OK || r.Config || !strings.Contains(r.Error, "kernel refused") {
		t.Errorf("ifup on a failing backend: %+v, want the failure", r)
	}
}

// TestAgentAppliesGroupEditsByHint: editing only a group's rules reaches
// the backend as a hint naming that group, so a backend can rewrite only
// its objects; the edit is enforced.
func TestAgentAppliesGroupEditsByHint(t *testing.T) {
	be := &backend.Fake{}
	ta := startAgent(t, be)
	ta.ifup(t, "tap101i0")
	configtest.Write(t, ta.config, map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"443\"\n\n[[in]]\nproto = \"tcp\"\ndport = \"80\"\n"})
	waitFor(t, "the edit applied", func() bool { return strings.Contains(be.Dump(), "group web in=2") })
	be.Hints = be.Hints[:0:0]
	hints := func() []*backend.Hint {
		var out []*backend.Hint
		for _, h := range be.Hints {
			if h != nil && len(h.Groups) > 0 {
				out = append(out, h)
			}
		}
		return out
	}
	configtest.Write(t, ta.config, map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"22\"\n"})
	waitFor(t, "the second edit applied", func() bool { return strings.Contains(be.Dump(), "group web in=1") })
	if got := hints(); len(got) == 0 || !slices.Equal(got[len(got)-1].Groups, []string{"web"}) {
		t.Errorf("hints of the edit: %+v, want one naming group web", got)
	}
}

// TestAgentAppliesSetEditsAsMembers: an edit of an address set alone
// reaches the backend as a members-only hint (no group, no interface),
// and the set's new entries are what the backend holds; an edit that
// changes only a set's description changes nothing.
func TestAgentAppliesSetEditsAsMembers(t *testing.T) {
	be := &backend.Fake{}
	ta := startAgent(t, be)
	configtest.Write(t, ta.config, map[string]string{"groups/web.toml": "[[in]]\nsource_set = \"blocked\"\naction = \"drop\"\n"})
	ta.ifup(t, "tap101i0")
	waitFor(t, "the set installed", func() bool { return strings.Contains(be.Dump(), "set blocked [198.51.100.0/24] []") })
	be.Hints = be.Hints[:0:0]
	applies := be.Applies
	configtest.Write(t, ta.config, map[string]string{"sets/blocked.toml": "entries = [\"198.51.100.0/24\", \"2001:db8::/32\"]\nexcept = [\"198.51.100.128/25\"]\n"})
	waitFor(t, "the set edit applied", func() bool {
		return strings.Contains(be.Dump(), "set blocked [198.51.100.0/24 198.51.100.128/25 nomatch] [2001:db8::/32]")
	})
	if n := len(be.Hints); n == 0 || be.Hints[n-1] == nil || !be.Hints[n-1].Members || be.Hints[n-1].Groups != nil || be.Hints[n-1].Interfaces != nil {
		t.Errorf("hints of the set edit: %+v, want a members-only one", be.Hints)
	}
	if be.Applies != applies+1 {
		t.Errorf("the set edit took %d applies, want 1", be.Applies-applies)
	}
}

// TestChangedGroupsSets: changedGroups names the sets an edit added,
// removed or changed in entries or excepts, not one whose description
// alone changed, and the groups beside them.
func TestChangedGroupsSets(t *testing.T) {
	load := func(dir string) *config.Model {
		m, _ := scenario.Load(t, dir)
		return m
	}
	base := map[string]string{
		"groups/web.toml": "[[in]]\nsource_set = \"a\"\n",
		"sets/a.toml":     "entries = [\"192.0.2.0/24\"]\n",
		"sets/b.toml":     "entries = [\"198.51.100.0/24\"]\n",
		"vms/101.toml":    "[net0]\ngroups = [\"web\"]\n",
	}
	for _, c := range []struct {
		what         string
		changes      map[string]string
		groups, sets []string
	}{
		{"description only", map[string]string{"sets/a.toml": "description = \"x\"\nentries = [\"192.0.2.0/24\"]\n"}, nil, nil},
		{"an except added", map[string]string{"sets/a.toml": "entries = [\"192.0.2.0/24\"]\nexcept = [\"192.0.2.0/25\"]\n"}, nil, []string{"a"}},
		{"a set removed, one added", map[string]string{"sets/b.toml": "", "sets/c.toml": "entries = [\"203.0.113.0/24\"]\n"}, nil, []string{"b", "c"}},
		{"a group and a set", map[string]string{"groups/web.toml": "[[in]]\nsource_set = \"b\"\n", "sets/b.toml": "entries = [\"198.51.100.0/25\"]\n"}, []string{"web"}, []string{"b"}},
	} {
		dir := configtest.Dir(t, base)
		prev := load(dir)
		for rel, content := range c.changes {
			if content == "" {
				if err := os.Remove(filepath.Join(dir, rel)); err != nil {
					t.Fatal(err)
				}
				continue
			}
			configtest.Write(t, dir, map[string]string{rel: content})
		}
		e, ok := changedGroups(prev, load(dir))
		if !ok || !slices.Equal(e.groups, c.groups) || !slices.Equal(e.sets, c.sets) {
			t.Errorf("%s: %+v, %v; want groups %v, sets %v", c.what, e, ok, c.groups, c.sets)
		}
	}
}

// queuedRequests counts the requests waiting for the agent's next batch.
func queuedRequests(a *Agent) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.queue)
}

// waitFor polls cond for up to ten seconds: how long the agent takes is
// not what these tests check, only that it gets there.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestAgentRepairsForeignFlush: when the backend signals that someone
// else removed its objects (backend.Watcher: a foreign "nft flush
// ruleset"), the agent puts them back at once, not at its next drift
// check (an hour away: startAgent), and
// the goroutine forwarding the signals ends with the agent (startAgent's
// leak check).
func TestAgentRepairsForeignFlush(t *testing.T) {
	be := &backend.Fake{}
	ta := startAgentOn(t, be, testHost{links: map[string]bool{"tap101i0": true, "tap102i0": true}})
	waitFor(t, "the start's sync", func() bool { return strings.Contains(be.Dump(), "tap102i0") })
	for range 3 {
		be.Flush()
		if strings.Contains(be.Dump(), "tap101i0") {
			t.Fatal("the fake's flush left tap101i0")
		}
		waitFor(t, "the repair", func() bool {
			d := be.Dump()
			return strings.Contains(d, "tap101i0") && strings.Contains(d, "tap102i0")
		})
	}
	if ta.Metrics == nil {
		t.Fatal("no metrics")
	}
}
