package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The scale scenario: numGroups security groups of five rules each; every
// scale tap lists three of them. Every scale tap has an IPv6 address
// (scaleV6), so that the IPv6 address trees vmfw-route and vmfw-local hold
// one leaf per installed tap, as on a host whose VMs all have addresses
// (the "routed new flows" row measures dispatch through them). Only the
// first addressedTaps taps also have an IPv4 address (the documentation
// ranges hold a few hundred), so the groups' IPv4 ipsets have about ten
// members each whatever the number of taps, and their IPv6 ipsets about
// 3/20 of the installed taps (750 at 5000 taps).
const (
	numGroups     = 20
	groupsPerTap  = 3
	addressedTaps = 67 // 67 taps x 3 groups / 20 groups = 10 IPv4 members per group
	firstVMID     = 1000
)

// scaleV6 returns the IPv6 address of the scale tap of VM vmid:
// 2001:db8:1::VMID in hex, so that addresses sort as the VM ids do.
func scaleV6(vmid int) string { return fmt.Sprintf("2001:db8:1::%x", vmid) }

// hvV6 is the hypervisor's address on vmbr0, the data VMs' IPv6 default
// route; the routed rows add it (dataplane.go).
const hvV6 = "2001:db8:1::1"

// dataV6 returns the IPv6 address of data VM i (0 or 1) with n scale taps
// installed: one below (VM 1) and one above (VM 2) the highest scale
// address, odd ids no scale tap uses. VM 2's address so sorts last of all:
// in vmfw-route its entry is the last one of every node on its path, which
// goes through the nodes of the highest scale addresses.
func dataV6(n, i int) string {
	last := scaleVMID(n - 1)
	if i == 0 {
		return scaleV6(last - 1)
	}
	return scaleV6(last + 1)
}

// scaleVMID returns the VM id of the k-th installed scale tap. Ids are even
// so that odd ids in the middle of the range name taps that are configured
// but not installed: the "ifup of one more tap" row then inserts into the
// densest part of the dispatch tree rather than at its edge.
func scaleVMID(k int) int { return firstVMID + 2*k }

// extraVMID returns the id of the k-th configured, not installed tap: odd
// ids around the middle of the installed range.
func extraVMID(n, k int) int { return firstVMID + 2*(n/2) + 1 + 2*k }

// tapName mirrors config.TapName for interface 0.
func tapName(vmid int) string { return fmt.Sprintf("tap%di0", vmid) }

func groupName(i int) string { return fmt.Sprintf("g%02d", i%numGroups) }

// groupsOf returns the three groups scale tap k lists.
func groupsOf(k int) []string {
	return []string{groupName(k), groupName(k + 7), groupName(k + 13)}
}

// groupFile renders group i; variant changes one port so that an edit
// rewrites the group's chains.
func groupFile(i, variant int) string {
	return fmt.Sprintf(`description = "bench group %d"

[[in]]
proto = "tcp"
dport = "22"
source_group = %q
comment = "ssh from members"

[[in]]
proto = "tcp"
dport = "80,443,%d"
comment = "web"

[[in]]
proto = "icmp"

[[out]]
action = "drop"
proto = "tcp"
dport = "25"
comment = "no smtp"

[[out]]
proto = "udp"
dport = "53"
dest = ["198.51.100.53", "2001:db8:53::53"]
comment = "dns"
`, i, groupName(i+1), 8000+variant)
}

// benchGroup lets the data-plane traffic through: UDP to the sink's ports
// from any source (the routed rows send from the uplink, 2001:db8:ff::2),
// and ICMP and ICMPv6 echo. UDP below port 1024 is refused (the data VMs'
// policy_in is drop), which the routed rows' correctness probe relies on.
const benchGroup = `description = "data-plane probes"

[[in]]
proto = "udp"
dport = "1024:65535"
comment = "udp probes"

[[in]]
proto = "icmp"
comment = "ping"

[[in]]
proto = "icmpv6"
icmp_type = "echo-request"
comment = "ping6"
`

// vmFile renders the VM file of a scale tap.
func vmFile(vmid, k int, groups []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name = \"bench%d\"\n\n[net0]\n", vmid)
	fmt.Fprintf(&b, "mac = \"02:00:%02x:%02x:%02x:01\"\n", (vmid>>16)&0xff, (vmid>>8)&0xff, vmid&0xff)
	switch {
	case k >= 0 && k < addressedTaps:
		// 198.51.100.0/24 and 203.0.113.0/24 hold the IPv4 addresses; the
		// data-plane VMs use 192.0.2.0/24.
		v4 := fmt.Sprintf("198.51.100.%d", 10+k)
		if k >= 200 {
			v4 = fmt.Sprintf("203.0.113.%d", 10+k-200)
		}
		fmt.Fprintf(&b, "ips = [%q, %q]\n", v4, scaleV6(vmid))
	case k >= 0:
		fmt.Fprintf(&b, "ips = [%q]\n", scaleV6(vmid))
	}
	quoted := make([]string, len(groups))
	for i, g := range groups {
		quoted[i] = fmt.Sprintf("%q", g)
	}
	fmt.Fprintf(&b, "groups = [%s]\n", strings.Join(quoted, ", "))
	return b.String()
}

// dataVM is one of the two VMs the data-plane rows send traffic between.
type dataVM struct {
	vmid int
	mac  string
	ip   string
}

var dataVMs = []dataVM{
	{vmid: 901, mac: "02:00:00:00:09:01", ip: "192.0.2.11"},
	{vmid: 902, mac: "02:00:00:00:09:02", ip: "192.0.2.12"},
}

// dataVMFile renders the VM file of a data VM with its IPv4 address and
// the IPv6 address v6 (dataV6).
func dataVMFile(v dataVM, v6 string) string {
	return fmt.Sprintf(`name = "probe%d"
policy_in = "drop"

[net0]
mac = %q
ips = [%q, %q]
bridge = "vmbr0"
groups = ["g00", "g01", "bench"]
`, v.vmid, v.mac, v.ip, v6)
}

// writeScenario writes the configuration for n installed scale taps plus
// extra configured-but-absent taps and the two data-plane VMs. The extra
// taps (the ones "ifup of one more tap" adds) have no addresses.
func writeScenario(dir string, n, extra int) error {
	for _, sub := range []string{"groups", "vms"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	write := func(rel, text string) error {
		return os.WriteFile(filepath.Join(dir, rel), []byte(text), 0o644)
	}
	for i := range numGroups {
		if err := write(filepath.Join("groups", groupName(i)+".toml"), groupFile(i, 0)); err != nil {
			return err
		}
	}
	if err := write("groups/bench.toml", benchGroup); err != nil {
		return err
	}
	for k := range n {
		id := scaleVMID(k)
		if err := write(fmt.Sprintf("vms/%d.toml", id), vmFile(id, k, groupsOf(k))); err != nil {
			return err
		}
	}
	for k := range extra {
		id := extraVMID(n, k)
		if err := write(fmt.Sprintf("vms/%d.toml", id), vmFile(id, -1, groupsOf(k))); err != nil {
			return err
		}
	}
	for i, v := range dataVMs {
		if err := write(fmt.Sprintf("vms/%d.toml", v.vmid), dataVMFile(v, dataV6(n, i))); err != nil {
			return err
		}
	}
	return nil
}
