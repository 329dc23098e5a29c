package nftables

import (
	"context"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// TestStatusElementData: an element that holds other data than its layout
// (a group-list map element jumping elsewhere, a fingerprint in the ports
// set that is not the interface's settings') is the interface's drift.
func TestStatusElementData(t *testing.T) {
	p := setsPolicy(t, "entries = [\"198.51.100.0/24\"]\n")
	b, k := installedBackend(t, p)
	key := string(layout.Ifname("tap110i0").Bytes)
	for _, c := range []struct{ set, data string }{
		{layout.SetPorts, `comment "vmfw:settings 0000000000000000"`},
		{layout.MapListsOut, "jump gl-0000000000000000-out"},
	} {
		k.obs = observedOf(layout.Build(p, b.Marks()))
		if d := statusOf(t, b, p).Interfaces["tap110i0"].Drifted; len(d) > 0 {
			t.Fatalf("as laid out, tap110i0 drifted: %v", d)
		}
		k.obs.Tables[layout.Bridge].Sets[c.set].SetData(key, c.data)
		d := statusOf(t, b, p).Interfaces["tap110i0"].Drifted
		if len(d) != 1 || !strings.Contains(d[0].Object, c.set) || !strings.Contains(d[0].Problem, c.data[:8]) {
			t.Errorf("with tap110i0's element of %s holding %s: drift %v, want that element's", c.set, c.data, d)
		}
	}
}

// statusOf reads the tables in full and returns b's status for p.
func statusOf(t *testing.T, b *Backend, p *ruleset.Policy) *backend.Status {
	t.Helper()
	ctx := context.Background()
	st, err := b.Read(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Status(ctx, st, p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
