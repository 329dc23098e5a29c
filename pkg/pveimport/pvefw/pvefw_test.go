package pvefw

import "testing"

// TestParseRule reads rule lines the way parse_fw_rule does.
func TestParseRule(t *testing.T) {
	for _, c := range []struct {
		text   string
		want   Rule
		reason string
	}{
		{text: "IN SSH(ACCEPT) -source +trusted -log info # admins", want: Rule{Type: "in", Action: "ACCEPT", Macro: "SSH", Source: "+trusted", Log: "info", Comment: "admins"}},
		{text: "|out DROP -p tcp --dport 25,587", want: Rule{Disabled: true, Type: "out", Action: "DROP", Proto: "tcp", DPort: "25,587"}},
		{text: "GROUP web -i net1", want: Rule{Type: "group", Action: "web", Iface: "net1"}},
		{text: "IN ACCEPT -i net0 -proto udp -sport 67 -dport 68", want: Rule{Type: "in", Action: "ACCEPT", Iface: "net0", Proto: "udp", SPort: "67", DPort: "68"}},
		{text: "IN ACCEPT -p icmp -icmp-type echo-request", want: Rule{Type: "in", Action: "ACCEPT", Proto: "icmp", ICMPType: "echo-request"}},
		{text: "IN ACCEPT -p tcp -log loud", reason: "unable to parse rule parameters: -log loud"},
		{text: "ACCEPT", reason: "unable to parse rule: ACCEPT"},
		{text: "GROUP web -p tcp", reason: "unable to parse rule parameters: -p tcp"},
	} {
		got, reason := ParseRule(Line{Text: c.text})
		if reason != c.reason {
			t.Errorf("%q: reason %q, want %q", c.text, reason, c.reason)
			continue
		}
		got.Line = Line{}
		if reason == "" && got != c.want {
			t.Errorf("%q:\n got %+v\nwant %+v", c.text, got, c.want)
		}
	}
}

// TestParseFw: sections, lower-cased names, options in their normal form,
// and the lines pve-firewall skips.
func TestParseFw(t *testing.T) {
	f := ParseFw("firewall/cluster.fw", Cluster, `
  # comment
IN ACCEPT
[options]
ENABLE: 1
policy_in: drop
nonsense: 2
[IPSET Web-Servers] # the web servers
192.0.2.1
!192.0.2.2 # not this one
192.0.2.1
[group WEB]
IN HTTP(ACCEPT)
`)
	if o := f.Options["enable"]; o.Value != "1" || o.Line.Line != 5 {
		t.Errorf("enable: %+v", o)
	}
	if f.Options["policy_in"].Value != "DROP" {
		t.Errorf("policy_in: %+v", f.Options["policy_in"])
	}
	s := f.IPSets["web-servers"]
	if s == nil || s.Comment != "the web servers" || len(s.Entries) != 2 || !s.Entries[1].NoMatch || s.Entries[1].CIDR != "192.0.2.2" {
		t.Fatalf("ipset: %+v", s)
	}
	if g := f.Groups["web"]; g == nil || len(g.Rules) != 1 || g.Rules[0].Macro != "HTTP" {
		t.Fatalf("group: %+v", g)
	}
	var reasons []int
	for _, p := range f.Problems {
		reasons = append(reasons, p.Pos.Line)
	}
	if len(reasons) != 3 || reasons[0] != 3 || reasons[1] != 7 || reasons[2] != 11 {
		t.Errorf("problems at lines %v, want 3 (no section), 7 (bad option), 11 (duplicate entry)", reasons)
	}
}

// TestParseGuest reads netN lines of the current configuration only.
func TestParseGuest(t *testing.T) {
	g, problems := ParseGuest("qemu-server/100.conf", VM, 100, "", "name: web\nnet1: virtio=BC:24:11:00:00:01,bridge=vmbr1\nnet0: e1000=BC:24:11:00:00:00,bridge=vmbr0,firewall=1,tag=5\nnet40: virtio=BC:24:11:00:00:02\n[snap]\nnet2: virtio=BC:24:11:00:00:03,firewall=1\n")
	if len(problems) != 1 || problems[0].Pos.Line != 4 {
		t.Errorf("problems %+v", problems)
	}
	if g.Name != "web" || len(g.NICs) != 2 || g.NICs[0].Index != 0 || !g.NICs[0].Firewall || g.NICs[0].MAC != "BC:24:11:00:00:00" || g.NICs[1].Firewall || g.IfaceName(g.NICs[1]) != "tap100i1" {
		t.Errorf("%+v", g)
	}
	c, _ := ParseGuest("lxc/300.conf", Container, 300, "n1", "net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:03:00,ip=192.0.2.3/24,firewall=1\n")
	if c.NICs[0].MAC != "BC:24:11:00:03:00" || c.NICs[0].IP != "192.0.2.3/24" || c.IfaceName(c.NICs[0]) != "veth300i0" {
		t.Errorf("%+v", c)
	}
}
