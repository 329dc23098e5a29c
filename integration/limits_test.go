package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/testbin"
)

// The tests of this file push vmfw to the sizes docs/limits.md promises —
// a VM with 1,000 addresses, a group with 10,000 members, 60 groups on one
// tap — with the real binary in a lab, and check that apply succeeds, the
// rules and sets are in place and packets are still decided right.

// addDummies creates interfaces named like taps in the hypervisor
// namespace, with one ip -batch: members whose only role is to exist (an
// apply firewalls every configured tap that exists), far cheaper than VM
// namespaces.
func (h *hv) addDummies(names []string) {
	h.t.Helper()
	var b strings.Builder
	for _, n := range names {
		b.WriteString("link add " + n + " type ifb\n")
	}
	batch := filepath.Join(h.t.TempDir(), "links")
	if err := os.WriteFile(batch, []byte(b.String()), 0o644); err != nil {
		h.t.Fatal(err)
	}
	h.exec("ip", "-batch", batch)
}

// countJumps counts the rules of chain that jump to a chain whose name
// starts with prefix.
func countJumps(save, chain, prefix string) int {
	n := 0
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") && strings.Contains(l, " -j "+prefix) {
			n++
		}
	}
	return n
}

// countRules counts the rules of chain in an iptables-save output.
func countRules(save, chain string) int {
	return strings.Count(save, "\n-A "+chain+" ")
}

// setMembers counts the members of an ipset: the lines after "Members:".
func (h *hv) setMembers(name string) int {
	h.t.Helper()
	_, members, ok := strings.Cut(h.exec("ipset", "list", name), "\nMembers:\n")
	if !ok {
		h.t.Fatalf("ipset list %s has no members section", name)
	}
	return len(strings.Fields(members))
}

// TestVMWithThousandAddresses: a VM listing 1,000 addresses (753 IPv4
// addresses of the three documentation networks and 247 IPv6 addresses)
// gets an anti-spoofing chain with all of them and puts all of them in
// its group's sets; its last addresses still talk to a peer that admits
// the group, and a VM outside the group is kept out.
func TestVMWithThousandAddresses(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		var ips []string
		for _, net := range []string{"192.0.2", "198.51.100", "203.0.113"} {
			first := 1
			if net == "192.0.2" {
				first = 10 // .1 is the bridge, .2 to .9 are the peers
			}
			for i := first; i <= 254; i++ {
				ips = append(ips, fmt.Sprintf("%s.%d", net, i))
			}
		}
		for i := 1; len(ips) < 1000; i++ {
			ips = append(ips, fmt.Sprintf("2001:db8::1:%x", i))
		}
		lastV4 := "192.0.2.254"
		lastV6 := ips[len(ips)-1]
		quoted := make([]string, len(ips))
		for i, ip := range ips {
			quoted[i] = strconv.Quote(ip)
		}
		h.write("groups/g.toml", "[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"g\"\n")
		h.write("vms/541.toml", "[net0]\nbridge = \"vmbr0\"\nmac = \"02:00:00:00:05:41\"\ngroups = [\"g\"]\nips = [\n"+strings.Join(quoted, ",\n")+"\n]\n")
		peer := h.guest(542, "02:00:00:00:05:42", "192.0.2.2", "2001:db8::2", "g")
		other := h.guest(543, "02:00:00:00:05:43", "192.0.2.3", "2001:db8::3")
		// The big VM uses its last addresses of each family.
		big := h.vm("tap541i0", "02:00:00:00:05:41", lastV4, lastV6)
		h.firstV4(540, "192.0.2.4") // .10 and up are the big VM's
		for _, tap := range []string{"tap541i0", "tap542i0", "tap543i0"} {
			h.vmfw("ifup", tap)
		}
		h.vmfw("apply")
		if h.nft() {
			// One element per address in the tap's source sets; the
			// group's sets hold the big VM's addresses and the peer's.
			for set, want := range map[string]int{"src4": 753, "src6": 247} {
				n := 0
				for _, e := range h.nftElements("bridge", set) {
					if strings.HasPrefix(e, "tap541i0 . ") {
						n++
					}
				}
				if n != want {
					t.Errorf("%s holds %d addresses of tap541i0, want %d", set, n, want)
				}
			}
			for set, want := range map[string]int{"sg-g-v4": 753 + 1, "sg-g-v6": 247 + 1} {
				if n := len(h.nftElements("bridge", set)); n != want {
					t.Errorf("%s has %d members, want %d", set, n, want)
				}
			}
		} else {
			v4, v6 := h.save(false), h.save(true)
			// One RETURN per address and the final DROP; IPv6 adds
			// link-local, DAD and MLD.
			if n := countRules(v4, "tap541i0-src"); n != 753+1 {
				t.Errorf("tap541i0-src (IPv4) has %d rules, want %d", n, 753+1)
			}
			if n := countRules(v6, "tap541i0-src"); n != 247+4 {
				t.Errorf("tap541i0-src (IPv6) has %d rules, want %d", n, 247+4)
			}
			// The big VM's addresses and the peer's.
			if n := h.setMembers("sg-g-v4"); n != 753+1 {
				t.Errorf("sg-g-v4 has %d members, want %d", n, 753+1)
			}
			if n := h.setMembers("sg-g-v6"); n != 247+1 {
				t.Errorf("sg-g-v6 has %d members, want %d", n, 247+1)
			}
		}
		h.serve(big, lastV4, 22)
		h.serve(big, lastV6, 22)
		h.serve(peer, "192.0.2.2", 22)
		h.serve(peer, "2001:db8::2", 22)
		expectAll(t, []probe{
			{"big VM's last IPv4 address to a peer admitting the group", big, "192.0.2.2", 22, true},
			{"big VM's last IPv6 address to a peer admitting the group", big, "2001:db8::2", 22, true},
			{"peer to the big VM's last IPv4 address", peer, lastV4, 22, true},
			{"peer to the big VM's last IPv6 address", peer, lastV6, 22, true},
			{"a VM outside the group to the big VM", other, lastV4, 22, false},
			{"a VM outside the group to the big VM, IPv6", other, lastV6, 22, false},
		})
		if out := h.vmfw("apply", "--dry-run"); !strings.Contains(out, "no changes") {
			t.Errorf("apply after apply would change:\n%s", out)
		}
	})
}

// membersTotal is the size of the large group: 9,999 interfaces that only
// exist plus one VM.
const membersTotal = 10000

// largeEnv enables the test with 10,000 interfaces. Its first apply takes
// 12 to 20 minutes on this machine kind (docs/limits.md), far beyond the
// normal integration run; "make limits" sets it.
const largeEnv = "VMFW_LARGE"

// vmfwSlow runs vmfw in the hypervisor namespace like hv.vmfw, with a
// bound fit for an apply that installs thousands of interfaces.
func (h *hv) vmfwSlow(args ...string) string {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	full := append([]string{"netns", "exec", h.ns.Name, testbin.VMFW, h.backendFlags()[0], h.backendFlags()[1], "--config-dir", h.config}, args...)
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	if err != nil {
		h.t.Fatalf("vmfw %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestGroupWithTenThousandMembers: 10,000 interfaces list group g (9,999
// dummy interfaces and one VM, each with an IPv6 address, the only family
// with room for so many documentation addresses); apply firewalls all of
// them and fills g's IPv6 set with 10,000 addresses, and the VM still
// reaches a server that admits g while a VM outside g does not.
func TestGroupWithTenThousandMembers(t *testing.T) {
	if os.Getenv(largeEnv) == "" {
		t.Skipf("installs 10,000 interfaces, which takes up to 20 minutes per backend; set %s=1 (make limits)", largeEnv)
	}
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("groups/g.toml", "description = \"the large group\"\n")
		h.write("groups/srv.toml", "[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"g\"\n")
		// The members: VMs 20000 and up, one interface each with one
		// address of 2001:db8:1::/64.
		var names []string
		addr := netip.MustParseAddr("2001:db8:1::")
		for i := range membersTotal - 1 {
			id := 20000 + i
			addr = addr.Next()
			names = append(names, "tap"+strconv.Itoa(id)+"i0")
			h.write(fmt.Sprintf("vms/%d.toml", id), "[net0]\nips = [\""+addr.String()+"\"]\ngroups = [\"g\"]\n")
		}
		srv := h.guest(551, "02:00:00:00:05:51", "192.0.2.51", "2001:db8::51", "srv")
		member := h.guest(552, "02:00:00:00:05:52", "192.0.2.52", "2001:db8::52", "g")
		other := h.guest(553, "02:00:00:00:05:53", "192.0.2.53", "2001:db8::53")
		h.addDummies(names)
		h.firstV4(550, "192.0.2.9")
		for _, tap := range []string{"tap551i0", "tap552i0", "tap553i0"} {
			h.vmfw("ifup", tap)
		}
		h.vmfwSlow("apply")
		if n := h.setMembers("sg-g-v6"); n != membersTotal {
			t.Errorf("sg-g-v6 has %d members, want %d", n, membersTotal)
		}
		if h.nft() {
			// One element of the ports set per interface.
			if n := len(h.nftElements("bridge", "ports")); n != membersTotal {
				t.Errorf("%d interfaces are installed, want %d", n, membersTotal)
			}
		} else {
			v6 := h.save(true)
			// src, nd, out and in per member (anti-spoofing is on).
			if n := strings.Count(v6, "\n:tap2"); n != 4*(membersTotal-1) {
				t.Errorf("%d chains of the dummy members are installed, want %d", n, 4*(membersTotal-1))
			}
		}
		h.serve(srv, "2001:db8::51", 22)
		h.serve(srv, "192.0.2.51", 22)
		expectAll(t, []probe{
			{"member of g to a server admitting g", member, "2001:db8::51", 22, true},
			{"member of g to a server admitting g, IPv4", member, "192.0.2.51", 22, true},
			{"a VM outside g", other, "2001:db8::51", 22, false},
		})
		if out := h.vmfwSlow("apply", "--dry-run"); !strings.Contains(out, "no changes") {
			t.Errorf("apply after apply would change:\n%.2000s", out)
		}
	})
}

// TestSixtyGroupsOnOneTap: a tap listing 60 groups, each admitting its own
// members (two ipsets per group, 120 in all), passes a packet through the
// first 59 groups to the 60th, which admits it; a packet none admits meets
// the policy.
func TestSixtyGroupsOnOneTap(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		var groups []string
		for i := 1; i <= 60; i++ {
			g := fmt.Sprintf("g%02d", i)
			groups = append(groups, g)
			h.write("groups/"+g+".toml", fmt.Sprintf("[[in]]\nproto = \"tcp\"\ndport = \"%d\"\nsource_group = %q\n", 1000+i, g))
		}
		many := h.guest(561, "02:00:00:00:05:61", "192.0.2.61", "2001:db8::61", groups...)
		last := h.guest(562, "02:00:00:00:05:62", "192.0.2.62", "2001:db8::62", "g60")
		first := h.guest(563, "02:00:00:00:05:63", "192.0.2.63", "2001:db8::63", "g01")
		h.firstV4(560, "192.0.2.9")
		for _, tap := range []string{"tap561i0", "tap562i0", "tap563i0"} {
			h.vmfw("ifup", tap)
		}
		if h.nft() {
			// Two member sets per group, and the tap's element of gl-in
			// jumps to the chain of its list, which jumps to the 60
			// groups in its order.
			br := h.nftTable("bridge")
			if n := regexp.MustCompile(`(?m)^\tset sg-g\d\d-v[46] `).FindAllStringIndex(br, -1); len(n) != 120 {
				t.Errorf("%d member sets, want 120", len(n))
			}
			m := regexp.MustCompile(`"tap561i0" : jump (gl-[0-9a-f]+-in)`).FindStringSubmatch(br)
			if m == nil {
				t.Fatalf("tap561i0 has no element in gl-in:\n%.3000s", br)
			}
			chain := regexp.MustCompile(`(?s)\tchain ` + m[1] + ` \{\n(.*?)\n\t\}`).FindStringSubmatch(br)
			if chain == nil {
				t.Fatalf("no chain %s", m[1])
			}
			var jumps []string
			for _, j := range regexp.MustCompile(`jump (sg-g\d\d)-in`).FindAllStringSubmatch(chain[1], -1) {
				jumps = append(jumps, j[1])
			}
			var want []string
			for _, g := range groups {
				want = append(want, "sg-"+g)
			}
			if !slices.Equal(jumps, want) {
				t.Errorf("%s jumps to %v, want the 60 groups in order", m[1], jumps)
			}
		} else {
			sets := strings.Count(h.exec("ipset", "list", "-name"), "\n")
			if sets != 120 {
				t.Errorf("%d ipsets, want 120", sets)
			}
			for _, v6 := range []bool{false, true} {
				if n := countJumps(h.save(v6), "tap561i0-in", "sg-g"); n != 60 {
					t.Errorf("tap561i0-in (v6 %v) jumps to %d groups, want 60", v6, n)
				}
			}
		}
		for _, a := range []string{"192.0.2.61", "2001:db8::61"} {
			h.serve(many, a, 1060, 1001, 1030)
		}
		expectAll(t, []probe{
			{"member of g60 on g60's port", last, "192.0.2.61", 1060, true},
			{"member of g60 on g60's port, IPv6", last, "2001:db8::61", 1060, true},
			{"member of g60 on g01's port", last, "192.0.2.61", 1001, false},
			{"member of g01 on g01's port", first, "2001:db8::61", 1001, true},
			{"member of g01 on g30's port", first, "192.0.2.61", 1030, false},
		})
	})
}
