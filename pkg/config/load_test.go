package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

func TestLoadEmptyDirDefaults(t *testing.T) {
	m := mustLoad(t, t.TempDir())
	want := Host{Managed: []string{"tap+"}, Mark: DefaultMark, MarkMask: DefaultMarkMask, LogLimit: "10/second", LogBurst: 20, RepairInterval: DefaultRepairInterval}
	if !reflect.DeepEqual(m.Host, want) {
		t.Errorf("Host = %+v, want %+v", m.Host, want)
	}
	if len(m.Groups) != 0 || len(m.VMs) != 0 {
		t.Errorf("Groups = %v, VMs = %v, want none", m.Groups, m.VMs)
	}
}

func TestLoadDefaults(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{
		"vmfw.toml":       "\xef\xbb\xbf# a byte order mark is ignored\n",
		"groups/any.toml": "[[in]]\n[[out]]\n",
		"vms/7.toml":      "[net0]\n",
	})
	m := mustLoad(t, dir)
	if m.Host.Mark != DefaultMark || m.Host.LogBurst != 20 || m.Host.LogLimit != "10/second" || len(m.Host.Managed) != 1 {
		t.Errorf("Host = %+v, want defaults", m.Host)
	}
	g := m.Groups["any"]
	wantRule := func(line int) Rule { return Rule{Line: line, Action: Accept} }
	if !reflect.DeepEqual(g.In, []Rule{wantRule(1)}) || !reflect.DeepEqual(g.Out, []Rule{wantRule(2)}) {
		t.Errorf("rules in %+v out %+v, want one accept-any rule each", g.In, g.Out)
	}
	vm := m.VMs[7]
	if !vm.Enable || vm.PolicyIn != Drop || vm.PolicyOut != Accept || vm.Log || vm.LogIn != LogOff || vm.LogOut != LogOff || vm.Name != "" {
		t.Errorf("VM = %+v, want enabled, policy in drop, out accept, no log", vm)
	}
	n := vm.NICs[0]
	if !n.Antispoof || !n.DHCP || n.MAC != nil || n.IPs != nil || n.Bridge != "" || len(n.Groups) != 0 {
		t.Errorf("NIC = %+v, want antispoof and dhcp on, nothing else", n)
	}
}

// TestLoadFull loads a configuration using every key and checks the Model.
func TestLoadFull(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{
		"vmfw.toml": `managed = ["tap+", "veth.vm+", "fwpr1"]
mark = "0x00200000"
log_limit = "5/minute"
log_burst = 3
repair_interval = "2s"
metrics_listen = "127.0.0.1:9469"
`,
		"groups/admins.toml": "description = \"admin desks\"\n",
		"groups/web.toml": `description = "public web, ssh from admins"

[[in]]
proto = "TCP"
dport = "80, 443,8000:8080"
comment = "http"

[[in]]
proto = "tcp"
dport = 22
sport = "1024:65535"
source_group = "admins"

[[in]]
source = ["192.0.2.55", "2001:db8::/64"]
action = "reject"
log = true

[[in]]
source_mac = "1E-0B-85-27-8D-65"

[[in]]
proto = "icmp"
icmp_type = "ping"

[[in]]
proto = "ipv6-icmp"
icmp_type = "Neighbor-Solicitation"

[[in]]
proto = 17
dport = "53"

[[in]]
proto = "47"

[[out]]
action = "drop"
proto = "tcp"
dport = "25"
dest = "0.0.0.0/0"

[[out]]
proto = "icmpv6"
icmp_type = 128
dest_group = "web"
`,
		"vms/110.toml": `name = "web01"
enable = false
policy_in = "reject"
policy_out = "drop"
log = true

[net1]
mac = "1e:0b:85:27:8d:66"
ips = ["198.51.100.10"]
antispoof = false
dhcp = false

[net0]
mac = "1e:0b:85:27:8d:65"
ips = ["192.0.2.10", "2001:db8::10"]
bridge = "vmbr0"
groups = ["web", "admins"]
`,
		"vms/9.toml": "[net0]\nips = [\"192.0.2.9\"]\ngroups = [\"admins\"]\n",
	})
	m := mustLoad(t, dir)

	wantHost := Host{Managed: []string{"tap+", "veth.vm+", "fwpr1"}, Mark: 0x200000, MarkMask: DefaultMarkMask, LogLimit: "5/minute", LogBurst: 3, RepairInterval: 2 * time.Second, MetricsListen: "127.0.0.1:9469"}
	if !reflect.DeepEqual(m.Host, wantHost) {
		t.Errorf("Host = %+v, want %+v", m.Host, wantHost)
	}
	if m.Dir != dir {
		t.Errorf("Dir = %q, want %q", m.Dir, dir)
	}

	g := m.Groups["web"]
	if g.Name != "web" || g.File != filepath.Join(dir, "groups", "web.toml") || g.Description != "public web, ssh from admins" {
		t.Errorf("group = %q %q %q", g.Name, g.File, g.Description)
	}
	mac := func(s string) net.HardwareAddr {
		m, err := net.ParseMAC(s)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	wantIn := []Rule{
		{Line: 3, Action: Accept, Proto: "tcp", DPort: []PortRange{{80, 80}, {443, 443}, {8000, 8080}}, Comment: "http"},
		{Line: 8, Action: Accept, Proto: "tcp", DPort: []PortRange{{22, 22}}, SPort: []PortRange{{1024, 65535}}, SourceGroup: "admins"},
		{Line: 14, Action: Reject, Source: []netip.Prefix{netip.MustParsePrefix("192.0.2.55/32"), netip.MustParsePrefix("2001:db8::/64")}, Log: true, LogLevel: LogWarning},
		{Line: 19, Action: Accept, SourceMAC: mac("1e:0b:85:27:8d:65")},
		{Line: 22, Action: Accept, Proto: "icmp", ICMPType: "echo-request"},
		{Line: 26, Action: Accept, Proto: "icmpv6", ICMPType: "neighbour-solicitation"},
		{Line: 30, Action: Accept, Proto: "udp", DPort: []PortRange{{53, 53}}},
		{Line: 34, Action: Accept, Proto: "47"},
	}
	wantOut := []Rule{
		{Line: 37, Action: Drop, Proto: "tcp", DPort: []PortRange{{25, 25}}, Dest: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}},
		{Line: 43, Action: Accept, Proto: "icmpv6", ICMPType: "128", DestGroup: "web"},
	}
	if !reflect.DeepEqual(g.In, wantIn) {
		t.Errorf("in rules\n got %+v\nwant %+v", g.In, wantIn)
	}
	if !reflect.DeepEqual(g.Out, wantOut) {
		t.Errorf("out rules\n got %+v\nwant %+v", g.Out, wantOut)
	}
	if r := g.Rules(Out); len(r) != 2 {
		t.Errorf("Rules(Out) = %d rules, want 2", len(r))
	}

	vm := m.VMs[110]
	if vm.ID != 110 || vm.Name != "web01" || vm.Enable || vm.PolicyIn != Reject || vm.PolicyOut != Drop || !vm.Log || vm.LogIn != LogWarning || vm.LogOut != LogWarning {
		t.Errorf("VM = %+v", vm)
	}
	if len(vm.NICs) != 2 || vm.NICs[0].Index != 0 || vm.NICs[1].Index != 1 {
		t.Fatalf("NICs not sorted by index: %+v", vm.NICs)
	}
	n0 := vm.NICs[0]
	want0 := &NIC{VM: vm, Index: 0, Line: 13, Tap: "tap110i0", MAC: mac("1e:0b:85:27:8d:65"),
		IPs:    []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")},
		Bridge: "vmbr0", Groups: []string{"web", "admins"}, Antispoof: true, DHCP: true}
	if !reflect.DeepEqual(n0, want0) {
		t.Errorf("net0\n got %+v\nwant %+v", n0, want0)
	}
	n1 := vm.NICs[1]
	if n1.Tap != "tap110i1" || n1.Line != 7 || n1.Antispoof || n1.DHCP || n1.VM != vm {
		t.Errorf("net1 = %+v", n1)
	}
	if m.NIC("tap110i1") != n1 || m.NIC("tap9i0") != m.VMs[9].NICs[0] || m.NIC("tap110i2") != nil {
		t.Error("Model.NIC does not find the interfaces by tap name")
	}
}

// TestLoadSymlinkInside accepts links that stay within the directory, as
// when groups are shared between names or the directory itself is a link.
func TestLoadSymlinkInside(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{"shared/web.toml": web})
	symlink("groups/web.toml", "../shared/web.toml")(t, dir)
	link := filepath.Join(t.TempDir(), "etc-vmfw")
	symlink(filepath.Base(link), dir)(t, filepath.Dir(link))
	m := mustLoad(t, link)
	if m.Groups["web"] == nil {
		t.Fatal("linked group not loaded")
	}
}

// TestLoadReference loads the reference scenario shipped as an example.
func TestLoadReference(t *testing.T) {
	m := mustLoad(t, filepath.Join("..", "..", "conf", "examples", "reference"))
	if len(m.Groups) != 5 || len(m.VMs) != 5 {
		t.Fatalf("%d groups and %d VMs, want 5 and 5", len(m.Groups), len(m.VMs))
	}
	wantGroups := map[int][]string{
		101: {"security2"}, 102: {"security3"}, 103: {"security4"}, 104: {"security2"},
		110: {"security1", "security5"},
	}
	for id, groups := range wantGroups {
		vm := m.VMs[id]
		if vm == nil || len(vm.NICs) != 1 {
			t.Fatalf("VM %d missing or without exactly one interface", id)
		}
		n := vm.NICs[0]
		last := id % 100
		if id == 110 {
			last = 10
		}
		wantMAC := fmt.Sprintf("02:00:00:00:01:%02d", last)
		wantIPs := []netip.Addr{netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", id)), netip.MustParseAddr(fmt.Sprintf("2001:db8::%d", id))}
		if n.Tap != TapName(id, 0) || n.MAC.String() != wantMAC || !reflect.DeepEqual(n.IPs, wantIPs) ||
			n.Bridge != "vmbr0" || !reflect.DeepEqual(n.Groups, groups) {
			t.Errorf("VM %d interface = %+v, want %s %v %v on vmbr0 in %v", id, n, wantMAC, wantIPs, groups, groups)
		}
	}
	if vm := m.VMs[110]; vm.PolicyIn != Drop || !vm.Log || vm.LogIn != LogWarning || vm.LogOut != LogWarning {
		t.Errorf("VM 110 policy_in %q log %v (%q, %q), want drop and logging at warning", vm.PolicyIn, vm.Log, vm.LogIn, vm.LogOut)
	}
	// ssh from members only means something if the groups have members.
	if r := m.Groups["security1"].In[1]; r.SourceGroup != "security4" || r.DPort[0] != (PortRange{22, 22}) {
		t.Errorf("security1 rule 2 = %+v, want ssh from security4", r)
	}
	if r := m.Groups["security3"].In[2]; r.SourceGroup != "security2" {
		t.Errorf("security3 rule 3 = %+v, want ssh from security2", r)
	}
}

// TestLoadManyVMs loads 10,000 VM files, the scale Load must stay linear at.
func TestLoadManyVMs(t *testing.T) {
	const n = 10000
	m := mustLoad(t, configtest.Dir(t, manyVMs(n)))
	if len(m.VMs) != n {
		t.Fatalf("%d VMs, want %d", len(m.VMs), n)
	}
	if m.NIC("tap10999i0") == nil {
		t.Error("last VM's interface missing")
	}
}

// BenchmarkLoad10000 measures a Load of 10,000 VMs, what every ifup pays.
func BenchmarkLoad10000(b *testing.B) {
	dir := configtest.Dir(b, manyVMs(10000))
	b.ResetTimer()
	for range b.N {
		if _, err := Load(dir); err != nil {
			b.Fatal(err)
		}
	}
}

// manyVMs returns n VM files, each with one interface with its own MAC and
// addresses in one shared group.
func manyVMs(n int) map[string]string {
	files := map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = 80\nsource_group = \"web\"\n"}
	for i := range n {
		id := 1000 + i
		files[fmt.Sprintf("vms/%d.toml", id)] = fmt.Sprintf(
			"name = \"vm%d\"\n[net0]\nmac = \"02:00:00:%02x:%02x:%02x\"\nips = [\"10.%d.%d.%d\", \"2001:db8::%x\"]\nbridge = \"vmbr0\"\ngroups = [\"web\"]\n",
			id, id>>16&0xff, id>>8&0xff, id&0xff, id>>16&0xff, id>>8&0xff, id&0xff, id)
	}
	return files
}
