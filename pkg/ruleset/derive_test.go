package ruleset

import (
	"fmt"
	"math/rand"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
)

// deriveFiles returns a random configuration: five groups whose rules
// refer to each other (source_group, dest_group), and VMs with random
// addresses (some shared), groups in random order, some disabled.
func deriveFiles(r *rand.Rand, variant int) map[string]string {
	files := map[string]string{}
	groups := []string{"a", "b", "c", "d", "e"}
	for i, g := range groups {
		var b strings.Builder
		fmt.Fprintf(&b, "[[in]]\nproto = \"tcp\"\ndport = \"%d\"\n", 1000+i+variant)
		if (i+variant)%2 == 0 {
			fmt.Fprintf(&b, "source_group = %q\n", groups[(i+1+variant)%len(groups)])
		}
		if (i+variant)%3 == 0 {
			fmt.Fprintf(&b, "[[out]]\ndest_group = %q\n", groups[(i+2)%len(groups)])
		}
		files["groups/"+g+".toml"] = b.String()
	}
	for id := 100; id < 112; id++ {
		var b strings.Builder
		if r.Intn(5) == 0 {
			b.WriteString("enable = false\n")
		}
		for k := range 1 + r.Intn(2) {
			fmt.Fprintf(&b, "[net%d]\n", k)
			var ips []string
			if r.Intn(3) != 0 {
				ips = append(ips, fmt.Sprintf("%q", fmt.Sprintf("192.0.2.%d", id*2+k)))
			}
			if r.Intn(2) == 0 {
				ips = append(ips, fmt.Sprintf("%q", fmt.Sprintf("2001:db8::%x", id*2+k)))
			}
			fmt.Fprintf(&b, "ips = [%s]\n", strings.Join(ips, ", "))
			var gs []string
			for _, i := range r.Perm(len(groups))[:r.Intn(4)] {
				gs = append(gs, fmt.Sprintf("%q", groups[i]))
			}
			fmt.Fprintf(&b, "groups = [%s]\n", strings.Join(gs, ", "))
		}
		files[fmt.Sprintf("vms/%d.toml", id)] = b.String()
	}
	return files
}

// samePolicy compares two policies as backends read them: every field,
// the interfaces' configuration by value.
func samePolicy(a, b *Policy) bool {
	strip := func(p *Policy) *Policy {
		c := *p
		c.Interfaces = nil
		for _, n := range p.Interfaces {
			nc := *n
			nc.Config = nil
			c.Interfaces = append(c.Interfaces, &nc)
		}
		return &c
	}
	// Owner and Interface answer from Interfaces, which are compared
	// whole; they are asked here all the same, for every address and
	// name, as a derived policy's interfaces must be sorted for them.
	lookups := func(p *Policy) map[string]string {
		out := map[string]string{}
		for _, n := range p.Interfaces {
			if p.Interface(n.Name) != n {
				out[n.Name] = "not found by name"
			}
			for _, a := range n.IPs {
				out[a.String()] = p.Owner(a).Name
			}
		}
		return out
	}
	return reflect.DeepEqual(strip(a), strip(b)) && reflect.DeepEqual(lookups(a), lookups(b)) && slices.Equal(a.Names(), b.Names())
}

// TestDeriveMatchesCompile: random sequences of attaches, detaches,
// re-attaches and group edits, each applied to the policy before it by
// With or Regroup, give what Compile gives for the same configuration and
// interfaces, at every step, from no interface attached.
func TestDeriveMatchesCompile(t *testing.T) {
	for seed := range int64(20) {
		r := rand.New(rand.NewSource(seed))
		files := deriveFiles(r, 0)
		m := load(t, files)
		withRemote(m)
		all := nicsWithRecords(m)
		attached := map[string]bool{}
		p, err := Compile(m, nil)
		if err != nil {
			t.Fatal(err)
		}
		for step := range 60 {
			var what string
			if r.Intn(8) == 0 {
				// A group edit: the same VMs, other rules.
				edited := map[string]string{}
				for k, v := range files {
					edited[k] = v
				}
				fresh := deriveFiles(rand.New(rand.NewSource(seed)), 1+r.Intn(3))
				var groups []string
				for _, g := range []string{"a", "b", "c", "d", "e"} {
					if r.Intn(2) == 0 {
						edited["groups/"+g+".toml"] = fresh["groups/"+g+".toml"]
						groups = append(groups, g)
					}
				}
				for _, g := range groups {
					if err := os.WriteFile(filepath.Join(m.Dir, "groups", g+".toml"), []byte(edited["groups/"+g+".toml"]), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				m2, err := config.Load(m.Dir)
				if err != nil {
					t.Fatal(err)
				}
				withRemote(m2)
				if p, err = p.Regroup(m2, groups); err != nil {
					t.Fatal(err)
				}
				m, files, what = m2, edited, fmt.Sprintf("edit of %v", groups)
				withRemote(m)
				all = nicsWithRecords(m)
			} else {
				var up []*config.NIC
				var down []string
				for range 1 + r.Intn(3) {
					n := all[r.Intn(len(all))]
					if attached[n.Tap] && r.Intn(2) == 0 {
						down = append(down, n.Tap)
						attached[n.Tap] = false
					} else {
						up = append(up, n)
						attached[n.Tap] = true
					}
				}
				// The last word for a tap wins, as in a batch.
				up = slices.DeleteFunc(up, func(n *config.NIC) bool { return !attached[n.Tap] })
				up = slices.CompactFunc(up, func(a, b *config.NIC) bool { return a.Tap == b.Tap })
				down = slices.DeleteFunc(down, func(tap string) bool { return attached[tap] })
				if p, err = p.With(m, dedupeNICs(up), down); err != nil {
					t.Fatal(err)
				}
				what = fmt.Sprintf("up %d, down %v", len(up), down)
			}
			var nics []*config.NIC
			for _, n := range all {
				if attached[n.Tap] {
					nics = append(nics, n)
				}
			}
			want, err := Compile(m, nics)
			if err != nil {
				t.Fatal(err)
			}
			if !samePolicy(p, want) {
				for g := range want.Groups {
					if !reflect.DeepEqual(p.Groups[g], want.Groups[g]) {
						t.Logf("group %s: %+v\nwant %+v", g, p.Groups[g], want.Groups[g])
					}
				}
				for g := range want.Members {
					if !reflect.DeepEqual(p.Members[g], want.Members[g]) {
						t.Logf("members %s: %+v\nwant %+v", g, p.Members[g], want.Members[g])
					}
				}
				t.Fatalf("seed %d step %d (%s): derived %+v\nwant %+v", seed, step, what, p, want)
			}
		}
	}
}

// withRemote gives m remote members (a cluster's other hosts' VMs) of
// two groups, one of them an address a local interface lists too.
func withRemote(m *config.Model) {
	m.RemoteMembers = map[string][]netip.Addr{
		"a": {netip.MustParseAddr("192.0.2.200"), netip.MustParseAddr("192.0.2.200").Prev()},
		"b": {netip.MustParseAddr("198.51.100.7")},
	}
	// deriveFiles numbers addresses id*2+k: 192.0.2.200 is VM 100's
	// net0, which a remote member of a shares.
}

// nicsWithRecords returns m's interfaces and, like attachment records
// racing an edit, copies of three of them under other names: interfaces
// that list an address another interface lists too. The same three after
// a group edit, as a record resolves to the same VM's settings.
func nicsWithRecords(m *config.Model) []*config.NIC {
	var all []*config.NIC
	for _, vm := range m.VMs {
		all = append(all, vm.NICs...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Tap < all[j].Tap })
	for i := range 3 {
		c := *all[(1+3*i)%len(all)]
		c.Tap = fmt.Sprintf("rec%d", i)
		all = append(all, &c)
	}
	return all
}

func dedupeNICs(l []*config.NIC) []*config.NIC {
	seen := map[string]bool{}
	var out []*config.NIC
	for _, n := range l {
		if !seen[n.Tap] {
			seen[n.Tap] = true
			out = append(out, n)
		}
	}
	return out
}
