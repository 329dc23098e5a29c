package integration

import (
	"context"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
	iptlayout "github.com/vmfw/vmfw/pkg/backend/iptables/layout"
)

// TestNFTablesForeignDropPolicy: with iptables' FORWARD and OUTPUT
// policies DROP (as Docker sets them), the nftables backend's one rule at
// the head of each lets through what vmfw allows, VM to VM and hypervisor
// to VM, and nothing else; status names the policies and reports a
// missing rule as drift, apply puts it back, flush takes it away and
// leaves the chains as they were.
func TestNFTablesForeignDropPolicy(t *testing.T) {
	labtest.EachBackend(t, iptablesFlavours, func(t *testing.T, flavour string) {
		h := newHV(t, flavour, "")
		h.write("groups/app.toml", appGroup)
		a := h.guest(271, "02:00:00:00:08:71", "192.0.2.91", "2001:db8::91", "app")
		b := h.guest(272, "02:00:00:00:08:72", "192.0.2.92", "2001:db8::92")
		h.serve(a, "192.0.2.91", 22, 25)
		h.serve(a, "2001:db8::91", 22)
		for _, ipt := range []string{h.tool("iptables"), h.tool("ip6tables")} {
			h.exec(ipt, "-A", "FORWARD", "-i", "eth9", "-j", "ACCEPT")
			h.exec(ipt, "-P", "FORWARD", "DROP")
			h.exec(ipt, "-P", "OUTPUT", "DROP")
		}
		before := h.save(false) + h.save(true)
		nft := func(args ...string) string { return h.vmfw(append([]string{"--backend", "nftables"}, args...)...) }
		nft("ifup", "tap271i0")
		nft("ifup", "tap272i0")
		expectAll(t, []probe{
			{"VM to VM, allowed", b, "192.0.2.91", 22, true},
			{"VM to VM over IPv6, allowed", b, "2001:db8::91", 22, true},
			{"VM to VM, refused", b, "192.0.2.91", 25, false},
			{"hypervisor to VM, allowed", h.ns, "192.0.2.91", 22, true},
			{"hypervisor to VM, refused", h.ns, "192.0.2.91", 25, false},
		})
		out := nft("status")
		for _, want := range []string{"iptables' ipv4 FORWARD policy is DROP", "iptables' ipv6 OUTPUT policy is DROP", "base chains: in-sync"} {
			if !strings.Contains(out, want) {
				t.Errorf("status does not say %q:\n%s", want, out)
			}
		}

		// Someone deletes vmfw's rule from FORWARD: drift, repaired by apply.
		rule := ""
		for _, l := range strings.Split(h.save(false), "\n") {
			if strings.HasPrefix(l, "-A FORWARD ") && strings.Contains(l, "vmfw nftables") {
				rule = l
			}
		}
		if rule == "" {
			t.Fatalf("no vmfw rule in FORWARD:\n%s", h.save(false))
		}
		args, err := iptlayout.SplitWords(strings.TrimPrefix(rule, "-A FORWARD "))
		if err != nil {
			t.Fatal(err)
		}
		h.exec(append([]string{h.tool("iptables"), "-D", "FORWARD"}, args...)...)
		if r := tcp(t, b, "192.0.2.91", 22); r == labnet.Connected {
			t.Errorf("without vmfw's rule the DROP policy should drop, but it connected")
		}
		if out := nft("status"); !strings.Contains(out, "iptables ipv4 FORWARD") {
			t.Errorf("status does not report the missing rule:\n%s", out)
		}
		nft("apply")
		expectAll(t, []probe{{"after the repair", b, "192.0.2.91", 22, true}})

		nft("flush")
		if after := h.save(false) + h.save(true); after != before {
			t.Errorf("after flush iptables' filter tables differ:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if _, err := h.ns.Exec(context.Background(), "nft", "list", "table", "inet", "vmfw"); err == nil {
			t.Error("flush left table inet vmfw")
		}
	})
}
