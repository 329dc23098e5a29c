package cni

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmfw/vmfw/integration/labnet"
)

// agentLog is a running agent's standard error, safe to read while it
// writes.
type agentLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *agentLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *agentLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startAgent runs "vmfw agent" in h's namespace with h's directories and
// its own run directory, points h's CNI client at it, and waits until it
// is ready. stop sends SIGTERM and waits for it to exit.
func (h *host) startAgent(backend string) (log *agentLog, stop func()) {
	h.t.Helper()
	runDir := h.t.TempDir()
	log = &agentLog{}
	cmd := exec.Command("ip", "netns", "exec", h.ns.Name, filepath.Join(pluginDir, "vmfw"),
		"--iptables", backend, "--config-dir", h.config, "--state-dir", h.state, "agent")
	cmd.Env = append(os.Environ(), "VMFW_RUN_DIR="+runDir)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		h.t.Fatalf("starting the agent: %v", err)
	}
	stop = func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}
	}
	h.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(log.String(), "agent ready"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			h.t.Fatalf("the agent did not get ready:\n%s", log)
		}
	}
	h.client = libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, h.cache, &envExec{env: []string{"VMFW_RUN_DIR=" + runDir}})
	return log, stop
}

// TestCNIThroughAgent: with an agent running, ADD, CHECK, GC and DEL are
// handed to it (its log names each) and firewall as the plugin does on
// its own, proven with real packets; a refused ADD keeps its CNI error
// code and message; with the agent stopped the plugin does the work
// itself.
func TestCNIThroughAgent(t *testing.T) {
	t.Parallel()
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			h := newHost(t)
			// The agent's timer must not repair what the test checks.
			if err := os.WriteFile(filepath.Join(h.config, "vmfw.toml"), []byte("repair_interval = \"1h\"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			log, stop := h.startAgent(backend)
			handled := func(what string, n int) {
				t.Helper()
				deadline := time.Now().Add(5 * time.Second)
				for strings.Count(log.String(), what) < n {
					if time.Now().After(deadline) {
						t.Errorf("the agent's log shows %q %d times, want %d:\n%s", what, strings.Count(log.String(), what), n, log)
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			list := h.conflist("1.1.0", backend, nil)
			web := h.newContainer("web", nil)
			h.add(list, web)
			db := h.newContainer("db", map[string]any{"vmfw": map[string]any{"groups": []string{"db"}}})
			h.add(list, db)
			handled("CNI_COMMAND=ADD", 2)
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
			if got := h.records(); !slices.Equal(got, []string{web.veth}) {
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
			stop()
			again := h.newContainer("again", nil)
			h.add(list, again)
			probe := h.newContainer("probe", nil)
			h.add(list, probe)
			h.serve(again, 80, 22)
			h.expect(probe, again, 80, labnet.Connected)
			h.expect(probe, again, 22, labnet.Timeout)
			if n := strings.Count(log.String(), "CNI_COMMAND=ADD"); n != 3 {
				t.Errorf("the agent saw %d ADDs, want 3 (web, db, bad)", n)
			}
		})
	}
}
