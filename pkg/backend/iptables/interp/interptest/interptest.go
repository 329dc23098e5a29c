// Package interptest builds the iptables backend's view of a kernel for
// tests of vmfw trace, as package configtest writes configurations: the
// kernel right after an apply, and the reference scenario's kernel as the
// save tools print it.
package interptest

import (
	"embed"
	"slices"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/iptables/ebtables"
	"github.com/vmfw/vmfw/pkg/backend/iptables/interp"
	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// saved holds what iptables-nft-save, ip6tables-nft-save and
// ebtables-nft-save print after the reference scenario's compiled rules
// (pkg/backend/iptables/layout/testdata/reference.rules) were restored
// into a fresh network namespace: the kernel's spelling of vmfw's rules
// ("-m tcp", numeric ICMP types, "--tcp-flags", hex u32 tests), which
// differs from the one vmfw writes.
//
//go:embed testdata/reference-*.save
var saved embed.FS

// Applied returns the kernel right after the iptables backend applied p:
// exactly the chains, hooks and set members it lays out for p, each rule
// in the form the backend writes it.
func Applied(p *ruleset.Policy) *interp.Kernel {
	rs := layout.Build(p)
	k := &interp.Kernel{Backend: "test", Tables: map[ruleset.Family]layout.Observed{}}
	k.Sets, k.Nets = interp.Sets(rs.Sets)
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
	k.Interfaces = installed(k)
	return k
}

// Reference returns the reference scenario's kernel as the save tools
// print it, with the ipset members the backend lays out for p, the
// reference scenario's policy: the saved files hold the tables alone.
func Reference(t testing.TB, p *ruleset.Policy) *interp.Kernel {
	t.Helper()
	k := &interp.Kernel{Backend: "nft", Tables: map[ruleset.Family]layout.Observed{}}
	k.Sets, k.Nets = interp.Sets(layout.Build(p).Sets)
	for _, f := range ruleset.Families {
		s, err := xtables.Parse(read(t, f.String()))
		if err != nil {
			t.Fatal(err)
		}
		k.Tables[f] = s.Observed
	}
	br := ebtables.Parse(read(t, "bridge"))
	k.Bridge = &br
	k.Interfaces = installed(k)
	return k
}

func read(t testing.TB, table string) []byte {
	t.Helper()
	data, err := saved.ReadFile("testdata/reference-" + table + ".save")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// installed names the interfaces k holds chains of, as the backend's
// reads do.
func installed(k *interp.Kernel) []string {
	var out []string
	for _, o := range k.Tables {
		for c := range o.Chains {
			if tap, ok := layout.InstalledTap(c); ok && !slices.Contains(out, tap) {
				out = append(out, tap)
			}
		}
	}
	slices.Sort(out)
	return out
}
