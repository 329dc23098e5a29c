package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The scale scenario: numGroups security groups of five rules each; every
// scale tap lists three of them. Only the first addressedTaps taps carry
// addresses, so each group has about ten members in its ipsets whatever the
// number of taps (the control-plane rows send no traffic, and a tap without
// addresses simply has its IP traffic dropped by anti-spoofing).
const (
	numGroups     = 20
	groupsPerTap  = 3
	addressedTaps = 67 // 67 taps x 3 groups / 20 groups = 10 members per group
	firstVMID     = 1000
)

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
// and ICMP echo.
const benchGroup = `description = "data-plane probes"

[[in]]
proto = "udp"
dport = "1024:65535"
comment = "udp probes"

[[in]]
proto = "icmp"
comment = "ping"
`

// vmFile renders the VM file of a scale tap.
func vmFile(vmid, k int, groups []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name = \"bench%d\"\n\n[net0]\n", vmid)
	fmt.Fprintf(&b, "mac = \"02:00:%02x:%02x:%02x:01\"\n", (vmid>>16)&0xff, (vmid>>8)&0xff, vmid&0xff)
	if k >= 0 && k < addressedTaps {
		// 198.51.100.0/24 and 203.0.113.0/24 hold the addressed taps; the
		// data-plane VMs use 192.0.2.0/24.
		v4 := fmt.Sprintf("198.51.100.%d", 10+k)
		if k >= 200 {
			v4 = fmt.Sprintf("203.0.113.%d", 10+k-200)
		}
		fmt.Fprintf(&b, "ips = [%q, \"2001:db8:1::%x\"]\n", v4, vmid)
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

func dataVMFile(v dataVM) string {
	return fmt.Sprintf(`name = "probe%d"
policy_in = "drop"

[net0]
mac = %q
ips = [%q]
bridge = "vmbr0"
groups = ["g00", "g01", "bench"]
`, v.vmid, v.mac, v.ip)
}

// writeScenario writes the configuration for n installed scale taps plus
// extra configured-but-absent taps and the two data-plane VMs.
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
	for _, v := range dataVMs {
		if err := write(fmt.Sprintf("vms/%d.toml", v.vmid), dataVMFile(v)); err != nil {
			return err
		}
	}
	return nil
}
