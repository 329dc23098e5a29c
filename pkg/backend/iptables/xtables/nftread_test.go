package xtables

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// inPrivateNetns runs fn on a thread in a new, empty network namespace.
// The thread is never unlocked, so it exits with the goroutine and takes
// the namespace (and every rule fn installed) with it; commands fn starts
// inherit the namespace. It skips unless root with iptables-nft.
func inPrivateNetns(t *testing.T, fn func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a private network namespace")
	}
	for _, tool := range []string{"iptables-nft-restore", "iptables-nft-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func restore(tool, text string) error {
	cmd := exec.Command(tool, "--noflush")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", tool, err, out)
	}
	return nil
}

// TestSaveChainsMatchesParse installs a small vmfw-like table and checks
// that the netlink read yields what parsing iptables-save yields: the same
// fingerprints (foreign rules included), counters and hooks.
func TestSaveChainsMatchesParse(t *testing.T) {
	const table = `*filter
:vmfw-FORWARD - [0:0]
:vmfw-out - [0:0]
:tap1i0-out - [0:0]
:other - [0:0]
-A tap1i0-out -m comment --comment "vmfw:0123456789 antispoof mac" -m mac ! --mac-source 02:00:00:00:00:01 -j DROP
-A tap1i0-out -m comment --comment vmfw:aaaaaaaaaa -p udp --sport 67 -j DROP
-A tap1i0-out -p tcp --dport 22 -j ACCEPT
-A tap1i0-out -m comment --comment vmfw:bbbbbbbbbb -j MARK --set-xmark 0x1000/0x1000
-A vmfw-out -m comment --comment vmfw:cccccccccc -m physdev --physdev-in tap1+ -g tap1i0-out
-A vmfw-FORWARD -m comment --comment vmfw:dddddddddd -m physdev --physdev-is-in -j vmfw-out
-A other -m comment --comment "not vmfw" -j RETURN
-I FORWARD 1 -m comment --comment vmfw:eeeeeeeeee -j vmfw-FORWARD
-A FORWARD -j other
COMMIT
`
	inPrivateNetns(t, func() error {
		if err := restore("iptables-nft-restore", table); err != nil {
			return err
		}
		ctx := context.Background()
		c := &Client{mode: NFT, runner: ExecRunner{}}
		v4, err := c.ListChains(ctx, ruleset.IPv4)
		if err != nil {
			return err
		}
		// iptables-nft creates a built-in chain only when a rule uses it.
		for _, name := range []layout.Chain{"vmfw-FORWARD", "vmfw-out", "tap1i0-out", "other", "FORWARD"} {
			if !v4[name] {
				t.Errorf("chain %s not listed: %v", name, v4)
			}
		}
		if v6, err := c.ListChains(ctx, ruleset.IPv6); err != nil || len(v6) != 0 {
			t.Errorf("IPv6 chains = %v, %v; want none", v6, err)
		}
		names := []layout.Chain{"vmfw-FORWARD", "vmfw-out", "tap1i0-out", "missing-out"}
		got, err := c.SaveChains(ctx, ruleset.IPv4, names)
		if err != nil {
			return err
		}
		out, err := exec.Command("iptables-nft-save", "-c", "-t", "filter").Output()
		if err != nil {
			return err
		}
		want, err := Parse(out)
		if err != nil {
			return err
		}
		for _, n := range names {
			w, inWant := want.Chains[n]
			g, inGot := got.Chains[n]
			if inWant != inGot || !slices.Equal(w, g) {
				t.Errorf("%s: netlink read %v (%v), iptables-save %v (%v)", n, g, inGot, w, inWant)
			}
			if inWant && !slices.Equal(want.Counters[n], got.Counters[n]) {
				t.Errorf("%s: counters %v, iptables-save %v", n, got.Counters[n], want.Counters[n])
			}
			if want.Foreign[n] != got.Foreign[n] {
				t.Errorf("%s: %d foreign rules, iptables-save %d", n, got.Foreign[n], want.Foreign[n])
			}
		}
		if len(got.Hooks) != 1 || got.Hooks[layout.Hook{From: layout.Forward, To: layout.ChainForward}] != 1 {
			t.Errorf("hooks = %v, want one FORWARD -> vmfw-FORWARD", got.Hooks)
		}
		if _, err := (&Client{mode: Legacy}).SaveChains(ctx, ruleset.IPv4, names); err != ErrNotNFT {
			t.Errorf("legacy SaveChains error = %v, want ErrNotNFT", err)
		}
		return nil
	})
}

// TestBridgeHooksAndChains reads the bridge table ebtables-nft wrote.
func TestBridgeHooksAndChains(t *testing.T) {
	if _, err := exec.LookPath("ebtables-nft-restore"); err != nil {
		t.Skip("ebtables-nft-restore not installed")
	}
	const table = `*filter
:vmfw-l2 RETURN
:tap1i0-l2 RETURN
-A vmfw-l2 -i tap1i0 -j tap1i0-l2
-A tap1i0-l2 -j DROP
-A FORWARD -j vmfw-l2
-A INPUT -i tap2i0 -j vmfw-l2
COMMIT
`
	inPrivateNetns(t, func() error {
		if err := restore("ebtables-nft-restore", table); err != nil {
			return err
		}
		ctx := context.Background()
		exist, err := BridgeChainsExist(ctx, []layout.Chain{"vmfw-l2", "tap1i0-l2", "tap2i0-l2"})
		if err != nil {
			return err
		}
		if !exist["vmfw-l2"] || !exist["tap1i0-l2"] || exist["tap2i0-l2"] {
			t.Errorf("bridge chains found = %v", exist)
		}
		hooks, err := BridgeHooks(ctx, layout.BridgeRoots)
		if err != nil {
			return err
		}
		// The INPUT rule matches an interface first: not a hook.
		if len(hooks) != 1 || hooks[layout.Hook{From: layout.Forward, To: layout.ChainL2}] != 1 {
			t.Errorf("bridge hooks = %v, want the FORWARD jump only", hooks)
		}
		return nil
	})
}
