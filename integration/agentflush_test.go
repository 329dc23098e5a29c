package integration

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
)

// attempt is one connection of a timed flood.
type attempt struct {
	start     time.Time
	connected bool
}

// timedFlood opens connections from ns to addr until ctx ends, recording
// when each began and whether it connected.
func timedFlood(ctx context.Context, ns *labnet.NS, addr string, workers int) func() []attempt {
	var mu sync.Mutex
	var all []attempt
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				start := time.Now()
				r, err := labnet.TCPConnect(ctx, ns, addr, 200*time.Millisecond)
				if err != nil || ctx.Err() != nil {
					continue
				}
				mu.Lock()
				all = append(all, attempt{start, r == labnet.Connected})
				mu.Unlock()
			}
		})
	}
	return func() []attempt { wg.Wait(); return all }
}

// TestAgentRepairsForeignFlush: with the agent running on the nftables
// backend, a foreign "nft flush ruleset" leaves VMs unfiltered only until
// the agent, told by nf_tables' notifications, puts vmfw's tables back.
// A flood of connections to a port no rule allows runs across the flush:
// none that starts after the tables are back connects, the agent logs the
// repair, and status is in sync. How long the window was is logged (the
// bench measures it; tests assert no time).
func TestAgentRepairsForeignFlush(t *testing.T) {
	h := newHV(t, labtest.NftablesBackend, "")
	h.write("vmfw.toml", "repair_interval = \"1h\"\n") // only the watcher can repair in time
	h.write("groups/app.toml", appGroup)
	a := h.guest(281, "02:00:00:00:08:81", "192.0.2.85", "2001:db8::85", "app")
	b := h.guest(282, "02:00:00:00:08:82", "192.0.2.86", "2001:db8::86")
	h.serve(a, "192.0.2.85", 22, 25)
	agent := startAgent(t, h)
	h.vmfw("ifup", "tap281i0")
	h.vmfw("ifup", "tap282i0")
	expectAll(t, []probe{
		{"before: 22 open", b, "192.0.2.85", 22, true},
		{"before: 25 closed", b, "192.0.2.85", 25, false},
	})
	repaired := func() bool { return h.nftTable("bridge") != "" && h.nftTable("inet") != "" }

	for round := range 3 {
		repairs := strings.Count(agent.Output(), `reason="foreign change"`)
		ctx, cancel := context.WithCancel(context.Background())
		wait := timedFlood(ctx, b, "192.0.2.85:25", 16)
		time.Sleep(200 * time.Millisecond)
		flushed := time.Now()
		h.exec("nft", "flush", "ruleset")
		var back time.Time
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if repaired() {
				back = time.Now()
				break
			}
		}
		time.Sleep(500 * time.Millisecond)
		cancel()
		attempts := wait()
		if back.IsZero() {
			t.Fatalf("round %d: vmfw's tables never came back:\n%s", round, agent.Output())
		}
		var during, after, through int
		for _, at := range attempts {
			switch {
			case at.start.After(back):
				after++
				if at.connected {
					t.Errorf("round %d: a connection to port 25 started %v after the repair and connected", round, at.start.Sub(back))
				}
			case at.start.After(flushed):
				during++
				if at.connected {
					through++
				}
			}
		}
		if after == 0 {
			t.Errorf("round %d: no probe ran after the repair", round)
		}
		if !eventually(func() bool { return strings.Count(agent.Output(), `reason="foreign change"`) > repairs }) {
			t.Errorf("round %d: the agent did not log a repair of the foreign change:\n%s", round, agent.Output())
		}
		t.Logf("round %d: tables back %v after the flush (as seen by polling nft); %d probes in the window, %d got through; %d after, none got through",
			round, back.Sub(flushed).Round(time.Millisecond), during, through, after)
	}
	if st := h.status(); st.Base != "in-sync" {
		t.Errorf("status after the repairs: %+v", st)
	}
	expectAll(t, []probe{
		{"after: 22 open", b, "192.0.2.85", 22, true},
		{"after: 25 closed", b, "192.0.2.85", 25, false},
	})
}
