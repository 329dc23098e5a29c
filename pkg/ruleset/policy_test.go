package ruleset

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
)

func load(t *testing.T, files map[string]string) *config.Model {
	t.Helper()
	m, err := config.Load(configtest.Dir(t, files))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var compileFiles = map[string]string{
	"groups/web.toml": `
[[in]]
proto = "tcp"
dport = "80,443"
source_group = "admins"

[[in]]
proto = "icmp"
icmp_type = "port-unreachable"

[[out]]
proto = "47"
dest_group = "db"
`,
	"groups/admins.toml": "[[in]]\nproto = \"tcp\"\ndport = \"22\"\n",
	"groups/db.toml":     "[[in]]\nproto = \"tcp\"\ndport = \"5432\"\n",
	"groups/unused.toml": "[[in]]\nsource_group = \"web\"\n",
	"vms/110.toml":       "[net0]\nips = [\"192.0.2.10\", \"2001:db8::10\"]\ngroups = [\"web\"]\n",
	"vms/111.toml":       "enable = false\n[net0]\nips = [\"192.0.2.11\"]\ngroups = [\"admins\", \"unused\"]\n",
	"vms/112.toml":       "[net0]\nips = [\"2001:db8::12\"]\ngroups = [\"db\"]\n[net1]\n",
}

// TestCompile checks what backends rely on: interfaces sorted by name,
// groups of enabled interfaces only, members of referenced groups only
// (disabled members and remote members included), typed match terms.
func TestCompile(t *testing.T) {
	m := load(t, compileFiles)
	m.RemoteMembers = map[string][]netip.Addr{"db": {netip.MustParseAddr("198.51.100.7")}}
	var nics []*config.NIC
	for _, id := range []int{112, 111, 110} {
		nics = append(nics, m.VMs[id].NICs...)
	}
	p, err := Compile(m, nics)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range p.Interfaces {
		names = append(names, n.Name)
	}
	if want := []string{"tap110i0", "tap111i0", "tap112i0", "tap112i1"}; !slices.Equal(names, want) {
		t.Errorf("interfaces %v, want %v", names, want)
	}
	if got := slices.Sorted(maps.Keys(p.Groups)); !slices.Equal(got, []string{"db", "web"}) {
		t.Errorf("groups %v, want db and web (admins and unused are listed only by a disabled VM)", got)
	}
	if got := slices.Sorted(maps.Keys(p.Members)); !slices.Equal(got, []string{"admins", "db"}) {
		t.Errorf("member sets %v, want admins and db", got)
	}
	if got := p.Members["admins"].Addrs[IPv4]; len(got) != 1 || got[0].String() != "192.0.2.11" {
		t.Errorf("admins' IPv4 members %v, want the disabled VM's 192.0.2.11", got)
	}
	if got := p.Members["db"].Addrs; len(got[IPv4]) != 1 || len(got[IPv6]) != 1 {
		t.Errorf("db's members %v, want the remote 198.51.100.7 and 2001:db8::12", got)
	}
	web := p.Groups["web"]
	if r := web.In[1].Match; r.Proto.Number != 1 || r.Proto.Family() != IPv4 || r.ICMP.Type != 3 || r.ICMP.Code != 3 {
		t.Errorf("icmp port-unreachable compiled to %+v", r)
	}
	if r := web.Out[0]; r.Match.Proto.Name != "47" || r.Match.Proto.Number != 47 || r.Match.Proto.Family() != 0 || r.Origin != (Origin{Group: "web", Dir: config.Out}) {
		t.Errorf("proto 47 rule compiled to %+v", r)
	}
	if o := p.Owner(netip.MustParseAddr("2001:db8::12")); o == nil || o.Name != "tap112i0" {
		t.Errorf("owner of 2001:db8::12: %v", o)
	}
	if p.Interface("tap112i1") == nil || p.Interface("tap999i0") != nil {
		t.Error("Interface does not look interfaces up by name")
	}
}

// TestCompileListedTwice: an interface that lists a group twice (an
// attachment record may) is its member once, and a group referred to that
// no interface lists has no members; both agree with members(), which
// derived policies use.
func TestCompileListedTwice(t *testing.T) {
	m := load(t, compileFiles)
	twice := *m.VMs[112].NICs[0]
	twice.Groups = []string{"db", "web", "db"}
	nics := []*config.NIC{m.VMs[110].NICs[0], &twice}
	p, err := Compile(m, nics)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"db", "admins"} {
		want := members(g, p.Interfaces, nil)
		if got := p.Members[g]; got == nil || !maps.EqualFunc(got.Addrs, want.Addrs, slices.Equal) {
			t.Errorf("members of %s: %v, want %v", g, got, want)
		}
	}
	if got := p.Members["db"].Addrs[IPv6]; len(got) != 1 {
		t.Errorf("db's members %v, want 2001:db8::12 once", got)
	}
	if got := p.Members["admins"].Addrs; len(got) != 0 {
		t.Errorf("admins' members %v, want none (no interface lists it)", got)
	}
}

// TestCompileRefuses: an interface attached twice, or listing a group the
// configuration lacks (an attachment record racing an edit), is an error.
func TestCompileRefuses(t *testing.T) {
	m := load(t, compileFiles)
	nic := m.VMs[110].NICs[0]
	if _, err := Compile(m, []*config.NIC{nic, nic}); err == nil || !strings.Contains(err.Error(), "attached twice") {
		t.Errorf("attached twice: %v", err)
	}
	stray := *nic
	stray.Tap, stray.Groups = "veth1", []string{"gone"}
	if _, err := Compile(m, []*config.NIC{&stray}); err == nil || !strings.Contains(err.Error(), `unknown group "gone"`) {
		t.Errorf("unknown group: %v", err)
	}
}

// TestAttribute covers the four answers status and check give.
func TestAttribute(t *testing.T) {
	ip := []netip.Addr{netip.MustParseAddr("192.0.2.5")}
	for _, c := range []struct {
		enable, antispoof bool
		ips               []netip.Addr
		want              Attribution
	}{
		{true, true, ip, Filtered},
		{true, false, ip, ListedOnly},
		{true, true, nil, Dropped},
		{true, false, nil, Dropped},
		{false, true, ip, Unfiltered},
	} {
		n := &config.NIC{VM: &config.VM{Enable: c.enable}, Antispoof: c.antispoof, IPs: c.ips}
		if got := Attribute(n); got != c.want {
			t.Errorf("enable=%v antispoof=%v ips=%v: %s, want %s", c.enable, c.antispoof, c.ips, got, c.want)
		}
		if got := Attribute(n).Explain(); got == "" {
			t.Errorf("%s: no explanation", c.want)
		}
	}
}

// TestCompileFeatures: address sets a rule refers to are in Policy.Sets
// (with their entries, excepts and configuration) and unreferenced ones
// are not; rules carry their set names and log levels; interfaces their
// per-direction policy log levels and MAC-only anti-spoofing, which
// attributes routed traffic like antispoof = false.
func TestCompileFeatures(t *testing.T) {
	m := load(t, map[string]string{
		"sets/blocked.toml": "entries = [\"198.51.100.0/24\", \"2001:db8::/32\"]\nexcept = [\"198.51.100.128/25\"]\n",
		"sets/unused.toml":  "entries = [\"203.0.113.0/24\"]\n",
		"groups/edge.toml":  "[[in]]\nsource_set = \"blocked\"\naction = \"drop\"\nlog = \"info\"\n\n[[out]]\ndest_set = \"blocked\"\n",
		"vms/120.toml":      "log_in = \"debug\"\n[net0]\nmac = \"02:00:00:00:01:20\"\nips = [\"192.0.2.20\"]\nantispoof = \"mac\"\ngroups = [\"edge\"]\n",
	})
	p, err := Compile(m, m.VMs[120].NICs)
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(p.Sets)); !slices.Equal(got, []string{"blocked"}) {
		t.Fatalf("sets %v, want blocked alone", got)
	}
	s := p.Sets["blocked"]
	if len(s.Entries) != 2 || len(s.Except) != 1 || s.Config != m.Sets["blocked"] || s.File != m.Sets["blocked"].File {
		t.Errorf("set blocked compiled to %+v", s)
	}
	in, out := p.Groups["edge"].In[0], p.Groups["edge"].Out[0]
	if in.Match.SourceSet != "blocked" || in.Match.DestSet != "" || out.Match.DestSet != "blocked" || !in.Log || in.LogLevel != config.LogInfo {
		t.Errorf("rules compiled to %+v and %+v", in, out)
	}
	n := p.Interfaces[0]
	if !n.Antispoof || !n.AntispoofMACOnly || n.LogIn != config.LogDebug || n.LogOut != config.LogOff {
		t.Errorf("interface compiled to %+v", n)
	}
	if a := n.Attribution(); a != ListedOnly || !strings.Contains(a.Explain(), `"mac"`) {
		t.Errorf("a MAC-only interface is attributed %s (%s), want listed-only", a, a.Explain())
	}
}
