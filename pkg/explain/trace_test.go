package explain

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
)

// keysDir has one group rule per rule key (testdata/keys/groups), VMs
// with every policy, a disabled VM, one without anti-spoofing and one
// with interfaces on two subnets.
const keysDir = "testdata/keys"

// keysHost are the hypervisor's addresses in the keys scenario: on both
// subnets of the bridge, and on a routed link.
var keysHost = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("2001:db8::1/64"),
	netip.MustParsePrefix("203.0.113.1/24"), netip.MustParsePrefix("2001:db8:3::1/64"),
	netip.MustParsePrefix("198.51.100.1/24"), netip.MustParsePrefix("2001:db8:2::1/64"),
}

// keysInput is the keys scenario with every interface attached and a
// kernel holding exactly the compiled rules.
func keysInput(t *testing.T) *Input {
	t.Helper()
	return keysInputFrom(t, keysDir)
}

// q builds a query; ports -1 unless given.
func q(from, to, proto string, dport int) Query {
	return Query{From: from, To: to, Proto: proto, DPort: dport, SPort: -1}
}

// TestRuleKeys traces one flow per rule key, action and path and checks
// the verdict, the path and the rule that decided, by file and line.
func TestRuleKeys(t *testing.T) {
	in := keysInput(t)
	web, admin, db, clients := "testdata/keys/groups/web.toml", "testdata/keys/groups/admin.toml", "testdata/keys/groups/db.toml", "testdata/keys/groups/clients.toml"
	withSport := func(x Query, p int) Query { x.SPort = p; return x }
	withICMP := func(x Query, typ string) Query { x.ICMPType = typ; return x }
	withMAC := func(x Query, mac string) Query { x.MAC = mac; return x }
	cases := []struct {
		name    string
		q       Query
		verdict string
		path    string
		// by is where the deciding rule is written ("" for rules vmfw
		// adds by itself); what names its kind.
		by, what string
	}{
		{"proto+dport list", q("305", "301", "tcp", 443), "accept", PathBridged, web + ":3", "rule"},
		{"source_group", q("client", "tap301i0", "tcp", 22), "accept", PathBridged, admin + ":3", "rule"},
		{"drop with log", q("192.0.2.200", "301", "tcp", 22), "drop", PathBridged, admin + ":13", "rule"},
		{"source (routed)", q("198.51.100.7", "301", "tcp", 8080), "accept", PathRouted, web + ":8", "rule"},
		{"source not matching", q("192.0.2.200", "301", "tcp", 8080), "drop", PathBridged, "testdata/keys/vms/301.toml", "policy"},
		{"sport", withSport(q("192.0.2.200", "301", "udp", 9999), 53), "accept", PathBridged, web + ":13", "rule"},
		{"icmp_type", q("192.0.2.200", "301", "icmp", -1), "accept", PathBridged, web + ":17", "rule"},
		{"icmp reply without request", withICMP(q("192.0.2.200", "301", "icmp", -1), "echo-reply"), "drop", PathBridged, "", "state"},
		{"icmpv6 icmp_type", q("2001:db8::200", "301", "icmpv6", -1), "accept", PathBridged, web + ":21", "rule"},
		{"reject", q("192.0.2.200", "301", "tcp", 25), "reject", PathBridged, web + ":25", "rule"},
		{"source_mac of a VM", q("305", "301", "udp", 161), "accept", PathBridged, admin + ":8", "rule"},
		{"source_mac, other sender", withMAC(q("192.0.2.200", "301", "udp", 161), "02:00:00:00:99:99"), "drop", PathBridged, "testdata/keys/vms/301.toml", "policy"},
		{"source_mac, sender with it", withMAC(q("192.0.2.200", "301", "udp", 161), "02:00:00:00:00:35"), "accept", PathBridged, admin + ":8", "rule"},
		{"source_group web", q("301", "302", "tcp", 5432), "accept", PathBridged, db + ":3", "rule"},
		{"dest to the hypervisor", q("302", "hypervisor", "udp", 53), "accept", PathToHypervisor, db + ":8", "rule"},
		{"dest_group", q("302", "301", "tcp", 443), "accept", PathBridged, web + ":3", "rule"},
		{"dest_group not matching", q("302", "305", "tcp", 443), "drop", PathBridged, "testdata/keys/vms/302.toml", "policy"},
		{"out drop", q("305", "192.0.2.200", "tcp", 25), "drop", PathBridged, clients + ":3", "rule"},
		{"out proto number reject", q("305", "192.0.2.200", "47", -1), "reject", PathBridged, clients + ":8", "rule"},
		{"hypervisor: no source_mac rules", q("hypervisor", "301", "udp", 161), "drop", PathFromHypervisor, "testdata/keys/vms/301.toml", "policy"},
		{"hypervisor: drop rule", q("host", "301", "tcp", 22), "drop", PathFromHypervisor, admin + ":13", "rule"},
		{"disabled VM", q("192.0.2.200", "304", "tcp", 9), "accept", PathBridged, "testdata/keys/vms/304.toml", "disabled"},
		{"no antispoof, policy accept", q("192.0.2.200", "303", "tcp", 80), "accept", PathBridged, "testdata/keys/vms/303.toml", "policy"},
		{"policy reject", q("192.0.2.200", "302", "tcp", 80), "reject", PathBridged, "testdata/keys/vms/302.toml", "policy"},
		{"IPv6 routed", q("2001:db8:2::5", "301", "tcp", 80), "accept", PathRouted, web + ":3", "rule"},
		{"VM to VM routed", q("305:1", "301", "tcp", 80), "accept", PathRouted, web + ":3", "rule"},
		{"VM to VM routed IPv6", Query{From: "tap305i1", To: "301", Proto: "tcp", DPort: 80, SPort: -1, Family: 6}, "accept", PathRouted, web + ":3", "rule"},
		{"dhcp reply", withSport(q("192.0.2.200", "301", "udp", 68), 67), "accept", PathBridged, "", "dhcp"},
		{"no dhcp server in a VM", withSport(q("301", "192.0.2.200", "udp", 68), 67), "drop", PathBridged, "testdata/keys/vms/301.toml", "antispoof"},
		{"ndp", withICMP(q("2001:db8::200", "301", "icmpv6", -1), "neighbour-solicitation"), "accept", PathBridged, "", "ndp"},
		{"router advertisement from a VM", withICMP(q("301", "2001:db8::200", "icmpv6", -1), "router-advertisement"), "drop", PathBridged, "testdata/keys/vms/301.toml", "antispoof"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := Trace(in, c.q)
			if err != nil {
				t.Fatal(err)
			}
			if r.Verdict != c.verdict || r.Config.Verdict != c.verdict || r.Kernel.Verdict != c.verdict {
				t.Errorf("verdict %s (configuration %s, kernel %s: %s), want %s", r.Verdict, r.Config.Verdict, r.Kernel.Verdict, r.Kernel.DecidedBy, c.verdict)
			}
			if r.Path != c.path {
				t.Errorf("path %s, want %s", r.Path, c.path)
			}
			if len(r.Drift) != 0 {
				t.Errorf("drift %v", r.Drift)
			}
			steps := append(slices.Clone(r.Config.Out), r.Config.In...)
			var last *struct{ where, what string }
			for _, s := range steps {
				if s.Match == "yes" && s.Action != "" {
					where := s.File
					if s.Line > 0 && s.What == "rule" {
						where += ":" + strconv.Itoa(s.Line)
					}
					last = &struct{ where, what string }{where, s.What}
				}
			}
			if last == nil || last.what != c.what || last.where != c.by {
				t.Errorf("decided by %+v, want %s at %q\nsteps: %+v", last, c.what, c.by, steps)
			}
			if c.what == "rule" && !strings.Contains(r.Kernel.DecidedBy, c.by) {
				t.Errorf("kernel decided by %q, want a rule from %s", r.Kernel.DecidedBy, c.by)
			}
		})
	}
}

// TestQueryErrors: unknown VMs, taps and addresses, and queries no rule
// can answer, are errors that say what is wrong.
func TestQueryErrors(t *testing.T) {
	in := keysInput(t)
	for _, c := range []struct {
		q    Query
		want string
	}{
		{q("999", "301", "tcp", 22), "no VM 999"},
		{q("301:4", "302", "tcp", 22), "no [net4]"},
		{q("tap999i0", "301", "tcp", 22), "unknown VM, tap or address"},
		{q("nosuchvm", "301", "tcp", 22), "unknown VM, tap or address"},
		{q("192.0.2.200", "198.51.100.9", "tcp", 22), "neither"},
		{q("192.0.2.200", "2001:db8::31", "tcp", 22), "do not mix"},
		{q("303", "301", "icmpv6", -1), "no IPv6 address"},
		{q("301", "302", "gopher", 70), "--proto"},
		{q("301", "302", "icmp", 7), "ports need tcp, udp or sctp"},
		{q("301", "301", "tcp", 22), "same interface"},
		{withPath(q("301", "302", "tcp", 22), "sideways"), "--path"},
		{q("224.0.0.1", "301", "udp", 5), "not a unicast address"},
	} {
		_, err := Trace(in, c.q)
		if err == nil || !IsQueryError(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want a query error with %q", c.q, err, c.want)
		}
	}
}

func withPath(x Query, p string) Query { x.Path = p; return x }

// TestNotAttached: a VM whose tap has no chains gets the configuration's
// answer for when it runs, and a note; the kernel drops what reaches a
// managed port without chains.
func TestNotAttached(t *testing.T) {
	in := keysInput(t)
	attached := slices.DeleteFunc(in.Attached, func(n *config.NIC) bool { return n.Tap == "tap302i0" })
	in = applied(t, in.Model, attached)
	in.HostAddrs = keysHost
	r, err := Trace(in, q("301", "302", "tcp", 5432))
	if err != nil {
		t.Fatal(err)
	}
	if r.To.Attached || r.Config.Verdict != "accept" || r.Kernel.Verdict != "drop" {
		t.Errorf("to %+v, configuration %s, kernel %s (%s)", r.To, r.Config.Verdict, r.Kernel.Verdict, r.Kernel.DecidedBy)
	}
	if !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, "tap302i0 is not attached") }) {
		t.Errorf("notes %q", r.Notes)
	}
	if len(r.Drift) != 0 {
		t.Errorf("a VM not running is not drift: %q", r.Drift)
	}
}

// TestAlternatives: what a query leaves open (ports, the sender's MAC)
// is tried at every value where a rule's answer changes.
func TestAlternatives(t *testing.T) {
	in := keysInput(t)
	for _, c := range []struct {
		q    Query
		want string
	}{
		{q("192.0.2.200", "301", "udp", -1), "source port 53 ("},
		{q("192.0.2.200", "301", "udp", 161), "source MAC 02:00:00:00:00:35 ("},
		{q("192.0.2.200", "301", "tcp", -1), "destination port 80, 443 ("},
	} {
		r, err := Trace(in, c.q)
		if err != nil {
			t.Fatal(err)
		}
		if r.Verdict != "drop" {
			t.Errorf("%+v: verdict %s, want drop (policy)", c.q, r.Verdict)
		}
		var whens []string
		for _, a := range r.Alternatives {
			whens = append(whens, a.When+" => "+a.Verdict)
		}
		if all := strings.Join(whens, "\n"); !strings.Contains(all, c.want) {
			t.Errorf("%+v: alternatives lack %q:\n%s", c.q, c.want, all)
		}
	}
}
