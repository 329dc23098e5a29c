package explain

import (
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
	forRandomTraces(t, nftablesInput, func(seed int64, q Query, rep *Report) {
		if rep.Kernel == nil || rep.Kernel.Error != "" || len(rep.Drift) > 0 {
			t.Fatalf("seed %d, %+v: kernel %+v, drift %v", seed, q, rep.Kernel, rep.Drift)
		}
		if rep.Config.Verdict == "unknown" || rep.Kernel.Verdict == rep.Config.Verdict {
			return
		}
		if !documentedDifference(rep) || (rep.Path != PathRouted && rep.Path != PathFromHypervisor) {
			t.Errorf("seed %d, %+v (%s): configuration %s, kernel %s (%s)", seed, q, rep.Path, rep.Config.Verdict, rep.Kernel.Verdict, rep.Kernel.DecidedBy)
		}
		differences++
	})
	t.Logf("%d flows differ by the documented differences", differences)
}
