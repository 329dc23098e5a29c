package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
)

// netns is a named network namespace the bench created (labnet.NS, the
// namespace helper the integration tests use). Everything the bench
// changes happens inside one: commands run in it by forking from a thread
// that entered it (labnet.NS.Do), so nothing runs in, or changes, the
// namespace the bench was started in.
type netns struct {
	*labnet.NS
}

var (
	nsMu  sync.Mutex
	nsAll = map[*netns]bool{}
)

// newNetns creates a namespace named vmfwbench-<random>-role with its
// loopback up.
func newNetns(ctx context.Context, role string) (*netns, error) {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	ns, err := labnet.AddNS("vmfwbench-" + hex.EncodeToString(b[:]) + "-" + role)
	if err != nil {
		return nil, err
	}
	n := &netns{ns}
	nsMu.Lock()
	nsAll[n] = true
	nsMu.Unlock()
	if _, err := n.run(ctx, "ip", "link", "set", "lo", "up"); err != nil {
		return n, err
	}
	return n, nil
}

// remove deletes the namespace; the kernel frees its interfaces, rules and
// sets with it.
func (n *netns) remove() error {
	nsMu.Lock()
	delete(nsAll, n)
	nsMu.Unlock()
	return n.Delete()
}

// removeAll deletes every namespace the bench still has, on exit or
// interrupt, whatever state the run ended in.
func removeAll() {
	nsMu.Lock()
	var all []*netns
	for n := range nsAll {
		all = append(all, n)
	}
	nsMu.Unlock()
	for _, n := range all {
		if err := n.remove(); err != nil {
			fmt.Fprintf(os.Stderr, "vmfw-bench: %v\n", err)
		}
	}
}

// do runs fn on an OS thread inside the namespace: sockets fn opens belong
// to it, commands it starts are born in it.
func (n *netns) do(fn func() error) error { return n.Do(fn) }

// run runs a command in the namespace and returns its output.
func (n *netns) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out []byte
	err := n.do(func() error {
		var err error
		out, err = runCmd(ctx, name, args...)
		return err
	})
	return out, err
}

// runIn runs a command in the namespace with stdin and returns its
// output; stdin may be nil.
func (n *netns) runIn(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	var out []byte
	err := n.do(func() error {
		cmd := exec.CommandContext(ctx, name, args...)
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		out = stdout.Bytes()
		return nil
	})
	return out, err
}

// timed runs a command in the namespace and returns how long it took
// from fork to exit, and its output.
func (n *netns) timed(ctx context.Context, env []string, name string, args ...string) (time.Duration, []byte, error) {
	var d time.Duration
	var out []byte
	err := n.do(func() error {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		err := cmd.Run()
		d = time.Since(start)
		out = stdout.Bytes()
		if err != nil {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return nil
	})
	return d, out, err
}

// runCmd runs a command in the calling thread's namespace: the bench's
// own for "ip netns add" and "delete" only, a bench namespace inside do.
func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// labEnv is the environment of every vmfw run in a lab whose files live
// under tmp: its configuration dir, backend, and run and state dirs of
// its own, so that labs never share a lock, a socket or a record.
func labEnv(tmp, dir, backend string) []string {
	choose := "VMFW_IPTABLES=" + backend
	if backend == nftablesBackend {
		choose = "VMFW_BACKEND=" + nftablesBackend
	}
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"VMFW_CONFIG_DIR=" + dir,
		choose,
		"VMFW_RUN_DIR=" + filepath.Join(tmp, "run"),
		"VMFW_STATE_DIR=" + filepath.Join(tmp, "state"),
		"XTABLES_LOCKFILE=" + os.Getenv("XTABLES_LOCKFILE"),
	}
}

// addDataVM creates the namespace of data-plane VM i (v) and joins it to
// hv by a veth pair named after its tap, with its MAC and IPv4 address on
// eth0. The caller removes the namespace.
func addDataVM(ctx context.Context, hv *netns, i int, v dataVM) (*netns, error) {
	ns, err := newNetns(ctx, fmt.Sprintf("vm%d", i+1))
	if err != nil {
		return nil, err
	}
	if _, err := hv.run(ctx, "ip", "link", "add", tapName(v.vmid), "type", "veth", "peer", "name", "eth0", "netns", ns.Name); err != nil {
		ns.remove()
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "set", "eth0", "address", v.mac},
		{"addr", "add", v.ip + "/24", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
	} {
		if _, err := ns.run(ctx, "ip", args...); err != nil {
			ns.remove()
			return nil, err
		}
	}
	return ns, nil
}

// addDataVMs creates the namespaces of all data-plane VMs (addDataVM) and
// returns them in the order of dataVMs, with the function that removes
// them, which the caller calls once done with them.
func addDataVMs(ctx context.Context, hv *netns) ([]*netns, func(), error) {
	var vms []*netns
	remove := func() {
		for _, ns := range vms {
			ns.remove()
		}
	}
	for i, v := range dataVMs {
		ns, err := addDataVM(ctx, hv, i, v)
		if err != nil {
			remove()
			return nil, nil, err
		}
		vms = append(vms, ns)
	}
	return vms, remove, nil
}
