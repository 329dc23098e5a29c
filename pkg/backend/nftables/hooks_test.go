package nftables

import (
	"slices"
	"testing"
)

// TestPlanHooks: every chain gets exactly vmfw's current rule, whether
// its table exists or not; a rule for another mark, or a second copy, is
// deleted and the current one inserted; removing everything deletes
// every copy and inserts nothing.
func TestPlanHooks(t *testing.T) {
	fwd4 := HookChain{"ipv4", "FORWARD"}
	st := &HookState{Exists: map[HookChain]bool{fwd4: true}, Rules: map[HookChain][]string{
		fwd4:                {hookLine("FORWARD", 0x40)},
		{"ipv4", "OUTPUT"}:  {hookLine("OUTPUT", 0x4)},
		{"ipv6", "FORWARD"}: {hookLine("FORWARD", 0x40), hookLine("FORWARD", 0x40)},
	}}
	ch := planHooks(st, true, 0x40)
	if !slices.Equal(ch.insert, []HookChain{{"ipv4", "OUTPUT"}, {"ipv6", "FORWARD"}, {"ipv6", "OUTPUT"}}) {
		t.Errorf("inserts into %v", ch.insert)
	}
	if len(ch.delete) != 2 || len(ch.delete[HookChain{"ipv6", "FORWARD"}]) != 2 || ch.delete[fwd4] != nil {
		t.Errorf("deletes %v", ch.delete)
	}
	if got := hookLine("FORWARD", 0x40); got != `-A FORWARD -m mark --mark 0x40/0x40 -m comment --comment "vmfw nftables: allowed" -j ACCEPT` {
		t.Errorf("the rule as iptables-save prints it: %s", got)
	}
	gone := planHooks(st, false, 0x40)
	if len(gone.insert) != 0 || len(gone.delete) != 3 {
		t.Errorf("removal: insert %v, delete %v", gone.insert, gone.delete)
	}
	if !planHooks(&HookState{Rules: map[HookChain][]string{}}, false, 0x40).empty() {
		t.Error("removing nothing is not empty")
	}
}
