package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmfw/vmfw/pkg/engine"
)

// Metrics counts what the agent does, for Prometheus (text exposition
// format, written here: a handful of counters and two histograms do not
// need a client library). A nil *Metrics counts nothing.
type Metrics struct {
	mu              sync.Mutex
	appliesOK       uint64
	appliesFailed   uint64
	applyDuration   histogram
	lastSuccess     time.Time
	batchSize       histogram
	driftRepairs    uint64
	configErrors    uint64
	requestsBatched uint64
}

// NewMetrics returns empty metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		applyDuration: histogram{bounds: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}},
		batchSize:     histogram{bounds: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000}},
	}
}

// histogram is a Prometheus histogram: cumulative counts per upper bound.
type histogram struct {
	bounds []float64
	counts []uint64 // per bound, not cumulative; the last is +Inf
	sum    float64
	n      uint64
}

func (h *histogram) observe(v float64) {
	if h.counts == nil {
		h.counts = make([]uint64, len(h.bounds)+1)
	}
	i := sort.SearchFloat64s(h.bounds, v)
	h.counts[i]++
	h.sum += v
	h.n++
}

func (h *histogram) write(w io.Writer, name, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name)
	var cum uint64
	for i, b := range h.bounds {
		if h.counts != nil {
			cum += h.counts[i]
		}
		fmt.Fprintf(w, "%s_bucket{le=\"%g\"} %d\n", name, b, cum)
	}
	fmt.Fprintf(w, "%s_bucket{le=\"+Inf\"} %d\n%s_sum %g\n%s_count %d\n", name, h.n, name, h.sum, name, h.n)
}

// update runs f with m locked; on a nil m it does nothing.
func (m *Metrics) update(f func()) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	f()
}

func (m *Metrics) applied(took time.Duration, err error) {
	m.update(func() {
		m.applyDuration.observe(took.Seconds())
		if err != nil {
			m.appliesFailed++
			return
		}
		m.appliesOK++
		m.lastSuccess = time.Now()
	})
}

func (m *Metrics) batch(size int, took time.Duration, err error) {
	m.applied(took, err)
	m.update(func() {
		m.batchSize.observe(float64(size))
		m.requestsBatched += uint64(size)
	})
}

func (m *Metrics) driftRepaired() { m.update(func() { m.driftRepairs++ }) }

func (m *Metrics) configError() { m.update(func() { m.configErrors++ }) }

// WriteTo writes the agent's own metrics.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "# HELP vmfw_applies_total Transactions the agent applied (configuration changes, drift repairs, interface batches).\n# TYPE vmfw_applies_total counter\n")
	fmt.Fprintf(&b, "vmfw_applies_total{result=\"ok\"} %d\nvmfw_applies_total{result=\"error\"} %d\n", m.appliesOK, m.appliesFailed)
	m.applyDuration.write(&b, "vmfw_apply_duration_seconds", "Time to apply one transaction, from reading the kernel to the last write.")
	fmt.Fprintf(&b, "# HELP vmfw_last_apply_success_timestamp_seconds When the last transaction succeeded (0: none yet).\n# TYPE vmfw_last_apply_success_timestamp_seconds gauge\n")
	last := 0.0
	if !m.lastSuccess.IsZero() {
		last = float64(m.lastSuccess.UnixNano()) / 1e9
	}
	fmt.Fprintf(&b, "vmfw_last_apply_success_timestamp_seconds %.3f\n", last)
	m.batchSize.write(&b, "vmfw_batch_size", "Interface requests applied in one transaction (group commit).")
	fmt.Fprintf(&b, "# HELP vmfw_requests_total Interface requests (ifup, ifdown) the agent applied.\n# TYPE vmfw_requests_total counter\nvmfw_requests_total %d\n", m.requestsBatched)
	fmt.Fprintf(&b, "# HELP vmfw_drift_repairs_total Drift checks that found and repaired a difference.\n# TYPE vmfw_drift_repairs_total counter\nvmfw_drift_repairs_total %d\n", m.driftRepairs)
	fmt.Fprintf(&b, "# HELP vmfw_config_errors_total Configuration loads refused as invalid.\n# TYPE vmfw_config_errors_total counter\nvmfw_config_errors_total %d\n", m.configErrors)
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// WriteStatus writes what vmfw status reports as Prometheus metrics: the
// state of the base chains and of every tap, and the packets each tap's own
// rules dropped per direction. vmfw status -o prometheus prints this for
// node_exporter's textfile collector; the agent serves it with its own.
func WriteStatus(w io.Writer, st *engine.Status) error {
	var b strings.Builder
	states := []string{engine.StateInSync, engine.StateDrifted, engine.StateNotInstalled, engine.StateUnconfigured}
	fmt.Fprintf(&b, "# HELP vmfw_base_in_sync Whether vmfw's base chains and hooks are as configured (1) or drifted (0).\n# TYPE vmfw_base_in_sync gauge\n")
	inSync := 0
	if st.Base == engine.StateInSync {
		inSync = 1
	}
	fmt.Fprintf(&b, "vmfw_base_in_sync %d\n", inSync)
	fmt.Fprintf(&b, "# HELP vmfw_tap_state The state of each managed tap: 1 for its current state, 0 for the others.\n# TYPE vmfw_tap_state gauge\n")
	for _, t := range st.Taps {
		for _, s := range states {
			v := 0
			if t.State == s {
				v = 1
			}
			fmt.Fprintf(&b, "vmfw_tap_state{tap=%q,vm=%q,state=%q} %d\n", t.Tap, vmLabel(t), s, v)
		}
	}
	fmt.Fprintf(&b, "# HELP vmfw_tap_dropped_packets_total Packets dropped or rejected by a tap's own rules (anti-spoofing and policy), both families.\n# TYPE vmfw_tap_dropped_packets_total counter\n")
	for _, t := range st.Taps {
		fmt.Fprintf(&b, "vmfw_tap_dropped_packets_total{tap=%q,vm=%q,direction=\"in\"} %d\n", t.Tap, vmLabel(t), t.DroppedIn)
		fmt.Fprintf(&b, "vmfw_tap_dropped_packets_total{tap=%q,vm=%q,direction=\"out\"} %d\n", t.Tap, vmLabel(t), t.DroppedOut)
	}
	fmt.Fprintf(&b, "# HELP vmfw_tap_dropped_bytes_total Bytes of the packets vmfw_tap_dropped_packets_total counts.\n# TYPE vmfw_tap_dropped_bytes_total counter\n")
	for _, t := range st.Taps {
		fmt.Fprintf(&b, "vmfw_tap_dropped_bytes_total{tap=%q,vm=%q,direction=\"in\"} %d\n", t.Tap, vmLabel(t), t.DroppedInBytes)
		fmt.Fprintf(&b, "vmfw_tap_dropped_bytes_total{tap=%q,vm=%q,direction=\"out\"} %d\n", t.Tap, vmLabel(t), t.DroppedOutBytes)
	}
	if len(st.Sets) > 0 {
		fmt.Fprintf(&b, "# HELP vmfw_set_entries The entries and excepts of each address set's configuration.\n# TYPE vmfw_set_entries gauge\n")
		for _, s := range st.Sets {
			fmt.Fprintf(&b, "vmfw_set_entries{set=%q,kind=\"entry\"} %d\n", s.Name, s.Entries)
			fmt.Fprintf(&b, "vmfw_set_entries{set=%q,kind=\"except\"} %d\n", s.Name, s.Except)
		}
		fmt.Fprintf(&b, "# HELP vmfw_set_kernel_members The members of each address set's kernel sets, per family (absent while no rule uses the set).\n# TYPE vmfw_set_kernel_members gauge\n")
		for _, s := range st.Sets {
			for _, fam := range []string{"ipv4", "ipv6"} {
				if n, ok := s.Kernel[fam]; ok {
					fmt.Fprintf(&b, "vmfw_set_kernel_members{set=%q,family=%q} %d\n", s.Name, fam, n)
				}
			}
		}
		fmt.Fprintf(&b, "# HELP vmfw_set_in_sync Whether each address set in use is as configured (1) or drifted (0).\n# TYPE vmfw_set_in_sync gauge\n")
		for _, s := range st.Sets {
			if s.State != engine.StateUnused {
				fmt.Fprintf(&b, "vmfw_set_in_sync{set=%q} %d\n", s.Name, map[bool]int{true: 1}[s.State == engine.StateInSync])
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func vmLabel(t engine.TapStatus) string {
	if t.VMID == nil {
		return ""
	}
	return fmt.Sprint(*t.VMID)
}

// statusView is the kernel's part of /metrics: the status the agent last
// read, which a scrape serves with its age instead of reading the kernel.
// A read takes the namespace lock and, at thousands of taps, seconds
// (docs/performance.md): a scrape that read itself waited behind every
// batch, and made the next wait behind it. A scrape asks for a fresh read
// instead, which the main loop makes once no work is queued.
type statusView struct {
	mu   sync.Mutex
	st   *engine.Status // nil before the first read that succeeded
	read time.Time      // when the read of st began
	err  error          // why the last read failed; nil when it did not

	// wanted holds a scrape's request for a fresh read; nil without
	// metrics_listen.
	wanted chan struct{}
}

// set records a read that began at start: its status, or why it failed,
// in which case the status read before stays.
func (v *statusView) set(st *engine.Status, err error, start time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.err = err
	if err == nil {
		v.st, v.read = st, start
	}
}

// write writes the last status read and its age at now, and why the last
// read failed when it did.
func (v *statusView) write(w io.Writer, now time.Time) {
	v.mu.Lock()
	st, read, err := v.st, v.read, v.err
	v.mu.Unlock()
	if err != nil {
		fmt.Fprintf(w, "# the last status read failed: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	}
	if st == nil {
		fmt.Fprintf(w, "# status not read yet\n")
		return
	}
	fmt.Fprintf(w, "# HELP vmfw_status_age_seconds How long ago the agent read the status below from the kernel (it reads again once idle after a scrape).\n# TYPE vmfw_status_age_seconds gauge\nvmfw_status_age_seconds %.3f\n", now.Sub(read).Seconds())
	WriteStatus(w, st)
}

// request asks the main loop for a fresh read, without waiting.
func (v *statusView) request() {
	select {
	case v.wanted <- struct{}{}:
	default: // one is pending already
	}
}

// readStatus reads the status /metrics serves, from the main loop.
func (a *Agent) readStatus(ctx context.Context) {
	a.statusOwed = false
	start := time.Now()
	st, err := a.engine.Status(ctx, "")
	a.status.set(st, err, start)
}

// scrape answers a /metrics request without touching the kernel or the
// engine: the agent's metrics, then the status it last read, with its
// age. It asks for a fresh read for the next scrape.
func (a *Agent) scrape(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	a.Metrics.WriteTo(w)
	a.status.write(w, time.Now())
	a.status.request()
}

// serveMetrics serves /metrics on addr (scrape) until ctx is done, in
// goroutines of bg.
func (a *Agent) serveMetrics(ctx context.Context, bg *sync.WaitGroup, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics_listen %s: %w", addr, err)
	}
	a.status.wanted = make(chan struct{}, 1)
	a.statusOwed = true // the first scrape finds a status
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", a.scrape)
	// conns counts the server's connections from the moment Serve takes
	// one (StateNew, in Serve's goroutine) until its goroutine closes it,
	// so that waiting for them once Serve has returned waits for them
	// all: Close alone does not.
	var conns sync.WaitGroup
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				conns.Done()
			}
		}}
	bg.Go(func() {
		<-ctx.Done()
		srv.Close()
	})
	bg.Go(func() {
		srv.Serve(ln)
		conns.Wait()
	})
	return nil
}
