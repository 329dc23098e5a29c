package integration

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
)

const dbGroup = `
[[in]]
proto = "tcp"
dport = "5432"
source_group = "app"
`

const appGroup = `
[[in]]
proto = "tcp"
dport = "22"
`

func vmFile(mac, v4, v6 string, groups ...string) string {
	quoted := make([]string, len(groups))
	for i, g := range groups {
		quoted[i] = `"` + g + `"`
	}
	return `
[net0]
bridge = "vmbr0"
mac = "` + mac + `"
ips = ["` + v4 + `", "` + v6 + `"]
groups = [` + strings.Join(quoted, ", ") + `]
`
}

// TestMembershipChangesOnlyIpsets: adding a VM to a group lets it in where
// the group is a source_group, without rewriting any chain but the VM's own;
// removing it shuts it out again.
func TestMembershipChangesOnlyIpsets(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		h := newHV(t, backend, "")
		h.write("groups/db.toml", dbGroup)
		h.write("groups/app.toml", appGroup)
		h.write("vms/221.toml", vmFile("02:00:00:00:04:21", "192.0.2.41", "2001:db8::41", "db"))
		h.write("vms/222.toml", vmFile("02:00:00:00:04:22", "192.0.2.42", "2001:db8::42"))
		h.write("vms/223.toml", vmFile("02:00:00:00:04:23", "192.0.2.43", "2001:db8::43", "app"))
		c := h.vm("tap221i0", "02:00:00:00:04:21", "192.0.2.41", "2001:db8::41")
		a := h.vm("tap222i0", "02:00:00:00:04:22", "192.0.2.42", "2001:db8::42")
		x := h.vm("tap223i0", "02:00:00:00:04:23", "192.0.2.43", "2001:db8::43")
		for _, tap := range []string{"tap221i0", "tap222i0", "tap223i0"} {
			h.vmfw("ifup", tap)
		}
		h.serve(c, "192.0.2.41", 5432)
		h.serve(c, "2001:db8::41", 5432)
		expectAll(t, []probe{
			{"member X -> db", x, "192.0.2.41", 5432, true},
			{"member X -> db v6", x, "2001:db8::41", 5432, true},
			{"non-member A -> db", a, "192.0.2.41", 5432, false},
			{"non-member A -> db v6", a, "2001:db8::41", 5432, false},
		})

		before4, before6 := h.save(false), h.save(true)
		h.write("vms/222.toml", vmFile("02:00:00:00:04:22", "192.0.2.42", "2001:db8::42", "app"))
		h.vmfw("apply")
		own := []string{"tap222i0-in", "tap222i0-out"}
		for _, d := range [][2]string{{before4, h.save(false)}, {before6, h.save(true)}} {
			for _, ch := range changedChains(d[0], d[1]) {
				if !slices.Contains(own, ch) {
					t.Errorf("joining a group rewrote chain %s (only the VM's own chains may change)", ch)
				}
			}
		}
		sets := h.ipsets()
		if !strings.Contains(sets, "add sg-app-v4 192.0.2.42") || !strings.Contains(sets, "add sg-app-v6 2001:db8::42") {
			t.Errorf("ipsets lack the new member:\n%s", sets)
		}
		expectAll(t, []probe{
			{"new member A -> db", a, "192.0.2.41", 5432, true},
			{"new member A -> db v6", a, "2001:db8::41", 5432, true},
		})

		h.write("vms/222.toml", vmFile("02:00:00:00:04:22", "192.0.2.42", "2001:db8::42"))
		h.vmfw("apply")
		if strings.Contains(h.ipsets(), "192.0.2.42") {
			t.Errorf("ipset still holds the removed member")
		}
		expectAll(t, []probe{{"removed member A -> db", a, "192.0.2.41", 5432, false}})
	})
}

// TestGroupEditRewritesOnlyThatGroup: editing a group and applying changes
// that group's chain and nothing else; a second apply writes nothing.
func TestGroupEditRewritesOnlyThatGroup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		h := newHV(t, backend, "")
		h.write("groups/db.toml", dbGroup)
		h.write("groups/app.toml", appGroup)
		h.write("vms/231.toml", vmFile("02:00:00:00:05:31", "192.0.2.51", "2001:db8::51", "app"))
		h.write("vms/232.toml", vmFile("02:00:00:00:05:32", "192.0.2.52", "2001:db8::52", "app", "db"))
		a := h.vm("tap231i0", "02:00:00:00:05:31", "192.0.2.51", "2001:db8::51")
		b := h.vm("tap232i0", "02:00:00:00:05:32", "192.0.2.52", "2001:db8::52")
		h.vmfw("ifup", "tap231i0")
		h.vmfw("ifup", "tap232i0")
		h.serve(b, "192.0.2.52", 22, 2222)
		expectAll(t, []probe{{"ssh before edit", a, "192.0.2.52", 22, true}, {"2222 before edit", a, "192.0.2.52", 2222, false}})

		before4, before6, beforeSets := h.save(false), h.save(true), h.ipsets()
		h.write("groups/app.toml", strings.Replace(appGroup, `"22"`, `"2222"`, 1))
		h.vmfw("apply")
		after4, after6 := h.save(false), h.save(true)
		for fam, d := range map[string][2]string{"ipv4": {before4, after4}, "ipv6": {before6, after6}} {
			if got := changedChains(d[0], d[1]); !slices.Equal(got, []string{"sg-app-in"}) {
				t.Errorf("%s: editing group app changed chains %v, want only [sg-app-in]", fam, got)
			}
		}
		if h.ipsets() != beforeSets {
			t.Errorf("editing a group's rules changed ipsets")
		}
		expectAll(t, []probe{{"ssh after edit", a, "192.0.2.52", 22, false}, {"2222 after edit", a, "192.0.2.52", 2222, true}})

		dry := h.vmfw("apply", "--dry-run")
		if !strings.Contains(dry, "# no changes") {
			t.Errorf("apply --dry-run on an applied config prints changes:\n%s", dry)
		}
		h.vmfw("apply")
		if h.save(false) != after4 || h.save(true) != after6 {
			t.Errorf("a second apply changed the ruleset")
		}

		// --dry-run prints the change and applies nothing.
		h.write("groups/app.toml", appGroup)
		dry = h.vmfw("apply", "--dry-run")
		if !strings.Contains(dry, "-A sg-app-in") || !strings.Contains(dry, "--dport 22") {
			t.Errorf("dry run does not show the rewritten chain:\n%s", dry)
		}
		if h.save(false) != after4 {
			t.Errorf("apply --dry-run changed the ruleset")
		}
	})
}

// TestFailClosed: a tap on the bridge that matches the managed pattern but
// has no vmfw chains passes nothing, nor does a tap after ifdown.
func TestFailClosed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		h := newHV(t, backend, "")
		h.write("groups/app.toml", appGroup)
		h.write("vms/241.toml", vmFile("02:00:00:00:06:41", "192.0.2.61", "2001:db8::61", "app"))
		h.write("vms/242.toml", vmFile("02:00:00:00:06:42", "192.0.2.62", "2001:db8::62", "app"))
		managed := h.vm("tap241i0", "02:00:00:00:06:41", "192.0.2.61", "2001:db8::61")
		other := h.vm("tap242i0", "02:00:00:00:06:42", "192.0.2.62", "2001:db8::62")
		rogue := h.vm("tap249i0", "02:00:00:00:06:49", "192.0.2.69", "2001:db8::69")
		ext, err := h.lab.AddExternal("uplink0", "02:00:00:00:06:99", "192.0.2.200/24", "2001:db8::200/64")
		if err != nil {
			t.Fatal(err)
		}
		h.vmfw("ifup", "tap241i0")
		h.vmfw("ifup", "tap242i0")
		if err := h.lab.AttachToBridge("tap249i0"); err != nil {
			t.Fatal(err)
		}
		for _, ns := range []*labnet.NS{managed, rogue, ext} {
			h.serve(ns, map[*labnet.NS]string{managed: "192.0.2.61", rogue: "192.0.2.69", ext: "192.0.2.200"}[ns], 22)
		}
		expectAll(t, []probe{
			{"managed -> ext (control)", managed, "192.0.2.200", 22, true},
			{"ext -> managed (control)", ext, "192.0.2.61", 22, true},
			{"unconfigured tap -> ext", rogue, "192.0.2.200", 22, false},
			{"ext -> unconfigured tap", ext, "192.0.2.69", 22, false},
			{"managed -> unconfigured tap", managed, "192.0.2.69", 22, false},
		})
		if r, _ := labnet.Ping(context.Background(), rogue, "192.0.2.1", probeTimeout); r == labnet.Connected {
			t.Errorf("unconfigured tap reaches the hypervisor")
		}
		// ifdown removes the chains; the tap, still on the bridge, is shut.
		h.vmfw("ifdown", "tap242i0")
		h.vmfw("ifdown", "tap242i0") // idempotent
		h.vmfw("ifdown", "tap999i0") // unknown tap
		if h.installed("tap242i0") {
			t.Errorf("chains of tap242i0 remain after ifdown")
		}
		expectAll(t, []probe{{"tap after ifdown -> ext", other, "192.0.2.200", 22, false}})

		// ifup that cannot attach the tap (no such bridge) fails and leaves
		// no chains or memberships behind: QEMU will run no downscript.
		h.write("vms/243.toml", strings.Replace(vmFile("02:00:00:00:06:43", "192.0.2.63", "2001:db8::63", "app"), "vmbr0", "nosuchbr", 1))
		h.vm("tap243i0", "02:00:00:00:06:43", "192.0.2.63", "2001:db8::63")
		before := h.save(false)
		if _, errOut, code := h.run("ifup", "tap243i0"); code != 1 || !strings.Contains(errOut, "nosuchbr") {
			t.Errorf("ifup onto a missing bridge: exit %d, %q; want 1 naming the bridge", code, errOut)
		}
		if after := h.save(false); after != before {
			t.Errorf("failed ifup left changes: %v", changedChains(before, after))
		}
	})
}
