package layout

import (
	"fmt"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// BenchmarkBuild5000 lays out 5000 interfaces, each listing 3 of 20
// groups with an IPv6 address: what every full plan of the nftables
// backend at that size pays before it compares.
func BenchmarkBuild5000(b *testing.B) {
	files := map[string]string{}
	for g := range 20 {
		files[fmt.Sprintf("groups/g%02d.toml", g)] = fmt.Sprintf("[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"g%02d\"\n[[in]]\nproto = \"tcp\"\ndport = \"80,443\"\n", g)
	}
	for k := range 5000 {
		id := 1000 + k
		files[fmt.Sprintf("vms/%d.toml", id)] = fmt.Sprintf("[net0]\nmac = \"02:00:00:%02x:%02x:01\"\nips = [\"2001:db8:1::%x\"]\ngroups = [\"g%02d\", \"g%02d\", \"g%02d\"]\n",
			(id>>8)&0xff, id&0xff, id, k%20, (k+7)%20, (k+13)%20)
	}
	m, err := config.Load(configtest.Dir(b, files))
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
