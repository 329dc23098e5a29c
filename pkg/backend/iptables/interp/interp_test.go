package interp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/config"
)

// tcpPacket is a bridged TCP SYN from one VM port to another, the packet
// the rule tests below vary one field of at a time.
func tcpPacket() *packet {
	return &packet{
		proto: config.ProtoTCP, src: netip.MustParseAddr("192.0.2.101"), dst: netip.MustParseAddr("192.0.2.102"),
		sport: 40000, dport: 22, srcMAC: net.HardwareAddr{2, 0, 0, 0, 1, 1},
		physIn: "tap101i0", physOut: "tap102i0", bridged: true, state: "NEW",
	}
}

// TestRuleErrors: a rule with an option the interpreter does not know, or
// an option it knows with arguments it cannot read, stops the walk with
// an error naming the rule and what is wrong; the configuration's answer
// then stands (docs/trace.md).
func TestRuleErrors(t *testing.T) {
	for _, c := range []struct{ rule, want string }{
		{"-m time --timestart 08:00 -j ACCEPT", "unknown match --timestart"},
		{"-p tcp -j ACCEPT --foo", "unknown target option --foo"},
		{"-j ACCEPT -p tcp", "unknown target option -p"},
		{"--set-xmark 0x1/0x1 -j MARK", "unknown match --set-xmark"},
		{"-p tcp !", "a trailing negation"},
		{"-p", "-p needs an argument"},
		{"-p tcp -j", "-j needs an argument"},
		{"-m", "-m needs an argument"},
		{"-m comment --comment", "--comment needs an argument"},
		{"-p bogus -j ACCEPT", `unknown protocol "bogus"`},
		{"-p 256 -j ACCEPT", `unknown protocol "256"`},
		{"-p tcp --dport 22:x -j ACCEPT", `bad port "22:x"`},
		{"-m mark --mark 0x1000/zz -j ACCEPT", `bad mark "0x1000/zz"`},
		{"-j MARK --set-xmark x", `bad mark "x"`},
		{"-p tcp --tcp-flags SYN,ACK SYN -j ACCEPT", "--tcp-flags SYN,ACK SYN: only the SYN test is known"},
		{"-p tcp --tcp-flags FIN,SYN,RST,ACK", "--tcp-flags needs an argument"},
		{"-m set --match-set sg-a-v4 any -j ACCEPT", "--match-set sg-a-v4 any: only src or dst is known"},
		{"-m set --match-set sg-a-v4", "--match-set needs an argument"},
		{"-p icmp --icmp-type bogus -j ACCEPT", `unknown --icmp-type "bogus"`},
		{`-m u32 --u32 "0x30" -j RETURN`, `u32 "0x30": no =`},
		{`-m u32 --u32 "0x30&zz=1" -j RETURN`, `u32 "0x30&zz=1": bad mask`},
		{"-j LOG --log-level", "--log-level needs an argument"},
		{"-j REJECT --reject-with", "--reject-with needs an argument"},
		{`-m comment --comment "open -j ACCEPT`, `unterminated quote in "-m comment --comment \"open -j ACCEPT"`},
	} {
		m := newMachine(map[layout.Chain][]string{"c": {c.rule}}, nil, nil, nil)
		_, by, err := m.run("c", tcpPacket())
		want := "cannot evaluate: rule 1 of c (" + c.rule + "): " + c.want
		if err == nil || err.Error() != want || !errors.Is(err, errOpaque) || by == nil || by.index != 1 {
			t.Errorf("%s: error %v (by %v), want %q", c.rule, err, by, want)
		}
	}
}

// TestRuleMatches runs one packet through one rule per match vmfw
// writes, in both spellings where the kernel prints it differently, and
// negated: each must match exactly the packets the kernel's would.
func TestRuleMatches(t *testing.T) {
	sets := map[string]map[netip.Addr]bool{"sg-a-v4": {netip.MustParseAddr("192.0.2.101"): true}}
	// An address set: entry, except inside it, entry inside that.
	nets := map[string]NetSet{"as-a-v4": {
		netip.MustParsePrefix("192.0.2.0/24"):    false,
		netip.MustParsePrefix("192.0.2.96/28"):   true,
		netip.MustParsePrefix("192.0.2.101/32"):  false,
		netip.MustParsePrefix("198.51.100.0/24"): true,
	}}
	srcIs := func(a string) func(*packet) { return func(p *packet) { p.src = netip.MustParseAddr(a) } }
	v6 := func(p *packet) {
		p.src, p.dst = netip.MustParseAddr("2001:db8::101"), netip.MustParseAddr("2001:db8::102")
	}
	for _, c := range []struct {
		rule   string
		change func(p *packet)
		want   bool
	}{
		{"-p tcp", nil, true},
		{"-p udp", nil, false},
		{"! -p udp", nil, true},
		{"-p all", func(p *packet) { p.proto = 47 }, true},
		{"-p 0", func(p *packet) { p.proto = 47 }, true},
		{"-p 6", nil, true},
		{"-s 192.0.2.101", nil, true},
		{"-s 192.0.2.0/24", nil, true},
		{"-d 192.0.2.101/32", nil, false},
		{"! -d 192.0.2.101/32", nil, true},
		{"--destination 192.0.2.102", nil, true},
		{"-p tcp -m tcp --dport 22", nil, true},
		{"-p tcp -m tcp --sport 22", nil, false},
		{"-p tcp -m tcp --sport 40000:40999", nil, true},
		{"-p tcp -m tcp ! --dport 1:1024", nil, false},
		{"-p tcp -m multiport --dports 80,443,20:30", nil, true},
		{"-p tcp -m multiport --sports 80,443", nil, false},
		{"-p tcp -m tcp --dport :21", nil, false},
		{"-p tcp -m tcp --dport 22:", nil, true},
		{"-p tcp --syn", nil, true},
		{"-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN", nil, true},
		{"-p icmp -m icmp --icmp-type 8", func(p *packet) { p.proto, p.icmpType = config.ProtoICMP, 8 }, true},
		{"-p icmp -m icmp --icmp-type echo-request", func(p *packet) { p.proto, p.icmpType = config.ProtoICMP, 8 }, true},
		{"-p icmp -m icmp --icmp-type 3/3", func(p *packet) { p.proto, p.icmpType, p.icmpCode = config.ProtoICMP, 3, 1 }, false},
		{"-p ipv6-icmp -m icmp6 --icmpv6-type 135", func(p *packet) { v6(p); p.proto, p.icmpType = config.ProtoICMPv6, 135 }, true},
		{"-p icmpv6 --icmpv6-type neighbour-solicitation", func(p *packet) { v6(p); p.proto, p.icmpType = config.ProtoICMPv6, 135 }, true},
		{"-m conntrack --ctstate INVALID,UNTRACKED", nil, false},
		{"-m state --state NEW", nil, true},
		{"-m mark --mark 0x1000/0x1000", nil, false},
		{"-m mark --mark 0x1000/0x1000", func(p *packet) { p.mark = 0x1001 }, true},
		{"-m mark ! --mark 0x1000/0x1000", nil, true},
		{"-m mark --mark 0x1", func(p *packet) { p.mark = 0x1001 }, false},
		{"-m physdev --physdev-in tap101i0", nil, true},
		{"-m physdev --physdev-in tap1+", nil, true},
		{"-m physdev --physdev-out tap1+", nil, true},
		{"-m physdev --physdev-out tap101i0", nil, false},
		{"-m physdev --physdev-in tap+", func(p *packet) { p.physIn = "" }, false},
		{"-m physdev --physdev-is-in", func(p *packet) { p.physIn = "" }, false},
		{"-m physdev --physdev-is-out", nil, true},
		{"-m physdev ! --physdev-is-bridged", nil, false},
		{"-m set --match-set sg-a-v4 src", nil, true},
		{"-m set --match-set sg-a-v4 dst", nil, false},
		{"-m set --match-set sg-missing src", nil, false},
		{"-m set --match-set as-a-v4 src", nil, true},
		{"-m set --match-set as-a-v4 src", srcIs("192.0.2.100"), false},
		{"-m set --match-set as-a-v4 src", srcIs("192.0.2.5"), true},
		{"-m set --match-set as-a-v4 src", srcIs("198.51.100.7"), false},
		{"-m set --match-set as-a-v4 src", srcIs("203.0.113.7"), false},
		{"-m set ! --match-set as-a-v4 src", srcIs("192.0.2.100"), true},
		{"-m mac --mac-source 02:00:00:00:01:01", nil, true},
		{"-m mac --mac-source 02:00:00:00:01:01", func(p *packet) { p.srcMAC = nil }, false},
		{"-m mac ! --mac-source 02:00:00:00:01:02", nil, true},
		{`-m u32 --u32 "0x6&0xff=0x6"`, nil, true},
		{`-m u32 --u32 "0x14=0x9c400016"`, nil, true},
		{`-m u32 --u32 "0x6&0xff=0x11:0x3a"`, nil, false},
		{`-m u32 --u32 "0x30&0xffc00000=0xfe800000"`, func(p *packet) {
			v6(p)
			p.proto, p.icmpType, p.ndTarget = config.ProtoICMPv6, 136, netip.MustParseAddr("fe80::1")
		}, true},
		{`-m u32 --u32 "100=1"`, nil, false},
		{`-m comment --comment "vmfw:0123456789 a note" -p tcp`, nil, true},
		{"-m limit --limit 10/second --limit-burst 20 -p udp", nil, false},
	} {
		p := tcpPacket()
		if c.change != nil {
			c.change(p)
		}
		m := newMachine(map[layout.Chain][]string{"c": {c.rule + " -j ACCEPT"}}, nil, sets, nets)
		o, _, err := m.run("c", p)
		if err != nil {
			t.Errorf("%s: %v", c.rule, err)
			continue
		}
		if got := o == accepted; got != c.want {
			t.Errorf("%s: matched %v, want %v", c.rule, got, c.want)
		}
		if used := m.sets.used["sg-a-v4"]; used != strings.Contains(c.rule, "sg-a-v4") {
			t.Errorf("%s: set looked up %v", c.rule, used)
		}
	}
}

// TestTargets checks what each target vmfw writes does once its rule
// matched: the verdicts end the walk, the mark targets change the packet
// and go on, the log targets only go on, and the rule's fingerprint and
// REJECT's answer are kept for the report.
func TestTargets(t *testing.T) {
	m := newMachine(map[layout.Chain][]string{
		"c": {
			`-j LOG --log-prefix "x " --log-level 4 --log-uid`,
			"-m limit --limit 10/second --limit-burst 20 -j NFLOG --nflog-group 5 --nflog-prefix x --nflog-threshold 1",
			"-j MARK --set-xmark 0x1000/0x1000",
			"-j MARK --set-mark 0x2",
			`-m comment --comment "vmfw:0123456789 a note" -j REJECT --reject-with icmp-port-unreachable`,
		},
	}, nil, nil, nil)
	p := tcpPacket()
	p.mark = 0x1001
	o, by, err := m.run("c", p)
	if err != nil || o != rejected || by == nil || by.index != 5 {
		t.Fatalf("%v by %+v, %v; want reject by rule 5", o, by, err)
	}
	if by.reject != "icmp-port-unreachable" || by.hash != "0123456789" {
		t.Errorf("reject %q, hash %q", by.reject, by.hash)
	}
	if p.mark != 0x2 {
		t.Errorf("mark %#x, want 0x2: --set-xmark toggles under its mask, --set-mark sets every bit", p.mark)
	}
	if len(m.hits) != 5 {
		t.Errorf("%d rules matched, want 5", len(m.hits))
	}
}

// TestWalkIP checks how the iptables walk follows chains: a jump comes
// back when the chain called falls off its end or returns, a goto does
// not, the first verdict ends the walk, and chains that do not exist, that
// nest without end or hold a rule it cannot read stop it with an error.
func TestWalkIP(t *testing.T) {
	m := newMachine(map[layout.Chain][]string{
		"main":    {"-j sub", "-p tcp -g tail", "-j ACCEPT"},
		"sub":     {"-m mark --mark 0x1/0x1 -j RETURN", "-j MARK --set-xmark 0x1000/0x1000"},
		"tail":    {"-m mark --mark 0x1000/0x1000 -j RETURN", "-j DROP"},
		"loop":    {"-j loop"},
		"missing": {"-j nowhere", "-j ACCEPT"},
		"bad":     {"-p udp -j ACCEPT", "-m time --timestart 08:00 -j DROP", "-j ACCEPT"},
	}, map[layout.Chain][]string{"empty": {}}, nil, nil)
	for _, c := range []struct {
		name    string
		chain   layout.Chain
		change  func(p *packet)
		want    outcome
		by      string
		entered []layout.Chain
		err     string
		// lost is the chain the walk could not enter.
		lost layout.Chain
	}{
		// sub marks and falls off its end; the goto to tail returns past
		// main (main's ACCEPT is never reached).
		{"goto returns past its caller", "main", nil, fallThrough, "", []layout.Chain{"main", "sub", "tail"}, "", ""},
		// sub returns at once; tail drops; the walk ends there.
		{"verdict in a goto", "main", func(p *packet) { p.mark = 1 }, dropped, "tail#2", []layout.Chain{"main", "sub", "tail"}, "", ""},
		// not TCP: no goto, so main goes on after the jump to sub.
		{"jump comes back", "main", func(p *packet) { p.proto = config.ProtoUDP }, accepted, "main#3", []layout.Chain{"main", "sub"}, "", ""},
		{"empty chain", "empty", nil, fallThrough, "", []layout.Chain{"empty"}, "", ""},
		{"chain does not exist", "nowhere", nil, fallThrough, "", nil, "cannot evaluate: chain nowhere does not exist", "nowhere"},
		{"jump to a chain that does not exist", "missing", nil, fallThrough, "", []layout.Chain{"missing"}, "cannot evaluate: chain nowhere does not exist", "nowhere"},
		{"endless nesting", "loop", nil, fallThrough, "", slices.Repeat([]layout.Chain{"loop"}, 65), "cannot evaluate: chains nest deeper than 64 at loop", ""},
		{"unreadable rule", "bad", nil, fallThrough, "bad#2", []layout.Chain{"bad"}, "cannot evaluate: rule 2 of bad (-m time --timestart 08:00 -j DROP): unknown match --timestart", ""},
		{"verdict before an unreadable rule", "bad", func(p *packet) { p.proto = config.ProtoUDP }, accepted, "bad#1", []layout.Chain{"bad"}, "", ""},
	} {
		p := tcpPacket()
		if c.change != nil {
			c.change(p)
		}
		o, by, err := m.run(c.chain, p)
		gotBy, gotErr := walkEnd(by, err)
		if o != c.want || gotBy != c.by || gotErr != c.err || !slices.Equal(m.entered, c.entered) || m.lost != c.lost {
			t.Errorf("%s: %v by %q, error %q, entered %v, lost %q; want %v by %q, error %q, entered %v, lost %q", c.name, o, gotBy, gotErr, m.entered, m.lost, c.want, c.by, c.err, c.entered, c.lost)
		}
	}
}

// TestWalkL2 checks the ebtables walk: a jump always comes back when the
// chain called falls off its end or returns (ebtables has no goto),
// CONTINUE goes on, and the targets ebtables does not have are chains
// that do not exist.
func TestWalkL2(t *testing.T) {
	m := newL2Machine(map[layout.Chain][]string{
		"main":   {"-j sub", "-p IPv4 -j ACCEPT", "-j DROP"},
		"sub":    {"-p IPv6 -j RETURN", "-j leaf", "-j CONTINUE", "--ip-proto udp -j DROP"},
		"leaf":   {"--ip-proto tcp -j RETURN", "-j CONTINUE"},
		"accept": {"-j leaf", "-j okay", "-j DROP"},
		"okay":   {"-p IPv4 -j ACCEPT"},
		"reject": {"-j REJECT"},
		"loop":   {"-j loop"},
		"bad":    {"-p IPv4 -j RETURN", "--foo -j DROP"},
	})
	v6 := func(p *packet) {
		p.src, p.dst = netip.MustParseAddr("2001:db8::101"), netip.MustParseAddr("2001:db8::102")
	}
	for _, c := range []struct {
		name    string
		chain   layout.Chain
		change  func(p *packet)
		drop    bool
		by      string
		entered []layout.Chain
		err     string
	}{
		{"jumps come back", "main", nil, false, "main#2", []layout.Chain{"main", "sub", "leaf"}, ""},
		{"verdict in a called chain", "main", func(p *packet) { p.proto = config.ProtoUDP }, true, "sub#4", []layout.Chain{"main", "sub", "leaf"}, ""},
		{"return, then the caller's drop", "main", v6, true, "main#3", []layout.Chain{"main", "sub"}, ""},
		{"accept in a called chain", "accept", nil, false, "okay#1", []layout.Chain{"accept", "leaf", "okay"}, ""},
		{"no REJECT in ebtables", "reject", nil, false, "", []layout.Chain{"reject"}, "cannot evaluate: ebtables chain REJECT does not exist"},
		{"unreadable rule", "bad", v6, false, "bad#2", []layout.Chain{"bad"}, "cannot evaluate: ebtables rule 2 of bad (--foo -j DROP): unknown ebtables match --foo"},
		{"chain does not exist", "nowhere", nil, false, "", nil, "cannot evaluate: ebtables chain nowhere does not exist"},
	} {
		p := tcpPacket()
		if c.change != nil {
			c.change(p)
		}
		drop, by, err := m.run(c.chain, &frame{pkt: p, in: p.physIn, out: p.physOut})
		gotBy, gotErr := walkEnd(by, err)
		if drop != c.drop || gotBy != c.by || gotErr != c.err || !slices.Equal(m.entered, c.entered) {
			t.Errorf("%s: drop %v by %q, error %q, entered %v; want %v by %q, error %q, entered %v", c.name, drop, gotBy, gotErr, m.entered, c.drop, c.by, c.err, c.entered)
		}
	}
	_, _, err := m.run("loop", &frame{pkt: tcpPacket()})
	if !errors.Is(err, errOpaque) || !strings.Contains(err.Error(), " loop ") {
		t.Errorf("endless nesting: error %v, want one naming the chain", err)
	}
}

// walkEnd renders how a walk (iptables' or ebtables') ended, as the
// tables above write it: the rule that decided as "chain#index" ("" when
// none did) and the error's text ("" when there was none).
func walkEnd(by any, err error) (rule, errText string) {
	if err != nil {
		errText = err.Error()
	}
	var chain layout.Chain
	var index int
	switch r := by.(type) {
	case *irule:
		if r == nil {
			return "", errText
		}
		chain, index = r.chain, r.index
	case *l2rule:
		if r == nil {
			return "", errText
		}
		chain, index = r.chain, r.index
	default:
		panic(fmt.Sprintf("walkEnd: %T is not a rule", by))
	}
	return fmt.Sprintf("%s#%d", chain, index), errText
}

// TestEmptyL2ChainExists: an ebtables chain without rules (vmfw-l2 when
// no VM has anti-spoofing) is entered and falls through; it used to read
// as missing, and a trace on such a host could not evaluate any frame.
func TestEmptyL2ChainExists(t *testing.T) {
	m := newL2Machine(map[layout.Chain][]string{layout.ChainL2: {}})
	if drop, _, err := m.run(layout.ChainL2, &frame{}); drop || err != nil {
		t.Errorf("empty vmfw-l2: drop=%v err=%v, want a fall through", drop, err)
	}
}

// TestL2DestMAC: vmfw-l2d and a tap's TAP-l2d see the frame's destination
// MAC. A unicast frame to the port's VM's MAC returns, one to another MAC
// (the bridge flooding a frame it has not learnt the destination of) is
// dropped, and a multicast frame returns before any lookup. Before frames
// had a destination MAC, "-d MAC" could never match and every frame to a
// VM read as dropped.
func TestL2DestMAC(t *testing.T) {
	m := newL2Machine(map[layout.Chain][]string{
		layout.ChainL2Dest: {"-d Multicast -j RETURN", "-o tap102i0 -j tap102i0-l2d"},
		"tap102i0-l2d":     {"-d 02:00:00:00:01:02 -j RETURN", "-j DROP"},
	})
	own := net.HardwareAddr{2, 0, 0, 0, 1, 2}
	other := net.HardwareAddr{2, 0, 0, 0, 1, 3}
	for _, c := range []struct {
		name      string
		out       string
		dst       net.HardwareAddr
		multicast bool
		drop      bool
	}{
		{"to the VM's MAC", "tap102i0", own, false, false},
		{"flooded, another VM's MAC", "tap102i0", other, false, true},
		{"no MAC known", "tap102i0", nil, false, true},
		{"multicast", "tap102i0", nil, true, false},
		{"to a port without a chain", "tap103i0", other, false, false},
	} {
		p := tcpPacket()
		drop, by, err := m.run(layout.ChainL2Dest, &frame{pkt: p, in: p.physIn, out: c.out, dstMAC: c.dst, multicast: c.multicast})
		if err != nil || drop != c.drop {
			t.Errorf("%s: drop %v (by %v, error %v), want %v", c.name, drop, by, err, c.drop)
		}
		if c.drop && (by == nil || by.chain != "tap102i0-l2d" || by.index != 2) {
			t.Errorf("%s: dropped by %+v, want tap102i0-l2d rule 2", c.name, by)
		}
	}
}
