package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
	"github.com/vmfw/vmfw/integration/testbin"
)

// propSteps is the number of steps per backend of the default run, which
// keeps the test near a minute (both backends run in parallel).
const propSteps = 150

// propCheckEvery is how many steps pass between two packet checks.
const propCheckEvery = 50

// TestScopedPathMatchesApply checks the property behind the scoped path
// (docs/design.md, "Scoped changes"): however a host got where it is —
// taps brought up and down one at a time, groups and VM files edited,
// applies — vmfw's objects in the kernel are what one full apply of the
// configuration writes.
//
// A host's first VM once failed to start, and no test saw it: each reached
// the scoped path only after an apply, or with dual-stack VMs, while the
// first IPv4-only tap on an empty kernel jumped to an IPv6 address tree
// nobody had created. So this test starts from a kernel vmfw never touched,
// returns to an empty one now and then (flush, every tap gone), and gives
// its VMs every shape an interface can have: IPv4 only, IPv6 only, both,
// no ips, anti-spoofing off, disabled, several interfaces of different
// shapes. After every step "vmfw apply --dry-run" must have nothing to
// do.
//
// An edit is not in force until something applies it: after an edit the
// dry run may show changes until it first shows none. Taps come and go
// between an edit and its apply too (an operator edits a file, then a VM
// starts): an ifup or ifdown must then take the full path whenever its
// scope relies on a chain the edit made stale, so the test requires that
// each command succeeds, that each tap an ifup brought up is in sync
// (vmfw status) and that each tap an ifdown took down has no chains left.
// An apply follows every edit within a few steps.
//
// Every few dozen steps, and at the end, real packets prove the state:
// four VMs whose files never change (a server admitting members of group
// probe on 8080, an IPv4-only and an IPv6-only member, and an outsider)
// are brought up where needed, and the members connect while the outsider
// and the hypervisor are kept out.
//
// The seed is logged; VMFW_SEED=N replays a run (both backends take the
// same steps), VMFW_STEPS=N sets the number of steps per backend (default
// propSteps; make proptest runs a long one).
func TestScopedPathMatchesApply(t *testing.T) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("VMFW_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("VMFW_SEED=%q: %v", s, err)
		}
		seed = n
	}
	steps := propSteps
	if s := os.Getenv("VMFW_STEPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("VMFW_STEPS=%q: want a positive number", s)
		}
		steps = n
	}
	t.Logf("seed %d, %d steps per backend; replay with VMFW_SEED=%d", seed, steps, seed)
	forEachBackend(t, func(t *testing.T, backend string) {
		p := newPropLab(t, backend, seed)
		p.run(steps)
		t.Logf("%s: %d steps from seed %d: %v; %d packet checks", backend, steps, seed, p.counts, p.packetChecks)
	})
}

// propNIC is one interface of a VM of the property test.
type propNIC struct {
	v4, v6       string // the addresses it may list
	useV4, useV6 bool   // which of them ips lists
	mac          string
	noMAC        bool // the file gives no mac
	antispoof    bool
	dhcp         bool
	noNDP        bool // ndp = false
	groups       []string
}

// propVM is one VM file.
type propVM struct {
	id                  int
	enable, log         bool
	dropInvalid         bool // drop_invalid = true, with enable = false
	policyIn, policyOut string
	nics                []*propNIC
	// role is "" for a VM the test edits at will, else its part in the
	// packet checks (server, member4, member6, outsider): its file never
	// changes and its taps are veths into a namespace of its own.
	role string
}

func (v *propVM) tap(i int) string { return fmt.Sprintf("tap%di%d", v.id, i) }

func (v *propVM) file() string {
	var b strings.Builder
	fmt.Fprintf(&b, "enable = %v\npolicy_in = %q\npolicy_out = %q\nlog = %v\n", v.enable, v.policyIn, v.policyOut, v.log)
	if v.dropInvalid {
		b.WriteString("drop_invalid = true\n")
	}
	for i, n := range v.nics {
		fmt.Fprintf(&b, "\n[net%d]\nbridge = \"vmbr0\"\n", i)
		if !n.noMAC {
			fmt.Fprintf(&b, "mac = %q\n", n.mac)
		}
		var ips []string
		if n.useV4 {
			ips = append(ips, strconv.Quote(n.v4))
		}
		if n.useV6 {
			ips = append(ips, strconv.Quote(n.v6))
		}
		if len(ips) > 0 || i%2 == 1 { // both ways of listing none: no key, and []
			fmt.Fprintf(&b, "ips = [%s]\n", strings.Join(ips, ", "))
		}
		quoted := make([]string, len(n.groups))
		for k, g := range n.groups {
			quoted[k] = strconv.Quote(g)
		}
		fmt.Fprintf(&b, "groups = [%s]\nantispoof = %v\ndhcp = %v\n", strings.Join(quoted, ", "), n.antispoof, n.dhcp)
		if n.noNDP {
			b.WriteString("ndp = false\n")
		}
	}
	return b.String()
}

// propGroup is one group file; a rule is its "key = value" lines.
type propGroup struct {
	name    string
	in, out [][]string
	fixed   bool
}

func (g *propGroup) file() string {
	var b strings.Builder
	fmt.Fprintf(&b, "description = \"group %s\"\n", g.name)
	for _, d := range []struct {
		name  string
		rules [][]string
	}{{"in", g.in}, {"out", g.out}} {
		for _, r := range d.rules {
			b.WriteString("\n[[" + d.name + "]]\n" + strings.Join(r, "\n") + "\n")
		}
	}
	return b.String()
}

// propLab is one backend's hypervisor, its configuration and what the test
// believes is up.
type propLab struct {
	*hv
	r      *rand.Rand
	vms    []*propVM
	groups []*propGroup
	// up holds the taps that exist and were brought up; guests the
	// namespaces of the packet-check VMs' taps that exist.
	up     map[string]bool
	guests map[string]*labnet.NS
	// edited is set by an edit and cleared once the dry run shows
	// nothing left to do; applyIn counts the steps until the apply that
	// follows an edit (-1: none due).
	edited  bool
	applyIn int
	history []string
	counts  map[string]int
	// packetChecks counts the checks with real packets.
	packetChecks int
}

// Fixed parts of the configuration: group probe admits its members on
// propPort, the packet-check VMs' addresses.
const (
	propPort     = 8080
	propServer4  = "192.0.2.50"
	propServer6  = "2001:db8::50"
	propMember4  = "192.0.2.51"
	propMember6  = "2001:db8::52"
	propOutside4 = "192.0.2.53"
	propOutside6 = "2001:db8::53"
)

// propRandomIDs are the VMs the test edits: ids of different lengths
// that share prefixes, so that the name trees branch and deepen.
var propRandomIDs = []int{7, 16, 160, 1601, 162, 2700}

func newPropLab(t *testing.T, backend string, seed int64) *propLab {
	h := newHV(t, backend, "")
	// A run directory of its own: vmfw-ifup finds no agent there.
	h.env = []string{"VMFW_RUN_DIR=" + t.TempDir()}
	p := &propLab{hv: h, r: rand.New(rand.NewSource(seed)), up: map[string]bool{}, guests: map[string]*labnet.NS{},
		applyIn: -1, counts: map[string]int{}}
	p.groups = append(p.groups, &propGroup{name: "probe", fixed: true,
		in: [][]string{{`proto = "tcp"`, fmt.Sprintf("dport = \"%d\"", propPort), `source_group = "probe"`}}})
	for i := range 4 {
		g := &propGroup{name: fmt.Sprintf("g%d", i)}
		for range p.r.Intn(4) {
			g.in = append(g.in, p.randomRule("in"))
		}
		for range p.r.Intn(3) {
			g.out = append(g.out, p.randomRule("out"))
		}
		p.groups = append(p.groups, g)
	}
	fixed := func(id int, role, v4, v6 string, groups ...string) *propVM {
		n := &propNIC{v4: v4, v6: v6, useV4: v4 != "", useV6: v6 != "", mac: propMAC(id, 0), antispoof: true, groups: groups}
		return &propVM{id: id, enable: true, policyIn: "drop", policyOut: "accept", nics: []*propNIC{n}, role: role}
	}
	p.vms = append(p.vms,
		fixed(150, "server", propServer4, propServer6, "probe"),
		fixed(151, "member4", propMember4, "", "probe"),
		fixed(152, "member6", "", propMember6, "probe"),
		fixed(153, "outsider", propOutside4, propOutside6))
	for k, id := range propRandomIDs {
		v := &propVM{id: id}
		for i := range 1 + p.r.Intn(3) {
			// IPv4 addresses from each documentation network, so that
			// the address trees branch at their first digits.
			nets := []string{"192.0.2", "198.51.100", "203.0.113"}
			v.nics = append(v.nics, &propNIC{
				v4:  fmt.Sprintf("%s.%d", nets[i], 100+4*k+i),
				v6:  fmt.Sprintf("2001:db8:%x::%x", i+1, id),
				mac: propMAC(id, i),
			})
		}
		p.randomizeVM(v)
		p.vms = append(p.vms, v)
	}
	for _, g := range p.groups {
		h.write("groups/"+g.name+".toml", g.file())
	}
	for _, v := range p.vms {
		h.write(fmt.Sprintf("vms/%d.toml", v.id), v.file())
	}
	if err := h.vmfwFree(); err != nil {
		t.Fatalf("the kernel is not empty before the first step: %v", err)
	}
	return p
}

func propMAC(id, nic int) string {
	return fmt.Sprintf("02:00:00:%02x:%02x:%02x", id>>8, id&0xff, nic)
}

// randomizeVM gives a VM the test edits a random shape: each interface
// IPv4 only, IPv6 only, both or no ips, anti-spoofing mostly on, random
// groups; the VM sometimes disabled, with random policies.
func (p *propLab) randomizeVM(v *propVM) {
	v.enable = p.r.Intn(6) != 0
	v.dropInvalid = !v.enable && p.r.Intn(2) == 0
	v.policyIn = pick(p.r, "drop", "drop", "reject", "accept")
	v.policyOut = pick(p.r, "accept", "accept", "drop", "reject")
	v.log = p.r.Intn(5) == 0
	for _, n := range v.nics {
		p.randomizeNIC(n)
	}
}

func (p *propLab) randomizeNIC(n *propNIC) {
	switch p.r.Intn(4) {
	case 0:
		n.useV4, n.useV6 = true, false
	case 1:
		n.useV4, n.useV6 = false, true
	case 2:
		n.useV4, n.useV6 = true, true
	default:
		n.useV4, n.useV6 = false, false
	}
	n.antispoof = p.r.Intn(5) != 0
	n.noMAC = p.r.Intn(6) == 0
	n.dhcp = p.r.Intn(2) == 0
	n.noNDP = p.r.Intn(5) == 0
	n.groups = nil
	for _, i := range p.r.Perm(len(p.groups))[:p.r.Intn(4)] {
		n.groups = append(n.groups, p.groups[i].name)
	}
}

// randomRule returns the lines of a random valid rule of direction dir.
func (p *propLab) randomRule(dir string) []string {
	r := p.r
	var rule []string
	add := func(format string, args ...any) { rule = append(rule, fmt.Sprintf(format, args...)) }
	proto := pick(r, "tcp", "tcp", "udp", "sctp", "icmp", "icmpv6", "any", "")
	if proto != "" {
		add("proto = %q", proto)
	}
	switch proto {
	case "tcp", "udp", "sctp":
		if r.Intn(3) != 0 {
			add("dport = %q", pick(r, "22", "80,443", "5000:5010", "8080", "1:1024"))
		}
		if r.Intn(6) == 0 {
			add("sport = %q", pick(r, "1024:65535", "53"))
		}
	case "icmp", "icmpv6":
		if r.Intn(2) == 0 {
			add("icmp_type = %q", pick(r, "echo-request", "destination-unreachable"))
		}
	}
	peers := []string{"192.0.2.0/24", "198.51.100.7", "203.0.113.0/25", "2001:db8::/64", "2001:db8:2::1", "0.0.0.0/0", "::/0", propMember4, propMember6}
	addrKey, groupKey := "source", "source_group"
	if dir == "out" {
		addrKey, groupKey = "dest", "dest_group"
	}
	switch r.Intn(6) {
	case 0, 1:
		var list []string
		for range 1 + r.Intn(2) {
			list = append(list, strconv.Quote(pick(r, peers...)))
		}
		add("%s = [%s]", addrKey, strings.Join(list, ", "))
	case 2:
		add("%s = %q", groupKey, p.groups[r.Intn(len(p.groups))].name)
	case 3:
		if dir == "in" {
			add("source_mac = %q", pick(r, propMAC(7, 0), propMAC(160, 1), "02:00:00:aa:bb:cc"))
		}
	}
	add("action = %q", pick(r, "accept", "accept", "drop", "reject"))
	if r.Intn(6) == 0 {
		add("log = true")
	}
	if r.Intn(5) == 0 {
		add("comment = %q", fmt.Sprintf("rule %d", r.Intn(100)))
	}
	return rule
}

// taps lists every tap of the configuration, in a fixed order.
func (p *propLab) taps() []string {
	var out []string
	for _, v := range p.vms {
		for i := range v.nics {
			out = append(out, v.tap(i))
		}
	}
	return out
}

// vmOf returns the VM of tap and the index of its interface.
func (p *propLab) vmOf(tap string) (*propVM, int) {
	for _, v := range p.vms {
		for i := range v.nics {
			if v.tap(i) == tap {
				return v, i
			}
		}
	}
	p.t.Fatalf("no VM has tap %s", tap)
	return nil, 0
}

// fail stops the backend's run with what went wrong, the steps that led
// there and how to replay them.
func (p *propLab) fail(format string, args ...any) {
	p.t.Helper()
	from := max(0, len(p.history)-25)
	p.t.Fatalf("%s\nsteps %d to %d of this run (replay with VMFW_SEED as logged above):\n  %s",
		fmt.Sprintf(format, args...), from+1, len(p.history), strings.Join(p.history[from:], "\n  "))
}

func (p *propLab) run(steps int) {
	for i := range steps {
		p.step()
		if (i+1)%propCheckEvery == 0 || i == steps-1 {
			p.packetCheck()
		}
	}
}

// step takes one random step and checks the property after it.
func (p *propLab) step() {
	var down, up []string
	for _, tap := range p.taps() {
		if p.up[tap] {
			up = append(up, tap)
		} else {
			down = append(down, tap)
		}
	}
	due := p.applyIn == 0
	if p.applyIn >= 0 {
		p.applyIn--
	}
	if due {
		p.apply()
		return
	}
	// Weighted choice of the next step.
	kinds := []struct {
		name   string
		weight int
		ok     bool
	}{
		{"ifup", 34, len(down) > 0},
		{"ifdown", 20, len(up) > 0},
		{"ifdown-absent", 3, len(down) > 0},
		{"group", 12, true},
		{"vm", 12, true},
		{"apply", 6, true},
		{"reset", 3, len(up) > 0},
	}
	total := 0
	for _, k := range kinds {
		if k.ok {
			total += k.weight
		}
	}
	n := p.r.Intn(total)
	kind := ""
	for _, k := range kinds {
		if !k.ok {
			continue
		}
		if n < k.weight {
			kind = k.name
			break
		}
		n -= k.weight
	}
	switch kind {
	case "ifup":
		p.ifup(pick(p.r, down...))
	case "ifdown":
		p.ifdown(pick(p.r, up...), true)
	case "ifdown-absent":
		p.ifdown(pick(p.r, down...), false)
	case "group":
		p.editGroup()
	case "vm":
		p.editVM()
	case "apply":
		p.apply()
	case "reset":
		p.reset()
	}
}

// record notes a step in the history and counts it.
func (p *propLab) record(kind, what string) {
	p.counts[kind]++
	p.history = append(p.history, fmt.Sprintf("%d: %s", len(p.history)+1, what))
}

// command runs "vmfw OP TAP" or, as QEMU does, the vmfw-ifup program
// under the name of the operation, and fails the run unless it exits 0.
func (p *propLab) command(op, tap string) {
	p.t.Helper()
	argv := append([]string{"env"}, p.env...)
	if p.r.Intn(2) == 0 {
		argv = append(append(append(argv, testbin.VMFW), labtest.BackendArgs(p.backend)...), "--config-dir", p.config, op, tap)
		p.history[len(p.history)-1] += " by vmfw " + op
	} else {
		argv = append(argv, "VMFW_CONFIG_DIR="+p.config, labtest.BackendEnv(p.backend), filepath.Join(testbin.Dir, "vmfw-"+op), tap)
		p.history[len(p.history)-1] += " by vmfw-" + op
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := p.ns.Exec(ctx, argv...); err != nil {
		p.fail("step %d: %s %s failed: %v\n%s", len(p.history), op, tap, err, out)
	}
}

func (p *propLab) ifup(tap string) {
	v, i := p.vmOf(tap)
	n := v.nics[i]
	p.record("ifup", fmt.Sprintf("ifup %s (%s)", tap, shape(v, n)))
	// The tap exists before its script runs, as QEMU creates it.
	if v.role != "" {
		var addrs []string
		if n.useV4 {
			addrs = append(addrs, n.v4+"/24")
		}
		if n.useV6 {
			addrs = append(addrs, n.v6+"/64")
		}
		ns, err := p.lab.AddVM(tap, n.mac, addrs...)
		if err != nil {
			p.fail("adding %s: %v", tap, err)
		}
		p.guests[tap] = ns
	} else {
		p.exec("ip", "tuntap", "add", "dev", tap, "mode", "tap")
	}
	p.command("ifup", tap)
	p.up[tap] = true
	p.check(tap, "")
	if v.role != "" {
		if err := p.lab.WaitForwarding(tap); err != nil {
			p.fail("%v", err)
		}
		if v.role == "server" || v.role == "outsider" {
			for _, a := range []string{n.v4, n.v6} {
				if _, err := labnet.ServeTCP(p.guests[tap], labnet.HostPort(a, propPort)); err != nil {
					p.fail("%v", err)
				}
			}
		}
	}
}

// ifdown takes tap down as QEMU's downscript does, then removes it as QEMU
// does when it exits; with present false the tap never came up (an ifdown
// of a tap that does not exist, or the first command on an empty host).
func (p *propLab) ifdown(tap string, present bool) {
	v, i := p.vmOf(tap)
	what := "ifdown " + tap
	if !present {
		what += ", which does not exist"
	}
	p.record("ifdown", fmt.Sprintf("%s (%s)", what, shape(v, v.nics[i])))
	p.command("ifdown", tap)
	if present {
		p.removeTap(tap)
	}
	p.check("", tap)
}

func (p *propLab) removeTap(tap string) {
	if ns := p.guests[tap]; ns != nil {
		if err := p.lab.Remove(ns); err != nil {
			p.fail("removing %s: %v", tap, err)
		}
		delete(p.guests, tap)
	} else {
		p.exec("ip", "link", "del", tap)
	}
	delete(p.up, tap)
}

// editGroup changes one of the random groups: a rule added, removed,
// replaced, or its peer group added or taken away.
func (p *propLab) editGroup() {
	var edit []*propGroup
	for _, g := range p.groups {
		if !g.fixed {
			edit = append(edit, g)
		}
	}
	g := pick(p.r, edit...)
	dir, rules := "in", &g.in
	if p.r.Intn(3) == 0 {
		dir, rules = "out", &g.out
	}
	var what string
	switch n := len(*rules); {
	case n == 0 || p.r.Intn(4) == 0:
		at := p.r.Intn(n + 1)
		*rules = slices.Insert(*rules, at, p.randomRule(dir))
		what = fmt.Sprintf("adds %s rule %d", dir, at+1)
	case p.r.Intn(3) == 0:
		at := p.r.Intn(n)
		*rules = slices.Delete(*rules, at, at+1)
		what = fmt.Sprintf("removes %s rule %d", dir, at+1)
	case p.r.Intn(2) == 0:
		at := p.r.Intn(n)
		(*rules)[at] = p.randomRule(dir)
		what = fmt.Sprintf("replaces %s rule %d", dir, at+1)
	default:
		at := p.r.Intn(n)
		key := "source_group"
		if dir == "out" {
			key = "dest_group"
		}
		rule := slices.DeleteFunc(slices.Clone((*rules)[at]), func(l string) bool { return strings.HasPrefix(l, key+" ") })
		if len(rule) == len((*rules)[at]) {
			rule = append(rule, fmt.Sprintf("%s = %q", key, p.groups[p.r.Intn(len(p.groups))].name))
			what = fmt.Sprintf("gives %s rule %d a %s", dir, at+1, key)
		} else {
			what = fmt.Sprintf("takes the %s of %s rule %d", key, dir, at+1)
		}
		(*rules)[at] = rule
	}
	p.record("group edit", fmt.Sprintf("group %s %s", g.name, what))
	p.write("groups/"+g.name+".toml", g.file())
	p.edited = true
	p.scheduleApply()
	p.check("", "")
}

// editVM changes the shape of one of the VMs the test edits: one
// interface's addresses, anti-spoofing, MAC or groups, or the VM's
// settings.
func (p *propLab) editVM() {
	var edit []*propVM
	for _, v := range p.vms {
		if v.role == "" {
			edit = append(edit, v)
		}
	}
	v := pick(p.r, edit...)
	var what string
	if p.r.Intn(4) == 0 {
		p.randomizeVM(v)
		what = "every setting"
	} else {
		i := p.r.Intn(len(v.nics))
		p.randomizeNIC(v.nics[i])
		what = fmt.Sprintf("net%d: %s", i, shape(v, v.nics[i]))
	}
	p.record("vm edit", fmt.Sprintf("vms/%d.toml %s", v.id, what))
	p.write(fmt.Sprintf("vms/%d.toml", v.id), v.file())
	p.edited = true
	p.scheduleApply()
	p.check("", "")
}

// scheduleApply makes an apply follow an edit within a few steps, unless
// one is due already.
func (p *propLab) scheduleApply() {
	if p.applyIn < 0 {
		p.applyIn = p.r.Intn(4)
	}
}

func (p *propLab) apply() {
	p.record("apply", "apply")
	p.vmfw("apply")
	p.edited = false
	p.check("", "")
}

// reset empties the host: vmfw flush, every tap gone. The next command
// starts again from a kernel without any of vmfw's objects.
func (p *propLab) reset() {
	p.record("reset", "flush, and every tap removed")
	if out, errOut, code := p.hv.run("flush"); code != 0 {
		p.fail("vmfw flush: exit %d\n%s%s", code, out, errOut)
	}
	for tap := range p.up {
		p.removeTap(tap)
	}
	if err := p.vmfwFree(); err != nil {
		p.fail("after flush: %v", err)
	}
	// Nothing is installed that an edit could have left stale.
	p.edited = false
}

// check verifies the property after a step: the dry run has nothing to
// do (unless an edit is still to be applied), a tap brought up is in sync
// and on its bridge, a tap taken down has no chains left.
func (p *propLab) check(upTap, downTap string) {
	p.t.Helper()
	out := p.vmfw("apply", "--dry-run")
	switch {
	case strings.HasPrefix(out, "# no changes"):
		p.edited = false
	case !p.edited:
		p.fail("after step %d the kernel differs from what apply writes; apply would change:\n%s", len(p.history), out)
	}
	if upTap != "" {
		if st := p.tapState(upTap); st != "in-sync" {
			p.fail("after step %d %s is %s, want in-sync", len(p.history), upTap, st)
		}
		if link := p.exec("ip", "-o", "link", "show", "dev", upTap); !strings.Contains(link, " master vmbr0 ") {
			p.fail("after step %d %s is not on vmbr0: %s", len(p.history), upTap, link)
		}
	}
	if downTap != "" {
		if st := p.tapState(downTap); st != "" {
			p.fail("after step %d %s is still known (%s)", len(p.history), downTap, st)
		}
		for _, v6 := range []bool{false, true} {
			if strings.Contains(p.save(v6), ":"+downTap+"-") {
				p.fail("after step %d chains of %s remain (v6=%v)", len(p.history), downTap, v6)
			}
		}
		if p.nft() {
			// The nftables backend keeps an interface as elements keyed
			// by its name: none may remain.
			for _, family := range []string{"bridge", "inet"} {
				if tbl := p.nftTable(family); strings.Contains(tbl, strconv.Quote(downTap)) {
					p.fail("after step %d elements of %s remain in table %s vmfw:\n%s", len(p.history), downTap, family, tbl)
				}
			}
		}
	}
}

// tapState returns the state vmfw status reports for tap, "" when it
// reports none (no chains and no tap).
func (p *propLab) tapState(tap string) string {
	var st struct {
		Taps []struct {
			Tap     string   `json:"tap"`
			State   string   `json:"state"`
			Drifted []string `json:"drifted"`
		} `json:"taps"`
	}
	out := p.vmfw("status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		p.fail("vmfw status -o json: %v\n%s", err, out)
	}
	for _, s := range st.Taps {
		if s.Tap == tap {
			if len(s.Drifted) > 0 {
				return s.State + " " + strings.Join(s.Drifted, " ")
			}
			return s.State
		}
	}
	return ""
}

// packetCheck brings the packet-check VMs up where they are down, with
// every pending edit applied, and proves the state with real packets.
func (p *propLab) packetCheck() {
	if p.edited {
		p.apply()
	}
	for _, v := range p.vms {
		if v.role != "" && !p.up[v.tap(0)] {
			p.ifup(v.tap(0))
		}
	}
	p.packetChecks++
	p.history = append(p.history, fmt.Sprintf("%d: packets", len(p.history)+1))
	ns := func(id int) *labnet.NS { return p.guests[fmt.Sprintf("tap%di0", id)] }
	server, m4, m6, out := ns(150), ns(151), ns(152), ns(153)
	// The bridge learns where each is (see labtest.Announce): the taps of the
	// other VMs may reject what they get of a flooded frame.
	for id, g := range map[int]*labnet.NS{150: server, 151: m4, 152: m6, 153: out} {
		labtest.Announce(p.t, g, propMAC(id, 0))
	}
	expectAll(p.t, []probe{
		{"IPv4-only member of probe to the server", m4, propServer4, propPort, true},
		{"IPv6-only member of probe to the server", m6, propServer6, propPort, true},
		{"outsider to the server", out, propServer4, propPort, false},
		{"outsider to the server, IPv6", out, propServer6, propPort, false},
		{"hypervisor to the server", p.ns, propServer4, propPort, false},
		{"IPv4-only member to the outsider, which admits nothing", m4, propOutside4, propPort, false},
		{"server to the outsider, IPv6", server, propOutside6, propPort, false},
	})
	if p.t.Failed() {
		p.fail("packets after step %d do not do what the configuration says", len(p.history))
	}
}

// shape describes an interface for the history.
func shape(v *propVM, n *propNIC) string {
	var s []string
	switch {
	case n.useV4 && n.useV6:
		s = append(s, "IPv4 and IPv6")
	case n.useV4:
		s = append(s, "IPv4 only")
	case n.useV6:
		s = append(s, "IPv6 only")
	default:
		s = append(s, "no ips")
	}
	if !n.antispoof {
		s = append(s, "antispoof off")
	}
	if !v.enable {
		s = append(s, "VM disabled")
	}
	if v.dropInvalid {
		s = append(s, "drop_invalid")
	}
	if n.noNDP {
		s = append(s, "ndp off")
	}
	if n.noMAC {
		s = append(s, "no mac")
	}
	if len(n.groups) > 0 {
		s = append(s, "groups "+strings.Join(n.groups, ","))
	}
	return strings.Join(s, ", ")
}
