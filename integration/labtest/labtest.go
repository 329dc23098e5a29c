// Package labtest is what vmfw's integration test packages (integration,
// integration/hooks, integration/cni) share on top of labnet and testbin:
// the steps every one of them takes against a lab (build it, run a
// command or a daemon in it, probe it, look at what vmfw left in the
// kernel and in its state directory), each failing the test it is given
// instead of returning an error, and the one spelling of vmfw's backends
// they all run with.
package labtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
)

// NftablesBackend names the nftables backend among the backends a test
// runs with; the others are the iptables backend's flavours ("nft",
// "legacy").
const NftablesBackend = "nftables"

// WebGroup is the file of a security group that opens http (tcp 80) to
// everyone: what the labs' web servers are in.
const WebGroup = `
[[in]]
proto = "tcp"
dport = "80"
`

// Backends are what a test that runs with every backend runs with: the
// iptables backend on iptables-nft and on iptables-legacy, and the
// nftables backend.
var Backends = []string{"nft", "legacy", NftablesBackend}

// EachBackend runs fn as a parallel subtest per backend of backends.
func EachBackend(t *testing.T, backends []string, fn func(t *testing.T, backend string)) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			fn(t, b)
		})
	}
}

// BackendArgs are vmfw's global flags that choose backend.
func BackendArgs(backend string) []string {
	if backend == NftablesBackend {
		return []string{"--backend", NftablesBackend}
	}
	return []string{"--iptables", backend}
}

// BackendEnv is the environment variable that chooses backend for a
// program run without vmfw's flags: vmfw-ifup as QEMU runs it, a hook
// script as the hypervisor runs it.
func BackendEnv(backend string) string {
	if backend == NftablesBackend {
		return "VMFW_BACKEND=" + NftablesBackend
	}
	return "VMFW_IPTABLES=" + backend
}

// NewLab builds a lab with labnet's defaults that is closed when t ends.
func NewLab(t *testing.T) *labnet.Lab {
	t.Helper()
	lab, err := labnet.New(labnet.Options{})
	if err != nil {
		t.Fatalf("creating lab: %v", err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("closing lab: %v", err)
		}
	})
	return lab
}

// Exec runs a command in ns and returns its output; a failure fails t.
func Exec(t *testing.T, ns *labnet.NS, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := ns.Exec(ctx, args...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

// Start starts argv in ns with env added to the test's environment; t's
// cleanup kills it if the test did not stop it.
func Start(t *testing.T, ns *labnet.NS, env []string, argv ...string) *labnet.Process {
	t.Helper()
	p, err := labnet.Start(ns, env, argv...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

// StartAgent is Start for "vmfw agent": it returns once the agent says it
// is ready, and fails t if it does not within 30 s.
func StartAgent(t *testing.T, ns *labnet.NS, env []string, argv ...string) *labnet.Process {
	t.Helper()
	p := Start(t, ns, env, argv...)
	if !p.WaitOutput("agent ready", 1, 30*time.Second) {
		t.Fatalf("the agent did not get ready:\n%s", p.Output())
	}
	return p
}

// Records lists the interfaces with attachment records in vmfw's state
// directory.
func Records(t *testing.T, stateDir string) []string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(stateDir, "attachments"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, strings.TrimSuffix(de.Name(), ".json"))
	}
	return out
}

// Free returns an error naming the first of vmfw's objects in ns's kernel,
// nil on a host where vmfw never ran or was flushed. filter is the test's
// listing of the filter tables (iptables-save of both families, or nft's
// listing of vmfw's own tables); a line of it that names vmfw, a member
// set or a chain of an interface whose name begins with one of ifPrefixes
// is vmfw's, as are vmfw's bridge chains, its ipsets and its nf_tables
// tables.
func Free(t *testing.T, ns *labnet.NS, filter string, ifPrefixes ...string) error {
	t.Helper()
	mine := func(l string) bool {
		if strings.Contains(l, "vmfw") || strings.HasPrefix(l, ":sg-") {
			return true
		}
		for _, p := range ifPrefixes {
			if strings.HasPrefix(l, ":"+p) {
				return true
			}
		}
		return false
	}
	for _, l := range strings.Split(filter, "\n") {
		if mine(l) {
			return fmt.Errorf("the filter table holds %q", l)
		}
	}
	for _, l := range strings.Split(Exec(t, ns, "ebtables-nft-save"), "\n") {
		if !strings.HasPrefix(l, "#") && mine(l) {
			return fmt.Errorf("the bridge table holds %q", l)
		}
	}
	for _, l := range strings.Split(Exec(t, ns, "ipset", "save"), "\n") {
		if strings.HasPrefix(l, "create sg-") {
			return fmt.Errorf("ipset holds %q", l)
		}
	}
	if out, err := ns.Exec(context.Background(), "nft", "list", "tables"); err != nil {
		return fmt.Errorf("nft list tables: %v\n%s", err, out)
	} else if strings.Contains(string(out), " vmfw\n") {
		return fmt.Errorf("nf_tables holds vmfw's tables:\n%s", out)
	}
	return nil
}

// Announce sends one frame from a guest (an ARP probe, which
// anti-spoofing allows and which the bridge learns the guest's MAC from
// even when a filter drops it), so that the bridge forwards frames to the
// guest to its port only. A frame to a MAC the bridge has not learnt is
// flooded to every port, and the in chain of a VM whose policy_in is
// reject answers the copy it gets with a reset in the destination's name,
// which can reach the sender before the real answer.
func Announce(t *testing.T, g *labnet.NS, mac string) {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	if err := labnet.SendFrame(g, "eth0", labnet.ARPRequestFrame(hw, netip.IPv4Unspecified(), netip.MustParseAddr("192.0.2.1"), nil)); err != nil {
		t.Fatal(err)
	}
}

// Probe is one TCP connection from From to Addr:Port and what it must
// give: Want, or with Blocked any outcome but Connected.
type Probe struct {
	What    string
	From    *labnet.NS
	Addr    string
	Port    int
	Want    labnet.Result
	Blocked bool
}

// ExpectProbes runs the probes at once (labnet.ProbeAll), each waiting
// timeout for an answer, and reports each whose outcome is not the
// expected one.
func ExpectProbes(t *testing.T, timeout time.Duration, probes []Probe) {
	t.Helper()
	results, errs := labnet.ProbeAll(len(probes), func(ctx context.Context, i int) (labnet.Result, error) {
		p := probes[i]
		return labnet.TCPConnect(ctx, p.From, labnet.HostPort(p.Addr, p.Port), timeout)
	})
	for i, p := range probes {
		target := labnet.HostPort(p.Addr, p.Port)
		switch got := results[i]; {
		case errs[i] != nil:
			t.Errorf("%s: tcp %s -> %s: %v", p.What, p.From, target, errs[i])
		case p.Blocked && got == labnet.Connected:
			t.Errorf("%s: tcp %s -> %s should be blocked, but it connected", p.What, p.From, target)
		case !p.Blocked && got != p.Want:
			t.Errorf("%s: tcp %s -> %s: got %v, want %v", p.What, p.From, target, got, p.Want)
		}
	}
}
