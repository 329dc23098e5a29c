package droplog

import (
	"strings"
	"testing"
	"time"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/nflog"
	"github.com/vmfw/vmfw/pkg/nflog/nflogtest"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// keysDir is pkg/explain's scenario with a rule per rule key.
const keysDir = "../explain/testdata/keys"

func tcp4(src, dst string, sport, dport uint16) []byte {
	return nflogtest.IPv4(6, src, dst, sport, dport)
}

// TestDescribe names the rule of each kind of prefix vmfw writes, and the
// tap by the prefix, by the destination address, or by the bridge port.
func TestDescribe(t *testing.T) {
	m, _ := scenario.Load(t, keysDir)
	when := time.Unix(1700000000, 0)
	// A group rule: the chain is shared, the destination names the VM
	// (no bridge port: routed or sent by the hypervisor).
	p := &nflog.Packet{Time: when, Prefix: ruleset.NFLOGPrefix(ruleset.Origin{Group: "admin", Dir: config.In, Index: 2}, config.Drop),
		Payload: tcp4("192.0.2.200", "192.0.2.31", 40000, 22)}
	l, ok := Describe(p, m)
	if !ok {
		t.Fatalf("prefix %q not recognised", p.Prefix)
	}
	if l.Tap != "tap301i0" || l.VM == nil || *l.VM != 301 || l.VMName != "web" || l.Direction != "in" || l.Group != "admin" ||
		!strings.HasSuffix(l.Rule, "groups/admin.toml:13") || l.Verdict != "drop" || l.Proto != "tcp" || *l.DPort != 22 || !l.Time.Equal(when) {
		t.Errorf("group rule: %+v", l)
	}
	// A policy names its tap.
	p = &nflog.Packet{Time: when, Prefix: ruleset.NFLOGPrefix(ruleset.Origin{Tap: "tap302i0", Dir: config.Out}, config.Reject),
		Payload: tcp4("192.0.2.32", "198.51.100.7", 40000, 80)}
	l, ok = Describe(p, m)
	if !ok || l.Tap != "tap302i0" || !l.Policy || l.Verdict != "reject" || l.Direction != "out" || !strings.HasSuffix(l.Rule, "vms/302.toml") {
		t.Errorf("policy: %+v", l)
	}
	// The nftables backend's policy prefix names no tap: the bridge port
	// does (the VM's side: the input port for out, the output port for
	// in), and the line is the one the iptables backend's prefix gives.
	// Loopback stands in for the port: the test needs an interface that
	// exists to resolve.
	shared := ruleset.NFLOGPrefix(ruleset.Origin{Dir: config.Out}, config.Drop)
	if shared != "vmfw -out policy DROP" {
		t.Fatalf("the shared policy prefix is %q", shared)
	}
	for _, c := range []struct {
		dir             config.Direction
		physIn, physOut uint32
	}{{config.Out, 1, 0}, {config.In, 0, 1}} {
		p = &nflog.Packet{Time: when, Prefix: ruleset.NFLOGPrefix(ruleset.Origin{Dir: c.dir}, config.Drop), PhysInDev: c.physIn, PhysOutDev: c.physOut,
			Payload: tcp4("192.0.2.32", "198.51.100.7", 40000, 80)}
		l, ok = Describe(p, m)
		want := ruleset.NFLOGPrefix(ruleset.Origin{Tap: "lo", Dir: c.dir}, config.Drop)
		if !ok || l.Tap != "lo" || !l.Policy || l.Direction != string(c.dir) || l.Verdict != "drop" || l.Prefix != want {
			t.Errorf("shared %s policy: %+v, want tap lo and prefix %q", c.dir, l, want)
		}
	}
	// Prefixes of other tools, and vmfw's LOG prefixes, are not vmfw log's.
	for _, prefix := range []string{"", "DROP: ", "vmfw tap302i0-in DROP ", "vmfw sg-web-in #0 DROP", "vmfw sg-web-up #1 DROP"} {
		if _, ok := Describe(&nflog.Packet{Prefix: prefix}, m); ok {
			t.Errorf("prefix %q taken for vmfw's", prefix)
		}
	}
}

// TestPrefixRoundTrip: every prefix NFLOGPrefix writes fits NFLOG's 64
// characters and parses back to its origin.
func TestPrefixRoundTrip(t *testing.T) {
	long := strings.Repeat("g", 20)
	for _, c := range []struct {
		o ruleset.Origin
		a config.Action
	}{
		{ruleset.Origin{Group: long, Dir: config.Out, Index: 998}, config.Reject},
		{ruleset.Origin{Group: "web", Dir: config.In}, config.Accept},
		{ruleset.Origin{Tap: "tap123456789i99", Dir: config.In}, config.Drop},
	} {
		p := ruleset.NFLOGPrefix(c.o, c.a)
		if len(p) > 63 {
			t.Errorf("%q: %d characters", p, len(p))
		}
		o, a, ok := ruleset.ParseNFLOGPrefix(p)
		if !ok || o != c.o || a != c.a {
			t.Errorf("%q parsed to %+v %s %v", p, o, a, ok)
		}
	}
}
