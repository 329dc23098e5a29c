// Package integration holds vmfw's root tests: each builds a hypervisor in
// throwaway network namespaces (package labnet), runs the real vmfw binary
// inside it and proves every firewall behaviour with real packets.
package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
	"github.com/vmfw/vmfw/integration/testbin"
)

func TestMain(m *testing.M) { testbin.Main(m, "integration tests", nil) }

// backends are what every firewall test runs with.
var backends = labtest.Backends

// iptablesFlavours are the iptables backend's flavours alone, for the
// tests of what the nftables backend does beside iptables (a switch of
// backends, a foreign DROP policy).
var iptablesFlavours = []string{"nft", "legacy"}

// forEachBackend runs fn as a parallel subtest per backend.
func forEachBackend(t *testing.T, fn func(t *testing.T, backend string)) {
	labtest.EachBackend(t, backends, fn)
}

// forEachHV is forEachBackend for a test that starts from a hypervisor of
// its own with an empty config directory (newHV).
func forEachHV(t *testing.T, fn func(t *testing.T, h *hv)) {
	forEachBackend(t, func(t *testing.T, backend string) { fn(t, newHV(t, backend, "")) })
}

// hv is one test hypervisor: a lab, a private copy of a config directory
// and the backend vmfw runs with.
type hv struct {
	t       *testing.T
	lab     *labnet.Lab
	ns      *labnet.NS
	config  string
	backend string
	// env is added to the environment of every vmfw run (VMFW_RUN_DIR
	// of a test's own agent).
	env []string
}

// newHV builds a lab and copies the config directory src (may be "") into
// a temporary directory the test can edit.
func newHV(t *testing.T, backend, src string) *hv {
	t.Helper()
	lab := labtest.NewLab(t)
	h := &hv{t: t, lab: lab, ns: lab.Hypervisor(), config: t.TempDir(), backend: backend}
	for _, d := range []string{"groups", "vms"} {
		if err := os.MkdirAll(filepath.Join(h.config, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if src != "" {
		copyDir(t, src, h.config)
	}
	return h
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// write puts a config file (relative to the config dir).
func (h *hv) write(rel, content string) {
	h.t.Helper()
	if err := os.WriteFile(filepath.Join(h.config, rel), []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// run runs vmfw inside the hypervisor namespace and returns its output and
// exit status.
func (h *hv) run(args ...string) (stdout, stderr string, code int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := append(append([]string{"ip", "netns", "exec", h.ns.Name, testbin.VMFW}, h.backendFlags()...), append([]string{"--config-dir", h.config}, args...)...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	if len(h.env) > 0 {
		cmd.Env = append(os.Environ(), h.env...)
	}
	stdout, stderr, code, err := labnet.Run(cmd)
	if err != nil {
		h.t.Fatalf("running vmfw %v: %v", args, err)
	}
	return stdout, stderr, code
}

// vmfw runs vmfw and fails the test unless it exits 0.
func (h *hv) vmfw(args ...string) string {
	h.t.Helper()
	out, errOut, code := h.run(args...)
	if code != 0 {
		h.t.Fatalf("vmfw %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// exec runs a command in the hypervisor namespace.
func (h *hv) exec(args ...string) string {
	h.t.Helper()
	return labtest.Exec(h.t, h.ns, args...)
}

// backendFlags are the global flags that choose h's backend.
func (h *hv) backendFlags() []string { return labtest.BackendArgs(h.backend) }

// backendEnv is the environment that chooses h's backend for a program
// that takes no flags (vmfw-ifup as QEMU runs it).
func (h *hv) backendEnv() string { return labtest.BackendEnv(h.backend) }

// nftFirstHandle returns the handle of the first rule of chain in table
// bridge vmfw, as nft -a lists it.
func (h *hv) nftFirstHandle(chain string) string {
	h.t.Helper()
	m := nftHandle.FindStringSubmatch(h.exec("nft", "-a", "list", "chain", "bridge", "vmfw", chain))
	if m == nil {
		h.t.Fatalf("chain %s has no rule", chain)
	}
	return m[1]
}

var nftHandle = regexp.MustCompile(`(?m)^\t\t.*# handle (\d+)$`)

// nft reports whether h runs the nftables backend.
func (h *hv) nft() bool { return h.backend == labtest.NftablesBackend }

// tool returns the backend's name of an iptables command: for the
// nftables backend, iptables-nft's (foreign rules a test adds beside it).
func (h *hv) tool(name string) string {
	flavour := h.backend
	if h.nft() {
		flavour = "nft"
	}
	base, action, _ := strings.Cut(name, "-")
	if action == "" {
		return base + "-" + flavour
	}
	return base + "-" + flavour + "-" + action
}

// save returns iptables-save (ip6tables-save for v6) of the filter table
// without comments and counters, so equal rulesets compare equal.
func (h *hv) save(v6 bool) string {
	h.t.Helper()
	return h.tableSave(v6, "filter")
}

// tableSave is save for any table.
func (h *hv) tableSave(v6 bool, table string) string {
	h.t.Helper()
	cmd := "iptables"
	if v6 {
		cmd = "ip6tables"
	}
	out := h.exec(h.tool(cmd+"-save"), "-t", table)
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		if strings.HasPrefix(l, ":") {
			l = counters.ReplaceAllString(l, "")
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n") + "\n"
}

var initval = regexp.MustCompile(` initval 0x[0-9a-f]+`)

var counters = regexp.MustCompile(` \[\d+:\d+\]$`)

// bridgeSave returns ebtables-save of the bridge filter table without
// comment lines.
func (h *hv) bridgeSave() string {
	h.t.Helper()
	var keep []string
	for _, l := range strings.Split(h.exec("ebtables-nft-save"), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n") + "\n"
}

// installed reports whether tap's filtering is installed, as the
// backend's own objects show it: its chains (iptables) or its element of
// the ports set (nftables).
func (h *hv) installed(tap string) bool {
	h.t.Helper()
	if h.nft() {
		return h.nftTable("bridge") != "" && slices.Contains(h.nftElements("bridge", "ports"), tap)
	}
	return strings.Contains(h.save(false), ":"+tap+"-in ")
}

// member reports whether addr is in group's member set: the ipset
// sg-GROUP-v4/-v6 (iptables) or the set of that name in table bridge vmfw
// (nftables). A set that does not exist has no members.
func (h *hv) member(group, addr string) bool {
	h.t.Helper()
	set := "sg-" + group + "-v4"
	if strings.Contains(addr, ":") {
		set = "sg-" + group + "-v6"
	}
	if h.nft() {
		if !strings.Contains(h.nftTable("bridge"), "set "+set+" ") {
			return false
		}
		return slices.Contains(h.nftElements("bridge", set), addr)
	}
	return strings.Contains(h.ipsets()+"\n", "add "+set+" "+addr+"\n")
}

// snapshot is vmfw's installed ruleset as text, for before-and-after
// comparisons: iptables-save of both families and ipset save for the
// iptables backend; for the nftables backend every chain and set of its
// two tables as nft lists them without counters, in name order, with
// sorted elements.
func (h *hv) snapshot() string {
	h.t.Helper()
	if !h.nft() {
		return h.save(false) + h.save(true) + h.ipsets()
	}
	var missing string
	for _, fam := range []string{"bridge", "inet"} {
		if h.nftTable(fam) == "" {
			missing += "no table " + fam + " vmfw\n"
		}
	}
	return missing + h.objectsText(func(string) bool { return true })
}

// objectsText is the objects (objects) that keep admits as text, in name
// order: nft lists them in the order they were created, which a tap's
// ifdown and ifup changes.
func (h *hv) objectsText(keep func(name string) bool) string {
	h.t.Helper()
	objs := h.objects()
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(objs)) {
		if keep(name) {
			b.WriteString(name + " {\n" + objs[name] + "}\n")
		}
	}
	return b.String()
}

// objects splits vmfw's installed ruleset into its chains and sets, each
// named by where it lives ("ipv4/tap101i0-in", "ipset sg-web-v4",
// "bridge/in", "bridge set ports") with its content as text: what a test
// compares before and after a change to see which objects it rewrote.
func (h *hv) objects() map[string]string {
	h.t.Helper()
	out := map[string]string{}
	if !h.nft() {
		for fam, v6 := range map[string]bool{"ipv4": false, "ipv6": true} {
			for name, rules := range chains(h.save(v6)) {
				out[fam+"/"+name] = rules
			}
		}
		for _, l := range strings.Split(h.ipsets(), "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 && (f[0] == "add" || f[0] == "create") {
				out["ipset "+f[1]] += l + "\n"
			}
		}
		return out
	}
	for _, fam := range []string{"bridge", "inet"} {
		var name string
		var body strings.Builder
		for _, l := range strings.Split(labnet.SortNFTElements(h.nftTable(fam)), "\n") {
			t := strings.TrimSpace(l)
			switch {
			case strings.HasPrefix(l, "\tchain ") || strings.HasPrefix(l, "\tset ") || strings.HasPrefix(l, "\tmap "):
				f := strings.Fields(t)
				name, body = fam+"/"+f[1], strings.Builder{}
				if f[0] != "chain" {
					name = fam + " set " + f[1]
				}
			case l == "\t}" && name != "":
				out[name] = body.String()
				name = ""
			case name != "":
				body.WriteString(t + "\n")
			}
		}
	}
	return out
}

// changedObjects lists the objects (objects) that differ between before
// and after, sorted.
func changedObjects(before, after map[string]string) []string {
	var diff []string
	for name, b := range before {
		if a, ok := after[name]; !ok || a != b {
			diff = append(diff, name)
		}
	}
	for name := range after {
		if _, ok := before[name]; !ok {
			diff = append(diff, name)
		}
	}
	sort.Strings(diff)
	return diff
}

// nftCounter returns the packet counter of the first rule of chain in
// table bridge vmfw whose line holds every fragment, or -1.
func (h *hv) nftCounter(chain string, fragments ...string) int {
	h.t.Helper()
	for _, l := range linesWith(h.exec("nft", "list", "chain", "bridge", "vmfw", chain), fragments) {
		if m := nftPackets.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	return -1
}

// linesWith returns the lines of out that hold every fragment.
func linesWith(out string, fragments []string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if !slices.ContainsFunc(fragments, func(f string) bool { return !strings.Contains(l, f) }) {
			lines = append(lines, l)
		}
	}
	return lines
}

var nftPackets = regexp.MustCompile(`counter packets (\d+)`)

// nftTable returns nft's stateless listing of one of vmfw's tables
// (family bridge or inet), "" when it does not exist.
func (h *hv) nftTable(family string) string {
	h.t.Helper()
	out, err := h.ns.Exec(context.Background(), "nft", "-s", "list", "table", family, "vmfw")
	if err != nil {
		return ""
	}
	return string(out)
}

// nftPrefixes returns the elements of one of vmfw's interval sets in
// table bridge vmfw (an address set's), as nft lists them, in order.
func (h *hv) nftPrefixes(set string) []string {
	h.t.Helper()
	return labnet.NFTListedElements(h.exec("nft", "list", "set", "bridge", "vmfw", set))
}

// chainsOnly returns vmfw's chains as text, without sets: what a change
// of members alone must leave as it was. For the iptables backend both
// families' filter tables and the bridge table; for the nftables backend
// every chain of its two tables.
func (h *hv) chainsOnly() string {
	h.t.Helper()
	if !h.nft() {
		return h.save(false) + h.save(true) + h.bridgeSave()
	}
	return h.objectsText(func(name string) bool { return !strings.Contains(name, " set ") })
}

// nftElements returns the elements of one of vmfw's sets, as nft lists
// them, sorted.
func (h *hv) nftElements(family, set string) []string {
	h.t.Helper()
	out, err := h.ns.Exec(context.Background(), "nft", "-j", "list", "set", family, "vmfw", set)
	if err != nil {
		h.t.Fatalf("nft list set %s vmfw %s: %v\n%s", family, set, err, out)
	}
	raw, err := labnet.NFTSetElements(out)
	if err != nil {
		h.t.Fatalf("nft -j list set %s: %v", set, err)
	}
	var elems []string
	for _, e := range raw {
		elems = append(elems, nftElemText(e))
	}
	sort.Strings(elems)
	return elems
}

// nftElemText renders one element of nft's JSON: a string, or a
// concatenation ({"concat": [...]}), or an element with a counter
// ({"elem": {"val": ...}}), as "a . b".
func nftElemText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return string(raw)
	}
	if v, ok := obj["elem"]; ok {
		var inner map[string]json.RawMessage
		if json.Unmarshal(v, &inner) == nil {
			if val, ok := inner["val"]; ok {
				return nftElemText(val)
			}
		}
	}
	if v, ok := obj["concat"]; ok {
		var parts []json.RawMessage
		if json.Unmarshal(v, &parts) == nil {
			var out []string
			for _, p := range parts {
				out = append(out, nftElemText(p))
			}
			return strings.Join(out, " . ")
		}
	}
	if v, ok := obj["prefix"]; ok {
		var p struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		}
		if json.Unmarshal(v, &p) == nil {
			return fmt.Sprintf("%s/%d", p.Addr, p.Len)
		}
	}
	return string(raw)
}

// chains splits a save into chain name → its rule lines, each ended by a
// newline ("" for a chain without rules).
func chains(save string) map[string]string {
	out := map[string]string{}
	for _, l := range strings.Split(save, "\n") {
		if name, ok := strings.CutPrefix(l, ":"); ok {
			name, _, _ = strings.Cut(name, " ")
			if _, ok := out[name]; !ok {
				out[name] = ""
			}
			continue
		}
		if rest, ok := strings.CutPrefix(l, "-A "); ok {
			name, _, _ := strings.Cut(rest, " ")
			out[name] += l + "\n"
		}
	}
	return out
}

// changedChains lists chains that differ between two saves.
func changedChains(before, after string) []string {
	return changedObjects(chains(before), chains(after))
}

// ipsets returns "ipset save" in the hypervisor namespace, sorted.
func (h *hv) ipsets() string {
	h.t.Helper()
	lines := strings.Split(strings.TrimSpace(h.exec("ipset", "save")), "\n")
	for i, l := range lines {
		// The hash seed is random per set; it says nothing about contents.
		lines[i] = initval.ReplaceAllString(l, "")
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// vm adds a VM namespace behind tap with the v4 and v6 address of its
// number, e.g. vm(101, mac) gets 192.0.2.101/24 and 2001:db8::101/64.
func (h *hv) vm(tap, mac, v4, v6 string) *labnet.NS {
	h.t.Helper()
	addrs := []string{v4 + "/24"}
	if v6 != "" {
		addrs = append(addrs, v6+"/64")
	}
	ns, err := h.lab.AddVM(tap, mac, addrs...)
	if err != nil {
		h.t.Fatalf("adding VM %s: %v", tap, err)
	}
	return ns
}

// guest configures VM id with one interface (tap<id>i0 on vmbr0, mac, v4
// and v6 in its ips, groups; vmFile) and adds its guest with those
// addresses (vm).
func (h *hv) guest(id int, mac, v4, v6 string, groups ...string) *labnet.NS {
	h.t.Helper()
	h.write(fmt.Sprintf("vms/%d.toml", id), vmFile(mac, v4, v6, groups...))
	return h.vm(fmt.Sprintf("tap%di0", id), mac, v4, v6)
}

// external adds a host that is no VM on the bridge's uplink port
// uplink0, with mac ("" for a random one) and addrs (with prefix lengths).
func (h *hv) external(mac string, addrs ...string) *labnet.NS {
	h.t.Helper()
	ns, err := h.lab.AddExternal("uplink0", mac, addrs...)
	if err != nil {
		h.t.Fatalf("adding the external host: %v", err)
	}
	return ns
}

// serve starts TCP echo servers on the given ports of addr.
func (h *hv) serve(ns *labnet.NS, addr string, ports ...int) {
	h.t.Helper()
	for _, p := range ports {
		stop, err := labnet.ServeTCP(ns, labnet.HostPort(addr, p))
		if err != nil {
			h.t.Fatalf("serving %s:%d: %v", addr, p, err)
		}
		h.t.Cleanup(stop)
	}
}

// flowing starts a stream from ns to addr, stopped when t ends, and waits
// until more than n of its messages came back.
func flowing(t *testing.T, from *labnet.NS, addr string, n uint64) {
	t.Helper()
	s, err := labnet.StartStream(from, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	if !eventually(func() bool { return s.Stats().Echoed > n }) {
		t.Fatalf("the stream %s -> %s did not start: %+v", from, addr, s.Stats())
	}
}

// probeTimeout bounds a probe that is expected to be dropped.
const probeTimeout = 700 * time.Millisecond

// tcp connects from ns to addr:port and returns what happened.
func tcp(t *testing.T, ns *labnet.NS, addr string, port int) labnet.Result {
	t.Helper()
	r, err := labnet.TCPConnect(context.Background(), ns, labnet.HostPort(addr, port), probeTimeout)
	if err != nil {
		t.Fatalf("tcp %s -> %s:%d: %v", ns, addr, port, err)
	}
	return r
}

// probe is one expected TCP flow.
type probe struct {
	what string
	from *labnet.NS
	addr string
	port int
	open bool
}

// expectAll runs the probes concurrently (a blocked probe waits for its
// timeout, so running them one by one would take minutes) and reports each
// unexpected result.
func expectAll(t *testing.T, probes []probe) {
	t.Helper()
	all := make([]labtest.Probe, len(probes))
	for i, p := range probes {
		all[i] = labtest.Probe{What: p.what, From: p.from, Addr: p.addr, Port: p.port, Want: labnet.Connected, Blocked: !p.open}
	}
	labtest.ExpectProbes(t, probeTimeout, all)
}

// sentFrame is one raw frame a guest sends (built around a marker) and
// whether it must reach the host that captures.
type sentFrame struct {
	why     string
	from    *labnet.NS
	frame   func(marker []byte) []byte
	through bool
}

// udpFrame is a sentFrame's frame of a UDP datagram from src port 4000 to
// dst port 5000 (both IPv4 or both IPv6) in an Ethernet frame from srcMAC
// to dstMAC.
func udpFrame(srcMAC, dstMAC net.HardwareAddr, src, dst string) func(marker []byte) []byte {
	from, to := netip.AddrPortFrom(netip.MustParseAddr(src), 4000), netip.AddrPortFrom(netip.MustParseAddr(dst), 5000)
	if from.Addr().Is4() {
		return func(m []byte) []byte { return labnet.UDP4Frame(srcMAC, dstMAC, from, to, m) }
	}
	return func(m []byte) []byte { return labnet.UDP6Frame(srcMAC, dstMAC, from, to, m) }
}

// expectFrames sends each frame from its guest and captures at to's eth0,
// one by one: a frame that must not arrive is waited for probeTimeout.
func expectFrames(t *testing.T, to *labnet.NS, frames []sentFrame) {
	t.Helper()
	for _, c := range frames {
		marker := labnet.NewMarker()
		capture, err := labnet.StartCapture(to, "eth0", labnet.HasMarker(marker))
		if err != nil {
			t.Fatal(err)
		}
		if err := labnet.SendFrame(c.from, "eth0", c.frame(marker)); err != nil {
			capture.Close()
			t.Fatalf("%s: sending: %v", c.why, err)
		}
		wait := 2 * time.Second
		if !c.through {
			wait = probeTimeout
		}
		got, err := capture.Wait(wait)
		capture.Close()
		if err != nil {
			t.Fatalf("%s: capturing: %v", c.why, err)
		}
		if got != c.through {
			t.Errorf("%s: frame arrived = %v, want %v", c.why, got, c.through)
		}
	}
}

// mustMAC parses a MAC address the test spells out.
func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// iptablesCounter returns the packet counter of the first rule in save -c
// output containing all of the given fragments, or -1.
func (h *hv) iptablesCounter(v6 bool, fragments ...string) int {
	h.t.Helper()
	cmd := "iptables"
	if v6 {
		cmd = "ip6tables"
	}
	for _, l := range linesWith(h.exec(h.tool(cmd+"-save"), "-c", "-t", "filter"), fragments) {
		var pkts, bytes int
		if _, err := fmt.Sscanf(l, "[%d:%d]", &pkts, &bytes); err == nil {
			return pkts
		}
	}
	return -1
}

// process is a long-running command a test started (labnet.Process).
type process = labnet.Process

// stop sends p SIGTERM and waits for it to exit; one that does not within
// 30 s is killed and fails the test.
func stop(t *testing.T, p *process) {
	t.Helper()
	if err := p.Stop(); err != nil {
		t.Errorf("%v: %s", err, p.Output())
	}
}

// twentyTaps configures twenty VMs from id first on (all in group app,
// every other one in db too, addresses and MACs derived from macByte)
// and creates their taps as veth pairs inside the hypervisor: the taps
// only need to exist for ifup.
func (h *hv) twentyTaps(first int, macByte byte) []string {
	h.t.Helper()
	h.write("groups/db.toml", dbGroup)
	h.write("groups/app.toml", appGroup)
	var taps []string
	for i := range 20 {
		id := first + i
		tap := fmt.Sprintf("tap%di0", id)
		taps = append(taps, tap)
		groups := []string{"app"}
		if i%2 == 0 {
			groups = append(groups, "db")
		}
		h.write(fmt.Sprintf("vms/%d.toml", id), vmFile(fmt.Sprintf("02:00:00:00:%02x:%02x", macByte, i),
			fmt.Sprintf("192.0.2.%d", 100+int(macByte)*5+i), fmt.Sprintf("2001:db8::%x:%d", macByte, i), groups...))
		h.exec("ip", "link", "add", tap, "type", "veth", "peer", "name", fmt.Sprintf("p%d", id))
	}
	return taps
}

// concurrently runs "vmfw cmd TAP" for every tap at once, as QEMU starting
// many VMs does, and returns one message per tap whose run failed ("" for
// those that succeeded).
func (h *hv) concurrently(cmd string, taps []string) []string {
	h.t.Helper()
	var wg sync.WaitGroup
	errs := make([]string, len(taps))
	for i, tap := range taps {
		wg.Go(func() {
			out, errOut, code := h.run(cmd, tap)
			if code != 0 {
				errs[i] = fmt.Sprintf("%s %s: exit %d: %s%s", cmd, tap, code, out, errOut)
			}
		})
	}
	wg.Wait()
	return errs
}

// vmfwFree returns an error naming the first of vmfw's objects it finds in
// the hypervisor's kernel (a chain or rule of either family, an ebtables
// chain, an ipset), nil on a host where vmfw never ran or was flushed.
func (h *hv) vmfwFree() error {
	h.t.Helper()
	return labtest.Free(h.t, h.ns, h.save(false)+h.save(true), "tap")
}

// applied fails the test unless "vmfw apply --dry-run" has nothing to do:
// what the commands so far installed is what a full apply writes.
func (h *hv) applied(after string) {
	h.t.Helper()
	if out := h.vmfw("apply", "--dry-run"); !strings.HasPrefix(out, "# no changes") {
		h.t.Errorf("after %s an apply would still change:\n%s", after, out)
	}
}

// firstV4 brings up, as vmfw's first act in the lab, an IPv4-only VM: it
// requires a kernel without any of vmfw's objects, configures VM id (tap
// tap<id>i0 on vmbr0, ips = [addr], no groups, policy_in reject), creates
// it, runs ifup, requires vmfw's base chains and the tap's chains to be
// what a full build writes (vmfw status: the test's other taps may exist
// already, which an apply would add), and proves with packets that the
// tap forwards and filters: the VM pings the hypervisor (192.0.2.1), and
// the hypervisor's connection to the port the VM serves (22) is refused by
// the VM's in chain.
//
// A host's first VM once failed to start when it had one address family:
// the scoped ifup jumped to the other family's address tree, which nobody
// had created yet. The tests never saw it because each lab applied first
// or gave its VMs both families; so every lab that starts VMs begins with
// this one.
func (h *hv) firstV4(id int, addr string) *labnet.NS {
	h.t.Helper()
	if err := h.vmfwFree(); err != nil {
		h.t.Fatalf("before the first VM: %v", err)
	}
	tap := fmt.Sprintf("tap%di0", id)
	mac := fmt.Sprintf("02:00:00:fe:%02x:%02x", id>>8, id&0xff)
	h.write(fmt.Sprintf("vms/%d.toml", id), fmt.Sprintf("policy_in = \"reject\"\n\n[net0]\nbridge = \"vmbr0\"\nmac = %q\nips = [%q]\ngroups = []\n", mac, addr))
	ns := h.vm(tap, mac, addr, "")
	h.vmfw("ifup", tap)
	h.inSync("the first VM's ifup", tap, true)
	if err := h.lab.WaitForwarding(tap); err != nil {
		h.t.Fatal(err)
	}
	h.serve(ns, addr, 22)
	ctx := context.Background()
	if r, err := labnet.Ping(ctx, ns, "192.0.2.1", 5*time.Second); err != nil || r != labnet.Connected {
		h.t.Errorf("the first VM (%s, IPv4 only) pings the hypervisor: %v %v, want an answer", tap, r, err)
	}
	// The nftables backend decides what the hypervisor sends at bridge
	// postrouting, where a reject is a drop (docs/nftables.md).
	want := labnet.Refused
	if h.nft() {
		want = labnet.Timeout
	}
	if r, err := labnet.TCPConnect(ctx, h.ns, labnet.HostPort(addr, 22), 5*time.Second); err != nil || r != want {
		h.t.Errorf("the hypervisor to the first VM's port 22 (policy_in reject): %v %v, want %v", r, err, want)
	}
	return ns
}

// firstV4Gone is firstV4 for a test that compares whole rulesets or counts
// taps: the first VM stops again (ifdown, its tap removed, as when QEMU
// exits), and the rest of the test starts where vmfw has run but holds no
// VM.
func (h *hv) firstV4Gone(id int, addr string) {
	h.t.Helper()
	ns := h.firstV4(id, addr)
	tap := fmt.Sprintf("tap%di0", id)
	h.vmfw("ifdown", tap)
	if err := h.lab.Remove(ns); err != nil {
		h.t.Fatal(err)
	}
	h.inSync("the first VM's ifdown", tap, false)
}

// inSync fails the test unless vmfw status finds its base chains in sync
// and tap in sync (up) or unknown, without chains (not up).
func (h *hv) inSync(after, tap string, up bool) {
	h.t.Helper()
	st := h.status()
	if st.Base != "in-sync" {
		h.t.Errorf("after %s vmfw's base chains are %s: %v", after, st.Base, st.BaseDrifted)
	}
	state := ""
	for _, s := range st.Taps {
		if s.Tap == tap {
			state = s.State + " " + strings.Join(s.Drifted, " ")
		}
	}
	if want := map[bool]string{true: "in-sync ", false: ""}[up]; state != want {
		h.t.Errorf("after %s %s is %q, want %q", after, tap, state, want)
	}
}
