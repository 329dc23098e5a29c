package layout

import (
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// BenchmarkBuild5000 lays out 5000 interfaces, each listing 3 of 20
// groups with an IPv6 address: what every full plan of the nftables
// backend at that size pays before it compares.
func BenchmarkBuild5000(b *testing.B) {
	p, marks := compileDir(b, configtest.Dir(b, configtest.Large(5000)))
	b.ResetTimer()
	for range b.N {
		Build(p, marks)
	}
}
