package ruleset

import (
	"fmt"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// BenchmarkWith5000 derives the policy of one more interface from that of
// 5000, as an ifup through the agent does (engine.change).
func BenchmarkWith5000(b *testing.B) {
	files := map[string]string{}
	for g := range 20 {
		files[fmt.Sprintf("groups/g%02d.toml", g)] = fmt.Sprintf("[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"g%02d\"\n", (g+1)%20)
	}
	for id := 1000; id < 6001; id++ {
		files[fmt.Sprintf("vms/%d.toml", id)] = fmt.Sprintf("[net0]\nmac = \"02:00:00:%02x:%02x:00\"\nips = [\"2001:db8::%x\"]\ngroups = [\"g%02d\", \"g%02d\"]\n",
			id/256, id%256, id, id%20, (id+7)%20)
	}
	m, err := config.Load(configtest.Dir(b, files))
	if err != nil {
		b.Fatal(err)
	}
	var nics []*config.NIC
	for id := 1000; id < 6000; id++ {
		nics = append(nics, m.VMs[id].NICs...)
	}
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
