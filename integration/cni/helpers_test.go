// Package cni tests vmfw as a CNI plugin through the real client library
// (libcni) chained after the real bridge and host-local plugins, built
// from the containernetworking/plugins version in go.mod. Every test
// builds a "host" network namespace and container namespaces, never
// touches the namespace it runs in, and proves each firewall behaviour
// with real packets.
package cni

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
	"github.com/vmfw/vmfw/integration/testbin"
	"github.com/vmfw/vmfw/pkg/config/configtest"
)

func TestMain(m *testing.M) {
	testbin.Main(m, "CNI integration tests", map[string]string{
		"bridge":     "github.com/containernetworking/plugins/plugins/main/bridge",
		"host-local": "github.com/containernetworking/plugins/plugins/ipam/host-local",
	})
}

// probeTimeout is how long a TCP probe waits before calling a silent
// peer Timeout (a dropped packet).
const probeTimeout = 1500 * time.Millisecond

// vmfwConfig is vmfw's configuration directory for every test: group web
// serves http to anyone, group db serves 5432 to members of web.
var vmfwConfig = map[string]string{
	"groups/web.toml": labtest.WebGroup,
	"groups/db.toml": `
[[in]]
proto = "tcp"
dport = "5432"
source_group = "web"
`,
}

// host is a hypervisor network namespace with a CNI client whose plugins
// run in it.
type host struct {
	t      *testing.T
	id     string
	ns     *labnet.NS
	config string
	state  string
	ipam   string
	cache  string
	client *libcni.CNIConfig
}

func randomID() string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// ip runs the ip command; its error carries the output.
func ip(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setUp deletes ns when the test ends and brings its loopback up.
func setUp(t *testing.T, ns *labnet.NS) *labnet.NS {
	t.Helper()
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Errorf("deleting namespace: %v", err)
		}
	})
	if err := ip("-n", ns.Name, "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	return ns
}

func newHost(t *testing.T) *host {
	t.Helper()
	id, ns, err := labnet.FreshNS("vfc", 3, "host")
	if err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, id: id, ns: setUp(t, ns), config: t.TempDir(), state: t.TempDir(), ipam: t.TempDir(), cache: t.TempDir()}
	configtest.Write(t, h.config, vmfwConfig)
	h.client = libcni.NewCNIConfigWithCacheDir([]string{testbin.Dir}, h.cache, nil)
	return h
}

// conflist returns the network: bridge with host-local IPAM on
// 198.51.100.0/24, then vmfw with group web for every attachment. extra is
// merged into vmfw's plugin configuration.
func (h *host) conflist(cniVersion, backend string, extra map[string]any) *libcni.NetworkConfigList {
	h.t.Helper()
	vmfw := map[string]any{
		"type":         "vmfw",
		"configDir":    h.config,
		"stateDir":     h.state,
		"groups":       []string{"web"},
		"capabilities": map[string]bool{"vmfw": true},
	}
	if backend == labtest.NftablesBackend {
		vmfw["backend"] = labtest.NftablesBackend
	} else {
		vmfw["iptables"] = backend
	}
	for k, v := range extra {
		vmfw[k] = v
	}
	list := map[string]any{
		"cniVersion": cniVersion,
		"name":       "vmfwtest",
		"plugins": []any{
			map[string]any{
				"type":      "bridge",
				"bridge":    "cni-vmfw0",
				"isGateway": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": h.ipam,
					"ranges":  [][]map[string]string{{{"subnet": "198.51.100.0/24", "gateway": "198.51.100.1"}}},
				},
			},
			vmfw,
		},
	}
	return h.networkList(list, "conflist")
}

// networkList turns a conflist, as encoding/json reads one, into libcni's
// network list; what names it when it does not parse.
func (h *host) networkList(list map[string]any, what string) *libcni.NetworkConfigList {
	h.t.Helper()
	data, err := json.Marshal(list)
	if err != nil {
		h.t.Fatal(err)
	}
	l, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		h.t.Fatalf("parsing %s: %v", what, err)
	}
	return l
}

// container is one attachment: a namespace and what ADD returned.
type container struct {
	id   string
	ns   *labnet.NS
	rt   *libcni.RuntimeConf
	ip   string
	veth string
}

// newContainer creates a container namespace; nothing is attached yet.
func (h *host) newContainer(name string, caps map[string]any) *container {
	h.t.Helper()
	ns, err := labnet.AddNS(h.id + "-" + name)
	if err != nil {
		h.t.Fatal(err)
	}
	setUp(h.t, ns)
	c := &container{id: "ctr-" + name + "-" + randomID(), ns: ns}
	c.rt = &libcni.RuntimeConf{ContainerID: c.id, NetNS: ns.Path(), IfName: "eth0", CapabilityArgs: caps}
	return c
}

// in runs fn with the calling thread in the host namespace, so the
// plugins libcni executes run there.
func (h *host) in(fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return h.ns.Do(func() error { return fn(ctx) })
}

// add runs ADD for c and records its address and host-side veth.
func (h *host) add(list *libcni.NetworkConfigList, c *container) {
	h.t.Helper()
	var res types.Result
	err := h.in(func(ctx context.Context) error {
		var err error
		res, err = h.client.AddNetworkList(ctx, list, c.rt)
		return err
	})
	if err != nil {
		h.t.Fatalf("ADD %s: %v", c.id, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		h.t.Fatal(err)
	}
	// vmfw prints the bridge plugin's result back unchanged.
	if len(r.Interfaces) != 3 || len(r.IPs) != 1 {
		h.t.Fatalf("ADD %s: result is not bridge's: %+v", c.id, r)
	}
	for _, ifc := range r.Interfaces {
		if ifc.Sandbox == "" && ifc.Name != "cni-vmfw0" {
			c.veth = ifc.Name
		}
	}
	c.ip = r.IPs[0].Address.IP.String()
	if c.veth == "" {
		h.t.Fatalf("ADD %s: no host-side veth in %+v", c.id, r)
	}
}

func (h *host) del(list *libcni.NetworkConfigList, c *container) error {
	return h.in(func(ctx context.Context) error { return h.client.DelNetworkList(ctx, list, c.rt) })
}

func (h *host) check(list *libcni.NetworkConfigList, c *container) error {
	return h.in(func(ctx context.Context) error { return h.client.CheckNetworkList(ctx, list, c.rt) })
}

// cniCode returns the CNI error code of err, 0 if it carries none.
func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// exec runs a command in the host namespace.
func (h *host) exec(args ...string) string {
	h.t.Helper()
	return labtest.Exec(h.t, h.ns, args...)
}

// save returns what vmfw installed: both families' filter tables, or the
// nftables backend's two tables, where an interface's elements name it.
func (h *host) save(backend string) string {
	if backend == labtest.NftablesBackend {
		var b strings.Builder
		for _, fam := range []string{"bridge", "inet"} {
			if out, err := h.ns.Exec(context.Background(), "nft", "-s", "list", "table", fam, "vmfw"); err == nil {
				b.Write(out)
			}
		}
		return b.String()
	}
	return h.exec("iptables-"+backend+"-save", "-t", "filter") + h.exec("ip6tables-"+backend+"-save", "-t", "filter")
}

// serve starts TCP echo servers in c, stopped when the test ends.
func (h *host) serve(c *container, ports ...int) {
	h.t.Helper()
	for _, p := range ports {
		stop, err := labnet.ServeTCP(c.ns, fmt.Sprintf(":%d", p))
		if err != nil {
			h.t.Fatal(err)
		}
		h.t.Cleanup(stop)
	}
}

// expect probes TCP from one container to another's port and fails the
// test unless the result is want.
func (h *host) expect(from, to *container, port int, want labnet.Result) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr := fmt.Sprintf("%s:%d", to.ip, port)
	got, err := labnet.TCPConnect(ctx, from.ns, addr, probeTimeout)
	if err != nil {
		h.t.Fatalf("probing %s: %v", addr, err)
	}
	if got != want {
		h.t.Errorf("tcp %s -> %s (%s): got %v, want %v", from.id, to.id, addr, got, want)
	}
}

// envExec runs plugins like libcni's default, with extra environment
// variables overriding the inherited ones.
type envExec struct {
	invoke.RawExec
	version.PluginDecoder
	env []string
}

func (e *envExec) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	return e.RawExec.ExecPlugin(ctx, path, stdin, append(environ, e.env...))
}

func (e *envExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

// deleteChain deletes chain (an interface's in or out chain) by hand in
// both families: its jump from vmfw's dispatch chain, then the chain.
func (h *host) deleteChain(backend, chain string) {
	h.t.Helper()
	for _, tool := range []string{"iptables-" + backend, "ip6tables-" + backend} {
		// Every jump to the chain goes first: the bridge-port dispatch
		// and the address trees (docs/routing.md) both reach an in chain.
		type ref struct {
			from string
			pos  int
		}
		var refs []ref
		count := map[string]int{}
		for _, r := range strings.Split(h.exec(tool, "-t", "filter", "-S"), "\n") {
			f := strings.Fields(r)
			if len(f) < 2 || f[0] != "-A" {
				continue
			}
			count[f[1]]++
			if i := slices.IndexFunc(f, func(w string) bool { return w == "-g" || w == "-j" }); i >= 0 && i+1 < len(f) && f[i+1] == chain {
				refs = append(refs, ref{f[1], count[f[1]]})
			}
		}
		if len(refs) == 0 {
			h.t.Fatalf("no jump to %s", chain)
		}
		for i := len(refs) - 1; i >= 0; i-- { // later positions first
			h.exec(tool, "-t", "filter", "-D", refs[i].from, strconv.Itoa(refs[i].pos))
		}
		h.exec(tool, "-t", "filter", "-F", chain)
		h.exec(tool, "-t", "filter", "-X", chain)
	}
}

// vmfw runs the vmfw command in the host namespace with the test's
// configuration and state directories.
func (h *host) vmfw(backend string, args ...string) string {
	h.t.Helper()
	full := append(append(append([]string{"netns", "exec", h.ns.Name, filepath.Join(testbin.Dir, "vmfw")}, labtest.BackendArgs(backend)...),
		"--config-dir", h.config, "--state-dir", h.state), args...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	if err != nil {
		h.t.Fatalf("vmfw %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// shipped returns conf/cni/10-vmfw.conflist at cniVersion, pointed at the
// test's directories, and installs conf/cni/web.toml as group web.
func (h *host) shipped(cniVersion, backend string) *libcni.NetworkConfigList {
	h.t.Helper()
	group, err := os.ReadFile(filepath.Join("..", "..", "conf", "cni", "web.toml"))
	if err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.config, "groups", "web.toml"), group, 0o644); err != nil {
		h.t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join("..", "..", "conf", "cni", "10-vmfw.conflist"))
	if err != nil {
		h.t.Fatal(err)
	}
	var list map[string]any
	if err := json.Unmarshal(data, &list); err != nil {
		h.t.Fatalf("conf/cni/10-vmfw.conflist: %v", err)
	}
	list["cniVersion"] = cniVersion
	for _, p := range list["plugins"].([]any) {
		p := p.(map[string]any)
		switch p["type"] {
		case "bridge":
			p["ipam"].(map[string]any)["dataDir"] = h.ipam
		case "vmfw":
			p["configDir"], p["stateDir"], p["iptables"] = h.config, h.state, backend
		}
	}
	return h.networkList(list, "conf/cni/10-vmfw.conflist")
}
