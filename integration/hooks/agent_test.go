package hooks

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
	"github.com/vmfw/vmfw/integration/testbin"
)

// startAgent runs "vmfw agent" in h's hypervisor namespace with its own
// run directory, which every later exec of h is given, and waits until it
// is ready.
func (h *host) startAgent() *labnet.Process {
	h.t.Helper()
	h.env = []string{"VMFW_RUN_DIR=" + h.t.TempDir()}
	return labtest.StartAgent(h.t, h.lab.Hypervisor(), append(slices.Clone(h.env), labtest.BackendEnv(h.backend)), testbin.VMFW,
		"--config-dir", h.config, "--state-dir", h.state, "agent")
}

// TestHooksThroughAgent: with an agent running, the Proxmox hookscript and
// libvirt's qemu hook hand their calls to it (its log names each one) and
// the result is what they do on their own, proven with real packets; a
// refused call keeps its exit status and message; with the agent stopped
// the hooks do the work themselves.
func TestHooksThroughAgent(t *testing.T) {
	t.Parallel()
	labtest.EachBackend(t, labtest.Backends, func(t *testing.T, backend string) {
		files := map[string]string{
			// The agent's own apply must not install what the hooks are
			// tested for: its timer is far away, and the taps appear
			// after it started.
			"vmfw.toml": "repair_interval = \"1h\"\n",
		}
		for k, v := range proxmoxConfig {
			files[k] = v
		}
		for k, v := range libvirtConfig {
			files[k] = v
		}
		files["vms/140.toml"] = "policy_in = \"reject\"\n\n[net0]\nmac = \"02:00:00:00:14:00\"\nips = [\"192.0.2.140\"]\n"
		h := newHost(t, backend, files)
		hookscript := script(t, "proxmox/vmfw-hook.sh")
		qemu := script(t, "libvirt/qemu")

		// Before the agent, which applies when it starts, an
		// IPv4-only VM comes and goes as the first thing vmfw does
		// here: its tap forwards and filters (the hypervisor's
		// connection is rejected, its ping answered).
		if err := h.free(); err != nil {
			t.Fatalf("before the first hook: %v", err)
		}
		first := h.vm("tap140i0", "02:00:00:00:14:00", "192.0.2.140/24")
		h.serve(first, ":22")
		h.hook(hookscript, nil, "140", "post-start")
		h.applied("the first VM's post-start")
		// On the nftables backend what the hypervisor sends is
		// decided at bridge postrouting, where a reject is a drop.
		hvWant := labnet.Refused
		if backend == labtest.NftablesBackend {
			hvWant = labnet.Timeout
		}
		h.expect(h.lab.Hypervisor(), "192.0.2.140:22", hvWant)
		if r, err := labnet.Ping(context.Background(), first, "192.0.2.1", 5*time.Second); err != nil || r != labnet.Connected {
			t.Errorf("the first VM pings the hypervisor: %v %v", r, err)
		}
		h.hook(hookscript, nil, "140", "post-stop")
		if err := h.lab.Remove(first); err != nil {
			t.Fatal(err)
		}

		agent := h.startAgent()
		vm0 := h.vm("tap110i0", "02:00:00:00:11:00", "192.0.2.110/24")
		web := h.vm("vnet0", "52:54:00:6b:3c:01", "192.0.2.200/24")
		client := h.external("uplink0", "192.0.2.250/24")
		h.serve(vm0, ":80", ":22")
		h.serve(web, ":80", ":22")
		// tap110i0 is closed by the agent's base chains until its
		// hook runs (fail-closed); vnet0 is not a managed name.
		h.expect(client, "192.0.2.110:80", labnet.Timeout)
		h.expect(client, "192.0.2.200:22", labnet.Connected)

		handled := func(what string) {
			t.Helper()
			if !agent.WaitOutput(what, 1, 5*time.Second) {
				t.Errorf("the agent's log does not show %q:\n%s", what, agent.Output())
			}
		}

		h.hook(hookscript, nil, "110", "post-start")
		handled("args=\"[proxmox 110 post-start]\"")
		h.expect(client, "192.0.2.110:80", labnet.Connected)
		h.expect(client, "192.0.2.110:22", labnet.Timeout)

		h.hook(qemu, strings.NewReader(webXML), hookArgs("web", "started", "begin")...)
		handled("args=\"[libvirt web started begin -]\"")
		h.expect(client, "192.0.2.200:80", labnet.Connected)
		h.expect(client, "192.0.2.200:22", labnet.Timeout)
		// webXML's interface 2 (vnet1) maps to [net2] by position.
		if recs := labtest.Records(h.t, h.state); !slices.Equal(recs, []string{"vnet0", "vnet1"}) {
			t.Errorf("records after started: %v, want [vnet0 vnet1]", recs)
		}

		// Refused by the configuration: exit 2 and the file named,
		// from the agent as from the hook alone; nothing changes.
		h.vm("tap130i0", "", "192.0.2.130/24")
		before := h.save()
		_, stderr, code := h.run(nil, "hook", "proxmox", "130", "post-start")
		if code != 2 || !strings.Contains(stderr, "vms/130.toml") {
			t.Errorf("post-start of an unconfigured VM through the agent: exit %d, stderr %q; want 2 naming vms/130.toml", code, stderr)
		}
		handled("request failed")
		if after := h.save(); after != before {
			t.Errorf("a refused hook changed the firewall")
		}

		h.hook(hookscript, nil, "110", "post-stop")
		handled("args=\"[proxmox 110 post-stop]\"")
		h.expect(client, "192.0.2.110:80", labnet.Timeout) // tap without chains: fail-closed
		h.hook(qemu, strings.NewReader(webXML), hookArgs("web", "stopped", "end")...)
		handled("args=\"[libvirt web stopped end -]\"")
		h.expect(client, "192.0.2.200:22", labnet.Connected) // vnet names are not fail-closed
		if recs := labtest.Records(h.t, h.state); len(recs) != 0 {
			t.Errorf("records after stopped: %v", recs)
		}

		// Without the agent the hooks do it themselves.
		if err := agent.Stop(); err != nil {
			t.Error(err)
		}
		h.hook(hookscript, nil, "110", "post-start")
		h.expect(client, "192.0.2.110:80", labnet.Connected)
		h.expect(client, "192.0.2.110:22", labnet.Timeout)
		if n := strings.Count(agent.Output(), "request applied"); n != 4 {
			t.Errorf("the agent applied %d requests, want 4 (two per hook):\n%s", n, agent.Output())
		}
	})
}
