package nftables

import (
	"context"
	"testing"
)

// TestCurrentFollowsTheGeneration: a read is current while nothing has
// committed since (the engine then uses a read made before its lock);
// any commit, vmfw's or another program's, makes it stale.
func TestCurrentFollowsTheGeneration(t *testing.T) {
	b, k := installedBackend(t, referencePolicy(t))
	ctx := context.Background()
	k.obs.Gen = 7
	st, err := b.Read(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Current(ctx, st); err != nil || !ok {
		t.Fatalf("Current right after the read = %v, %v; want true", ok, err)
	}
	k.obs.Gen++ // someone committed
	if ok, err := b.Current(ctx, st); err != nil || ok {
		t.Fatalf("Current after a commit = %v, %v; want false", ok, err)
	}
	if ok, _ := b.Current(ctx, &state{obs: k.obs, remembered: true}); ok {
		t.Error("a remembered state is current; Read checks the memory itself")
	}
}
