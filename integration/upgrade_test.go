package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// referenceGolden is what vmfw installs for the reference scenario with
// every tap attached, as the iptables layout's golden test keeps it. The
// file has not changed since before the backend seam (git log on it shows
// the commits that changed generated rules), so it is the ruleset a host
// running an earlier vmfw holds.
const referenceGolden = "../pkg/backend/iptables/layout/testdata/reference.rules"

// TestUpgradeFindsRulesetInSync: a host whose ruleset an earlier vmfw
// installed is in sync for this one. The golden ruleset is loaded into the
// kernel with the tools themselves (iptables-restore, ebtables-restore,
// ipset), not by vmfw; then apply must plan nothing, status must report
// every tap in sync, and ifdown and ifup of a tap must take the scoped
// path back to the same ruleset: fingerprints, names and set members
// read back exactly as an upgraded host has them.
func TestUpgradeFindsRulesetInSync(t *testing.T) {
	golden, err := os.ReadFile(referenceGolden)
	if err != nil {
		t.Fatal(err)
	}
	sections := goldenSections(t, string(golden))
	forEachBackend(t, func(t *testing.T, backend string) {
		h := newHV(t, backend, "../conf/examples/reference")
		for _, v := range refVMs {
			h.vm(v.tap, v.mac, v.v4, v.v6)
		}
		h.exec("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")
		if h.nft() {
			// No earlier vmfw wrote this backend's tables: what it must
			// find in sync is what it wrote itself, read back by another
			// process and after a tap went and came back.
			nftReadBack(t, h)
			return
		}
		h.restoreInNS(ipsetScript(t, sections["ipsets"]), "ipset", "restore")
		h.restoreInNS(sections["ipv4"], h.tool("iptables-restore"), "--noflush")
		h.restoreInNS(sections["ipv6"], h.tool("ip6tables-restore"), "--noflush")
		h.restoreInNS(sections["ebtables"], "ebtables-nft-restore", "--noflush")

		if out := h.vmfw("apply", "--dry-run"); out != "# no changes\n" {
			t.Fatalf("apply after the upgrade would change:\n%s", out)
		}
		for _, ts := range h.status().Taps {
			if ts.State != "in-sync" {
				t.Errorf("%s is %s after the upgrade", ts.Tap, ts.State)
			}
		}
		before := h.save(false) + h.save(true) + h.bridgeSave() + h.ipsets()
		h.vmfw("ifdown", "tap103i0")
		h.vmfw("ifup", "tap103i0")
		if after := h.save(false) + h.save(true) + h.bridgeSave() + h.ipsets(); after != before {
			t.Errorf("ifdown and ifup of tap103i0 changed the upgraded ruleset:\n%s", lineDiff(before, after))
		}
		if out := h.vmfw("apply", "--dry-run"); out != "# no changes\n" {
			t.Errorf("apply after ifdown and ifup would change:\n%s", out)
		}
	})
}

// nftReadBack is TestUpgradeFindsRulesetInSync for the nftables backend:
// the reference scenario applied, then every later run (a new process
// reading the kernel) finds it in sync, before and after a tap's ifdown
// and ifup.
func nftReadBack(t *testing.T, h *hv) {
	h.vmfw("apply")
	if out := h.vmfw("apply", "--dry-run"); out != "# no changes\n" {
		t.Fatalf("apply after apply would change:\n%s", out)
	}
	for _, ts := range h.status().Taps {
		if ts.State != "in-sync" {
			t.Errorf("%s is %s after apply", ts.Tap, ts.State)
		}
	}
	before := h.snapshot()
	h.vmfw("ifdown", "tap103i0")
	h.vmfw("ifup", "tap103i0")
	if after := h.snapshot(); after != before {
		t.Errorf("ifdown and ifup of tap103i0 changed the ruleset:\n%s", lineDiff(before, after))
	}
	if out := h.vmfw("apply", "--dry-run"); out != "# no changes\n" {
		t.Errorf("apply after ifdown and ifup would change:\n%s", out)
	}
}

// goldenSections splits the golden file at its "# NAME" headers.
func goldenSections(t *testing.T, text string) map[string]string {
	t.Helper()
	out := map[string]string{}
	name := ""
	for _, line := range strings.SplitAfter(text, "\n") {
		if h, ok := strings.CutPrefix(line, "# "); ok {
			name = strings.TrimSpace(h)
			continue
		}
		out[name] += line
	}
	for _, want := range []string{"ipv4", "ipv6", "ebtables", "ipsets"} {
		if strings.TrimSpace(out[want]) == "" {
			t.Fatalf("%s has no %q section", referenceGolden, want)
		}
	}
	return out
}

// ipsetScript turns the golden file's set lines ("NAME TYPE MEMBER...")
// into the restore script an earlier vmfw ran for them.
func ipsetScript(t *testing.T, sets string) string {
	t.Helper()
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(sets), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			t.Fatalf("bad set line %q", line)
		}
		family := "inet"
		if strings.HasSuffix(f[0], "-v6") {
			family = "inet6"
		}
		fmt.Fprintf(&b, "create %s %s family %s maxelem 65536\n", f[0], f[1], family)
		for _, m := range f[2:] {
			fmt.Fprintf(&b, "add %s %s\n", f[0], m)
		}
	}
	return b.String()
}

// restoreInNS runs a restore command with input in the hypervisor
// namespace.
func (h *hv) restoreInNS(input string, argv ...string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns.Name}, argv...)...)
	cmd.Stdin = strings.NewReader(input)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		h.t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, stderr.String())
	}
}

// lineDiff lists the lines only one of two texts has.
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	for l, n := range count {
		if n > 0 {
			out = append(out, "- "+l)
		} else if n < 0 {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}
