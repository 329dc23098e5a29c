package explain

import (
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/iptables/ebtables"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// referenceDir is the reference scenario; testdata/reference-*.save are
// what iptables-nft-save, ip6tables-nft-save and ebtables-nft-save print
// after restoring its compiled rules (pkg/ruleset/testdata/reference.rules)
// into a fresh network namespace: the kernel's spelling of vmfw's rules.
const referenceDir = "../../conf/examples/reference"

// hostAddrs are the hypervisor's addresses in the tests: on the bridge.
var hostAddrs = []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("2001:db8::1/64"), netip.MustParsePrefix("127.0.0.1/8")}

func loadModel(t *testing.T, dir string) (*config.Model, []*config.NIC) {
	t.Helper()
	m, err := config.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var nics []*config.NIC
	for _, vm := range m.VMs {
		nics = append(nics, vm.NICs...)
	}
	sort.Slice(nics, func(i, j int) bool { return nics[i].Tap < nics[j].Tap })
	return m, nics
}

// savedKernel reads the reference scenario's kernel from testdata.
func savedKernel(t *testing.T) *Kernel {
	t.Helper()
	k := &Kernel{Backend: "nft", Tables: map[ruleset.Family]layout.Observed{}}
	for _, f := range ruleset.Families {
		data, err := os.ReadFile(filepath.Join("testdata", "reference-"+f.String()+".save"))
		if err != nil {
			t.Fatal(err)
		}
		s, err := xtables.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		k.Tables[f] = s.Observed
	}
	data, err := os.ReadFile(filepath.Join("testdata", "reference-bridge.save"))
	if err != nil {
		t.Fatal(err)
	}
	br := ebtables.Parse(data)
	k.Bridge = &br
	return k
}

// compiledKernel is a kernel holding exactly the compiled ruleset, in the
// form vmfw writes it (layout.Rule.Line).
func compiledKernel(rs *layout.Ruleset) *Kernel {
	k := &Kernel{Backend: "test", Tables: map[ruleset.Family]layout.Observed{}, Sets: compiledSets(rs)}
	for _, f := range ruleset.Families {
		o := layout.Observed{Chains: map[layout.Chain][]string{}, Lines: map[layout.Chain][]string{}, Hooks: map[layout.Hook]int{}}
		for _, c := range rs.Tables[f].Chains {
			o.Chains[c.Name] = c.Hashes()
			o.Lines[c.Name] = []string{}
			for _, r := range c.Rules {
				o.Lines[c.Name] = append(o.Lines[c.Name], r.Line(c.Name))
			}
		}
		for _, h := range rs.Tables[f].Hooks {
			o.Hooks[h] = 1
		}
		k.Tables[f] = o
	}
	br := layout.Observed{Chains: map[layout.Chain][]string{}, Hooks: map[layout.Hook]int{}}
	for _, c := range rs.Bridge.Chains {
		br.Chains[c.Name] = rs.Bridge.Fingerprints(c)
	}
	for _, h := range rs.Bridge.Hooks {
		br.Hooks[h] = 1
	}
	k.Bridge = &br
	return k
}

func referenceInput(t *testing.T) *Input {
	t.Helper()
	m, nics := loadModel(t, referenceDir)
	rs, err := layout.FromConfig(m, nics)
	if err != nil {
		t.Fatal(err)
	}
	k := savedKernel(t)
	k.Sets = compiledSets(rs)
	return &Input{Model: m, Attached: nics, Kernel: k, HostAddrs: hostAddrs}
}
