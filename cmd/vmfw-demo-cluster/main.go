// Command vmfw-demo-cluster runs cluster mode (docs/cluster.md) on three
// throwaway hypervisors built from network namespaces (labnet.Cluster):
// their bridges share one L2 segment, etcd runs in a management
// namespace, each hypervisor runs its own "vmfw agent" with a local
// vmfw.toml that only says where etcd is, and the configuration is pushed
// once with "vmfw cluster push". It then shows with real TCP connections
// that a rule with source_group lets in members of the group that run on
// other hypervisors and refuses other VMs, that a VM started on one host
// opens access on the others, and that stopping it closes that access
// again (its address, taken over by a machine vmfw does not manage, is
// refused). It removes everything it created, also when it fails or is
// interrupted (Ctrl-C), and never touches the calling namespace.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/pkg/syncbuf"
)

// config is the configuration pushed to etcd: web (VM 101) admits TCP 80
// from members of app wherever they run; app (VMs 102 and 104) admits
// TCP 22 from anyone; VM 103 is in no group.
var config = map[string]string{
	"groups/web.toml": "# web servers: HTTP from the app group only, on any hypervisor\n[[in]]\nproto = \"tcp\"\ndport = \"80\"\nsource_group = \"app\"\n",
	"groups/app.toml": "# app servers: SSH from anyone\n[[in]]\nproto = \"tcp\"\ndport = \"22\"\n",
	"vms/101.toml":    vmFile("web1", "02:00:00:00:01:01", "192.0.2.101", "web"),
	"vms/102.toml":    vmFile("app1", "02:00:00:00:01:02", "192.0.2.102", "app"),
	"vms/103.toml":    vmFile("other", "02:00:00:00:01:03", "192.0.2.103"),
	"vms/104.toml":    vmFile("app2", "02:00:00:00:01:04", "192.0.2.104", "app"),
}

func vmFile(name, mac, ip string, groups ...string) string {
	quoted := make([]string, len(groups))
	for i, g := range groups {
		quoted[i] = `"` + g + `"`
	}
	return fmt.Sprintf("name = %q\n\n[net0]\nbridge = %q\nmac = %q\nips = [%q]\ngroups = [%s]\n",
		name, labnet.DefaultBridge, mac, ip, strings.Join(quoted, ", "))
}

// leaseTTL is short so that the demo's hosts are seen to go quickly.
const leaseTTL = 3 * time.Second

func main() {
	bin := flag.String("vmfw", "vmfw", "path of the vmfw binary")
	backend := flag.String("iptables", "", "iptables backend of every host: nft or legacy (default: the host's)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *bin, *backend)
	interrupted := ctx.Err() != nil // before stop, which cancels ctx
	stop()
	if err != nil {
		if interrupted {
			err = errors.New("interrupted; everything it created is removed")
		}
		fmt.Fprintln(os.Stderr, "vmfw-demo-cluster:", err)
		os.Exit(1)
	}
}

// host is one hypervisor with its agent.
type host struct {
	name    string
	lab     *labnet.Lab
	dir     string // its local configuration directory
	env     []string
	bin     string
	backend string

	out   syncbuf.Buffer // the agent's log
	agent *exec.Cmd
	done  chan struct{}
}

func (h *host) log() string { return h.out.String() }

// command returns vmfw args run in the host's namespace with its local
// configuration and its own run and state directories.
func (h *host) command(ctx context.Context, args ...string) *exec.Cmd {
	full := []string{"netns", "exec", h.lab.Hypervisor().Name, h.bin, "--config-dir", h.dir}
	if h.backend != "" {
		full = append(full, "--iptables", h.backend)
	}
	cmd := exec.CommandContext(ctx, "ip", append(full, args...)...)
	cmd.Env = append(os.Environ(), h.env...)
	return cmd
}

func (h *host) vmfw(ctx context.Context, args ...string) (string, error) {
	out, err := h.command(ctx, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s: vmfw %s: %w\n%s", h.name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// startAgent starts vmfw agent and waits until it is ready.
func (h *host) startAgent(ctx context.Context) error {
	cmd := h.command(context.Background(), "agent")
	cmd.Stdout, cmd.Stderr = &h.out, &h.out
	// An agent outlives nothing: killed when the demo dies, however.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: starting vmfw agent: %w", h.name, err)
	}
	h.agent, h.done = cmd, make(chan struct{})
	go func() {
		cmd.Wait()
		close(h.done)
	}()
	// A loaded machine can take tens of seconds for the first apply;
	// the demo waits rather than fail.
	exited := false
	err := waitFor(ctx, 2*time.Minute, h.name+": agent ready", func() bool {
		select {
		case <-h.done:
			exited = true
			return true
		default:
		}
		return strings.Contains(h.log(), "agent ready")
	})
	if exited {
		err = fmt.Errorf("%s: vmfw agent exited at start (%v)", h.name, h.agent.ProcessState)
	}
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("%w; its log:\n%s", err, h.log())
	}
	return err
}

// stopAgent stops the agent as systemd does (SIGTERM), killing it when
// it does not exit within a few seconds.
func (h *host) stopAgent() {
	if h.agent == nil {
		return
	}
	h.agent.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(5 * time.Second):
		h.agent.Process.Kill()
		<-h.done
	}
}

// hasMember reports whether the host's set of group holds addr.
func (h *host) hasMember(ctx context.Context, group, addr string) bool {
	return h.lab.Hypervisor().SetHas(ctx, "sg-"+group+"-v4", addr)
}

// waitFor polls cond every 20 ms for up to limit and returns an error
// naming what when it does not hold by then.
func waitFor(ctx context.Context, limit time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v", what, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func run(ctx context.Context, bin, backend string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo builds network namespaces and needs root")
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		return fmt.Errorf("etcd is required (Debian package etcd-server; make deps installs it): %w", err)
	}
	tmp, err := os.MkdirTemp("", "vmfw-demo-cluster-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	fmt.Println("Building three hypervisors whose bridges share one L2 segment, and a management network ...")
	c, err := labnet.NewCluster(3)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	etcd, err := labnet.StartEtcd(c.Core, labnet.EtcdURL("http", labnet.CoreAddr), filepath.Join(tmp, "etcd"))
	if err != nil {
		return err
	}
	defer etcd.Stop()
	fmt.Printf("  etcd in the management namespace %s at %s\n", c.Core.Name, etcd.URL)

	var hosts []*host
	defer func() {
		for _, h := range hosts {
			h.stopAgent()
		}
	}()
	for i, lab := range c.Labs {
		h := &host{name: fmt.Sprintf("hv%d", i), lab: lab, dir: filepath.Join(tmp, fmt.Sprintf("hv%d", i)), bin: bin, backend: backend,
			env: []string{"VMFW_RUN_DIR=" + filepath.Join(tmp, fmt.Sprintf("hv%d", i), "run"), "VMFW_STATE_DIR=" + filepath.Join(tmp, fmt.Sprintf("hv%d", i), "state")}}
		local := fmt.Sprintf("[cluster]\nendpoints = [%q]\nhost = %q\nlease_ttl = \"%ds\"\ncache_dir = %q\n",
			etcd.URL, h.name, int(leaseTTL/time.Second), filepath.Join(h.dir, "cache"))
		if err := writeFiles(h.dir, map[string]string{"vmfw.toml": local}); err != nil {
			return err
		}
		hosts = append(hosts, h)
		fmt.Printf("  %s: namespace %s, bridge %s, management address %s; its vmfw.toml only says where etcd is\n",
			h.name, lab.Hypervisor().Name, lab.Bridge(), labnet.MgmtAddr(i))
	}
	hv0, hv1, hv2 := hosts[0], hosts[1], hosts[2]

	conf := filepath.Join(tmp, "pushed")
	if err := writeFiles(conf, config); err != nil {
		return err
	}
	fmt.Println("\nThe configuration, pushed once from hv0 with vmfw cluster push:")
	for _, rel := range []string{"groups/web.toml", "groups/app.toml"} {
		fmt.Printf("  %s:\n%s", rel, indent(config[rel], "    "))
	}
	fmt.Println("  vms: 101 web1 (web) on hv0, 102 app1 (app) on hv1, 103 other (no group) on hv2, 104 app2 (app) on hv2")
	out, err := hv0.vmfw(ctx, "cluster", "push", conf)
	if err != nil {
		return err
	}
	fmt.Print(indent(out, "  $ vmfw cluster push: "))

	fmt.Println("\nStarting vmfw agent on each hypervisor ...")
	for _, h := range hosts {
		if err := h.startAgent(ctx); err != nil {
			return err
		}
	}

	type vm struct {
		h          *host
		tap, mac   string
		addr, name string
		ns         *labnet.NS
	}
	// start starts v and returns when its ifup began.
	start := func(v *vm) (time.Time, error) {
		ns, err := v.h.lab.AddVM(v.tap, v.mac, v.addr+"/24")
		if err != nil {
			return time.Time{}, err
		}
		v.ns = ns
		for _, port := range []int{22, 80} {
			if _, err := labnet.ServeTCP(ns, fmt.Sprintf("%s:%d", v.addr, port)); err != nil {
				return time.Time{}, err
			}
		}
		// QEMU's script=: vmfw ifup, through the host's agent.
		began := time.Now()
		if _, err := v.h.vmfw(ctx, "ifup", v.tap); err != nil {
			return began, err
		}
		fmt.Printf("  %s: VM %s (%s) started, vmfw ifup %s\n", v.h.name, v.name, v.addr, v.tap)
		return began, nil
	}
	web1 := &vm{h: hv0, tap: "tap101i0", mac: "02:00:00:00:01:01", addr: "192.0.2.101", name: "web1"}
	app1 := &vm{h: hv1, tap: "tap102i0", mac: "02:00:00:00:01:02", addr: "192.0.2.102", name: "app1"}
	other := &vm{h: hv2, tap: "tap103i0", mac: "02:00:00:00:01:03", addr: "192.0.2.103", name: "other"}
	app2 := &vm{h: hv2, tap: "tap104i0", mac: "02:00:00:00:01:04", addr: "192.0.2.104", name: "app2"}
	for _, v := range []*vm{web1, app1, other} {
		if _, err := start(v); err != nil {
			return err
		}
	}
	if err := waitFor(ctx, time.Minute, "hv0 sees app1 of hv1 in group app", func() bool { return hv0.hasMember(ctx, "app", app1.addr) }); err != nil {
		return err
	}

	failed := 0
	probe := func(what string, from *labnet.NS, fromName, to string, port int, want bool) {
		if ctx.Err() != nil {
			return
		}
		// An expected connection is tried twice: on a loaded machine
		// one attempt can time out without a rule refusing it.
		var r labnet.Result
		for try := 0; try < 2 && r != labnet.Connected && (try == 0 || want); try++ {
			var err error
			if r, err = labnet.TCPConnect(ctx, from, fmt.Sprintf("%s:%d", to, port), 2*time.Second); err != nil {
				r = labnet.Failed
			}
		}
		got := r == labnet.Connected
		mark := "ok"
		if got != want {
			mark, failed = "UNEXPECTED", failed+1
		}
		verdict := "refused (" + r.String() + ")"
		if got {
			verdict = "OPEN"
		}
		fmt.Printf("  %-6s -> %s:%-3d %-22s %-10s %s\n", fromName, to, port, verdict, mark, what)
	}
	fmt.Println("\nTCP connections across hypervisors (real packets over the shared segment):")
	probe("app member on hv1 -> web on hv0: source_group app admits it", app1.ns, "app1", web1.addr, 80, true)
	probe("no group, on hv2 -> web on hv0: refused", other.ns, "other", web1.addr, 80, false)
	probe("anyone -> app on hv1, port 22", other.ns, "other", app1.addr, 22, true)
	probe("web has no rule for 22", app1.ns, "app1", web1.addr, 22, false)

	fmt.Println("\nvmfw cluster status (from hv1):")
	if out, err = hv1.vmfw(ctx, "cluster", "status"); err != nil {
		return err
	}
	fmt.Print(indent(out, "  "))

	fmt.Println("\nA VM of group app starts on hv2:")
	began, err := start(app2)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, time.Minute, "hv0 adds app2 to its set", func() bool { return hv0.hasMember(ctx, "app", app2.addr) }); err != nil {
		return err
	}
	fmt.Printf("  hv0's set sg-app-v4 holds %s %v from vmfw ifup on hv2\n", app2.addr, time.Since(began).Round(time.Millisecond))
	probe("app member started on hv2 -> web on hv0", app2.ns, "app2", web1.addr, 80, true)

	fmt.Println("\nThe VM stops on hv2 (its tap goes, QEMU's downscript runs vmfw ifdown):")
	if err := hv2.lab.Remove(app2.ns); err != nil {
		return err
	}
	began = time.Now()
	if _, err := hv2.vmfw(ctx, "ifdown", app2.tap); err != nil {
		return err
	}
	if err := waitFor(ctx, time.Minute, "hv0 drops app2 from its set", func() bool { return !hv0.hasMember(ctx, "app", app2.addr) }); err != nil {
		return err
	}
	fmt.Printf("  hv0's set sg-app-v4 no longer holds %s, %v from vmfw ifdown on hv2 (%v of it the migration grace)\n",
		app2.addr, time.Since(began).Round(time.Millisecond), 500*time.Millisecond)
	// A machine vmfw does not manage, on hv2's bridge, takes over the
	// stopped VM's address: hv0 no longer trusts it.
	impostor, err := hv2.lab.AddExternal("ext0", "02:00:00:00:02:04", app2.addr+"/24")
	if err != nil {
		return err
	}
	fmt.Printf("  an unmanaged machine on hv2's segment now uses %s\n", app2.addr)
	probe("the stopped VM's address, from elsewhere -> web on hv0: refused", impostor, "ext0", web1.addr, 80, false)
	probe("app1 on hv1 still -> web on hv0", app1.ns, "app1", web1.addr, 80, true)

	fmt.Println()
	if failed > 0 {
		fmt.Println("agent logs:")
		for _, h := range hosts {
			fmt.Printf("--- %s\n%s", h.name, h.log())
		}
		return fmt.Errorf("%d connection(s) did not behave as the configuration says", failed)
	}
	fmt.Println("Every connection behaved as the pushed configuration says. Stopping the agents and removing the namespaces.")
	return nil
}

func writeFiles(dir string, files map[string]string) error {
	for rel, content := range files {
		path := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func indent(s, prefix string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString(prefix + l + "\n")
	}
	return b.String()
}
