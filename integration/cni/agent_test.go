package cni

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
	"github.com/vmfw/vmfw/integration/testbin"
)

// startAgent runs "vmfw agent" in h's namespace with h's directories and
// its own run directory, points h's CNI client at it, and waits until it
// is ready.
func (h *host) startAgent(backend string) *labnet.Process {
	h.t.Helper()
	runDir := h.t.TempDir()
	argv := append(append([]string{filepath.Join(testbin.Dir, "vmfw")}, labtest.BackendArgs(backend)...), "--config-dir", h.config, "--state-dir", h.state, "agent")
	p := labtest.StartAgent(h.t, h.ns, []string{"VMFW_RUN_DIR=" + runDir}, argv...)
	h.client = libcni.NewCNIConfigWithCacheDir([]string{testbin.Dir}, h.cache, &envExec{env: []string{"VMFW_RUN_DIR=" + runDir}})
	return p
}

// TestCNIThroughAgent: with an agent running, ADD, CHECK, GC and DEL are
// handed to it (its log names each) and firewall as the plugin does on
// its own, proven with real packets; a refused ADD keeps its CNI error
// code and message; with the agent stopped the plugin does the work
// itself.
func TestCNIThroughAgent(t *testing.T) {
	t.Parallel()
	labtest.EachBackend(t, labtest.Backends, func(t *testing.T, backend string) {
		h := newHost(t)
		// The agent's timer must not repair what the test checks.
		if err := os.WriteFile(filepath.Join(h.config, "vmfw.toml"), []byte("repair_interval = \"1h\"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		list := h.conflist("1.1.0", backend, nil)
		// Before the agent, which applies when it starts, an
		// IPv4-only container comes and goes as the first thing vmfw
		// does here: group web's http reaches it, ssh does not.
		if err := h.free(backend); err != nil {
			t.Fatalf("before the first ADD: %v", err)
		}
		first := h.newContainer("first", nil)
		h.add(list, first)
		h.applied(backend, "the first ADD")
		h.serve(first, 80, 22)
		for port, want := range map[int]labnet.Result{80: labnet.Connected, 22: labnet.Timeout} {
			if got, err := labnet.TCPConnect(context.Background(), h.ns, labnet.HostPort(first.ip, port), probeTimeout); err != nil || got != want {
				t.Errorf("the host to the first container's port %d: %v %v, want %v", port, got, err, want)
			}
		}
		if err := h.del(list, first); err != nil {
			t.Fatalf("DEL of the first container: %v", err)
		}

		agent := h.startAgent(backend)
		handled := func(what string, n int) {
			t.Helper()
			if !agent.WaitOutput(what, n, 5*time.Second) {
				t.Errorf("the agent's log shows %q %d times, want %d:\n%s", what, strings.Count(agent.Output(), what), n, agent.Output())
			}
		}
		web := h.newContainer("web", nil)
		h.add(list, web)
		db := h.newContainer("db", map[string]any{"vmfw": map[string]any{"groups": []string{"db"}}})
		h.add(list, db)
		handled("CNI_COMMAND=ADD", 2)
		// Each record names the host interface the ADD firewalled.
		handled("interfaces=[veth", 2)
		h.serve(web, 80, 22)
		h.serve(db, 5432)
		h.expect(db, web, 80, labnet.Connected)
		h.expect(db, web, 22, labnet.Timeout)
		h.expect(web, db, 5432, labnet.Connected) // web is a member of web
		if err := h.check(list, web); err != nil {
			t.Errorf("CHECK web: %v", err)
		}
		handled("CNI_COMMAND=CHECK", 1)

		// A group that does not exist: code 7 naming it, as without
		// the agent, and nothing installed for the attachment.
		bad := h.newContainer("bad", map[string]any{"vmfw": map[string]any{"groups": []string{"nosuch"}}})
		err := h.in(func(ctx context.Context) error {
			_, err := h.client.AddNetworkList(ctx, list, bad.rt)
			return err
		})
		if cniCode(err) != 7 || !strings.Contains(err.Error(), "nosuch") {
			t.Errorf("ADD with an unknown group through the agent: %v (code %d), want code 7 naming nosuch", err, cniCode(err))
		}
		handled("request failed", 1)

		// GC keeps web only: libcni DELs db (cached, not valid) and
		// vmfw's GC finds nothing else; db's record and chains go.
		valid := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: web.id, IfName: "eth0"}}}
		if err := h.in(func(ctx context.Context) error { return h.client.GCNetworkList(ctx, list, valid) }); err != nil {
			t.Fatalf("GC: %v", err)
		}
		handled("CNI_COMMAND=GC", 1)
		handled("CNI_COMMAND=DEL", 1)
		if got := labtest.Records(h.t, h.state); !slices.Equal(got, []string{web.veth}) {
			t.Errorf("records after GC: %v, want [%s]", got, web.veth)
		}
		if save := h.save(backend); strings.Contains(save, db.veth) {
			t.Errorf("GC through the agent left chains of %s", db.veth)
		}
		if err := h.del(list, web); err != nil {
			t.Fatalf("DEL web: %v", err)
		}
		handled("CNI_COMMAND=DEL", 2)
		if save := h.save(backend); strings.Contains(save, web.veth) {
			t.Errorf("DEL through the agent left chains of %s", web.veth)
		}

		// Without the agent the plugin does it itself.
		if err := agent.Stop(); err != nil {
			t.Error(err)
		}
		again := h.newContainer("again", nil)
		h.add(list, again)
		probe := h.newContainer("probe", nil)
		h.add(list, probe)
		h.serve(again, 80, 22)
		h.expect(probe, again, 80, labnet.Connected)
		h.expect(probe, again, 22, labnet.Timeout)
		if n := strings.Count(agent.Output(), "CNI_COMMAND=ADD"); n != 3 {
			t.Errorf("the agent saw %d ADDs, want 3 (web, db, bad)", n)
		}
	})
}
