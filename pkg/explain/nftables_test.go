package explain

import (
	"math/rand"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/nftables/nftrace/nftracetest"
)

// nftablesInput traces the configuration in dir over the nftables
// backend's tables as it would write them.
func nftablesInput(t *testing.T, dir string) *Input {
	t.Helper()
	m, nics := loadModel(t, dir)
	k, err := nftracetest.Applied(compile(t, m, nics))
	if err != nil {
		t.Fatal(err)
	}
	return &Input{Model: m, Attached: nics, Kernel: k, HostAddrs: keysHost}
}

// documentedDifference reports whether rep says that the nftables
// backend's verdict differs from the configuration's by design.
func documentedDifference(rep *Report) bool {
	for _, n := range rep.Notes {
		if strings.Contains(n, "Differences from the iptables backend") {
			return true
		}
	}
	return false
}

// TestRandomConfigurationsNFTables compares the configuration's answer
// with the nftables backend's walk of its tables on random configurations
// and flows, as TestRandomConfigurations does for the iptables backend:
// they agree, except where the walk decided a routed or host-sent packet
// at bridge postrouting and says so (docs/nftables.md, "Differences from
// the iptables backend"); nothing drifts, and no note reports an error.
func TestRandomConfigurationsNFTables(t *testing.T) {
	differences := 0
	for seed := int64(1); seed <= 20; seed++ {
		r := rand.New(rand.NewSource(seed))
		dir := t.TempDir()
		writeRandomConfig(t, r, dir)
		in := nftablesInput(t, dir)
		ends := []string{"401", "402", "403", "404:1", "192.0.2.200", "198.51.100.7", "hypervisor", "2001:db8::200", "2001:db8:2::7"}
		for range 150 {
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
			if rep.Kernel == nil || rep.Kernel.Error != "" || len(rep.Drift) > 0 {
				t.Fatalf("seed %d, %+v: kernel %+v, drift %v", seed, q, rep.Kernel, rep.Drift)
			}
			if rep.Config.Verdict == "unknown" || rep.Kernel.Verdict == rep.Config.Verdict {
				continue
			}
			if !documentedDifference(rep) || (rep.Path != PathRouted && rep.Path != PathFromHypervisor) {
				t.Errorf("seed %d, %+v (%s): configuration %s, kernel %s (%s)", seed, q, rep.Path, rep.Config.Verdict, rep.Kernel.Verdict, rep.Kernel.DecidedBy)
			}
			differences++
		}
	}
	t.Logf("%d flows differ by the documented differences", differences)
}
