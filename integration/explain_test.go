package integration

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
	"github.com/vmfw/vmfw/integration/testbin"
)

// explainConfig is a small scenario for trace, log and the JSON outputs:
// VM 101 serves web and takes ssh only from members of group clients, and
// logs what its rule and policy drop; VM 102 is a client.
const (
	explainWeb = `[[in]]
proto = "tcp"
dport = "80"

[[in]]
proto = "tcp"
dport = "22"
source_group = "clients"

[[in]]
proto = "tcp"
dport = "22"
action = "drop"
log = true
`
	explain101 = `policy_in = "drop"
log = true

[net0]
mac = "02:00:00:00:01:01"
ips = ["192.0.2.101", "2001:db8::101"]
bridge = "vmbr0"
groups = ["web"]
`
	explain102 = `[net0]
mac = "02:00:00:00:01:02"
ips = ["192.0.2.102", "2001:db8::102"]
bridge = "vmbr0"
groups = []
`
)

func newExplainHV(t *testing.T, backend string) (*hv, *labnet.NS, *labnet.NS) {
	h := newHV(t, backend, "")
	h.write("groups/web.toml", explainWeb)
	h.write("groups/clients.toml", "")
	h.write("vms/101.toml", explain101)
	h.write("vms/102.toml", explain102)
	vm1 := h.vm("tap101i0", "02:00:00:00:01:01", "192.0.2.101", "2001:db8::101")
	vm2 := h.vm("tap102i0", "02:00:00:00:01:02", "192.0.2.102", "2001:db8::102")
	return h, vm1, vm2
}

// TestCommandLine: --help and --version print to standard output and
// exit 0, wherever they stand; a bad command still exits 2.
func TestCommandLine(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"trace", "--help"}, {"--config-dir", "/nonexistent", "apply", "-h"}, {"--version"}, {"version"}} {
		cmd := exec.Command(testbin.VMFW, args...)
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Errorf("vmfw %v: %v (stderr %q)", args, err, errOut.String())
			continue
		}
		want := "usage: vmfw"
		if strings.Contains(strings.Join(args, " "), "version") {
			want = "vmfw "
		}
		if !strings.HasPrefix(out.String(), want) || errOut.Len() != 0 {
			t.Errorf("vmfw %v: stdout %q, stderr %q", args, out.String(), errOut.String())
		}
	}
	if !strings.Contains(usageText(t), "trace --from X --to Y") {
		t.Error("the help does not describe trace")
	}
	cmd := exec.Command(testbin.VMFW, "frobnicate")
	if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 2 {
		t.Errorf("unknown command: %v, want exit status 2", err)
	}
}

func usageText(t *testing.T) string {
	out, err := exec.Command(testbin.VMFW, "--help").Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestTraceCommand runs vmfw trace against the kernel: verdicts and the
// deciding rule's file and line in JSON, a clear error for an unknown VM,
// and drift when a rule is deleted behind vmfw's back.
func TestTraceCommand(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		h, _, _ := newExplainHV(t, backend)
		h.firstV4(100, "192.0.2.9")
		h.vmfw("ifup", "tap101i0")
		h.vmfw("ifup", "tap102i0")
		type report struct {
			Verdict string   `json:"verdict"`
			Path    string   `json:"path"`
			Drift   []string `json:"drift"`
			Kernel  struct {
				Verdict string `json:"verdict"`
				Rules   []struct {
					Chain  string `json:"chain"`
					Origin string `json:"origin"`
				} `json:"rules"`
			} `json:"kernel"`
		}
		trace := func(args ...string) report {
			t.Helper()
			out := h.vmfw(append([]string{"trace", "-o", "json"}, args...)...)
			var r report
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("trace %v: %v\n%s", args, err, out)
			}
			return r
		}
		for _, c := range []struct {
			args    []string
			verdict string
			origin  string
		}{
			{[]string{"--from", "102", "--to", "101", "--proto", "tcp", "--dport", "80"}, "accept", "groups/web.toml:1"},
			{[]string{"--from", "tap102i0", "--to", "2001:db8::101", "--proto", "tcp", "--dport", "22"}, "drop", "groups/web.toml:10"},
			{[]string{"--from", "hypervisor", "--to", "101", "--proto", "udp", "--dport", "53", "-6"}, "drop", "vms/101.toml: policy_in"},
		} {
			r := trace(c.args...)
			if r.Verdict != c.verdict || r.Kernel.Verdict != c.verdict || len(r.Drift) != 0 {
				t.Errorf("trace %v: verdict %s, kernel %s, drift %v; want %s", c.args, r.Verdict, r.Kernel.Verdict, r.Drift, c.verdict)
			}
			if len(r.Kernel.Rules) == 0 || !strings.HasSuffix(r.Kernel.Rules[len(r.Kernel.Rules)-1].Origin, c.origin) {
				t.Errorf("trace %v: decided by %+v, want %s", c.args, r.Kernel.Rules, c.origin)
			}
		}
		// The text form names the rule too.
		if out := h.vmfw("trace", "--from", "102", "--to", "101", "--proto", "tcp", "--dport", "22"); !strings.Contains(out, "web.toml:10") || !strings.HasSuffix(out, "verdict: drop\n") {
			t.Errorf("text trace:\n%s", out)
		}
		_, errOut, code := h.run("trace", "--from", "999", "--to", "101", "--proto", "tcp")
		if code != 2 || !strings.Contains(errOut, "no VM 999") {
			t.Errorf("unknown VM: exit %d, %q", code, errOut)
		}
		// Joining group clients by hand-adding 102 to the set: the kernel
		// accepts what the configuration drops, and trace says why.
		setDrift, chainDrift := "set sg-clients-v4 differs", "ipv4/sg-web-in differs"
		if h.nft() {
			h.exec("nft", "add", "element", "bridge", "vmfw", "sg-clients-v4", "{ 192.0.2.102 }")
			setDrift, chainDrift = "set bridge/sg-clients-v4 differs", "bridge/sg-web-in differs"
		} else {
			h.exec("ipset", "add", "sg-clients-v4", "192.0.2.102")
		}
		r := trace("--from", "102", "--to", "101", "--proto", "tcp", "--dport", "22")
		if r.Verdict != "accept" || !slices.ContainsFunc(r.Drift, func(d string) bool { return strings.HasPrefix(d, setDrift) }) {
			t.Errorf("after a hand-made set member: verdict %s, drift %v", r.Verdict, r.Drift)
		}
		if h.nft() {
			h.exec("nft", "delete", "rule", "bridge", "vmfw", "sg-web-in", "handle", h.nftFirstHandle("sg-web-in"))
		} else {
			h.exec(h.tool("iptables"), "-D", "sg-web-in", "1")
		}
		r = trace("--from", "102", "--to", "101", "--proto", "tcp", "--dport", "80")
		if r.Verdict != "drop" || !slices.Contains(r.Drift, chainDrift) {
			t.Errorf("after deleting a rule: verdict %s, drift %v", r.Verdict, r.Drift)
		}
	})
}

// TestLogCommand logs real packets through NFLOG and reads vmfw log's
// JSON lines: a group rule's drop (bridged, IPv4), the policy's drop
// (bridged, IPv6), and a drop of a packet the hypervisor sends, which no
// bridge port names: the VM is found by the destination address.
func TestLogCommand(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		h, vm1, vm2 := newExplainHV(t, backend)
		h.write("vmfw.toml", "log_group = 7\nlog_limit = \"100/second\"\n")
		h.firstV4(100, "192.0.2.9")
		h.vmfw("ifup", "tap101i0")
		h.vmfw("ifup", "tap102i0")
		if h.nft() {
			br := h.nftTable("bridge")
			for _, l := range strings.Split(br, "\n") {
				if strings.Contains(l, " log ") && !strings.Contains(l, " group 7") {
					t.Fatalf("log_group = 7 left a kernel log rule: %s", l)
				}
			}
			if !strings.Contains(br, " group 7") {
				t.Fatalf("log_group = 7 did not switch to NFLOG:\n%s", br)
			}
		} else if save := h.save(false); !strings.Contains(save, "--nflog-group 7") || strings.Contains(save, "-j LOG") {
			t.Fatalf("log_group = 7 did not switch LOG to NFLOG:\n%s", save)
		}
		h.serve(vm1, "192.0.2.101", 22)
		p := labtest.Start(t, h.ns, nil, testbin.VMFW, h.backendFlags()[0], h.backendFlags()[1], "--config-dir", h.config, "log")
		defer stop(t, p)

		type line struct {
			Tap       string `json:"tap"`
			VM        *int   `json:"vm"`
			Direction string `json:"direction"`
			Group     string `json:"group"`
			Rule      string `json:"rule"`
			Policy    bool   `json:"policy"`
			Verdict   string `json:"verdict"`
			Family    int    `json:"family"`
			Proto     string `json:"proto"`
			Src       string `json:"src"`
			Dst       string `json:"dst"`
			DPort     *int   `json:"dport"`
			PhysIn    string `json:"physin"`
			Time      string `json:"time"`
		}
		lines := func() []line {
			var out []line
			sc := bufio.NewScanner(strings.NewReader(p.Output()))
			for sc.Scan() {
				var l line
				if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
					t.Fatalf("vmfw log printed a line that is not JSON: %q", sc.Text())
				}
				out = append(out, l)
			}
			return out
		}
		// Until vmfw log has bound the group, logged packets go nowhere:
		// send until one shows up.
		find := func(what string, send func(), match func(l line) bool) line {
			t.Helper()
			deadline := time.Now().Add(15 * time.Second)
			for time.Now().Before(deadline) {
				send()
				for _, l := range lines() {
					if match(l) {
						return l
					}
				}
			}
			t.Fatalf("%s: no matching line in vmfw log's output:\n%s", what, p.Output())
			return line{}
		}
		send := func(ns *labnet.NS, addr string, port int) func() {
			return func() { labnet.TCPConnect(t.Context(), ns, labnet.HostPort(addr, port), 200*time.Millisecond) }
		}
		l := find("group rule", send(vm2, "192.0.2.101", 22), func(l line) bool { return l.Group == "web" && l.Src == "192.0.2.102" })
		if l.Tap != "tap101i0" || l.VM == nil || *l.VM != 101 || l.Direction != "in" || l.Verdict != "drop" ||
			!strings.HasSuffix(l.Rule, "groups/web.toml:10") || l.Proto != "tcp" || l.Src != "192.0.2.102" ||
			l.Dst != "192.0.2.101" || l.DPort == nil || *l.DPort != 22 || l.PhysIn != "tap102i0" || l.Time == "" {
			t.Errorf("group rule's line: %+v", l)
		}
		l = find("policy", send(vm2, "2001:db8::101", 8080), func(l line) bool { return l.Policy && l.Dst == "2001:db8::101" })
		if l.Tap != "tap101i0" || l.Verdict != "drop" || !strings.HasSuffix(l.Rule, "vms/101.toml") || l.Dst != "2001:db8::101" || *l.DPort != 8080 {
			t.Errorf("policy's line: %+v", l)
		}
		l = find("hypervisor-sent", send(h.ns, "192.0.2.101", 22), func(l line) bool { return l.Group == "web" && l.Src == "192.0.2.1" })
		if l.Tap != "tap101i0" || l.VM == nil || *l.VM != 101 || l.Verdict != "drop" || !strings.HasSuffix(l.Rule, "groups/web.toml:10") {
			t.Errorf("hypervisor-sent packet's line: %+v", l)
		}
	})
}

// TestJSONReports checks apply -o json and check -o json by parsing them
// through a first apply, an unchanged one, a group edit, a membership
// change and an edit that cuts a running connection; an invalid
// configuration still exits 2. The first apply is what vmfw does first
// here, and it firewalls an IPv4-only VM too (VM 103), the shape whose
// first start on a new host once failed.
func TestJSONReports(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		h, vm1, vm2 := newExplainHV(t, backend)
		h.write("vms/103.toml", "[net0]\nmac = \"02:00:00:00:01:03\"\nips = [\"192.0.2.103\"]\nbridge = \"vmbr0\"\n")
		h.vm("tap103i0", "02:00:00:00:01:03", "192.0.2.103", "")
		if err := h.vmfwFree(); err != nil {
			t.Fatalf("before the first apply: %v", err)
		}
		type chains struct {
			Created, Rewritten, Deleted []string
			HooksAdded                  []string `json:"hooks_added"`
		}
		type report struct {
			Valid       *bool             `json:"valid"`
			Changed     bool              `json:"changed"`
			DryRun      bool              `json:"dry_run"`
			Chains      map[string]chains `json:"chains"`
			Sets        setChanges        `json:"sets"`
			FlowsCut    int               `json:"flows_cut"`
			KernelError string            `json:"kernel_error"`
		}
		parse := func(args ...string) report {
			t.Helper()
			out := h.vmfw(args...)
			var r report
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("%v: %v\n%s", args, err, out)
			}
			return r
		}
		r := parse("check", "-o", "json")
		if r.Valid == nil || !*r.Valid || !r.Changed || !r.DryRun || r.KernelError != "" {
			t.Errorf("check before the first apply: %+v", r)
		}
		// Where each backend reports what: the iptables backend per family
		// and per-tap chains; the nftables backend per table, with shared
		// chains and sets named by table.
		v4, v6, tapChain, hook, set := "ipv4", "ipv6", "tap101i0-in", "FORWARD -> vmfw-FORWARD", "sg-clients-v4"
		if h.nft() {
			v4, v6, tapChain, hook, set = "bridge", "bridge", "in", "forward -> forward", "bridge/sg-clients-v4"
		}
		r = parse("apply", "-o", "json")
		if !r.Changed || r.DryRun || !slices.Contains(r.Chains[v4].Created, tapChain) || !slices.Contains(r.Chains[v6].Created, "sg-web-in") ||
			!slices.Contains(r.Chains[v4].HooksAdded, hook) || !slices.Contains(r.Sets.Created, set) ||
			!h.nft() && (!slices.Contains(r.Chains["ipv4"].Created, "tap103i0-in") || !slices.Contains(r.Chains["ipv6"].Created, "tap103i0-in")) {
			t.Errorf("first apply: %+v", r)
		}
		if h.nft() && !slices.Contains(r.Chains["iptables"].HooksAdded, "ipv4 FORWARD -> vmfw accept") {
			t.Errorf("first apply does not report vmfw's rule in iptables' FORWARD: %+v", r)
		}
		// apply firewalls taps; attaching them to the bridge is ifup's job.
		for _, tap := range []string{"tap101i0", "tap102i0"} {
			if err := h.lab.AttachToBridge(tap); err != nil {
				t.Fatal(err)
			}
		}
		if r = parse("apply", "-o", "json"); r.Changed || len(r.Chains[v4].Rewritten)+len(r.Chains[v4].Created) != 0 {
			t.Errorf("unchanged apply: %+v", r)
		}
		if r = parse("check", "-o", "json"); r.Changed {
			t.Errorf("check after apply: %+v", r)
		}
		// VM 102 joins clients: members, and no chain of another group.
		// (The nftables backend adds the chains of clients, which no
		// attached tap listed before, and the dispatch rules for it.)
		h.write("vms/102.toml", strings.Replace(explain102, "groups = []", `groups = ["clients"]`, 1))
		if r = parse("check", "-o", "json"); !r.Changed {
			t.Errorf("check after an edit: %+v", r)
		}
		r = parse("apply", "-o", "json")
		if !r.Changed || !slices.Equal(r.Sets.Added[set], []string{"192.0.2.102"}) || slices.Contains(r.Chains[v4].Rewritten, "sg-web-in") {
			t.Errorf("membership change: %+v", r)
		}
		// A running ssh connection from 102, then ssh is dropped for all:
		// the edit rewrites sg-web-in and cuts the connection.
		h.serve(vm1, "192.0.2.101", 22)
		flowing(t, vm2, "192.0.2.101:22", 2)
		h.write("groups/web.toml", strings.Replace(explainWeb, `source_group = "clients"`, `source_group = "clients"`+"\naction = \"drop\"", 1))
		r = parse("apply", "-o", "json")
		if !r.Changed || !slices.Contains(r.Chains[v4].Rewritten, "sg-web-in") || r.FlowsCut < 1 {
			t.Errorf("edit that cuts a flow: %+v", r)
		}
		// A broken configuration: JSON that says so, exit status 2.
		h.write("groups/web.toml", "[[in]]\nproto = \"tcp\"\ndport = \"99999\"\n")
		out, _, code := h.run("check", "-o", "json")
		var bad struct {
			Valid bool   `json:"valid"`
			Error string `json:"error"`
		}
		if err := json.Unmarshal([]byte(out), &bad); err != nil || code != 2 || bad.Valid || !strings.Contains(bad.Error, "web.toml:3") {
			t.Errorf("invalid configuration: exit %d, %+v (%v)\n%s", code, bad, err, out)
		}
		if _, _, code := h.run("apply", "-o", "json"); code != 2 {
			t.Errorf("apply -o json of an invalid configuration: exit %d, want 2", code)
		}
	})
}
