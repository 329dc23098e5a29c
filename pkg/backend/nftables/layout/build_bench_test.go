package layout

import (
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// BenchmarkBuild5000 lays out 5000 interfaces, each listing 3 of 20
// groups with an IPv6 address: what every full plan of the nftables
// backend at that size pays before it compares.
func BenchmarkBuild5000(b *testing.B) {
	m, err := config.Load(configtest.Dir(b, configtest.Large(5000)))
	if err != nil {
		b.Fatal(err)
	}
	p, err := ruleset.Compile(m, allNICs(m))
	if err != nil {
		b.Fatal(err)
	}
	marks, err := NewMarks(DefaultMask)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		Build(p, marks)
	}
}
