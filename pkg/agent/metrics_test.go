package agent

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/engine"
)

// scrapeOf runs one /metrics request against a and returns its body. It
// fails the test when the scrape has not answered within a time no
// scrape that answers at all needs: one waiting for a lock never would.
func scrapeOf(t *testing.T, a *Agent) string {
	t.Helper()
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.scrape(rec, httptest.NewRequest("GET", "/metrics", nil))
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the scrape is waiting (for the namespace lock?)")
	}
	return rec.Body.String()
}

// metricValue returns the value of the gauge name in a scrape's body,
// which must parse as Prometheus text.
func metricValue(t *testing.T, body, name string) float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatalf("the scrape does not parse: %v\n%s", err, body)
	}
	f := fams[name]
	if f == nil || len(f.GetMetric()) != 1 {
		t.Fatalf("the scrape has no %s:\n%s", name, body)
	}
	return f.GetMetric()[0].GetGauge().GetValue()
}

// TestScrapeDoesNotWaitForTheLock: while the agent's read of the status
// waits for the namespace lock (another process holds it, or the agent's
// own batch would), a scrape answers with the status read before and its
// age, and asks for a fresh read; a read that fails keeps that status and
// says why.
func TestScrapeDoesNotWaitForTheLock(t *testing.T) {
	locked := make(chan struct{})
	var once sync.Once
	k := engine.Kernel{Lock: func(ctx context.Context) (func(), error) {
		once.Do(func() { close(locked) })
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	a := &Agent{Metrics: NewMetrics(), engine: engine.New(k, t.TempDir())}
	a.engine.Model = func() (*config.Model, error) { return &config.Model{}, nil }
	a.status.wanted = make(chan struct{}, 1)
	vm := 101
	before := &engine.Status{Base: engine.StateInSync, Taps: []engine.TapStatus{{Tap: "tap101i0", VMID: &vm, State: engine.StateInSync}}}
	a.status.set(before, nil, time.Now().Add(-90*time.Second))

	ctx, cancel := context.WithCancel(context.Background())
	var reading sync.WaitGroup
	reading.Go(func() { a.readStatus(ctx) })
	select {
	case <-locked:
	case <-time.After(10 * time.Second):
		t.Fatal("reading the status did not take the namespace lock")
	}
	body := scrapeOf(t, a)
	if age := metricValue(t, body, "vmfw_status_age_seconds"); age < 90 {
		t.Errorf("vmfw_status_age_seconds %v, want at least 90", age)
	}
	if !strings.Contains(body, `vmfw_tap_state{tap="tap101i0",vm="101",state="in-sync"} 1`) || metricValue(t, body, "vmfw_base_in_sync") != 1 {
		t.Errorf("the scrape does not serve the status read before:\n%s", body)
	}
	select {
	case <-a.status.wanted:
	default:
		t.Error("the scrape did not ask for a fresh read")
	}

	cancel()
	reading.Wait()
	body = scrapeOf(t, a)
	if !strings.Contains(body, "# the last status read failed: ") || !strings.Contains(body, `vmfw_tap_state{tap="tap101i0"`) {
		t.Errorf("after a failed read the scrape should keep the last status and say why:\n%s", body)
	}
	if age := metricValue(t, body, "vmfw_status_age_seconds"); age < 90 {
		t.Errorf("after a failed read vmfw_status_age_seconds is %v, want the age of the read before", age)
	}
}

// TestScrapeBeforeAnyRead: before the first read the scrape carries the
// agent's own metrics and says there is no status yet.
func TestScrapeBeforeAnyRead(t *testing.T) {
	a := &Agent{Metrics: NewMetrics()}
	body := scrapeOf(t, a)
	if !strings.Contains(body, "vmfw_applies_total") || !strings.Contains(body, "# status not read yet") || strings.Contains(body, "vmfw_status_age_seconds") {
		t.Errorf("scrape before any read:\n%s", body)
	}
}

// TestWriteStatusSets: the address sets of a status are metrics, their
// kernel members per family only where the kernel has the set, and the
// result parses as Prometheus text.
func TestWriteStatusSets(t *testing.T) {
	st := &engine.Status{Base: engine.StateInSync, Sets: []engine.SetStatus{
		{Name: "blocked", Entries: 3, Except: 1, State: engine.StateInSync, Kernel: map[string]int{"ipv4": 3, "ipv6": 1}},
		{Name: "unused", Entries: 1, State: engine.StateUnused},
	}}
	var b strings.Builder
	if err := WriteStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	for _, want := range []string{`vmfw_set_entries{set="blocked",kind="except"} 1`, `vmfw_set_kernel_members{set="blocked",family="ipv6"} 1`, `vmfw_set_in_sync{set="blocked"} 1`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("no %s in\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), `vmfw_set_kernel_members{set="unused"`) || strings.Contains(b.String(), `vmfw_set_in_sync{set="unused"`) {
		t.Errorf("an unused set has kernel metrics:\n%s", b.String())
	}
	if families["vmfw_set_kernel_members"] == nil {
		t.Error("vmfw_set_kernel_members did not parse")
	}
}
