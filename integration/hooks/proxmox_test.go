package hooks

import (
	"strings"
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
)

// proxmoxConfig has VM 110 with two interfaces: net0 serves http to
// everyone, net1 is in no group and so takes nothing in.
var proxmoxConfig = map[string]string{
	"groups/web.toml": labtest.WebGroup,
	"vms/110.toml": `
name = "web110"

[net0]
mac = "02:00:00:00:11:00"
ips = ["192.0.2.110"]
groups = ["web"]

[net1]
mac = "02:00:00:00:11:01"
ips = ["192.0.2.111"]
`,
}

// TestProxmoxHookscript runs the hookscript phases the way Proxmox VE calls
// them ("SCRIPT VMID PHASE") after Proxmox has put the taps on the bridge.
func TestProxmoxHookscript(t *testing.T) {
	t.Parallel()
	labtest.EachBackend(t, []string{"legacy", labtest.NftablesBackend}, proxmoxHookscript)
}

func proxmoxHookscript(t *testing.T, backend string) {
	h := newHost(t, backend, proxmoxConfig)
	hookscript := script(t, "proxmox/vmfw-hook.sh")
	vm0 := h.vm("tap110i0", "02:00:00:00:11:00", "192.0.2.110/24")
	vm1 := h.vm("tap110i1", "02:00:00:00:11:01", "192.0.2.111/24")
	client := h.external("uplink0", "192.0.2.200/24")
	h.serve(vm0, ":80", ":22")
	h.serve(vm1, ":80")

	// Without vmfw the bridge forwards everything.
	h.expect(client, "192.0.2.110:22", labnet.Connected)

	before := h.save()
	for _, phase := range []string{"pre-start", "pre-stop", "migrate"} {
		h.hook(hookscript, nil, "110", phase)
	}
	if after := h.save(); after != before {
		t.Errorf("phases other than post-start/post-stop changed the firewall:\n%s", after)
	}

	h.hook(hookscript, nil, "110", "post-start")
	save := h.save()
	for _, tap := range []string{"tap110i0", "tap110i1"} {
		if len(chains(save, tap)) == 0 {
			t.Errorf("post-start installed no chains for %s:\n%s", tap, save)
		}
	}
	h.expect(client, "192.0.2.110:80", labnet.Connected)
	h.expect(client, "192.0.2.110:22", labnet.Timeout)
	h.expect(client, "192.0.2.111:80", labnet.Timeout)

	// post-start again changes nothing and keeps the VM reachable.
	h.hook(hookscript, nil, "110", "post-start")
	if again := h.save(); again != save {
		t.Errorf("a second post-start changed the firewall")
	}

	h.hook(hookscript, nil, "110", "post-stop")
	save = h.save()
	if strings.Contains(save, "tap110i") {
		t.Errorf("post-stop left chains of VM 110:\n%s", save)
	}
	// The taps still exist here (Proxmox would have deleted them); without
	// chains they are fail-closed, which shows the chains left the kernel.
	h.expect(client, "192.0.2.110:80", labnet.Timeout)
	h.hook(hookscript, nil, "110", "post-stop")
}

// TestProxmoxHookscriptErrors: a tap of a VM without a file is refused
// naming the file, and bad arguments are usage errors; neither changes
// anything.
func TestProxmoxHookscriptErrors(t *testing.T) {
	t.Parallel()
	h := newHost(t, "nft", proxmoxConfig)
	h.vm("tap130i0", "", "192.0.2.130/24")
	before := h.save()
	_, stderr, code := h.run(nil, "hook", "proxmox", "130", "post-start")
	if code != 2 || !strings.Contains(stderr, "vms/130.toml") {
		t.Errorf("post-start of an unconfigured VM: exit %d, stderr %q; want 2 naming vms/130.toml", code, stderr)
	}
	for _, args := range [][]string{{"hook", "proxmox", "110"}, {"hook", "proxmox", "x1", "post-start"}, {"hook", "vmware", "1", "x"}} {
		if _, _, code := h.run(nil, args...); code != 2 {
			t.Errorf("vmfw %v: exit %d, want 2", args, code)
		}
	}
	// A VM without taps has nothing to firewall.
	h.ok(nil, "hook", "proxmox", "120", "post-start")
	if after := h.save(); after != before {
		t.Errorf("failed hooks changed the firewall:\n%s", after)
	}
}
