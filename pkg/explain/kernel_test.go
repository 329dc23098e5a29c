package explain

import (
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// TestRandomConfigurations compares the configuration's answer with the
// compiled rules' on random configurations and flows: trace reports both,
// and they must agree on every flow whose answer the configuration can
// give. (The integration test compares them with real packets.)
func TestRandomConfigurations(t *testing.T) {
	forRandomTraces(t, keysInputFrom, func(seed int64, q Query, rep *Report) {
		if rep.Config.Verdict != "unknown" && rep.Kernel.Verdict != rep.Config.Verdict {
			t.Errorf("seed %d, %+v: configuration %s, kernel %s (%s)", seed, q, rep.Config.Verdict, rep.Kernel.Verdict, rep.Kernel.DecidedBy)
		}
	})
}

// forRandomTraces traces 150 random flows on each of 20 random
// configurations (writeRandomConfig), over the Input that input builds from
// the configuration's directory, and hands check every report of a flow the
// query accepts, after failing the test on any note that reports an error
// in vmfw. The seeds are fixed, so each backend's test sees the same flows.
func forRandomTraces(t *testing.T, input func(*testing.T, string) *Input, check func(seed int64, q Query, rep *Report)) {
	t.Helper()
	for seed := int64(1); seed <= 20; seed++ {
		r := rand.New(rand.NewSource(seed))
		dir := t.TempDir()
		writeRandomConfig(t, r, dir)
		in := input(t, dir)
		for range 150 {
			q := randomQuery(r)
			rep, err := Trace(in, q)
			if IsQueryError(err) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range rep.Notes {
				if strings.Contains(n, "internal error") || strings.Contains(n, "an error in vmfw") {
					t.Errorf("seed %d, %+v: %s", seed, q, n)
				}
			}
			check(seed, q, rep)
		}
	}
}

// randomQuery picks a flow between the ends writeRandomConfig configures
// and a few it does not.
func randomQuery(r *rand.Rand) Query {
	ends := []string{"401", "402", "403", "404:1", "192.0.2.200", "198.51.100.7", "hypervisor", "2001:db8::200", "2001:db8:2::7"}
	q := Query{From: ends[r.Intn(len(ends))], To: ends[r.Intn(len(ends))], SPort: -1, DPort: -1, Family: 4 + 2*r.Intn(2)}
	q.Proto = []string{"tcp", "udp", "icmp", "icmpv6", "sctp", "47"}[r.Intn(6)]
	if q.Proto == "tcp" || q.Proto == "udp" || q.Proto == "sctp" {
		q.DPort = []int{22, 53, 80, 443, 8080, 40000}[r.Intn(6)]
		if r.Intn(3) == 0 {
			q.SPort = []int{53, 67, 1000, 40000}[r.Intn(4)]
		}
	}
	if r.Intn(4) == 0 {
		q.MAC = []string{"02:00:00:00:00:41", "02:00:00:00:00:42", "02:00:00:00:99:99"}[r.Intn(3)]
	}
	return q
}

func keysInputFrom(t *testing.T, dir string) *Input {
	t.Helper()
	m, nics := loadModel(t, dir)
	in := applied(t, m, nics)
	in.HostAddrs = keysHost
	return in
}

// writeRandomConfig writes three groups of random rules over every rule
// key and four VMs (one with two interfaces on two subnets) into dir.
func writeRandomConfig(t *testing.T, r *rand.Rand, dir string) {
	t.Helper()
	pick := func(list ...string) string { return list[r.Intn(len(list))] }
	groups := []string{"a", "b", "c"}
	for _, sub := range []string{"groups", "vms"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range groups {
		var b strings.Builder
		for _, d := range []string{"in", "out"} {
			for range r.Intn(6) {
				fmt.Fprintf(&b, "[[%s]]\n", d)
				proto := pick("tcp", "udp", "icmp", "icmpv6", "sctp", "47", "")
				if proto != "" {
					fmt.Fprintf(&b, "proto = %q\n", proto)
				}
				switch proto {
				case "tcp", "udp", "sctp":
					if r.Intn(2) == 0 {
						fmt.Fprintf(&b, "dport = %q\n", pick("22", "53", "80,443", "1:1024", "8000:9000"))
					}
					if r.Intn(4) == 0 {
						fmt.Fprintf(&b, "sport = %q\n", pick("53", "1000:2000", "40000"))
					}
				case "icmp", "icmpv6":
					if r.Intn(2) == 0 {
						fmt.Fprintf(&b, "icmp_type = %q\n", pick("echo-request", "echo-reply", "8", "destination-unreachable"))
					}
				}
				key, gkey := "source", "source_group"
				if d == "out" {
					key, gkey = "dest", "dest_group"
				}
				switch r.Intn(6) {
				case 0:
					fmt.Fprintf(&b, "%s = [%q]\n", key, pick("192.0.2.0/24", "198.51.100.0/24", "2001:db8::/64", "192.0.2.41", "2001:db8:2::/48", "192.0.2.1"))
				case 1:
					fmt.Fprintf(&b, "%s = %q\n", gkey, pick(groups...))
				case 2:
					if d == "in" {
						fmt.Fprintf(&b, "source_mac = %q\n", pick("02:00:00:00:00:41", "02:00:00:00:00:42", "02:00:00:00:99:99"))
					}
				}
				fmt.Fprintf(&b, "action = %q\nlog = %v\n\n", pick("accept", "accept", "drop", "reject"), r.Intn(5) == 0)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "groups", g+".toml"), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vms := []struct {
		id   int
		nets []string
	}{
		{401, []string{`ips = ["192.0.2.41", "2001:db8::41"]` + "\nmac = \"02:00:00:00:00:41\""}},
		{402, []string{`ips = ["192.0.2.42", "2001:db8::42"]` + "\nmac = \"02:00:00:00:00:42\""}},
		{403, []string{`ips = ["203.0.113.43", "2001:db8:3::43"]`}},
		{404, []string{`ips = ["192.0.2.44"]`, `ips = ["203.0.113.44", "2001:db8:3::44"]`}},
	}
	for _, vm := range vms {
		var b strings.Builder
		fmt.Fprintf(&b, "policy_in = %q\npolicy_out = %q\nlog = %v\nenable = %v\n", pick("drop", "reject", "accept"), pick("accept", "accept", "drop", "reject"), r.Intn(3) == 0, r.Intn(8) != 0)
		for i, n := range vm.nets {
			var gs []string
			for _, k := range r.Perm(3)[:r.Intn(4)] {
				gs = append(gs, fmt.Sprintf("%q", groups[k]))
			}
			fmt.Fprintf(&b, "\n[net%d]\n%s\ngroups = [%s]\ndhcp = %v\nantispoof = %v\n", i, n, strings.Join(gs, ", "), r.Intn(2) == 0, r.Intn(6) != 0)
		}
		if err := os.WriteFile(filepath.Join(dir, "vms", fmt.Sprintf("%d.toml", vm.id)), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTextOutput compares vmfw trace's text with testdata/trace.golden
// for flows of the reference scenario over the saved kernel (run with
// -update to rewrite it after checking a change).
func TestTextOutput(t *testing.T) {
	in := referenceInput(t)
	var b strings.Builder
	for _, q := range []Query{
		{From: "vm1", To: "110", Proto: "tcp", DPort: 22, SPort: 40000},
		{From: "hypervisor", To: "2001:db8::110", Proto: "tcp", DPort: 22, SPort: 40000},
		{From: "198.51.100.7", To: "tap102i0", Proto: "udp", DPort: 53, SPort: -1},
		{From: "103", To: "192.0.2.200", Proto: "icmp", DPort: -1, SPort: -1},
	} {
		r, err := Trace(in, q)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "$ vmfw trace %+v\n", q)
		if err := r.WriteText(&b); err != nil {
			t.Fatal(err)
		}
		b.WriteString("\n")
	}
	path := filepath.Join("testdata", "trace.golden")
	if *update {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != b.String() {
		t.Errorf("text output differs from %s (run go test -update after checking):\n%s", path, b.String())
	}
}
