package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to Load as vmfw.toml, as a group file and
// as a VM file. Load must not panic, must fail only with an *Error naming a
// file, and must return a consistent Model when it succeeds.
func FuzzLoad(f *testing.F) {
	seeds := []string{
		"",
		web,
		"description = \"web\"\n[[in]]\nproto = \"tcp\"\ndport = \"80,443,8000:8080\"\ncomment = \"http\"\n",
		"[[in]]\nsource = [\"192.0.2.55\", \"2001:db8::/64\"]\naction = \"reject\"\nlog = true\n",
		"[[in]]\nproto = \"icmpv6\"\nicmp_type = \"neighbor-solicitation\"\nsource_group = \"web\"\n",
		"[[out]]\naction = \"drop\"\nproto = 6\ndport = 25\ndest = \"0.0.0.0/0\"\ndest_group = \"web\"\n",
		"in = [{proto = \"udp\", sport = \"53\"}, {source_mac = \"1e:0b:85:27:8d:65\"}]\n",
		"name = \"web01\"\nenable = false\npolicy_in = \"reject\"\n\n[net0]\nmac = \"1e:0b:85:27:8d:65\"\nips = [\"192.0.2.10\", \"2001:db8::10\"]\nbridge = \"vmbr0\"\ngroups = [\"web\"]\n",
		"[net1]\nips = [\"192.0.2.10\"]\n[net0]\nips = [\"192.0.2.10\"]\n",
		"net0.mac = \"02:00:00:00:00:01\"\nnet7 = {dhcp = false}\n",
		"managed = [\"tap+\", \"veth+\"]\nmark = 0x1000\nlog_limit = \"1/day\"\nlog_burst = 5\n",
		"[in.x]\n[[in]]\n[in.y]\n",
		"a = [[[[1]]]]\n",
		"\xef\xbb\xbf[net01]\n",
		"description = \"\xff\"\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	// Inputs run one after another within a worker, so the directories are
	// made once and only the fuzzed file is rewritten.
	targets := []string{"vmfw.toml", "groups/fuzz.toml", "vms/110.toml"}
	dirs := make([]string, len(targets))
	for i := range targets {
		dirs[i] = testDir(f, map[string]string{"groups/web.toml": web, targets[i]: ""})
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for i, rel := range targets {
			if err := os.WriteFile(filepath.Join(dirs[i], filepath.FromSlash(rel)), data, 0o644); err != nil {
				t.Fatal(err)
			}
			m, err := Load(dirs[i])
			if err != nil {
				var ce *Error
				if !errors.As(err, &ce) || ce.File == "" || ce.Msg == "" {
					t.Fatalf("%s: error %v (%T) is not an *Error with a file and message", rel, err, err)
				}
				continue
			}
			checkModel(t, m)
		}
	})
}

// checkModel asserts invariants every loaded Model keeps.
func checkModel(t *testing.T, m *Model) {
	t.Helper()
	if m.Host.Managed == nil || m.Host.Mark == 0 || m.Host.Mark&(m.Host.Mark-1) != 0 || m.Host.LogBurst < 1 {
		t.Fatalf("invalid host options %+v", m.Host)
	}
	for name, g := range m.Groups {
		for _, r := range append(append([]Rule{}, g.In...), g.Out...) {
			if r.Line < 1 || r.Action == "" {
				t.Fatalf("group %s: rule %+v lacks line or action", name, r)
			}
			for _, ref := range []string{r.SourceGroup, r.DestGroup} {
				if ref != "" && m.Groups[ref] == nil {
					t.Fatalf("group %s refers to missing group %q", name, ref)
				}
			}
			if (len(r.DPort) > 0 || len(r.SPort) > 0) && !portProto(r.Proto) {
				t.Fatalf("group %s: ports with proto %q", name, r.Proto)
			}
		}
	}
	seen := map[string]bool{}
	for id, vm := range m.VMs {
		for i, n := range vm.NICs {
			if n.VM != vm || n.Tap != TapName(id, n.Index) || len(n.Tap) > 15 || n.Line < 1 || m.NIC(n.Tap) != n {
				t.Fatalf("inconsistent interface %+v of VM %d", n, id)
			}
			if i > 0 && vm.NICs[i-1].Index >= n.Index {
				t.Fatalf("VM %d interfaces not sorted by index", id)
			}
			for _, a := range n.IPs {
				if seen[a.String()] {
					t.Fatalf("address %s claimed twice", a)
				}
				seen[a.String()] = true
			}
		}
	}
}
