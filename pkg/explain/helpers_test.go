package explain

import (
	"net/netip"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/iptables/interp/interptest"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// referenceDir is the reference scenario, whose kernel the tests read as
// the save tools print it (interptest.Reference).
const referenceDir = "../../conf/examples/reference"

// hostAddrs are the hypervisor's addresses in the tests: on the bridge.
var hostAddrs = []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("2001:db8::1/64"), netip.MustParsePrefix("127.0.0.1/8")}

func loadModel(t *testing.T, dir string) (*config.Model, []*config.NIC) {
	t.Helper()
	return scenario.Load(t, dir)
}

// compile is the policy of m for nics.
func compile(t *testing.T, m *config.Model, nics []*config.NIC) *ruleset.Policy {
	t.Helper()
	p, err := ruleset.Compile(m, nics)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// applied traces over the kernel right after the iptables backend
// applied the policy of nics: the end-to-end tests of this package walk
// its rules, the others a fake (backend_test.go).
func applied(t *testing.T, m *config.Model, nics []*config.NIC) *Input {
	t.Helper()
	return &Input{Model: m, Attached: nics, Kernel: interptest.Applied(compile(t, m, nics))}
}

func referenceInput(t *testing.T) *Input {
	t.Helper()
	m, nics := loadModel(t, referenceDir)
	return &Input{Model: m, Attached: nics, Kernel: interptest.Reference(t, compile(t, m, nics)), HostAddrs: hostAddrs}
}
