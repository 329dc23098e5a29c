package hooks

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
)

// firstShape is one kind of VM a user may start first on a new host: the
// addresses each interface's guest holds ("v4", "v6"), what its file's ips
// list (nil: no ips key), more [netN] keys, and VM-level keys.
type firstShape struct {
	name string
	head string
	nics []firstNIC
}

type firstNIC struct {
	addrs, ips []string
	extra      string
}

// firstShapes are the shapes of the report that a host's first VM did not
// start (as in the integration package's TestFirstVMOnEmptyHost): IPv4
// only, IPv6 only, both, no ips, anti-spoofing off, disabled, two
// interfaces of different families. VM 110+k has shape k.
var firstShapes = []firstShape{
	{name: "ipv4", nics: []firstNIC{{addrs: []string{"v4"}, ips: []string{"v4"}}}},
	{name: "ipv6", nics: []firstNIC{{addrs: []string{"v6"}, ips: []string{"v6"}}}},
	{name: "dual", nics: []firstNIC{{addrs: []string{"v4", "v6"}, ips: []string{"v4", "v6"}}}},
	{name: "no-ips", nics: []firstNIC{{addrs: []string{"v4"}}}},
	{name: "antispoof-off", nics: []firstNIC{{addrs: []string{"v4"}, ips: []string{"v4"}, extra: "antispoof = false\n"}}},
	{name: "disabled", head: "enable = false\n", nics: []firstNIC{{addrs: []string{"v4"}, ips: []string{"v4"}}}},
	{name: "two-nics", nics: []firstNIC{{addrs: []string{"v4"}, ips: []string{"v4"}}, {addrs: []string{"v6"}, ips: []string{"v6"}}}},
}

func firstAddr(k, n int, fam string) string {
	if fam == "v6" {
		return fmt.Sprintf("2001:db8::%d", 100+10*k+n)
	}
	return fmt.Sprintf("192.0.2.%d", 100+10*k+n)
}

func firstMAC(k, n int) string { return fmt.Sprintf("52:54:00:00:%02x:%02x", 110+k, n) }

// firstFile is the VM file of shape k: every interface in group ssh, what
// no rule admits rejected.
func firstFile(k int) string {
	s := firstShapes[k]
	text := "policy_in = \"reject\"\n" + s.head
	for n, nic := range s.nics {
		text += fmt.Sprintf("\n[net%d]\nmac = %q\ngroups = [\"ssh\"]\n", n, firstMAC(k, n))
		if nic.ips != nil {
			var ips []string
			for _, fam := range nic.ips {
				ips = append(ips, strconv.Quote(firstAddr(k, n, fam)))
			}
			text += "ips = [" + strings.Join(ips, ", ") + "]\n"
		}
		text += nic.extra
	}
	return text
}

// firstExpect is what a connection from a host on the bridge to port (22,
// which group ssh opens, or 23) of interface n of shape k does.
func firstExpect(k, n, port int) labnet.Result {
	s := firstShapes[k]
	switch {
	case s.head != "": // disabled: unfiltered
		return labnet.Connected
	case s.nics[n].ips == nil:
		return labnet.Unreachable // anti-spoofing lets it claim no address in ARP
	case port != 22:
		return labnet.Refused
	}
	return labnet.Connected
}

// firstDomainXML is VM 110+k as libvirt passes it to the hook: tagged with
// vmfw's metadata, its interfaces bridged on vmbr0 as devs.
func firstDomainXML(k int, devs []string) string {
	var ifaces strings.Builder
	for n, dev := range devs {
		fmt.Fprintf(&ifaces, `    <interface type='bridge'>
      <mac address='%s'/>
      <source bridge='vmbr0'/>
      <target dev='%s'/>
      <model type='virtio'/>
      <alias name='net%d'/>
    </interface>
`, firstMAC(k, n), dev, n)
	}
	return fmt.Sprintf(`<domain type='kvm' id='%d'>
  <name>vm%d</name>
  <uuid>6f1c2d3e-4b5a-4c6d-8e7f-0000000001%02d</uuid>
  <metadata>
    <vmfw:vm xmlns:vmfw="https://github.com/vmfw/vmfw/xmlns/libvirt/1" id="%d"/>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
%s  </devices>
</domain>
`, k+1, 110+k, k, 110+k, ifaces.String())
}

// free returns an error naming the first of vmfw's objects in the
// hypervisor's kernel, nil on a host where vmfw never ran or was flushed.
func (h *host) free() error {
	h.t.Helper()
	for _, l := range strings.Split(h.save(), "\n") {
		if strings.Contains(l, "vmfw") || strings.HasPrefix(l, ":tap") || strings.HasPrefix(l, ":vnet") || strings.HasPrefix(l, ":sg-") {
			return fmt.Errorf("the filter table holds %q", l)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := h.lab.Hypervisor().Exec(ctx, "ebtables-nft-save")
	if err != nil {
		return fmt.Errorf("ebtables-nft-save: %v: %s", err, out)
	}
	if strings.Contains(string(out), "vmfw") {
		return fmt.Errorf("the bridge table holds vmfw's chains:\n%s", out)
	}
	if strings.Contains(h.ipset(), "create sg-") {
		return fmt.Errorf("vmfw's ipsets remain:\n%s", h.ipset())
	}
	return nil
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
			return fmt.Sprintf("tap%di%d", 110+k, n)
		}
		return fmt.Sprintf("vnet%d", 10*k+n)
	}
	devs := func(k int) []string {
		var out []string
		for n := range firstShapes[k].nics {
			out = append(out, dev(k, n))
		}
		return out
	}
	start := func(k int) {
		if hv == "proxmox" {
			h.hook(hookscript, nil, strconv.Itoa(110+k), "post-start")
		} else {
			h.hook(qemu, strings.NewReader(firstDomainXML(k, devs(k))), hookArgs(fmt.Sprintf("vm%d", 110+k), "started", "begin")...)
		}
	}
	stopVM := func(k int) {
		if hv == "proxmox" {
			h.hook(hookscript, nil, strconv.Itoa(110+k), "post-stop")
		} else {
			h.hook(qemu, strings.NewReader(firstDomainXML(k, devs(k))), hookArgs(fmt.Sprintf("vm%d", 110+k), "stopped", "end")...)
		}
	}
	for k, first := range firstShapes {
		j := (k + 1) % len(firstShapes)
		t.Run(first.name+"-then-"+firstShapes[j].name, func(t *testing.T) {
			outer := h.t
			h.t = t
			defer func() { h.t = outer }()
			if err := h.free(); err != nil {
				t.Fatalf("before the first hook: %v", err)
			}
			for _, s := range []int{k, j} {
				if err := os.WriteFile(filepath.Join(h.config, "vms", fmt.Sprintf("%d.toml", 110+s)), []byte(firstFile(s)), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if k%2 == 1 {
				// It has nothing to remove: it leaves the host untouched
				// (libvirt's, which finds no record) or installs what an
				// apply does (Proxmox's, which looks for taps).
				stopVM(k)
				if h.free() != nil {
					h.applied("the stop hook of a VM that never ran, the first command")
				}
			}
			var guests []*labnet.NS
			var guestMACs []string
			for _, s := range []int{k, j} {
				for n, nic := range firstShapes[s].nics {
					var addrs []string
					for _, fam := range nic.addrs {
						prefix := "/24"
						if fam == "v6" {
							prefix = "/64"
						}
						addrs = append(addrs, firstAddr(s, n, fam)+prefix)
					}
					// On the bridge before the hook, as the hypervisor leaves it.
					g := h.vm(dev(s, n), firstMAC(s, n), addrs...)
					guests, guestMACs = append(guests, g), append(guestMACs, firstMAC(s, n))
					for _, fam := range nic.addrs {
						h.serve(g, hostPort(firstAddr(s, n, fam), 22), hostPort(firstAddr(s, n, fam), 23))
					}
				}
				start(s)
				h.applied(fmt.Sprintf("the start hook of VM %d (%s)", 110+s, firstShapes[s].name))
			}
			for i, g := range guests {
				announce(t, g, guestMACs[i])
			}
			// The probes run at once: a blocked one waits for its answer.
			var wg sync.WaitGroup
			for _, s := range []int{k, j} {
				for n, nic := range firstShapes[s].nics {
					for _, fam := range nic.addrs {
						for _, port := range []int{22, 23} {
							addr, want := hostPort(firstAddr(s, n, fam), port), firstExpect(s, n, port)
							wg.Go(func() {
								got, err := labnet.TCPConnect(context.Background(), client, addr, probeTimeout)
								if err != nil || got != want {
									t.Errorf("%s: tcp from the bridge to %s: got %v %v, want %v", firstShapes[s].name, addr, got, err, want)
								}
							})
						}
					}
				}
			}
			wg.Wait()
			for _, s := range []int{k, j} {
				stopVM(s)
			}
			if recs := h.records(); len(recs) != 0 {
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
				if err := os.Remove(filepath.Join(h.config, "vms", fmt.Sprintf("%d.toml", 110+s))); err != nil {
					t.Fatal(err)
				}
			}
		})
		if t.Failed() {
			return
		}
	}
}

// hostPort joins an address and a port, brackets around IPv6.
func hostPort(addr string, port int) string {
	if strings.Contains(addr, ":") {
		return fmt.Sprintf("[%s]:%d", addr, port)
	}
	return fmt.Sprintf("%s:%d", addr, port)
}

// announce sends one frame from a guest (an ARP probe, which anti-spoofing
// allows and which the bridge learns the guest's MAC from even when a
// filter drops it), so that the bridge forwards frames to the guest to its
// port only. A frame to a MAC the bridge has not learnt is flooded to
// every port, and the in chain of a VM whose policy_in is reject answers
// the copy it gets with a reset in the destination's name, which can reach
// the sender before the real answer.
func announce(t *testing.T, g *labnet.NS, mac string) {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	if err := labnet.SendFrame(g, "eth0", labnet.ARPRequestFrame(hw, netip.IPv4Unspecified(), netip.MustParseAddr("192.0.2.1"), nil)); err != nil {
		t.Fatal(err)
	}
}
