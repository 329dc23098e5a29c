package integration

import (
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
)

// namedStream is a long-lived TCP flow a test watches across applies.
type namedStream struct {
	name string
	s    *labnet.Stream
}

// startStream starts a flow from ns to addr:port; the lab stops it.
func startStream(t *testing.T, name string, from *labnet.NS, addr string, port int) namedStream {
	t.Helper()
	s, err := labnet.StartStream(from, labnet.HostPort(addr, port))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return namedStream{name, s}
}

// streamAfter is how many messages a flow must send after an apply
// before the test judges it: enough that a live flow shows its echoes and
// a cut one its silence (at 10 ms per message, about a third of a second).
const streamAfter = 30

// checkStreams judges the flows after an apply that returned: every flow
// in cut gets no echo for any message sent after the apply, every flow in
// kept gets its echoes. It waits (bounded, see eventually) for the flows to
// send enough, not for a time.
func checkStreams(t *testing.T, step string, cut, kept []namedStream) {
	t.Helper()
	all := append(append([]namedStream{}, cut...), kept...)
	mark := make([]uint64, len(all))
	for i, f := range all {
		mark[i] = f.s.Stats().Sent
	}
	ok := eventually(func() bool {
		for i, f := range all {
			st := f.s.Stats()
			if st.Sent < mark[i]+streamAfter {
				return false
			}
			if i >= len(cut) && st.Echoed < mark[i]+streamAfter && st.Err == nil {
				return false
			}
		}
		return true
	})
	for i, f := range all {
		st := f.s.Stats()
		switch {
		case i < len(cut) && st.Echoed > mark[i]:
			t.Errorf("%s: flow %s should be cut, but message %d, sent after the apply, was echoed (%+v)", step, f.name, st.Echoed, st)
		case i >= len(cut) && (st.Err != nil || st.Echoed < mark[i]+streamAfter):
			t.Errorf("%s: flow %s should keep going, but after the apply it got %d echoes for %d messages (%+v)", step, f.name, st.Echoed-min(st.Echoed, mark[i]), st.Sent-mark[i], st)
		}
	}
	if !ok && !t.Failed() {
		t.Errorf("%s: flows did not send %d messages within the wait", step, streamAfter)
	}
}

// TestRemovedPermissionCutsFlows: edits that withdraw the permission of
// established TCP connections — a group rule removed, a member leaving a
// source_group, a policy tightened, a VM leaving a group — stop those
// connections at the next apply (their conntrack entries are deleted),
// while connections that are still allowed keep going, including ones
// allowed only as established (replies to a VM's own outbound connection,
// which its in chain would drop as new).
func TestRemovedPermissionCutsFlows(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("groups/ssh.toml", "[[in]]\nproto = \"tcp\"\ndport = \"22\"\n")
		h.write("groups/web.toml", "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n")
		h.write("groups/db.toml", dbGroup)
		h.write("groups/app.toml", "description = \"membership only\"\n")
		// A is a client in app; B serves ssh, web and db; C accepts
		// everything inbound by policy; D serves the web and may open no
		// connection of its own.
		a := h.guest(511, "02:00:00:00:05:11", "192.0.2.51", "2001:db8::51", "app")
		b := h.guest(512, "02:00:00:00:05:12", "192.0.2.52", "2001:db8::52", "ssh", "web", "db")
		h.write("vms/513.toml", "policy_in = \"accept\"\n"+vmFile("02:00:00:00:05:13", "192.0.2.53", "2001:db8::53"))
		h.write("vms/514.toml", "policy_out = \"drop\"\n"+vmFile("02:00:00:00:05:14", "192.0.2.54", "2001:db8::54", "web"))
		c := h.vm("tap513i0", "02:00:00:00:05:13", "192.0.2.53", "2001:db8::53")
		d := h.vm("tap514i0", "02:00:00:00:05:14", "192.0.2.54", "2001:db8::54")
		ext := h.external("02:00:00:00:05:99", "192.0.2.200/24", "2001:db8::200/64")
		h.firstV4(510, "192.0.2.9")
		for _, tap := range []string{"tap511i0", "tap512i0", "tap513i0", "tap514i0"} {
			h.vmfw("ifup", tap)
		}
		for _, addr := range []string{"192.0.2.52", "2001:db8::52"} {
			h.serve(b, addr, 22, 80, 5432)
		}
		h.serve(c, "192.0.2.53", 9000)
		h.serve(d, "2001:db8::54", 80)
		h.serve(ext, "192.0.2.200", 80)
		h.serve(ext, "2001:db8::200", 22)

		ssh4 := startStream(t, "A->B ssh", a, "192.0.2.52", 22)
		ssh6 := startStream(t, "A->B ssh v6", a, "2001:db8::52", 22)
		db := startStream(t, "A->B db (A in source_group app)", a, "192.0.2.52", 5432)
		toC := startStream(t, "A->C 9000 (C's policy_in accept)", a, "192.0.2.53", 9000)
		web := startStream(t, "A->B http", a, "192.0.2.52", 80)
		webExt := startStream(t, "ext->D http v6", ext, "2001:db8::54", 80)
		out := startStream(t, "A->ext http (A's own, replies only established)", a, "192.0.2.200", 80)
		out6 := startStream(t, "B->ext ssh v6 (B's own)", b, "2001:db8::200", 22)

		checkStreams(t, "before any edit", nil, []namedStream{ssh4, ssh6, db, toC, web, webExt, out, out6})

		h.write("groups/ssh.toml", "[[in]]\nproto = \"tcp\"\ndport = \"2222\"\n")
		h.vmfw("apply")
		checkStreams(t, "ssh rule removed", []namedStream{ssh4, ssh6}, []namedStream{db, toC, web, webExt, out, out6})

		h.write("vms/511.toml", vmFile("02:00:00:00:05:11", "192.0.2.51", "2001:db8::51"))
		h.vmfw("apply")
		checkStreams(t, "A left source_group app", []namedStream{db}, []namedStream{toC, web, webExt, out, out6})

		h.write("vms/513.toml", "policy_in = \"drop\"\n"+vmFile("02:00:00:00:05:13", "192.0.2.53", "2001:db8::53"))
		h.vmfw("apply")
		checkStreams(t, "C's policy_in tightened", []namedStream{toC}, []namedStream{web, webExt, out, out6})

		h.write("vms/512.toml", vmFile("02:00:00:00:05:12", "192.0.2.52", "2001:db8::52", "ssh", "db"))
		h.write("vms/514.toml", "policy_out = \"drop\"\n"+vmFile("02:00:00:00:05:14", "192.0.2.54", "2001:db8::54"))
		h.vmfw("apply")
		checkStreams(t, "B and D left group web", []namedStream{web, webExt}, []namedStream{out, out6})

		// Nothing changed: nothing more is cut.
		h.vmfw("apply")
		checkStreams(t, "unchanged apply", nil, []namedStream{out, out6})
	})
}

// TestCutFlowStaysCutWhenTheServerMaySend: a cut connection to a server VM
// that may open connections of its own (policy_out accept) must stay cut.
// Deleting the conntrack entry is not enough there: the server's next
// segment (a retransmission) is picked up mid-stream by conntrack as a new
// outbound connection, which the server's out chain allows, and the
// client's packets then pass as its replies. The tap chains refuse new
// TCP connections that do not start with SYN, which keeps it cut.
func TestCutFlowStaysCutWhenTheServerMaySend(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.write("groups/web.toml", "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n")
		b := h.guest(521, "02:00:00:00:05:21", "192.0.2.61", "2001:db8::61", "web")
		ext := h.external("02:00:00:00:05:98", "192.0.2.200/24", "2001:db8::200/64")
		h.firstV4(520, "192.0.2.9")
		h.vmfw("ifup", "tap521i0")
		h.serve(b, "192.0.2.61", 80)
		h.serve(b, "2001:db8::61", 80)
		web4 := startStream(t, "ext->B http", ext, "192.0.2.61", 80)
		web6 := startStream(t, "ext->B http v6", ext, "2001:db8::61", 80)
		checkStreams(t, "before the edit", nil, []namedStream{web4, web6})
		h.write("vms/521.toml", vmFile("02:00:00:00:05:21", "192.0.2.61", "2001:db8::61"))
		h.vmfw("apply")
		checkStreams(t, "B left group web", []namedStream{web4, web6}, nil)
	})
}

// TestTapChangeCutsItsFlows: an ifup without the agent that re-attaches
// a VM after an edit took it out of a source_group cuts its connections
// to the group's servers (the cut reads the flows of the VM's own
// addresses: asked of the kernel by address for IPv4, from the IPv6 table
// for IPv6), and a connection of other addresses keeps going.
func TestTapChangeCutsItsFlows(t *testing.T) {
	forEachHV(t, func(t *testing.T, h *hv) {
		h.firstV4(530, "192.0.2.9")
		h.write("groups/ssh.toml", "[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"clients\"\n")
		h.write("groups/clients.toml", "description = \"membership only\"\n")
		h.write("groups/web.toml", "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n")
		a := h.guest(531, "02:00:00:00:05:31", "192.0.2.71", "2001:db8::71", "ssh", "web")
		b := h.guest(532, "02:00:00:00:05:32", "192.0.2.72", "2001:db8::72", "clients")
		ext := h.external("02:00:00:00:05:99", "192.0.2.201/24", "2001:db8::201/64")
		h.vmfw("ifup", "tap531i0")
		h.vmfw("ifup", "tap532i0")
		h.serve(a, "192.0.2.71", 22, 80)
		h.serve(a, "2001:db8::71", 22)
		ssh4 := startStream(t, "B->A ssh", b, "192.0.2.71", 22)
		ssh6 := startStream(t, "B->A ssh v6", b, "2001:db8::71", 22)
		web := startStream(t, "ext->A http", ext, "192.0.2.71", 80)
		checkStreams(t, "before the edit", nil, []namedStream{ssh4, ssh6, web})
		h.write("vms/532.toml", vmFile("02:00:00:00:05:32", "192.0.2.72", "2001:db8::72"))
		h.vmfw("ifup", "tap532i0")
		checkStreams(t, "B left clients and was brought up again", []namedStream{ssh4, ssh6}, []namedStream{web})
	})
}
