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

// vmFile is the file of a VM with one interface on vmbr0 with addresses
// v4 and, unless empty, v6.
func vmFile(mac, v4, v6 string, groups ...string) string {
	quoted := make([]string, len(groups))
	for i, g := range groups {
		quoted[i] = `"` + g + `"`
	}
	ips := `"` + v4 + `"`
	if v6 != "" {
		ips += `, "` + v6 + `"`
	}
	return `
[net0]
bridge = "vmbr0"
mac = "` + mac + `"
ips = [` + ips + `]
groups = [` + strings.Join(quoted, ", ") + `]
`
}

// TestMembershipChangesOnlyIpsets: adding a VM to a group lets it in where
// the group is a source_group, without rewriting any chain but the VM's own;
// removing it shuts it out again.
func TestMembershipChangesOnlyIpsets(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("groups/db.toml", dbGroup)
		h.write("groups/app.toml", appGroup)
		c := h.guest(221, "02:00:00:00:04:21", "192.0.2.41", "2001:db8::41", "db")
		a := h.guest(222, "02:00:00:00:04:22", "192.0.2.42", "2001:db8::42")
		x := h.guest(223, "02:00:00:00:04:23", "192.0.2.43", "2001:db8::43", "app")
		h.firstV4(220, "192.0.2.9")
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

		before := h.objects()
		h.write("vms/222.toml", vmFile("02:00:00:00:04:22", "192.0.2.42", "2001:db8::42", "app"))
		h.vmfw("apply")
		// The iptables backend rewrites the VM's own chains; the nftables
		// backend's chains are shared and only set elements change.
		own := []string{"ipv4/tap222i0-in", "ipv4/tap222i0-out", "ipv6/tap222i0-in", "ipv6/tap222i0-out"}
		for _, ch := range changedObjects(before, h.objects()) {
			if !slices.Contains(own, ch) && !strings.Contains(ch, "set ") && !strings.HasPrefix(ch, "ipset ") {
				t.Errorf("joining a group rewrote chain %s (only the VM's own chains and sets may change)", ch)
			}
		}
		if !h.member("app", "192.0.2.42") || !h.member("app", "2001:db8::42") {
			t.Errorf("the member sets of app lack the new member:\n%s", h.snapshot())
		}
		expectAll(t, []probe{
			{"new member A -> db", a, "192.0.2.41", 5432, true},
			{"new member A -> db v6", a, "2001:db8::41", 5432, true},
		})

		h.write("vms/222.toml", vmFile("02:00:00:00:04:22", "192.0.2.42", "2001:db8::42"))
		h.vmfw("apply")
		if h.member("app", "192.0.2.42") || h.member("app", "2001:db8::42") {
			t.Errorf("the member sets of app still hold the removed member")
		}
		expectAll(t, []probe{{"removed member A -> db", a, "192.0.2.41", 5432, false}})
	})
}

// TestGroupEditRewritesOnlyThatGroup: editing a group and applying changes
// that group's chain and nothing else; a second apply writes nothing.
func TestGroupEditRewritesOnlyThatGroup(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("groups/db.toml", dbGroup)
		h.write("groups/app.toml", appGroup)
		a := h.guest(231, "02:00:00:00:05:31", "192.0.2.51", "2001:db8::51", "app")
		b := h.guest(232, "02:00:00:00:05:32", "192.0.2.52", "2001:db8::52", "app", "db")
		h.firstV4(230, "192.0.2.9")
		h.vmfw("ifup", "tap231i0")
		h.vmfw("ifup", "tap232i0")
		h.serve(b, "192.0.2.52", 22, 2222)
		expectAll(t, []probe{{"ssh before edit", a, "192.0.2.52", 22, true}, {"2222 before edit", a, "192.0.2.52", 2222, false}})

		before := h.objects()
		h.write("groups/app.toml", strings.Replace(appGroup, `"22"`, `"2222"`, 1))
		h.vmfw("apply")
		after := h.snapshot()
		want := []string{"ipv4/sg-app-in", "ipv6/sg-app-in"}
		if h.nft() {
			want = []string{"bridge/sg-app-in"}
		}
		if got := changedObjects(before, h.objects()); !slices.Equal(got, want) {
			t.Errorf("editing group app changed %v, want only %v", got, want)
		}
		expectAll(t, []probe{{"ssh after edit", a, "192.0.2.52", 22, false}, {"2222 after edit", a, "192.0.2.52", 2222, true}})

		dry := h.vmfw("apply", "--dry-run")
		if !strings.Contains(dry, "# no changes") {
			t.Errorf("apply --dry-run on an applied config prints changes:\n%s", dry)
		}
		h.vmfw("apply")
		if h.snapshot() != after {
			t.Errorf("a second apply changed the ruleset")
		}

		// --dry-run prints the change and applies nothing.
		h.write("groups/app.toml", appGroup)
		dry = h.vmfw("apply", "--dry-run")
		rule, port := "-A sg-app-in", "--dport 22"
		if h.nft() {
			rule, port = "add rule bridge vmfw sg-app-in", "dport 22"
		}
		if !strings.Contains(dry, rule) || !strings.Contains(dry, port) {
			t.Errorf("dry run does not show the rewritten chain:\n%s", dry)
		}
		if h.snapshot() != after {
			t.Errorf("apply --dry-run changed the ruleset")
		}
	})
}

// TestFailClosed: a tap on the bridge that matches the managed pattern but
// has no vmfw chains passes nothing, nor does a tap after ifdown.
func TestFailClosed(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("groups/app.toml", appGroup)
		managed := h.guest(241, "02:00:00:00:06:41", "192.0.2.61", "2001:db8::61", "app")
		other := h.guest(242, "02:00:00:00:06:42", "192.0.2.62", "2001:db8::62", "app")
		rogue := h.vm("tap249i0", "02:00:00:00:06:49", "192.0.2.69", "2001:db8::69")
		ext := h.external("02:00:00:00:06:99", "192.0.2.200/24", "2001:db8::200/64")
		h.firstV4(240, "192.0.2.9")
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
		before := h.objects()
		if _, errOut, code := h.run("ifup", "tap243i0"); code != 1 || !strings.Contains(errOut, "nosuchbr") {
			t.Errorf("ifup onto a missing bridge: exit %d, %q; want 1 naming the bridge", code, errOut)
		}
		if changed := changedObjects(before, h.objects()); len(changed) > 0 {
			t.Errorf("failed ifup left changes: %v", changed)
		}
	})
}
