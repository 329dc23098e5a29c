// Package firstvm describes the VMs that the tests of a host's first VM
// start: the shapes of the report that a host's first VM did not start
// (IPv4 only, IPv6 only, both, no ips, anti-spoofing off, disabled, and
// two interfaces of different families), their VM files, the addresses
// their guests hold and what a connection to each interface must give,
// so that every way of starting a VM (vmfw ifup, vmfw-ifup, the
// hypervisors' hooks, CNI) is tried with the same VMs in the same order.
//
// VM ID(k) has shape k; its interface n has the addresses
// 192.0.2.(100+10k+n) and 2001:db8::(100+10k+n).
package firstvm

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
)

// Shape is one kind of VM a user may start first on a new host.
type Shape struct {
	Name string
	// Head holds VM-level keys; every shape rejects what its rules do not
	// admit, so a blocked probe gets its answer at once.
	Head string
	NICs []NIC
}

// NIC is one interface: the address families its guest holds ("v4",
// "v6"), those its file's ips list (nil: no ips key) and more [netN] keys.
type NIC struct {
	Addrs []string
	IPs   []string
	Extra string
}

// Shapes are the shapes, in the order the tests start them.
var Shapes = []Shape{
	{Name: "ipv4", NICs: []NIC{{Addrs: []string{"v4"}, IPs: []string{"v4"}}}},
	{Name: "ipv6", NICs: []NIC{{Addrs: []string{"v6"}, IPs: []string{"v6"}}}},
	{Name: "dual", NICs: []NIC{{Addrs: []string{"v4", "v6"}, IPs: []string{"v4", "v6"}}}},
	{Name: "no-ips", NICs: []NIC{{Addrs: []string{"v4"}}}},
	{Name: "antispoof-off", NICs: []NIC{{Addrs: []string{"v4"}, IPs: []string{"v4"}, Extra: "antispoof = false\n"}}},
	{Name: "disabled", Head: "enable = false\n", NICs: []NIC{{Addrs: []string{"v4"}, IPs: []string{"v4"}}}},
	{Name: "two-nics", NICs: []NIC{{Addrs: []string{"v4"}, IPs: []string{"v4"}}, {Addrs: []string{"v6"}, IPs: []string{"v6"}}}},
}

// ID is the id of the VM of shape k.
func ID(k int) int { return 110 + k }

// Tap is the tap of interface n of shape k as Proxmox names it.
func Tap(k, n int) string { return fmt.Sprintf("tap%di%d", ID(k), n) }

// MAC is the MAC of interface n of shape k.
func MAC(k, n int) string { return fmt.Sprintf("02:00:00:00:%02x:%02x", ID(k), n) }

// Addr is interface n of shape k's address of family fam ("v4" or "v6").
func Addr(k, n int, fam string) string {
	if fam == "v6" {
		return fmt.Sprintf("2001:db8::%d", 100+10*k+n)
	}
	return fmt.Sprintf("192.0.2.%d", 100+10*k+n)
}

// GuestAddrs are the addresses the guest of interface n of shape k holds,
// with their prefix lengths.
func GuestAddrs(k, n int) []string {
	var out []string
	for _, fam := range Shapes[k].NICs[n].Addrs {
		prefix := "/24"
		if fam == "v6" {
			prefix = "/64"
		}
		out = append(out, Addr(k, n, fam)+prefix)
	}
	return out
}

// File is the VM file of shape k: each interface in group ssh and, unless
// bridge is "", on bridge.
func File(k int, bridge string) string {
	s := Shapes[k]
	text := "policy_in = \"reject\"\n" + s.Head
	for n, nic := range s.NICs {
		text += fmt.Sprintf("\n[net%d]\n", n)
		if bridge != "" {
			text += fmt.Sprintf("bridge = %q\n", bridge)
		}
		text += fmt.Sprintf("mac = %q\ngroups = [\"ssh\"]\n", MAC(k, n))
		if nic.IPs != nil {
			var ips []string
			for _, fam := range nic.IPs {
				ips = append(ips, strconv.Quote(Addr(k, n, fam)))
			}
			text += "ips = [" + strings.Join(ips, ", ") + "]\n"
		}
		text += nic.Extra
	}
	return text
}

// Expect is what a connection from a host on the bridge to port (22,
// which group ssh opens, or 23) of interface n of shape k gives.
func Expect(k, n, port int) labnet.Result {
	s := Shapes[k]
	switch {
	case s.Head != "": // disabled: unfiltered
		return labnet.Connected
	case s.NICs[n].IPs == nil:
		// Anti-spoofing lets it claim no address in ARP.
		return labnet.Unreachable
	case port != 22:
		return labnet.Refused // policy_in reject
	}
	return labnet.Connected
}

// Probes are the connections from a host on the bridge to every address
// of the VMs of shapes ks, to ports 22 and 23, each with what it must
// give.
func Probes(from *labnet.NS, ks ...int) []labtest.Probe {
	var out []labtest.Probe
	for _, k := range ks {
		for n, nic := range Shapes[k].NICs {
			for _, fam := range nic.Addrs {
				for _, port := range []int{22, 23} {
					out = append(out, labtest.Probe{What: fmt.Sprintf("%s net%d", Shapes[k].Name, n), From: from,
						Addr: Addr(k, n, fam), Port: port, Want: Expect(k, n, port)})
				}
			}
		}
	}
	return out
}

// EachPair runs fn as one subtest per shape k, named "K-then-J" after it
// and the shape j that follows it (the last is followed by the first), in
// order, and stops after the first that fails: each begins on the host
// the one before left. While fn runs, *hostT (the t that the helpers of
// the test's host fail) is its subtest's.
func EachPair[S any](t *testing.T, hostT **testing.T, shapes []S, name func(S) string, fn func(t *testing.T, k, j int)) {
	t.Helper()
	for k := range shapes {
		j := (k + 1) % len(shapes)
		t.Run(name(shapes[k])+"-then-"+name(shapes[j]), func(t *testing.T) {
			outer := *hostT
			*hostT = t
			defer func() { *hostT = outer }()
			fn(t, k, j)
		})
		if t.Failed() {
			return
		}
	}
}
