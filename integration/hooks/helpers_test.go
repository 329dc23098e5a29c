// Package hooks tests "vmfw hook proxmox" and "vmfw hook libvirt" as the
// hypervisors call them (arguments, domain XML on stdin), inside throwaway
// network namespaces, and proves each change with real packets.
package hooks

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
	"github.com/vmfw/vmfw/integration/testbin"
	"github.com/vmfw/vmfw/pkg/config/configtest"
)

func TestMain(m *testing.M) { testbin.Main(m, "hook integration tests", nil) }

// probeTimeout is how long a TCP probe waits before calling a silent
// peer Timeout (a dropped packet).
const probeTimeout = 1500 * time.Millisecond

// host is a test hypervisor: a lab (namespace with bridge vmbr0), vmfw's
// configuration and state directories and the iptables backend.
type host struct {
	t       *testing.T
	lab     *labnet.Lab
	config  string
	state   string
	backend string
	// env is added to the environment of everything exec runs (the
	// agent's VMFW_RUN_DIR).
	env []string
}

func newHost(t *testing.T, backend string, files map[string]string) *host {
	t.Helper()
	h := &host{t: t, lab: labtest.NewLab(t), config: t.TempDir(), state: t.TempDir(), backend: backend}
	configtest.Write(t, h.config, files)
	return h
}

// vm adds a guest whose hypervisor end is port, already on the bridge (as
// Proxmox and libvirt leave it before their hooks run).
func (h *host) vm(port, mac string, addrs ...string) *labnet.NS {
	h.t.Helper()
	ns, err := h.lab.AddVM(port, mac, addrs...)
	if err != nil {
		h.t.Fatalf("adding %s: %v", port, err)
	}
	if err := h.lab.AttachToBridge(port); err != nil {
		h.t.Fatal(err)
	}
	return ns
}

// external adds a host that is no VM, on an uplink port of the bridge.
func (h *host) external(port, addr string) *labnet.NS {
	h.t.Helper()
	ns, err := h.lab.AddExternal(port, "", addr)
	if err != nil {
		h.t.Fatalf("adding %s: %v", port, err)
	}
	return ns
}

// serve starts TCP echo servers in ns.
func (h *host) serve(ns *labnet.NS, addrs ...string) {
	h.t.Helper()
	for _, a := range addrs {
		if _, err := labnet.ServeTCP(ns, a); err != nil {
			h.t.Fatal(err)
		}
	}
}

// run runs vmfw in the hypervisor namespace with stdin and returns its
// output and exit status.
func (h *host) run(stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	h.t.Helper()
	return h.exec(stdin, append([]string{testbin.VMFW, "--config-dir", h.config, "--state-dir", h.state}, args...)...)
}

// exec runs argv in the hypervisor namespace with stdin and returns its
// output and exit status. vmfw's directories and backend are passed in
// the environment, as an operator would set them for a hook script.
func (h *host) exec(stdin io.Reader, argv ...string) (stdout, stderr string, code int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := append([]string{"netns", "exec", h.lab.Hypervisor().Name, "env",
		"VMFW_CONFIG_DIR=" + h.config, "VMFW_STATE_DIR=" + h.state, labtest.BackendEnv(h.backend)}, append(h.env, argv...)...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	cmd.Stdin = stdin
	stdout, stderr, code, err := labnet.Run(cmd)
	if err != nil {
		h.t.Fatalf("running %v: %v", argv, err)
	}
	return stdout, stderr, code
}

// ok runs vmfw and fails the test unless it exits 0 printing nothing on
// stdout (libvirt reads a hook's stdout as replacement XML).
func (h *host) ok(stdin io.Reader, args ...string) {
	h.t.Helper()
	out, errOut, code := h.run(stdin, args...)
	if code != 0 || out != "" {
		h.t.Fatalf("vmfw %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
}

// script returns the hook script conf/NAME as shipped, with the installed
// binary's path pointing at the binary under test.
func script(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "conf", name))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	if !strings.Contains(text, "/usr/local/sbin/vmfw ") {
		t.Fatalf("conf/%s does not run /usr/local/sbin/vmfw:\n%s", name, text)
	}
	path := filepath.Join(t.TempDir(), filepath.Base(name))
	if err := os.WriteFile(path, []byte(strings.Replace(text, "/usr/local/sbin/vmfw ", testbin.VMFW+" ", 1)), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// hook runs a hook script as the hypervisor does (arguments, stdin) and
// fails the test unless it exits 0 printing nothing on stdout.
func (h *host) hook(path string, stdin io.Reader, args ...string) {
	h.t.Helper()
	out, errOut, code := h.exec(stdin, append([]string{path}, args...)...)
	if code != 0 || out != "" {
		h.t.Fatalf("%s %s: exit %d\nstdout: %s\nstderr: %s", filepath.Base(path), strings.Join(args, " "), code, out, errOut)
	}
}

// save returns what vmfw installed: the filter table of both families as
// iptables-save prints it, counters left out; for the nftables backend its
// two tables as nft lists them without counters, every set's elements in
// order.
func (h *host) save() string {
	h.t.Helper()
	if h.backend == labtest.NftablesBackend {
		return h.nftSave()
	}
	var b strings.Builder
	for _, tool := range []string{"iptables", "ip6tables"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := h.lab.Hypervisor().Exec(ctx, tool+"-"+h.backend+"-save", "-t", "filter")
		cancel()
		if err != nil {
			h.t.Fatalf("%s-save: %v\n%s", tool, err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(l, "#") {
				b.WriteString(counters.ReplaceAllString(l, "") + "\n")
			}
		}
	}
	return b.String()
}

// counters matches the packet and byte counters of a chain header.
var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// ipset returns "ipset save" output.
func (h *host) ipset() string {
	h.t.Helper()
	if h.backend == labtest.NftablesBackend {
		return nftMembers(h.nftSave())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := h.lab.Hypervisor().Exec(ctx, "ipset", "save")
	if err != nil {
		h.t.Fatalf("ipset save: %v\n%s", err, out)
	}
	return string(out)
}

// expect probes TCP from ns to addr and fails the test unless the result
// is want.
func (h *host) expect(from *labnet.NS, addr string, want labnet.Result) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := labnet.TCPConnect(ctx, from, addr, probeTimeout)
	if err != nil {
		h.t.Fatalf("probing %s from %s: %v", addr, from, err)
	}
	if got != want {
		h.t.Errorf("tcp %s -> %s: got %v, want %v", from, addr, got, want)
	}
}

// chains returns the names of the chains of iface in an iptables-save text.
func chains(save, iface string) []string {
	if strings.HasPrefix(save, "table bridge vmfw") {
		// The nftables backend: an interface is elements, named in quotes.
		if strings.Contains(save, `"`+iface+`"`) {
			return []string{iface}
		}
		return nil
	}
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if name, ok := strings.CutPrefix(l, ":"+iface+"-"); ok {
			out = append(out, iface+"-"+strings.Fields(name)[0])
		}
	}
	return out
}

// nftSave is save for the nftables backend.
func (h *host) nftSave() string {
	h.t.Helper()
	var b strings.Builder
	for _, fam := range []string{"bridge", "inet"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := h.lab.Hypervisor().Exec(ctx, "nft", "-s", "list", "table", fam, "vmfw")
		cancel()
		if err != nil {
			continue // not installed
		}
		b.WriteString(labnet.SortNFTElements(string(out)))
	}
	return b.String()
}

// nftMembers renders the nftables backend's member sets as "ipset save"
// lists members ("add sg-web-v4 192.0.2.200"), for the tests of ipset().
func nftMembers(save string) string {
	var b strings.Builder
	set := ""
	for _, l := range strings.Split(save, "\n") {
		t := strings.TrimSpace(l)
		if name, ok := strings.CutPrefix(t, "set "); ok {
			set = strings.TrimSuffix(name, " {")
			continue
		}
		if inner, ok := strings.CutPrefix(t, "elements = { "); ok && strings.HasPrefix(set, "sg-") {
			for _, e := range strings.Split(strings.TrimSuffix(inner, " }"), ", ") {
				b.WriteString("add " + set + " " + e + "\n")
			}
		}
	}
	return b.String()
}
