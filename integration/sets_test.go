package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
)

// partnersSet nests an entry, an except inside it and an entry inside
// that, in both families: 192.0.2.130 and 2001:db8::a10 match by the
// outer entry, 192.0.2.195 and 2001:db8::ac0 fall in the except, and
// 192.0.2.201 and 2001:db8::a85 match again by the innermost entry.
const partnersSet = `description = "partners"
entries = [
  "192.0.2.128/25",
  "192.0.2.200/29",
  "2001:db8::a00/120",
  "2001:db8::a80/124",
]
except = [
  "192.0.2.192/26",
  "2001:db8::a80/121",
]
`

// guardedGroup lets the set's addresses in on 22 and keeps the VM from
// reaching them on 80.
const guardedGroup = `
[[in]]
proto = "tcp"
dport = "22"
source_set = "partners"

[[out]]
proto = "tcp"
dport = "80"
dest_set = "partners"
action = "drop"
`

// setHost is an external host of the address set test and whether its
// addresses match the set.
type setHost struct {
	name   string
	v4, v6 string
	inSet  bool
	ns     *labnet.NS
}

// applyReport is the part of apply -o json and check -o json the tests
// read.
type applyReport struct {
	Changed bool `json:"changed"`
	Chains  map[string]struct {
		Created   []string `json:"created"`
		Rewritten []string `json:"rewritten"`
		Deleted   []string `json:"deleted"`
	} `json:"chains"`
	Sets     setChanges `json:"sets"`
	FlowsCut int        `json:"flows_cut"`
}

// setChanges is the "sets" part of apply's JSON report: the sets it
// created and the members it added and removed, by set.
type setChanges struct {
	Created []string            `json:"created"`
	Added   map[string][]string `json:"added"`
	Removed map[string][]string `json:"removed"`
}

func parseApply(t *testing.T, out string) applyReport {
	t.Helper()
	var r applyReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("decoding %q: %v", out, err)
	}
	return r
}

// noChains fails unless the report changes no chain in any table.
func noChains(t *testing.T, what string, r applyReport) {
	t.Helper()
	for table, c := range r.Chains {
		if len(c.Created)+len(c.Rewritten)+len(c.Deleted) > 0 {
			t.Errorf("%s changed chains in %s: %+v", what, table, c)
		}
	}
}

// TestAddressSets: source_set and dest_set admit and refuse by the most
// specific prefix of a set (entry, except inside it, entry inside that),
// in IPv4 and IPv6, with real TCP, from an empty kernel whose first VM is
// IPv4-only. An edit of the set, by vmfw apply and by a running agent,
// changes set members only (no chain is rewritten), check -o json says
// which members it would add and remove, a member turning from except to
// entry is rewritten in place, and the connections the edit denies are
// cut. status lists the set with its sizes, and trace names the set and
// the entry that decided.
func TestAddressSets(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		if err := os.MkdirAll(filepath.Join(h.config, "sets"), 0o755); err != nil {
			t.Fatal(err)
		}
		h.write("sets/partners.toml", partnersSet)
		h.write("groups/guarded.toml", guardedGroup)
		vmV4Only := "[net0]\nbridge = \"vmbr0\"\nmac = \"02:00:00:00:04:41\"\nips = [\"192.0.2.41\"]\ngroups = [\"guarded\"]\n"
		h.write("vms/241.toml", vmV4Only)
		vm := h.vm("tap241i0", "02:00:00:00:04:41", "192.0.2.41", "2001:db8::41")
		hosts := []*setHost{
			{name: "outer entry", v4: "192.0.2.130", v6: "2001:db8::a10", inSet: true},
			{name: "except", v4: "192.0.2.195", v6: "2001:db8::ac0"},
			{name: "entry inside the except", v4: "192.0.2.201", v6: "2001:db8::a85", inSet: true},
			{name: "outside", v4: "192.0.2.60", v6: "2001:db8::60"},
		}
		for i, x := range hosts {
			ns, err := h.lab.AddExternal("uplink"+string(rune('0'+i)), "", x.v4+"/24", x.v6+"/64")
			if err != nil {
				t.Fatal(err)
			}
			x.ns = ns
			h.serve(ns, x.v4, 80)
			h.serve(ns, x.v6, 80)
		}
		h.serve(vm, "192.0.2.41", 22)
		h.serve(vm, "2001:db8::41", 22)

		// An empty kernel, an IPv4-only VM: both families' sets and rules
		// are installed whatever families the VM and the set have.
		h.vmfw("ifup", "tap241i0")
		probes := func(v6 bool, when string, inSet func(*setHost) bool) []probe {
			var out []probe
			for _, x := range hosts {
				addr, vmAddr := x.v4, "192.0.2.41"
				if v6 {
					addr, vmAddr = x.v6, "2001:db8::41"
				}
				out = append(out,
					probe{when + ": in rule, source_set, from " + x.name + " " + addr, x.ns, vmAddr, 22, inSet(x)},
					probe{when + ": out rule, dest_set, to " + x.name + " " + addr, vm, addr, 80, !inSet(x)})
			}
			return out
		}
		byConfig := func(x *setHost) bool { return x.inSet }
		expectAll(t, probes(false, "IPv4", byConfig))
		if h.nft() {
			// Interval sets of the effective prefixes, the excepts
			// taken out (docs/nftables.md, "Address sets").
			for set, want := range map[string][]string{
				"as-partners-v4": {"192.0.2.128/26", "192.0.2.200/29"},
				"as-partners-v6": {"2001:db8::a00/121", "2001:db8::a80/124"},
			} {
				if got := h.nftPrefixes(set); !slices.Equal(got, want) {
					t.Errorf("set %s holds %v, want %v", set, got, want)
				}
			}
		} else {
			for _, want := range []string{"add as-partners-v4 192.0.2.192/26 nomatch", "add as-partners-v4 192.0.2.200/29", "add as-partners-v6 2001:db8::a80/121 nomatch", "create as-partners-v6 hash:net family inet6"} {
				if !strings.Contains(h.ipsets(), want) {
					t.Errorf("ipset save lacks %q:\n%s", want, h.ipsets())
				}
			}
		}
		h.write("vms/241.toml", strings.Replace(vmV4Only, `ips = ["192.0.2.41"]`, `ips = ["192.0.2.41", "2001:db8::41"]`, 1))
		h.vmfw("apply")
		expectAll(t, probes(true, "IPv6", byConfig))

		// trace names the set and the entry that decided, on both sides.
		reps := h.traceBatch([]map[string]any{
			{"from": "192.0.2.201", "to": "241", "proto": "tcp", "dport": 22},
			{"from": "2001:db8::ac0", "to": "241", "proto": "tcp", "dport": 22},
		})
		for i, want := range []string{"accept", "drop"} {
			if reps[i].Verdict != want || reps[i].Kernel == nil || reps[i].Kernel.Verdict != want || len(reps[i].Drift) > 0 {
				t.Errorf("trace %d: verdict %s (kernel %+v, drift %v), want %s from both sides", i, reps[i].Verdict, reps[i].Kernel, reps[i].Drift, want)
			}
		}
		text := h.vmfw("trace", "--from", "192.0.2.201", "--to", "241", "--proto", "tcp", "--dport", "22")
		if !strings.Contains(text, "set partners: entry 192.0.2.200/29 ("+filepath.Join(h.config, "sets/partners.toml")+":4)") {
			t.Errorf("trace does not name the set and the entry that decided:\n%s", text)
		}

		st := h.vmfw("status", "-o", "json")
		var status struct {
			Sets []struct {
				Name    string         `json:"name"`
				Entries int            `json:"entries"`
				Except  int            `json:"except"`
				State   string         `json:"state"`
				Kernel  map[string]int `json:"kernel_members"`
			} `json:"sets"`
		}
		if err := json.Unmarshal([]byte(st), &status); err != nil {
			t.Fatal(err)
		}
		// The kernel's sizes: ipset holds entries and excepts, nftables
		// the effective prefixes.
		kernelSize := 3
		if h.nft() {
			kernelSize = 2
		}
		if len(status.Sets) != 1 || status.Sets[0].Name != "partners" || status.Sets[0].Entries != 4 || status.Sets[0].Except != 2 ||
			status.Sets[0].State != "in-sync" || status.Sets[0].Kernel["ipv4"] != kernelSize || status.Sets[0].Kernel["ipv6"] != kernelSize {
			t.Errorf("status lists the sets as %+v", status.Sets)
		}

		// An edit through vmfw apply: the innermost IPv4 entry goes, so
		// 192.0.2.201 falls in the except; the IPv6 except becomes an
		// entry, so 2001:db8::ac0 matches.
		edited := strings.Replace(strings.Replace(partnersSet, "  \"192.0.2.200/29\",\n", "", 1),
			"  \"2001:db8::a80/124\",\n]\nexcept = [\n  \"192.0.2.192/26\",\n  \"2001:db8::a80/121\",\n]",
			"  \"2001:db8::a80/124\",\n  \"2001:db8::a80/121\",\n]\nexcept = [\n  \"192.0.2.192/26\",\n]", 1)
		afterEdit := func(x *setHost, v6 bool) bool {
			switch {
			case x.name == "entry inside the except" && !v6:
				return false
			case x.name == "except" && v6:
				return true
			}
			return x.inSet
		}
		before := h.chainsOnly()
		cut := startStream(t, "from 192.0.2.201, which the edit removes", hosts[2].ns, "192.0.2.41", 22)
		kept := startStream(t, "from 192.0.2.130, still in the set", hosts[0].ns, "192.0.2.41", 22)
		h.write("sets/partners.toml", edited)
		check := parseApply(t, h.vmfw("check", "-o", "json"))
		wantAdded := map[string][]string{"as-partners-v6": {"2001:db8::a80/121"}}
		wantRemoved := map[string][]string{"as-partners-v4": {"192.0.2.200/29"}, "as-partners-v6": {"2001:db8::a80/121 nomatch"}}
		if h.nft() {
			// The effective prefixes that come and go: the IPv6 except
			// turned entry joins the two halves of 2001:db8::a00/120.
			wantAdded = map[string][]string{"bridge/as-partners-v6": {"2001:db8::a00/120"}}
			wantRemoved = map[string][]string{"bridge/as-partners-v4": {"192.0.2.200/29"}, "bridge/as-partners-v6": {"2001:db8::a00/121", "2001:db8::a80/124"}}
		}
		for what, r := range map[string]applyReport{"check -o json": check} {
			if !r.Changed || !mapsEqual(r.Sets.Added, wantAdded) || !mapsEqual(r.Sets.Removed, wantRemoved) {
				t.Errorf("%s reports sets %+v, want added %v removed %v", what, r.Sets, wantAdded, wantRemoved)
			}
			noChains(t, what, r)
		}
		applied := parseApply(t, h.vmfw("apply", "-o", "json"))
		if !mapsEqual(applied.Sets.Added, wantAdded) || !mapsEqual(applied.Sets.Removed, wantRemoved) || applied.FlowsCut < 1 {
			t.Errorf("apply -o json reports sets %+v and %d flows cut, want added %v removed %v and the flow from 192.0.2.201 cut", applied.Sets, applied.FlowsCut, wantAdded, wantRemoved)
		}
		noChains(t, "the set edit", applied)
		if after := h.chainsOnly(); after != before {
			t.Errorf("the set edit rewrote chains:\n%s\nthen\n%s", before, after)
		}
		checkStreams(t, "set edit by apply", []namedStream{cut}, []namedStream{kept})
		var edits []probe
		for _, v6 := range []bool{false, true} {
			edits = append(edits, probes(v6, "after the edit", func(x *setHost) bool { return afterEdit(x, v6) })...)
		}
		expectAll(t, edits)
		if out := parseApply(t, h.vmfw("apply", "-o", "json")); out.Changed {
			t.Errorf("an apply after the edit still changes %+v", out)
		}

		// The same edit, undone, through a running agent: one file
		// renamed over the set, enforced without a command and without a
		// chain rewritten.
		agent := startAgent(t, h)
		writeAtomically(t, filepath.Join(h.config, "sets/partners.toml"), partnersSet)
		if !eventually(func() bool { return tcp(t, hosts[2].ns, "192.0.2.41", 22) == labnet.Connected }) {
			t.Fatalf("the agent did not enforce the set edit:\n%s", agent.Output())
		}
		awaitOutput(t, agent, "sets=[partners]", "the agent did not apply the edit as a set edit")
		if after := h.chainsOnly(); after != before {
			t.Errorf("the agent's set edit rewrote chains:\n%s\nthen\n%s", before, after)
		}
		expectAll(t, append(probes(false, "after the agent's edit", byConfig), probes(true, "after the agent's edit", byConfig)...))
		stop(t, agent)
	})
}

func mapsEqual(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

// TestAntispoofMAC: with antispoof = "mac" a frame must carry the VM's
// MAC, and ARP its MAC as sender hardware address; the VM may send from
// any address, IPv4 and IPv6, and claim any address in ARP; nothing else
// of anti-spoofing applies (a DHCP offer passes, as with antispoof =
// false).
func TestAntispoofMAC(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("vms/251.toml", vmFile("02:00:00:00:05:51", "192.0.2.51", "2001:db8::51")+"antispoof = \"mac\"\n")
		vm := h.vm("tap251i0", "02:00:00:00:05:51", "192.0.2.51", "2001:db8::51")
		ext := h.external("02:00:00:00:05:99", "192.0.2.200/24", "2001:db8::200/64")
		h.vmfw("ifup", "tap251i0")

		own := mustMAC(t, "02:00:00:00:05:51")
		other := mustMAC(t, "02:00:00:00:05:66")
		extMAC := mustMAC(t, "02:00:00:00:05:99")
		expectFrames(t, ext, []sentFrame{
			{"own MAC, own IPv4", vm, udpFrame(own, extMAC, "192.0.2.51", "192.0.2.200"), true},
			{"own MAC, a foreign IPv4 source", vm, udpFrame(own, extMAC, "192.0.2.99", "192.0.2.200"), true},
			{"own MAC, a foreign IPv6 source", vm, udpFrame(own, extMAC, "2001:db8::99", "2001:db8::200"), true},
			{"spoofed MAC, own IPv4", vm, udpFrame(other, extMAC, "192.0.2.51", "192.0.2.200"), false},
			{"spoofed MAC, own IPv6", vm, udpFrame(other, extMAC, "2001:db8::51", "2001:db8::200"), false},
			{"ARP claiming a foreign address with its own MAC", vm, func(m []byte) []byte {
				return labnet.ARPRequestFrame(own, netip.MustParseAddr("192.0.2.99"), netip.MustParseAddr("192.0.2.200"), m)
			}, true},
			{"ARP with another sender hardware address", vm, func(m []byte) []byte {
				return labnet.ARPRequestFrameFrom(own, other, netip.MustParseAddr("192.0.2.51"), netip.MustParseAddr("192.0.2.200"), m)
			}, false},
			{"DHCP server offer (no guard beyond the MAC)", vm, func(m []byte) []byte {
				return labnet.DHCPOfferFrame(own, netip.MustParseAddr("192.0.2.51"), extMAC, netip.MustParseAddr("192.0.2.77"), m)
			}, true},
		})
		if r, err := labnet.Ping(context.Background(), vm, "2001:db8::200", 2*time.Second); err != nil || r != labnet.Connected {
			t.Errorf("IPv6 ping from the VM: %v %v", r, err)
		}
		// status and check say that routed traffic is attributed by the
		// listed addresses only, as for antispoof = false; the nftables
		// backend attributes it by port, so every enabled interface's
		// routed traffic is "filtered" (docs/nftables.md).
		routed := "listed-only"
		if h.nft() {
			routed = "filtered"
		}
		if st := h.vmfw("status"); !strings.Contains(st, routed) {
			t.Errorf("status does not say routed traffic is %s:\n%s", routed, st)
		}
	})
}

// TestLogLevels: a rule and a policy with a log level log at that level
// (the LOG rule carries it and counts the packets it logged); log = true
// logs at the LOG target's default, written without a level as always.
func TestLogLevels(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("groups/logged.toml", `
[[in]]
proto = "tcp"
dport = "22"
log = "info"

[[in]]
proto = "tcp"
dport = "80"
log = true
`)
		h.write("vms/261.toml", "log_in = \"debug\"\n"+vmFile("02:00:00:00:06:61", "192.0.2.61", "", "logged"))
		vm := h.vm("tap261i0", "02:00:00:00:06:61", "192.0.2.61", "")
		ext := h.external("", "192.0.2.200/24")
		h.vmfw("ifup", "tap261i0")
		h.serve(vm, "192.0.2.61", 22, 80)
		expectAll(t, []probe{
			{"logged at info", ext, "192.0.2.61", 22, true},
			{"logged at warning", ext, "192.0.2.61", 80, true},
			{"dropped by policy, logged at debug", ext, "192.0.2.61", 8080, false},
		})
		if h.nft() {
			// nft prints the level by name; the policy's log rules are
			// shared, one per level in use, and the interface is in the
			// set of its level (docs/nftables.md, "Logging").
			if n := h.nftCounter("sg-logged-in", "dport 22", "level info"); n <= 0 {
				t.Errorf("the rule at info: its log rule counted %d packets\n%s", n, h.nftTable("bridge"))
			}
			if n := h.nftCounter("sg-logged-in", "dport 80", "log prefix"); n <= 0 {
				t.Errorf("log = true: its log rule counted %d packets", n)
			}
			if n := h.nftCounter("policy-in", "@log-in-debug", `log prefix "vmfw policy-in DROP " level debug`); n <= 0 {
				t.Errorf("the policy at debug: its log rule counted %d packets\n%s", n, h.nftTable("bridge"))
			}
			if n := h.nftCounter("policy-in", "@log-in ", `log prefix "vmfw policy-in DROP "`); n != 0 {
				t.Errorf("the policy's rule at warning counted %d packets, want none: the interface logs at debug", n)
			}
			if !slices.Equal(h.nftElements("bridge", "log-in-debug"), []string{"tap261i0"}) || len(h.nftElements("bridge", "log-in")) > 0 {
				t.Errorf("log-in-debug holds %v and log-in %v, want the interface in the first alone", h.nftElements("bridge", "log-in-debug"), h.nftElements("bridge", "log-in"))
			}
			if strings.Contains(h.nftTable("bridge"), "dport 80 limit rate 10/second burst 20 packets counter log prefix \"vmfw sg-logged-in ACCEPT \" level") {
				t.Errorf("log = true wrote a level:\n%s", h.nftTable("bridge"))
			}
			return
		}
		// iptables-save prints a level other than warning as its number.
		for _, c := range []struct {
			what      string
			fragments []string
		}{
			{"the rule at info (6)", []string{"-A sg-logged-in", "--dport 22", "-j LOG", "--log-level 6"}},
			{"the policy at debug (7)", []string{"-A tap261i0-in", "-j LOG", `--log-prefix "vmfw tap261i0-in DROP "`, "--log-level 7"}},
		} {
			if n := h.iptablesCounter(false, c.fragments...); n <= 0 {
				t.Errorf("%s: LOG rule counted %d packets\n%s", c.what, n, h.save(false))
			}
		}
		if n := h.iptablesCounter(false, "-A sg-logged-in", "--dport 80", "-j LOG"); n <= 0 {
			t.Errorf("log = true: LOG rule counted %d packets", n)
		}
		if strings.Contains(h.save(false), "--dport 80 -m limit --limit 10/second --limit-burst 20 -j LOG --log-prefix \"vmfw sg-logged-in ACCEPT \" --log-level") {
			t.Errorf("log = true wrote a level:\n%s", h.save(false))
		}
	})
}

// bigAllowedSet renders an address set of 20,000 entries: 192.0.2.128/25,
// the extra lines given, and IPv6 networks no probe comes from.
func bigAllowedSet(entries, except []string) string {
	var b strings.Builder
	b.WriteString("description = \"a big allow list\"\nentries = [\n  \"192.0.2.128/25\",\n")
	for _, e := range entries {
		fmt.Fprintf(&b, "  %q,\n", e)
	}
	for i := range 20000 - 1 - len(entries) {
		fmt.Fprintf(&b, "  \"2001:db8:%x:%x::/64\",\n", 0x100+i>>16, i&0xffff)
	}
	b.WriteString("]\nexcept = [\n")
	for _, x := range except {
		fmt.Fprintf(&b, "  %q,\n", x)
	}
	b.WriteString("]\n")
	return b.String()
}

// TestBigSetEditThroughAgent: a running agent enforces one-entry edits of
// a set of 20,000 entries, renamed into place as an editor writes them,
// with real TCP: an entry added admits its address, an except added
// refuses its address and cuts its established connection while another
// address's goes on. Each edit is planned from the set's configuration
// before and after (the agent's trace says so), changes no chain, and
// leaves nothing for apply --dry-run to plan.
func TestBigSetEditThroughAgent(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		if err := os.MkdirAll(filepath.Join(h.config, "sets"), 0o755); err != nil {
			t.Fatal(err)
		}
		h.write("sets/allowed.toml", bigAllowedSet(nil, nil))
		h.write("groups/guarded.toml", "[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_set = \"allowed\"\n")
		h.write("vms/271.toml", "policy_in = \"drop\"\n\n[net0]\nbridge = \"vmbr0\"\nmac = \"02:00:00:00:07:71\"\nips = [\"192.0.2.71\"]\ngroups = [\"guarded\"]\n")
		vm := h.vm("tap271i0", "02:00:00:00:07:71", "192.0.2.71", "")
		excepted := h.external("", "192.0.2.130/24")
		added, err := h.lab.AddExternal("uplink1", "", "192.0.2.60/24")
		if err != nil {
			t.Fatal(err)
		}
		h.serve(vm, "192.0.2.71", 22)
		h.vmfw("ifup", "tap271i0")
		expectAll(t, []probe{
			{"before the edits, from an entry", excepted, "192.0.2.71", 22, true},
			{"before the edits, from no entry", added, "192.0.2.71", 22, false},
		})

		h.env = []string{"VMFW_RUN_DIR=" + t.TempDir(), "VMFW_TRACE=1"}
		agent := startAgent(t, h)
		before := h.chainsOnly()
		path := filepath.Join(h.config, "sets/allowed.toml")
		edit := func(what, text string, enforced func() bool) {
			t.Helper()
			seen := strings.Count(agent.Output(), "sets=[allowed]")
			writeAtomically(t, path, text)
			if !eventually(enforced) {
				t.Fatalf("%s: the agent did not enforce it:\n%s", what, agent.Output())
			}
			if !eventually(func() bool { return strings.Count(agent.Output(), "sets=[allowed]") > seen }) {
				t.Fatalf("%s: the agent did not apply it as a set edit:\n%s", what, agent.Output())
			}
			if got := strings.Count(agent.Output(), "plan the edit of address sets allowed from their configuration"); got <= seen {
				t.Errorf("%s: the agent did not plan it from the set's configuration:\n%s", what, agent.Output())
			}
			if r := parseApply(t, h.vmfw("apply", "--dry-run", "-o", "json")); r.Changed {
				t.Errorf("%s: apply --dry-run plans %+v", what, r)
			}
			if after := h.chainsOnly(); after != before {
				t.Errorf("%s: chains rewritten:\n%s\nthen\n%s", what, before, after)
			}
		}

		edit("an entry added", bigAllowedSet([]string{"192.0.2.60"}, nil), func() bool {
			return tcp(t, added, "192.0.2.71", 22) == labnet.Connected
		})
		expectAll(t, []probe{{"after the entry, from the entry before", excepted, "192.0.2.71", 22, true}})

		cut := startStream(t, "from 192.0.2.130, which the except takes out", excepted, "192.0.2.71", 22)
		kept := startStream(t, "from 192.0.2.60, still an entry", added, "192.0.2.71", 22)
		edit("an except added", bigAllowedSet([]string{"192.0.2.60"}, []string{"192.0.2.130"}), func() bool {
			return tcp(t, excepted, "192.0.2.71", 22) != labnet.Connected
		})
		checkStreams(t, "the except through the agent", []namedStream{cut}, []namedStream{kept})
		expectAll(t, []probe{
			{"after the except, from the excepted address", excepted, "192.0.2.71", 22, false},
			{"after the except, from the added entry", added, "192.0.2.71", 22, true},
		})
		stop(t, agent)
	})
}
