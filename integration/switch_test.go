package integration

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
)

// flood opens connections from ns to addr until stop is called, counting
// those that connected; its probes overlap whatever the test does
// meanwhile (a switch of backends, a foreign flush).
type flood struct {
	connected, tried atomic.Int64
	cancel           context.CancelFunc
	wg               sync.WaitGroup
}

func startFlood(t *testing.T, ns *labnet.NS, addr string, workers int) *flood {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &flood{cancel: cancel}
	for range workers {
		f.wg.Go(func() {
			for ctx.Err() == nil {
				r, err := labnet.TCPConnect(ctx, ns, addr, 200*time.Millisecond)
				if err != nil || ctx.Err() != nil {
					continue
				}
				f.tried.Add(1)
				if r == labnet.Connected {
					f.connected.Add(1)
				}
			}
		})
	}
	return f
}

func (f *flood) stop() { f.cancel(); f.wg.Wait() }

// TestSwitchBackends: apply switches a running host from the iptables
// backend to the nftables backend and back, under traffic: a flood of
// connections to a port no rule allows never connects while it does, an
// established allowed connection survives both switches, and each switch
// leaves only the new backend's ruleset. While one backend's ruleset is
// installed, ifup, ifdown and the hooks on the other refuse with exit status 2,
// naming both; flush on either removes whichever is installed.
func TestSwitchBackends(t *testing.T) {
	labtest.EachBackend(t, iptablesFlavours, func(t *testing.T, flavour string) {
		h := newHV(t, flavour, "")
		h.write("groups/app.toml", appGroup)
		a := h.guest(261, "02:00:00:00:08:61", "192.0.2.81", "2001:db8::81", "app")
		b := h.guest(262, "02:00:00:00:08:62", "192.0.2.82", "2001:db8::82")
		h.serve(a, "192.0.2.81", 22, 25)
		h.vmfw("ifup", "tap261i0")
		h.vmfw("ifup", "tap262i0")
		expectAll(t, []probe{
			{"iptables: 22 open", b, "192.0.2.81", 22, true},
			{"iptables: 25 closed", b, "192.0.2.81", 25, false},
		})
		stream, err := labnet.StartStream(b, "192.0.2.81:22")
		if err != nil {
			t.Fatal(err)
		}

		switchTo := func(name string, args ...string) {
			t.Helper()
			refused := startFlood(t, b, "192.0.2.81:25", 4)
			allowed := startFlood(t, b, "192.0.2.81:22", 2)
			time.Sleep(300 * time.Millisecond)
			h.vmfw(append(args, "apply")...)
			time.Sleep(300 * time.Millisecond)
			refused.stop()
			allowed.stop()
			if n := refused.connected.Load(); n != 0 {
				t.Errorf("switching to %s: %d of %d connections to port 25 got through", name, n, refused.tried.Load())
			}
			if refused.tried.Load() == 0 || allowed.connected.Load() == 0 {
				t.Errorf("switching to %s: the flood did not run (%d refused tried, %d allowed connected)", name, refused.tried.Load(), allowed.connected.Load())
			}
			if st := stream.Stats(); st.Err != nil {
				t.Errorf("switching to %s: the established connection broke: %v", name, st.Err)
			}
			if out := h.vmfw(append(args, "status")...); !strings.Contains(out, "backend: "+name) {
				t.Errorf("switching to %s: status names another backend:\n%s", name, out)
			}
		}
		nftInstalled := func() bool {
			_, err := h.ns.Exec(context.Background(), "nft", "list", "table", "inet", "vmfw")
			return err == nil
		}
		iptInstalled := func() bool {
			_, err := h.ns.Exec(context.Background(), h.tool("iptables"), "-w", "-S", "vmfw-FORWARD")
			return err == nil
		}
		refuse := func(installed, using string, args ...string) {
			t.Helper()
			_, errOut, code := h.run(args...)
			want := "the " + installed + " backend's ruleset is installed here but this command uses the " + using + " backend"
			if code != 2 || !strings.Contains(errOut, want) {
				t.Errorf("vmfw %s: exit %d, want 2 with %q:\n%s", strings.Join(args, " "), code, want, errOut)
			}
		}

		switchTo("nftables", "--backend", "nftables")
		if !nftInstalled() || iptInstalled() {
			t.Errorf("after the switch to nftables: nftables installed %v, iptables installed %v", nftInstalled(), iptInstalled())
		}
		expectAll(t, []probe{
			{"nftables: 22 open", b, "192.0.2.81", 22, true},
			{"nftables: 25 closed", b, "192.0.2.81", 25, false},
		})
		refuse("nftables", "iptables", "ifup", "tap262i0")
		refuse("nftables", "iptables", "ifdown", "tap261i0")
		refuse("nftables", "iptables", "hook", "proxmox", "261", "post-start")

		switchTo("iptables")
		if nftInstalled() || !iptInstalled() {
			t.Errorf("after the switch back: nftables installed %v, iptables installed %v", nftInstalled(), iptInstalled())
		}
		refuse("iptables", "nftables", "--backend", "nftables", "ifup", "tap262i0")
		if st := stream.Stop(); st.Err != nil || st.Echoed == 0 {
			t.Errorf("the established connection: %+v", st)
		}

		h.vmfw("--backend", "nftables", "flush")
		if nftInstalled() || iptInstalled() {
			t.Errorf("after flush: nftables installed %v, iptables installed %v", nftInstalled(), iptInstalled())
		}
	})
}
