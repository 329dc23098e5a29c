package hooks

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/integration/firstvm"
	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
)

// firstDomainXML is the VM of shape k (package firstvm) as libvirt passes
// it to the hook: tagged with vmfw's metadata, its interfaces bridged on
// vmbr0 as devs.
func firstDomainXML(k int, devs []string) string {
	var ifaces strings.Builder
	for n, dev := range devs {
		ifaces.WriteString(bridgedXML(n, firstvm.MAC(k, n), dev))
	}
	return minimalXML(k+1, fmt.Sprintf("vm%d", firstvm.ID(k)), fmt.Sprintf("6f1c2d3e-4b5a-4c6d-8e7f-0000000001%02d", k),
		fmt.Sprintf("    <vmfw:vm xmlns:vmfw=\"https://github.com/vmfw/vmfw/xmlns/libvirt/1\" id=\"%d\"/>\n", firstvm.ID(k)), ifaces.String())
}

// free returns an error naming the first of vmfw's objects in the
// hypervisor's kernel, nil on a host where vmfw never ran or was flushed.
func (h *host) free() error {
	h.t.Helper()
	return labtest.Free(h.t, h.lab.Hypervisor(), h.save(), "tap", "vnet")
}

// applied fails the test unless an apply has nothing to do.
func (h *host) applied(after string) {
	h.t.Helper()
	out, errOut, code := h.run(nil, "apply", "--dry-run")
	if code != 0 || !strings.HasPrefix(out, "# no changes") {
		h.t.Errorf("after %s an apply would change (exit %d):\n%s%s", after, code, out, errOut)
	}
}

// TestHooksFirstVMOnEmptyHost runs the Proxmox hookscript's post-start and
// libvirt's "started begin" as the first thing on a host where vmfw never
// ran, for a VM of every shape, then for a VM of the next shape; for every
// other shape the stop hook of the VM (post-stop, "stopped end") comes
// first, before the VM ever ran. After each hook the host holds what a
// full apply writes and real connections from a host on the bridge reach
// each interface as its shape says; then both VMs stop, vmfw flush
// empties the host, and the next shape begins.
func TestHooksFirstVMOnEmptyHost(t *testing.T) {
	t.Parallel()
	for _, backend := range []string{"nft", "legacy"} {
		for _, hv := range []string{"proxmox", "libvirt"} {
			t.Run(backend+"/"+hv, func(t *testing.T) {
				t.Parallel()
				testHooksFirstVM(t, backend, hv)
			})
		}
	}
}

func testHooksFirstVM(t *testing.T, backend, hv string) {
	h := newHost(t, backend, map[string]string{"groups/ssh.toml": "[[in]]\nproto = \"tcp\"\ndport = \"22\"\n"})
	if err := os.MkdirAll(filepath.Join(h.config, "vms"), 0o755); err != nil {
		t.Fatal(err)
	}
	hookscript, qemu := script(t, "proxmox/vmfw-hook.sh"), script(t, "libvirt/qemu")
	client, err := h.lab.AddExternal("uplink0", "", "192.0.2.200/24", "2001:db8::200/64")
	if err != nil {
		t.Fatal(err)
	}
	// dev names VM k's interface n as the hypervisor does.
	dev := func(k, n int) string {
		if hv == "proxmox" {
			return firstvm.Tap(k, n)
		}
		return fmt.Sprintf("vnet%d", 10*k+n)
	}
	// hook runs VM k's start hook (up) or its stop hook as the hypervisor
	// does.
	hook := func(k int, up bool) {
		phase, op, subop := "post-stop", "stopped", "end"
		if up {
			phase, op, subop = "post-start", "started", "begin"
		}
		if hv == "proxmox" {
			h.hook(hookscript, nil, strconv.Itoa(firstvm.ID(k)), phase)
			return
		}
		var devs []string
		for n := range firstvm.Shapes[k].NICs {
			devs = append(devs, dev(k, n))
		}
		h.hook(qemu, strings.NewReader(firstDomainXML(k, devs)), hookArgs(fmt.Sprintf("vm%d", firstvm.ID(k)), op, subop)...)
	}
	vmFile := func(k int) string { return filepath.Join(h.config, "vms", fmt.Sprintf("%d.toml", firstvm.ID(k))) }
	firstvm.EachPair(t, &h.t, firstvm.Shapes, func(s firstvm.Shape) string { return s.Name }, func(t *testing.T, k, j int) {
		if err := h.free(); err != nil {
			t.Fatalf("before the first hook: %v", err)
		}
		for _, s := range []int{k, j} {
			if err := os.WriteFile(vmFile(s), []byte(firstvm.File(s, "")), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if k%2 == 1 {
			// It has nothing to remove: it leaves the host untouched
			// (libvirt's, which finds no record) or installs what an
			// apply does (Proxmox's, which looks for taps).
			hook(k, false)
			if h.free() != nil {
				h.applied("the stop hook of a VM that never ran, the first command")
			}
		}
		var guests []*labnet.NS
		var guestMACs []string
		for _, s := range []int{k, j} {
			for n, nic := range firstvm.Shapes[s].NICs {
				// On the bridge before the hook, as the hypervisor leaves it.
				g := h.vm(dev(s, n), firstvm.MAC(s, n), firstvm.GuestAddrs(s, n)...)
				guests, guestMACs = append(guests, g), append(guestMACs, firstvm.MAC(s, n))
				for _, fam := range nic.Addrs {
					h.serve(g, labnet.HostPort(firstvm.Addr(s, n, fam), 22), labnet.HostPort(firstvm.Addr(s, n, fam), 23))
				}
			}
			hook(s, true)
			h.applied(fmt.Sprintf("the start hook of VM %d (%s)", firstvm.ID(s), firstvm.Shapes[s].Name))
		}
		for i, g := range guests {
			labtest.Announce(t, g, guestMACs[i])
		}
		labtest.ExpectProbes(t, probeTimeout, firstvm.Probes(client, k, j))
		for _, s := range []int{k, j} {
			hook(s, false)
		}
		if recs := labtest.Records(t, h.state); len(recs) != 0 {
			t.Errorf("records after the stop hooks: %v", recs)
		}
		for _, g := range guests {
			if err := h.lab.Remove(g); err != nil {
				t.Fatal(err)
			}
		}
		h.applied("both VMs stopped")
		if out, errOut, code := h.run(nil, "flush"); code != 0 {
			t.Fatalf("vmfw flush: exit %d\n%s%s", code, out, errOut)
		}
		for _, s := range []int{k, j} {
			if err := os.Remove(vmFile(s)); err != nil {
				t.Fatal(err)
			}
		}
	})
}
