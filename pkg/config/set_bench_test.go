package config

import (
	"fmt"
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// bigSet returns a set file of n entries, one per line as a generator
// writes them: IPv4 addresses, IPv4 /24 networks and IPv6 /64 networks in
// turn, with an except inside every hundredth /24.
func bigSet(n int) string {
	var entries, except []string
	for i := range n {
		switch i % 3 {
		case 0:
			entries = append(entries, fmt.Sprintf("10.%d.%d.%d", i>>16&0xff, i>>8&0xff, i&0xff))
		case 1:
			entries = append(entries, fmt.Sprintf("%d.%d.%d.0/24", 100+i>>16&0x3f, i>>8&0xff, i&0xff))
			if i%100 == 1 {
				except = append(except, fmt.Sprintf("%d.%d.%d.128/25", 100+i>>16&0x3f, i>>8&0xff, i&0xff))
			}
		default:
			entries = append(entries, fmt.Sprintf("2001:db8:%x:%x::/64", i>>16, i&0xffff))
		}
	}
	return configtest.SetFile("generated", entries, except)
}

// BenchmarkLoadSet100000 measures a Load of a directory holding one set of
// 100,000 entries.
func BenchmarkLoadSet100000(b *testing.B) {
	dir := configtest.Dir(b, map[string]string{"sets/big.toml": bigSet(100000)})
	b.ResetTimer()
	for range b.N {
		if _, err := Load(dir); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSetEffective100000 measures the prefixes a kernel set without
// nomatch is loaded with, per family, for a set of 100,000 entries.
func BenchmarkSetEffective100000(b *testing.B) {
	s := mustLoad(b, configtest.Dir(b, map[string]string{"sets/big.toml": bigSet(100000)})).Sets["big"]
	b.ResetTimer()
	for range b.N {
		s.Effective(false)
		s.Effective(true)
	}
}
