package integration

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/testbin"
)

// pveFlow is one connection of the Proxmox import lab and the result
// pve-firewall's semantics give it, worked out by hand from the source
// files of pkg/pveimport/testdata/plain (the rule that decides is cited).
type pveFlow struct {
	why      string
	from     *labnet.NS
	udp      bool
	addr     string
	port     int
	want     labnet.Result
	backends []string
}

// TestProxmoxImportPackets imports the "plain" Proxmox tree (features vmfw
// has today: groups, macros, aliases, -i rules, disabled rules, two NICs,
// guests with the firewall off, DROP and REJECT policies) with the real
// binary, brings the guests up, and checks every flow with real packets
// against the verdict pve-firewall gives. The trees that need sets,
// MAC-only anti-spoofing and log levels join when the configuration has
// them (pkg/pveimport TestCheckAcceptsImport).
func TestProxmoxImportPackets(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		h := newHV(t, backend, "")
		dest := filepath.Join(t.TempDir(), "imported")
		src := filepath.Join("..", "pkg", "pveimport", "testdata", "plain", "src")
		if out, err := exec.Command(testbin.VMFW, "import", "proxmox", src, dest).CombinedOutput(); err != nil {
			t.Fatalf("import: %v\n%s", err, out)
		}
		copyDir(t, dest, h.config)
		web0 := h.vm("tap201i0", "02:00:00:00:02:01", "192.0.2.21", "2001:db8::21")
		web1 := h.vm("tap201i1", "02:00:00:00:02:11", "192.0.2.22", "2001:db8::22")
		client := h.vm("tap202i0", "02:00:00:00:02:02", "192.0.2.31", "2001:db8::31")
		open := h.vm("tap203i0", "02:00:00:00:02:03", "192.0.2.23", "2001:db8::23")
		nofw := h.vm("tap204i0", "02:00:00:00:02:04", "192.0.2.24", "2001:db8::24")
		ext, err := h.lab.AddExternal("uplink0", "02:00:00:00:02:99", "192.0.2.200/24", "2001:db8::200/64")
		if err != nil {
			t.Fatal(err)
		}
		for _, tap := range []string{"tap201i0", "tap201i1", "tap202i0", "tap203i0", "tap204i0"} {
			h.vmfw("ifup", tap)
		}
		for _, s := range []struct {
			ns    *labnet.NS
			addrs []string
		}{{web0, []string{"192.0.2.21", "2001:db8::21"}}, {web1, []string{"192.0.2.22"}}, {client, []string{"192.0.2.31", "2001:db8::31"}},
			{open, []string{"192.0.2.23"}}, {nofw, []string{"192.0.2.24"}}, {ext, []string{"192.0.2.200", "2001:db8::200"}}} {
			for _, a := range s.addrs {
				h.serve(s.ns, a, 22, 25, 43, 53, 80, 7000, 8050, 9000, 9001)
				for _, p := range []int{53, 1900, 9999} {
					stop, err := labnet.ServeUDP(s.ns, hostPort(a, p))
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(stop)
				}
			}
		}
		flows := []pveFlow{
			{"HTTP macro of group web (cluster.fw:9); 202's OUT ACCEPT tcp 80 (202.fw:7)", client, false, "192.0.2.21", 80, labnet.Connected, nil},
			{"HTTP macro of group web (cluster.fw:9)", ext, false, "192.0.2.21", 80, labnet.Connected, nil},
			{"HTTP over IPv6, same rule", ext, false, "2001:db8::21", 80, labnet.Connected, nil},
			{"8000:8099 from others dropped (cluster.fw:11)", ext, false, "192.0.2.21", 8050, labnet.Timeout, nil},
			{"SSH from 192.0.2.0/27 (cluster.fw:14); 203's firewall is off", open, false, "192.0.2.21", 22, labnet.Connected, nil},
			{"no rule for ssh from 192.0.2.200: policy REJECT resets tcp (201.fw:4)", ext, false, "192.0.2.21", 22, labnet.Refused, nil},
			{"disabled rule (201.fw:11): policy REJECT", open, false, "192.0.2.21", 9000, labnet.Refused, nil},
			{"-i net1 accept (201.fw:12) on net1", open, false, "192.0.2.22", 9001, labnet.Connected, nil},
			{"-i net1 accept does not apply to net0: policy REJECT", open, false, "192.0.2.21", 9001, labnet.Refused, nil},
			{"OUT DROP tcp 7000 (201.fw:13)", web0, false, "192.0.2.200", 7000, labnet.Timeout, nil},
			{"OUT REJECT tcp 25 of group admin (cluster.fw:16): reset", web0, false, "192.0.2.200", 25, labnet.Refused, nil},
			{"policy_out ACCEPT (default)", web0, false, "192.0.2.200", 80, labnet.Connected, nil},
			{"DNS macro (201.fw:7); 202's OUT ACCEPT udp 53 (202.fw:8)", client, true, "192.0.2.21", 53, labnet.Connected, nil},
			{"policy REJECT answers udp with port unreachable (PVEFW-reject)", ext, true, "192.0.2.21", 9999, labnet.Unreachable, nil},
			{"policy REJECT drops UPnP (PVEFW-Reject: udp 1900)", ext, true, "192.0.2.21", 1900, labnet.Timeout, nil},
			{"202's policy_out DROP (202.fw:4)", client, false, "192.0.2.200", 22, labnet.Timeout, nil},
			{"IN ACCEPT tcp 22 (202.fw:9)", ext, false, "192.0.2.31", 22, labnet.Connected, nil},
			{"policy_in DROP (default)", ext, false, "192.0.2.31", 80, labnet.Timeout, nil},
			{"policy DROP still rejects IPv6 tcp 43 (PVEFW-Drop)", ext, false, "2001:db8::31", 43, labnet.Refused, nil},
			{"policy DROP drops IPv4 tcp 43", ext, false, "192.0.2.31", 43, labnet.Timeout, nil},
			{"203: the guest's firewall is off (203.fw:2)", ext, false, "192.0.2.23", 80, labnet.Connected, nil},
			{"204: no firewall=1", ext, false, "192.0.2.24", 7000, labnet.Connected, nil},
		}
		results, errs := probeAll(len(flows), func(ctx context.Context, i int) (labnet.Result, error) {
			f := flows[i]
			if f.udp {
				return labnet.UDPProbe(ctx, f.from, hostPort(f.addr, f.port), probeTimeout)
			}
			return labnet.TCPConnect(ctx, f.from, hostPort(f.addr, f.port), probeTimeout)
		})
		for i, f := range flows {
			switch {
			case errs[i] != nil:
				t.Errorf("%s: %v", f.why, errs[i])
			case results[i] != f.want:
				t.Errorf("%s: %s -> %s:%d: got %v, pve-firewall gives %v", f.why, f.from, f.addr, f.port, results[i], f.want)
			}
		}
	})
}
