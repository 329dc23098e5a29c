package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vmfw/vmfw/integration/firstvm"
	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
	"github.com/vmfw/vmfw/integration/testbin"
)

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
	ext := h.external("02:00:00:00:01:99", "192.0.2.200/24", "2001:db8::200/64")
	// run runs vmfw's OP for tap the way this subtest is about, or as
	// the program QEMU runs when program is set.
	run := func(op, tap string, program bool) {
		t.Helper()
		var cmd *exec.Cmd
		if !program && (way == "ifup" || way == "ifdown-first") {
			cmd = exec.Command("ip", append(append([]string{"netns", "exec", h.ns.Name, testbin.VMFW}, labtest.BackendArgs(backend)...), "--config-dir", h.config, op, tap)...)
		} else {
			cmd = exec.Command("ip", "netns", "exec", h.ns.Name, filepath.Join(testbin.Dir, "vmfw-"+op), tap)
			cmd.Env = append(os.Environ(), "VMFW_CONFIG_DIR="+h.config, labtest.BackendEnv(backend))
		}
		cmd.Env = append(cmd.Environ(), h.env...)
		out, errOut, code, err := labnet.Run(cmd)
		if err != nil || code != 0 {
			t.Fatalf("%s %s (%s): exit %d %v\n%s%s", op, tap, way, code, err, out, errOut)
		}
	}
	firstvm.EachPair(t, &h.t, firstvm.Shapes, func(s firstvm.Shape) string { return s.Name }, func(t *testing.T, k, j int) {
		if err := h.vmfwFree(); err != nil {
			t.Fatalf("before the first command: %v", err)
		}
		for _, s := range []int{k, j} {
			h.write(fmt.Sprintf("vms/%d.toml", firstvm.ID(s)), firstvm.File(s, "vmbr0"))
		}
		var agent *process
		if way == "vmfw-ifup-agent" {
			agent = startAgent(t, h)
		}
		if way == "ifdown-first" {
			// By vmfw ifdown, or by the program every other shape.
			run("ifdown", firstvm.Tap(k, 0), k%2 == 1)
			h.applied("ifdown of a tap that does not exist, the first command")
		}
		var guests []*labnet.NS
		var guestMACs []string
		for _, s := range []int{k, j} {
			for n, nic := range firstvm.Shapes[s].NICs {
				tap, mac := firstvm.Tap(s, n), firstvm.MAC(s, n)
				// The tap appears as QEMU creates it, then its script runs.
				g, err := h.lab.AddVM(tap, mac, firstvm.GuestAddrs(s, n)...)
				if err != nil {
					t.Fatal(err)
				}
				guests, guestMACs = append(guests, g), append(guestMACs, mac)
				run("ifup", tap, false)
				if agent != nil {
					awaitOutput(t, agent, "up=["+tap+"]", "ifup of "+tap+" did not go through the agent")
				}
				h.applied("ifup of " + tap + " (" + firstvm.Shapes[s].Name + ")")
				if err := h.lab.WaitForwarding(tap); err != nil {
					t.Fatal(err)
				}
				for _, fam := range nic.Addrs {
					h.serve(g, firstvm.Addr(s, n, fam), 22, 23)
				}
			}
		}
		for i, g := range guests {
			labtest.Announce(t, g, guestMACs[i])
		}
		labtest.ExpectProbes(t, probeTimeout, firstvm.Probes(ext, k, j))
		for _, s := range []int{k, j} {
			for n := range firstvm.Shapes[s].NICs {
				run("ifdown", firstvm.Tap(s, n), false)
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
			if err := os.Remove(filepath.Join(h.config, fmt.Sprintf("vms/%d.toml", firstvm.ID(s)))); err != nil {
				t.Fatal(err)
			}
		}
	})
}
