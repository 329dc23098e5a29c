package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/testbin"
)

// firstShape is one kind of VM a user may start first on a new host.
type firstShape struct {
	name string
	// head holds VM-level keys; every shape rejects what its rules do not
	// admit, so a blocked probe gets its answer at once.
	head string
	nics []firstNIC
}

// firstNIC is one interface: the addresses its guest holds, the ips its
// file lists (nil: no ips key) and more [netN] keys.
type firstNIC struct {
	addrs []string
	ips   []string
	extra string
}

// firstShapes are the shapes of the report that a host's first VM did not
// start: IPv4 only, IPv6 only, both, no ips, anti-spoofing off, disabled,
// and two interfaces of different families. VM 110+k has shape k; its
// interface n has 192.0.2.(100+10k+n) and 2001:db8::(100+10k+n).
var firstShapes = []firstShape{
	{name: "ipv4", nics: []firstNIC{{addrs: []string{"v4"}, ips: []string{"v4"}}}},
	{name: "ipv6", nics: []firstNIC{{addrs: []string{"v6"}, ips: []string{"v6"}}}},
	{name: "dual", nics: []firstNIC{{addrs: []string{"v4", "v6"}, ips: []string{"v4", "v6"}}}},
	{name: "no-ips", nics: []firstNIC{{addrs: []string{"v4"}}}},
	{name: "antispoof-off", nics: []firstNIC{{addrs: []string{"v4"}, ips: []string{"v4"}, extra: "antispoof = false\n"}}},
	{name: "disabled", head: "enable = false\n", nics: []firstNIC{{addrs: []string{"v4"}, ips: []string{"v4"}}}},
	{name: "two-nics", nics: []firstNIC{{addrs: []string{"v4"}, ips: []string{"v4"}}, {addrs: []string{"v6"}, ips: []string{"v6"}}}},
}

// firstAddr returns interface n of shape k's address of family fam ("v4"
// or "v6").
func firstAddr(k, n int, fam string) string {
	if fam == "v6" {
		return fmt.Sprintf("2001:db8::%d", 100+10*k+n)
	}
	return fmt.Sprintf("192.0.2.%d", 100+10*k+n)
}

func firstTap(k, n int) string { return fmt.Sprintf("tap%di%d", 110+k, n) }

func firstMAC(k, n int) string { return fmt.Sprintf("02:00:00:00:%02x:%02x", 110+k, n) }

// firstFile is the VM file of shape k: each interface in group ssh.
func firstFile(k int) string {
	s := firstShapes[k]
	text := "policy_in = \"reject\"\n" + s.head
	for n, nic := range s.nics {
		text += fmt.Sprintf("\n[net%d]\nbridge = \"vmbr0\"\nmac = %q\ngroups = [\"ssh\"]\n", n, firstMAC(k, n))
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

// firstExpect returns what a connection from a host on the bridge to port
// (22, which group ssh opens, or 23) of interface n of shape k does.
func firstExpect(k, n, port int) labnet.Result {
	s := firstShapes[k]
	switch {
	case s.head != "": // disabled: unfiltered
		return labnet.Connected
	case s.nics[n].ips == nil:
		// Anti-spoofing lets it claim no address in ARP.
		return labnet.Unreachable
	case port != 22:
		return labnet.Refused // policy_in reject
	}
	return labnet.Connected
}

// TestFirstVMOnEmptyHost starts a VM of every shape as the first thing on
// a host where vmfw never ran, through each way QEMU can run vmfw: vmfw
// ifup, the vmfw-ifup program without an agent and with one (whose own
// start applies first), and with an ifdown of the VM's tap before it
// existed as the very first command (QEMU runs downscript for a tap its
// ifup did not finish). A VM of the next shape follows. After each
// command the host holds what a full apply writes, and real connections
// from a host on the bridge reach each interface as its shape says. Then
// everything goes down, vmfw flush empties the host, and the next shape
// begins.
func TestFirstVMOnEmptyHost(t *testing.T) {
	for _, b := range backends {
		for _, way := range []string{"ifup", "vmfw-ifup", "vmfw-ifup-agent", "ifdown-first"} {
			t.Run(b+"/"+way, func(t *testing.T) {
				t.Parallel()
				testFirstVM(t, b, way)
			})
		}
	}
}

func testFirstVM(t *testing.T, backend, way string) {
	h := newHV(t, backend, "")
	h.env = []string{"VMFW_RUN_DIR=" + t.TempDir()}
	h.write("groups/ssh.toml", appGroup)
	// The agent's own repair must not do what the commands are tested for.
	h.write("vmfw.toml", "repair_interval = \"1h\"\n")
	ext, err := h.lab.AddExternal("uplink0", "02:00:00:00:01:99", "192.0.2.200/24", "2001:db8::200/64")
	if err != nil {
		t.Fatal(err)
	}
	// run runs vmfw's OP for tap the way this subtest is about, or as
	// the program QEMU runs when program is set.
	run := func(op, tap string, program bool) {
		t.Helper()
		var cmd *exec.Cmd
		if !program && (way == "ifup" || way == "ifdown-first") {
			cmd = exec.Command("ip", append(append([]string{"netns", "exec", h.ns.Name, testbin.VMFW}, backendArgs(backend)...), "--config-dir", h.config, op, tap)...)
		} else {
			cmd = exec.Command("ip", "netns", "exec", h.ns.Name, filepath.Join(testbin.Dir, "vmfw-"+op), tap)
			cmd.Env = append(os.Environ(), "VMFW_CONFIG_DIR="+h.config, backendVar(backend))
		}
		cmd.Env = append(cmd.Environ(), h.env...)
		out, errOut, code, err := labnet.Run(cmd)
		if err != nil || code != 0 {
			t.Fatalf("%s %s (%s): exit %d %v\n%s%s", op, tap, way, code, err, out, errOut)
		}
	}
	for k, first := range firstShapes {
		j := (k + 1) % len(firstShapes)
		second := firstShapes[j]
		t.Run(first.name+"-then-"+second.name, func(t *testing.T) {
			outer := h.t
			h.t = t
			defer func() { h.t = outer }()
			if err := h.vmfwFree(); err != nil {
				t.Fatalf("before the first command: %v", err)
			}
			for _, s := range []int{k, j} {
				h.write(fmt.Sprintf("vms/%d.toml", 110+s), firstFile(s))
			}
			var agent *process
			if way == "vmfw-ifup-agent" {
				agent = startAgent(t, h)
			}
			if way == "ifdown-first" {
				// By vmfw ifdown, or by the program every other shape.
				run("ifdown", firstTap(k, 0), k%2 == 1)
				h.applied("ifdown of a tap that does not exist, the first command")
			}
			var guests []*labnet.NS
			var guestMACs []string
			var probes []struct {
				ns         *labnet.NS
				addr, what string
				port       int
				want       labnet.Result
			}
			for _, s := range []int{k, j} {
				for n, nic := range firstShapes[s].nics {
					tap := firstTap(s, n)
					var addrs []string
					for _, fam := range nic.addrs {
						addr := firstAddr(s, n, fam)
						prefix := "/24"
						if fam == "v6" {
							prefix = "/64"
						}
						addrs = append(addrs, addr+prefix)
						for _, port := range []int{22, 23} {
							probes = append(probes, struct {
								ns         *labnet.NS
								addr, what string
								port       int
								want       labnet.Result
							}{ext, addr, firstShapes[s].name + " " + tap, port, firstExpect(s, n, port)})
						}
					}
					// The tap appears as QEMU creates it, then its script runs.
					g, err := h.lab.AddVM(tap, firstMAC(s, n), addrs...)
					if err != nil {
						t.Fatal(err)
					}
					guests, guestMACs = append(guests, g), append(guestMACs, firstMAC(s, n))
					run("ifup", tap, false)
					if agent != nil && !eventually(func() bool { return strings.Contains(agent.Output(), "up=["+tap+"]") }) {
						t.Errorf("ifup of %s did not go through the agent:\n%s", tap, agent.Output())
					}
					h.applied("ifup of " + tap + " (" + firstShapes[s].name + ")")
					if err := h.lab.WaitForwarding(tap); err != nil {
						t.Fatal(err)
					}
					for _, nicAddr := range nic.addrs {
						h.serve(g, firstAddr(s, n, nicAddr), 22, 23)
					}
				}
			}
			for i, g := range guests {
				announce(t, g, guestMACs[i])
			}
			results, errs := probeAll(len(probes), func(ctx context.Context, i int) (labnet.Result, error) {
				p := probes[i]
				return labnet.TCPConnect(ctx, p.ns, hostPort(p.addr, p.port), probeTimeout)
			})
			for i, p := range probes {
				if errs[i] != nil || results[i] != p.want {
					t.Errorf("%s: tcp from the bridge to %s: got %v %v, want %v", p.what, hostPort(p.addr, p.port), results[i], errs[i], p.want)
				}
			}
			for _, s := range []int{k, j} {
				for n := range firstShapes[s].nics {
					run("ifdown", firstTap(s, n), false)
				}
			}
			for _, g := range guests {
				if err := h.lab.Remove(g); err != nil {
					t.Fatal(err)
				}
			}
			h.applied("every tap went down")
			if agent != nil {
				stop(t, agent)
			}
			h.vmfw("flush")
			for _, s := range []int{k, j} {
				if err := os.Remove(filepath.Join(h.config, fmt.Sprintf("vms/%d.toml", 110+s))); err != nil {
					t.Fatal(err)
				}
			}
		})
		if t.Failed() {
			return
		}
	}
}
