package ruleset

import (
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// BenchmarkWith5000 derives the policy of one more interface from that of
// 5000, as an ifup through the agent does (engine.change).
func BenchmarkWith5000(b *testing.B) {
	m, nics := large5000(b, 1)
	p, err := Compile(m, nics)
	if err != nil {
		b.Fatal(err)
	}
	up := m.VMs[6000].NICs
	for b.Loop() {
		if _, err := p.With(m, up, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompile5000 compiles the policy of 5000 interfaces, as an ifup
// without the agent does for the installed ones (engine.installedPolicy).
func BenchmarkCompile5000(b *testing.B) {
	m, nics := large5000(b, 0)
	for b.Loop() {
		if _, err := Compile(m, nics); err != nil {
			b.Fatal(err)
		}
	}
}

// large5000 loads configtest.Large with 5000 VMs and extra more, and
// returns the NICs of the first 5000.
func large5000(b *testing.B, extra int) (*config.Model, []*config.NIC) {
	m, err := config.Load(configtest.Dir(b, configtest.Large(5000+extra)))
	if err != nil {
		b.Fatal(err)
	}
	var nics []*config.NIC
	for id := 1000; id < 6000; id++ {
		nics = append(nics, m.VMs[id].NICs...)
	}
	return m, nics
}
