package layout

import (
	"fmt"
	"maps"
	"math/rand"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// scopeModel writes and loads a configuration of n VMs in six groups that
// reference each other's members, with some VMs disabled and some without
// anti-spoofing, so every kind of chain and set shows up.
func scopeModel(t testing.TB, n int) (*config.Model, []*config.NIC) {
	t.Helper()
	dir := t.TempDir()
	write := func(rel, text string) { configtest.Write(t, dir, map[string]string{rel: text}) }
	for g := range 6 {
		write(fmt.Sprintf("groups/g%d.toml", g), fmt.Sprintf(
			"[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"g%d\"\n\n[[out]]\nproto = \"udp\"\ndport = \"53\"\n", (g+1)%6))
	}
	for k := range n {
		id := 1000 + 2*k
		text := ""
		if k%17 == 5 {
			text += "enable = false\n"
		}
		text += fmt.Sprintf("[net0]\nmac = \"02:00:00:00:%02x:%02x\"\nips = [\"2001:db8:1::%x\"]\ngroups = [\"g%d\", \"g%d\"]\n", k/256, k%256, id, k%6, (k+2)%6)
		if k%13 == 3 {
			text += "antispoof = false\n"
		}
		write(fmt.Sprintf("vms/%d.toml", id), text)
	}
	return scenario.Load(t, dir)
}

// TestBuildScopedMatchesBuild checks that the scoped compile yields, chain
// for chain, what Build yields, leaving out only the chains of interfaces
// out of focus and the dispatch chains (BuildScope adds those that change).
func TestBuildScopedMatchesBuild(t *testing.T) {
	m, nics := scopeModel(t, 200)
	full := buildFor(t, m, nics)
	focus := map[string]bool{"tap1000i0": true, "tap1010i0": true, "tap1200i0": true}
	scoped := buildScopedFor(t, m, nics, focus)
	tapOf := map[Chain]string{}
	for _, n := range nics {
		for _, c := range TapChains(n.Tap) {
			tapOf[c] = n.Tap
		}
		tapOf[L2Chain(n.Tap)] = n.Tap
		tapOf[L2DestChain(n.Tap)] = n.Tap
	}
	compare := func(what string, want, got *Table) {
		if !slices.Equal(want.Hooks, got.Hooks) {
			t.Errorf("%s: hooks differ", what)
		}
		for _, c := range got.Chains {
			w := want.Chain(c.Name)
			if w == nil || !slices.Equal(w.Rules, c.Rules) {
				t.Errorf("%s: scoped %s differs from Build's", what, c.Name)
			}
		}
		for _, c := range want.Chains {
			if isDispatchChain(c.Name) {
				continue
			}
			tap, perTap := tapOf[c.Name]
			if got.Chain(c.Name) == nil && !(perTap && !focus[tap]) {
				t.Errorf("%s: scoped compile lacks %s", what, c.Name)
			}
			if got.Chain(c.Name) != nil && perTap && !focus[tap] {
				t.Errorf("%s: scoped compile has %s, out of focus", what, c.Name)
			}
		}
	}
	for _, f := range ruleset.Families {
		compare(f.String(), full.Tables[f], scoped.Tables[f])
	}
	compare("bridge", full.Bridge, scoped.Bridge)
	if fmt.Sprint(full.Sets) != fmt.Sprint(scoped.Sets) {
		t.Errorf("sets differ:\nBuild  %v\nscoped %v", full.Sets, scoped.Sets)
	}
}

// kernelOf renders a table as the kernel would hold it: rules by chain.
func kernelOf(t *Table) map[Chain][]Rule {
	k := map[Chain][]Rule{}
	for _, c := range t.Chains {
		k[c.Name] = c.Rules
	}
	return k
}

// applyScope changes kernel as a restore of the scope's diff would: chains
// in scope are replaced by the scope's, or deleted when it has none.
func applyScope(kernel map[Chain][]Rule, want *Table, names []Chain) {
	for _, name := range names {
		if c := want.Chain(name); c != nil {
			kernel[name] = c.Rules
		} else {
			delete(kernel, name)
		}
	}
}

// scopeTakes reports whether replacing the chains in scope (names, as
// scope has them) on a kernel holding was yields exactly now.
func scopeTakes(was, scope *Table, names []Chain, now *Table) bool {
	k := kernelOf(was)
	applyScope(k, scope, names)
	return sameKernel(k, kernelOf(now))
}

func sameKernel(a, b map[Chain][]Rule) bool {
	if len(a) != len(b) {
		return false
	}
	for name, rules := range a {
		if other, ok := b[name]; !ok || !slices.Equal(rules, other) {
			return false
		}
	}
	return true
}

// TestScopeTakesKernelFromBeforeToAfter checks the property the fast
// attach and detach rely on: on a kernel holding Build(before), replacing
// the chains in scope yields exactly Build(after), for attaches and
// detaches of random taps, enabled or not, first and last members of
// their groups included; and the scope stays small.
func TestScopeTakesKernelFromBeforeToAfter(t *testing.T) {
	m, nics := scopeModel(t, 300)
	r := rand.New(rand.NewSource(3))
	cases := [][]*config.NIC{nics[:1], nics[5:6], nics[len(nics)-1:]}
	for range 12 {
		cases = append(cases, []*config.NIC{nics[r.Intn(len(nics))]})
	}
	for _, focus := range cases {
		tap := focus[0].Tap
		others := slices.DeleteFunc(slices.Clone(nics), func(n *config.NIC) bool { return n.Tap == tap })
		if r.Intn(3) == 0 {
			others = others[:r.Intn(len(others))] // fewer taps: first members too
		}
		for _, attach := range []bool{true, false} {
			before, after := others, append(slices.Clone(others), focus...)
			if !attach {
				before, after = after, before
			}
			sc := buildScopeFor(t, m, before, after, []string{tap})
			was := buildFor(t, m, before)
			now := buildFor(t, m, after)
			for _, f := range ruleset.Families {
				if !scopeTakes(was.Tables[f], sc.Tables[f], sc.Chains[f], now.Tables[f]) {
					t.Errorf("attach=%v %s (%d others), %s: kernel after the scoped change differs from Build", attach, tap, len(others), f)
				}
				if len(sc.Chains[f]) > 30 {
					t.Errorf("attach=%v %s: %d chains in scope: %v", attach, tap, len(sc.Chains[f]), sc.Chains[f])
				}
				for name, rules := range sc.Known[f] {
					for _, c := range []*Table{was.Tables[f], now.Tables[f]} {
						if ch := c.Chain(name); ch != nil {
							for _, r := range ch.Rules {
								if _, ok := rules[r.Hash(name)]; !ok {
									t.Errorf("%s: rule of %s not known by fingerprint", f, name)
								}
							}
						}
					}
				}
			}
			if !scopeTakes(was.Bridge, sc.Bridge, sc.BridgeChains, now.Bridge) {
				t.Errorf("attach=%v %s: bridge table after the scoped change differs from Build", attach, tap)
			}
			if fmt.Sprint(sc.Sets) != fmt.Sprint(now.Sets) {
				t.Errorf("attach=%v %s: sets differ from Build", attach, tap)
			}
		}
	}
}

// TestGroupScopeTakesKernelFromBeforeToAfter: on a kernel holding
// Build(was), replacing the chains of GroupScope yields exactly Build(now)
// when only group rules changed (a rule added, a source_group set newly
// referenced, a port changed), the sets come out as Build's, and a group
// gaining a source MAC rule is refused (its members' TAP-lin chains
// change).
func TestGroupScopeTakesKernelFromBeforeToAfter(t *testing.T) {
	was, nics := scopeModel(t, 120)
	edited := func(g string, rules ...config.Rule) *config.Model {
		m := *was
		m.Groups = maps.Clone(was.Groups)
		grp := *was.Groups[g]
		grp.In = append(slices.Clone(grp.In), rules...)
		m.Groups[g] = &grp
		return &m
	}
	now := edited("g2",
		config.Rule{Action: config.Accept, Proto: "tcp", DPort: []config.PortRange{{Lo: 8080, Hi: 8080}}},
		config.Rule{Action: config.Drop, Proto: "udp", SourceGroup: "g4"})
	sc := groupScopeFor(t, was, now, nics, []string{"g2"})
	if sc == nil {
		t.Fatal("GroupScope = nil")
	}
	before := buildFor(t, was, nics)
	after := buildFor(t, now, nics)
	for _, f := range ruleset.Families {
		if !scopeTakes(before.Tables[f], sc.Tables[f], sc.Chains[f], after.Tables[f]) {
			t.Errorf("%s: kernel after the group scope differs from Build", f)
		}
		for _, c := range sc.Chains[f] {
			if !strings.HasPrefix(string(c), "sg-g2-") {
				t.Errorf("%s: %s in the scope of editing g2", f, c)
			}
		}
	}
	if fmt.Sprint(sc.Sets) != fmt.Sprint(after.Sets) {
		t.Errorf("sets differ from Build:\n%v\n%v", sc.Sets, after.Sets)
	}
	mac, _ := net.ParseMAC("02:00:00:00:00:09")
	if sc := groupScopeFor(t, was, edited("g2", config.Rule{Action: config.Accept, SourceMAC: mac}), nics, []string{"g2"}); sc != nil {
		t.Errorf("a group gaining a source MAC rule got a group scope: %v", sc)
	}
}

// shapesModel loads one VM per interface shape a new user may start with,
// in the order shapeTaps lists them: IPv4 only, IPv6 only, both, no ips,
// anti-spoofing off, disabled, and a VM with one IPv4-only and one
// IPv6-only interface.
func shapesModel(t testing.TB) *config.Model {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"groups/ssh.toml": "[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"ssh\"\n",
		"groups/mac.toml": "[[in]]\nsource_mac = \"02:00:00:00:00:99\"\n",
	}
	bodies := []string{
		`ips = ["192.0.2.10"]`,
		`ips = ["2001:db8::11"]`,
		`ips = ["192.0.2.12", "2001:db8::12"]`,
		``,
		"ips = [\"192.0.2.14\"]\nantispoof = false",
		`ips = ["192.0.2.15"]`,
	}
	for i, body := range bodies {
		head := ""
		if i == 5 {
			head = "enable = false\n"
		}
		files[fmt.Sprintf("vms/%d.toml", 110+i)] = fmt.Sprintf("%s[net0]\nmac = \"02:00:00:00:01:%02x\"\n%s\ngroups = [\"ssh\", \"mac\"]\n", head, i, body)
	}
	files["vms/116.toml"] = "[net0]\nmac = \"02:00:00:00:01:16\"\nips = [\"192.0.2.16\"]\ngroups = [\"ssh\"]\n" +
		"[net1]\nmac = \"02:00:00:00:01:17\"\nips = [\"2001:db8::17\"]\n"
	configtest.Write(t, dir, files)
	m, _ := scenario.Load(t, dir)
	return m
}

var shapeTaps = []string{"tap110i0", "tap111i0", "tap112i0", "tap113i0", "tap114i0", "tap115i0", "tap116i0", "tap116i1"}

// jumpsResolve reports the first jump of kernel to a chain it lacks, as
// the kernel would refuse it.
func jumpsResolve(kernel map[Chain][]Rule) error {
	targets := map[string]bool{"ACCEPT": true, "DROP": true, "RETURN": true, "REJECT": true, "MARK": true, "LOG": true, "NFLOG": true}
	for c, rules := range kernel {
		for _, r := range rules {
			f := strings.Fields(r.Spec)
			for i := 0; i+1 < len(f); i++ {
				if f[i] != "-j" && f[i] != "-g" || targets[f[i+1]] {
					continue
				}
				if _, ok := kernel[Chain(f[i+1])]; !ok {
					return fmt.Errorf("%s jumps to %s, which does not exist", c, f[i+1])
				}
			}
		}
	}
	return nil
}

// TestScopeFromEmptyKernel starts where a new host starts: no chain of
// vmfw's at all, not even the empty trees Build writes for no interfaces.
// The first attach of every interface shape, then a second interface of
// every other shape, must leave exactly Build's ruleset, with every jump
// resolving. A kernel that always started from Build(nil) hid a first
// IPv4-only tap jumping to an IPv6 vmfw-route it never created.
func TestScopeFromEmptyKernel(t *testing.T) {
	m := shapesModel(t)
	for _, first := range shapeTaps {
		for _, second := range append([]string{""}, shapeTaps...) {
			if second == first {
				continue
			}
			kernels := map[ruleset.Family]map[Chain][]Rule{ruleset.IPv4: {}, ruleset.IPv6: {}}
			bridge := map[Chain][]Rule{}
			var attached []*config.NIC
			for _, tap := range []string{first, second} {
				if tap == "" {
					continue
				}
				after := append(slices.Clone(attached), m.NIC(tap))
				sc := buildScopeFor(t, m, attached, after, []string{tap})
				want := buildFor(t, m, after)
				for _, f := range ruleset.Families {
					applyScope(kernels[f], sc.Tables[f], sc.Chains[f])
					if err := jumpsResolve(kernels[f]); err != nil {
						t.Errorf("%s then %s, %s: %v", first, tap, f, err)
					}
					if !sameKernel(kernels[f], kernelOf(want.Tables[f])) {
						t.Errorf("%s then %s, %s: kernel differs from Build", first, tap, f)
					}
				}
				applyScope(bridge, sc.Bridge, sc.BridgeChains)
				if !sameKernel(bridge, kernelOf(want.Bridge)) {
					t.Errorf("%s then %s: bridge table differs from Build", first, tap)
				}
				attached = after
			}
		}
	}
}
