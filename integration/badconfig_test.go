package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBadConfigChangesNothing: for each validation rule of the README, a
// broken config makes apply (and check, and ifup) exit 2 with file:line in
// the message, and the installed ruleset stays exactly as it was.
func TestBadConfigChangesNothing(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("groups/db.toml", dbGroup)
		h.write("groups/app.toml", appGroup)
		h.guest(281, "02:00:00:00:09:81", "192.0.2.91", "2001:db8::91", "app", "db")
		h.firstV4(280, "192.0.2.9")
		h.vmfw("ifup", "tap281i0")
		good := h.snapshot()

		cases := []struct {
			name, file, content, where string
		}{
			{"unknown key", "groups/bad.toml", "[[in]]\nprto = \"tcp\"\n", "groups/bad.toml:2:"},
			{"wrong type", "groups/bad.toml", "[[in]]\nproto = \"tcp\"\nlog = \"yes\"\n", "groups/bad.toml:3:"},
			{"bad address", "groups/bad.toml", "[[in]]\nsource = [\"192.0.2.300\"]\n", "groups/bad.toml:2:"},
			{"bad CIDR", "groups/bad.toml", "[[in]]\nsource = [\"2001:db8::/129\"]\n", "groups/bad.toml:2:"},
			{"bad MAC", "groups/bad.toml", "[[in]]\nsource_mac = \"02:00:00:zz:00:01\"\n", "groups/bad.toml:2:"},
			{"port out of range", "groups/bad.toml", "[[in]]\nproto = \"tcp\"\ndport = \"70000\"\n", "groups/bad.toml:3:"},
			{"reversed range", "groups/bad.toml", "[[in]]\nproto = \"tcp\"\ndport = \"90:80\"\n", "groups/bad.toml:3:"},
			{"port without tcp/udp/sctp", "groups/bad.toml", "[[in]]\nproto = \"icmp\"\ndport = \"22\"\n", "groups/bad.toml:3:"},
			{"unknown source_group", "groups/bad.toml", "[[in]]\nsource_group = \"nosuch\"\n", "groups/bad.toml:2:"},
			{"invalid group name", "groups/9bad.toml", "[[in]]\n", "groups/9bad.toml"},
			{"unknown group on a VM", "vms/282.toml", "[net0]\ngroups = [\"nosuch\"]\n", "vms/282.toml:2:"},
			{"IP claimed twice", "vms/282.toml", "[net0]\nips = [\"192.0.2.91\"]\n", "vms/282.toml:2:"},
			{"tap name over 15 characters", "vms/123456789.toml", "[net123456]\n", "vms/123456789.toml:1:"},
			{"comment smuggling arguments", "groups/bad.toml", "[[in]]\ncomment = \"x\\\" -j ACCEPT\"\n", "groups/bad.toml:2:"},
			{"non-UTF-8", "groups/bad.toml", "description = \"\xff\xfe\"\n", "groups/bad.toml"},
			{"oversized file", "groups/bad.toml", "#" + strings.Repeat("x", 2<<20) + "\n", "groups/bad.toml"},
			{"bad policy", "vms/282.toml", "policy_in = \"maybe\"\n", "vms/282.toml:1:"},
			{"bad mark", "vmfw.toml", "mark = \"0x3\"\n", "vmfw.toml:1:"},
		}
		for _, c := range cases {
			path := filepath.Join(h.config, c.file)
			if err := os.WriteFile(path, []byte(c.content), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{{"apply"}, {"check"}, {"ifup", "tap281i0"}} {
				_, errOut, code := h.run(args...)
				if code != 2 {
					t.Errorf("%s: vmfw %s exit %d, want 2 (%s)", c.name, args[0], code, errOut)
				}
				if !strings.Contains(errOut, c.where) {
					t.Errorf("%s: vmfw %s says %q, want it to name %s", c.name, args[0], strings.TrimSpace(errOut), c.where)
				}
			}
			if h.snapshot() != good {
				t.Errorf("%s: the ruleset changed although the config is invalid", c.name)
			}
			os.Remove(path)
		}

		// A tap whose VM has no config file: ifup names the file it looked for.
		h.vm("tap283i0", "", "192.0.2.93", "")
		_, errOut, code := h.run("ifup", "tap283i0")
		if code != 2 || !strings.Contains(errOut, filepath.Join(h.config, "vms", "283.toml")) {
			t.Errorf("ifup without config: exit %d, %q; want 2 naming vms/283.toml", code, errOut)
		}
		// Bad usage is exit 2 too, and changes nothing.
		for _, args := range [][]string{{}, {"frobnicate"}, {"ifup"}, {"apply", "extra"}, {"status", "-o", "yaml"}} {
			if _, _, code := h.run(args...); code != 2 {
				t.Errorf("vmfw %v: exit %d, want 2", args, code)
			}
		}
		if h.snapshot() != good {
			t.Errorf("the ruleset changed")
		}
	})
}
