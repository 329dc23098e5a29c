package layout

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// routeNICs returns n attached interfaces of one enabled VM each with an
// IPv6 address in 2001:db8:1::/64 and, for the first 200, an IPv4 one.
func routeNICs(n int, groups ...string) []*config.NIC {
	out := make([]*config.NIC, n)
	for k := range out {
		id := 1000 + 2*k
		vm := &config.VM{ID: id, Enable: true, PolicyIn: config.Drop, PolicyOut: config.Accept}
		nic := &config.NIC{VM: vm, Tap: fmt.Sprintf("tap%di0", id), Antispoof: true, Groups: groups,
			IPs: []netip.Addr{netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%x", id))}}
		if k < 200 {
			nic.IPs = append(nic.IPs, netip.MustParseAddr(fmt.Sprintf("198.51.%d.%d", 100+k/250, k%250+1)))
		}
		vm.NICs = []*config.NIC{nic}
		out[k] = nic
	}
	return out
}

var destRule = regexp.MustCompile(`^-d (\S+) -g (\S+)$`)

// routeTrace follows a packet to dst through the address tree at root:
// it returns the chain the packet is sent to ("" when it falls off the
// tree) and the number of "-d" matches evaluated.
func routeTrace(t *testing.T, chains map[Chain]*ChainRules, root Chain, dst netip.Addr) (Chain, int) {
	t.Helper()
	return walk(t, chains, root, dst.String()+": address tree", 40, func(spec string) (Chain, bool) {
		m := destRule.FindStringSubmatch(spec)
		if m == nil {
			return "", false // the head: clearing the mark
		}
		if !netip.MustParsePrefix(m[1]).Contains(dst) {
			return "", true
		}
		return Chain(m[2]), true
	}, func(c Chain) bool { return chains[c] == nil || !isDispatchChain(c) })
}

// TestRouteTreeReachesEveryAddress: every listed address of either family
// reaches its interface's in chain, an address nobody lists reaches none,
// and a packet evaluates few matches at 5000 interfaces.
func TestRouteTreeReachesEveryAddress(t *testing.T) {
	m := &config.Model{Host: config.Host{Mark: 0x1000}, Groups: map[string]*config.Group{}}
	nics := routeNICs(5000)
	p := compile(t, m, nics)
	b := newBuilder(p)
	for _, f := range ruleset.Families {
		chains := chainMap(b.routes(f, p.Interfaces))
		worst := 0
		for _, n := range nics {
			for _, ip := range n.IPs {
				if ruleset.FamilyOf(ip) != f {
					continue
				}
				for _, root := range []Chain{ChainRoute, ChainLocal} {
					got, cost := routeTrace(t, chains, root, ip)
					if got != TapChain(n.Tap, "in") {
						t.Fatalf("%s via %s reaches %q, want %s-in", ip, root, got, n.Tap)
					}
					worst = max(worst, cost)
				}
			}
		}
		stranger := netip.MustParseAddr("2001:db8:1::ffff:1")
		if f == ruleset.IPv4 {
			stranger = netip.MustParseAddr("198.51.100.251")
		}
		if got, _ := routeTrace(t, chains, ChainRoute, stranger); got != "" {
			t.Errorf("%s, listed by nobody, reaches %s", stranger, got)
		}
		// 16 entries per node at most, a node per hex digit that tells
		// the addresses apart: 4 digits for 5000 IPv6 addresses.
		if worst > 80 {
			t.Errorf("%s: worst case %d destination matches at 5000 interfaces", f, worst)
		}
	}
}

// TestRouteTreeNodeNamesAndPrefixes checks the prefixes the nodes match
// and the chain names they get: nibble-aligned, named after their digits
// while short, after a hash when long, never colliding.
func TestRouteTreeNodeNamesAndPrefixes(t *testing.T) {
	for _, c := range []struct {
		f    ruleset.Family
		key  string
		want string
	}{
		{ruleset.IPv4, "c0000205", "192.0.2.5/32"},
		{ruleset.IPv4, "c00002+", "192.0.2.0/24"},
		{ruleset.IPv4, "c000020+", "192.0.2.0/28"},
		{ruleset.IPv6, "20010db80001" + "0000000000000000" + "03e8", "2001:db8:1::3e8/128"},
		{ruleset.IPv6, "20010db80001+", "2001:db8:1::/48"},
	} {
		if got := routePrefix(c.f, c.key).String(); got != c.want {
			t.Errorf("routePrefix(%s, %s) = %s, want %s", c.f, c.key, got, c.want)
		}
	}
	m := &config.Model{Host: config.Host{Mark: 0x1000}, Groups: map[string]*config.Group{}}
	p := compile(t, m, routeNICs(5000))
	seen := map[Chain]bool{}
	for _, f := range ruleset.Families {
		for _, c := range newBuilder(p).routes(f, p.Interfaces) {
			if len(c.Name) > 28 {
				t.Errorf("chain name %s longer than iptables allows", c.Name)
			}
			if !IsOwnedName(string(c.Name)) {
				t.Errorf("chain name %s not recognised as vmfw's", c.Name)
			}
			if seen[c.Name] && f == ruleset.IPv4 {
				t.Errorf("chain %s written twice", c.Name)
			}
			seen[c.Name] = true
		}
	}
}

// TestLocalTreeAvoidsMACMatches: vmfw-local sends a packet to TAP-lin when
// the interface's groups match source MACs in their in rules, and no chain
// OUTPUT reaches holds a mac match; vmfw-route keeps TAP-in.
func TestLocalTreeAvoidsMACMatches(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	m := &config.Model{Host: config.Host{Mark: 0x1000, Managed: []string{"tap+"}, LogLimit: "1/second", LogBurst: 1}, Groups: map[string]*config.Group{
		"bymac": {Name: "bymac", In: []config.Rule{{Action: config.Accept, SourceMAC: mac}, {Action: config.Accept, Proto: "tcp", DPort: []config.PortRange{{Lo: 22, Hi: 22}}}}},
		"plain": {Name: "plain", In: []config.Rule{{Action: config.Accept, Proto: "tcp", DPort: []config.PortRange{{Lo: 80, Hi: 80}}}}},
	}}
	withMAC := routeNICs(2, "plain", "bymac")[0]
	without := routeNICs(4, "plain")[3]
	rs := buildFor(t, m, []*config.NIC{withMAC, without})
	for _, f := range ruleset.Families {
		chains := rs.Tables[f].Index()
		ip := withMAC.IPs[0]
		if f == ruleset.IPv4 {
			ip = withMAC.IPs[1]
		}
		if got, _ := routeTrace(t, chains, ChainLocal, ip); got != TapChain(withMAC.Tap, "lin") {
			t.Errorf("%s: local packets to %s go to %s, want %s-lin", f, ip, got, withMAC.Tap)
		}
		if got, _ := routeTrace(t, chains, ChainRoute, ip); got != TapChain(withMAC.Tap, "in") {
			t.Errorf("%s: routed packets to %s go to %s, want %s-in", f, ip, got, withMAC.Tap)
		}
		// Walk everything OUTPUT reaches.
		reached := map[Chain]bool{}
		var walk func(Chain)
		walk = func(c Chain) {
			if reached[c] || chains[c] == nil {
				return
			}
			reached[c] = true
			for _, r := range chains[c].Rules {
				if strings.Contains(r.Spec, "-m mac") {
					t.Errorf("%s: %s, reachable from OUTPUT, has a mac match: %s", f, c, r.Spec)
				}
				for _, w := range []string{"-j ", "-g "} {
					if _, target, ok := strings.Cut(r.Spec, w); ok {
						walk(Chain(strings.Fields(target)[0]))
					}
				}
			}
		}
		walk(ChainOutput)
		if !reached[GroupChain("bymac", "lin")] || reached[GroupChain("bymac", "in")] {
			t.Errorf("%s: OUTPUT reaches %v, want sg-bymac-lin and not sg-bymac-in", f, reached)
		}
		if chains[TapChain(without.Tap, "lin")] != nil {
			t.Errorf("%s: %s has a lin chain though its groups match no MAC", f, without.Tap)
		}
	}
}
