package engine

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/state"
)

// attHost is a host whose interfaces the test names.
type attHost struct{ links map[string]bool }

func (k *attHost) Links() (map[string]bool, error) { return k.links, nil }
func (k *attHost) Attach(string, string) error     { return nil }
func (k *attHost) EnableBridgeNetfilter() error    { return nil }

func attEngine(t *testing.T) (*Engine, *backend.Fake, *state.Store) {
	t.Helper()
	dir := configtest.Dir(t, map[string]string{
		"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n",
		"groups/db.toml":  "[[in]]\nproto = \"tcp\"\ndport = \"5432\"\nsource_group = \"web\"\n",
		"vms/110.toml":    "[net0]\nips = [\"192.0.2.110\"]\ngroups = [\"web\"]\n\n[net1]\nips = [\"192.0.2.111\"]\n",
	})
	be := &backend.Fake{}
	st := state.New(t.TempDir())
	e := New(Kernel{Backend: be, Host: &attHost{links: map[string]bool{}},
		Lock: func(context.Context) (func(), error) { return func() {}, nil },
	}, dir)
	e.State = st
	return e, be, st
}

func attRecord(iface, ip string, groups ...string) *state.Attachment {
	return &state.Attachment{Iface: iface, Owner: state.CNI, Network: "n", ContainerID: "c-" + iface, IfName: "eth0",
		Spec: &state.Spec{IPs: []string{ip}, Groups: groups, Antispoof: true}}
}

func TestAttachRecords(t *testing.T) {
	e, be, st := attEngine(t)
	ctx := context.Background()
	if err := e.AttachRecords(ctx, attRecord("veth1", "198.51.100.2", "web")); err != nil {
		t.Fatal(err)
	}
	if got := be.Dump(); !strings.Contains(got, "iface veth1 enabled=true groups=[web] ips=[198.51.100.2]") {
		t.Errorf("installed:\n%s", got)
	}
	recs, err := st.List()
	if err != nil || recs["veth1"] == nil {
		t.Errorf("records: %v, %v", recs, err)
	}
	// A member of web with db attached: web's members are referenced by
	// db's rule, and the set holds both records' addresses.
	if err := e.AttachRecords(ctx, attRecord("veth2", "198.51.100.3", "db"), attRecord("veth3", "198.51.100.4", "web")); err != nil {
		t.Fatal(err)
	}
	if got := be.Dump(); !strings.Contains(got, "members web [198.51.100.2 198.51.100.4] []") || !strings.Contains(got, "iface veth2") {
		t.Errorf("installed:\n%s", got)
	}
}

func TestAttachRecordsRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		rec  *state.Attachment
		want string
	}{
		"unknown group":   {attRecord("veth1", "198.51.100.2", "nosuch"), `attachments/veth1.json: spec.groups[0] "nosuch": unknown group, there is no groups/nosuch.toml`},
		"claimed address": {attRecord("veth1", "192.0.2.110", "web"), "already claimed by tap110i0"},
		"bad address":     {attRecord("veth1", "224.0.0.1"), "not a unicast address"},
		"bad policy":      {&state.Attachment{Iface: "veth1", Owner: state.CNI, Spec: &state.Spec{PolicyIn: "allow"}}, `spec.policyIn "allow": must be drop, reject or accept`},
		"tap name":        {attRecord("tap110i0", "198.51.100.2"), "is a tap configured in"},
		"chain name":      {attRecord("sg-web", "198.51.100.2"), `iface "sg-web": starts with "sg-" like vmfw's own chains and sets`},
		"missing VM":      {&state.Attachment{Iface: "vnet0", Owner: state.Libvirt, VM: &state.VMRef{ID: 7}}, "VM 7 has no configuration"},
		"missing netN":    {&state.Attachment{Iface: "vnet0", Owner: state.Libvirt, VM: &state.VMRef{ID: 110, Index: 5}}, "has no [net5] table"},
	} {
		t.Run(name, func(t *testing.T) {
			e, be, st := attEngine(t)
			err := e.AttachRecords(context.Background(), tc.rec)
			var ce *ConfigError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("AttachRecords: %v, want a ConfigError containing %q", err, tc.want)
			}
			if be.Applies != 0 {
				t.Errorf("changed the firewall:\n%s", be.Dump())
			}
			if recs, _ := st.List(); len(recs) != 0 {
				t.Errorf("wrote records: %v", recs)
			}
		})
	}
}

func TestResolver(t *testing.T) {
	e, _, st := attEngine(t)
	m, err := config.Load(e.ConfigDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []*state.Attachment{
		{Iface: "vnet0", Owner: state.Libvirt, VM: &state.VMRef{ID: 110, Index: 1}},
		{Iface: "vnet1", Owner: state.Libvirt, VM: &state.VMRef{ID: 999}},
		// A record for a configured tap name: the configuration wins.
		{Iface: "tap110i0", Owner: state.Libvirt, VM: &state.VMRef{ID: 110, Index: 1}},
	} {
		if err := st.Put(a); err != nil {
			t.Fatal(err)
		}
	}
	r, err := e.resolver(m)
	if err != nil {
		t.Fatal(err)
	}
	if n := r.NIC("tap110i0"); n == nil || n.Index != 0 {
		t.Errorf("tap110i0 resolved to %+v, want net0 of the configuration", n)
	}
	v0 := r.NIC("vnet0")
	if v0 == nil || v0.Tap != "vnet0" || v0.Index != 1 || v0.VM.ID != 110 {
		t.Errorf("vnet0 resolved to %+v", v0)
	}
	if m.NIC("tap110i1").Tap != "tap110i1" {
		t.Errorf("resolving a record changed the configuration's NIC")
	}
	v1 := r.NIC("vnet1")
	if v1 == nil || v1.VM.PolicyIn != config.Drop || v1.VM.PolicyOut != config.Drop || len(v1.Groups) != 0 || r.problems["vnet1"] == nil {
		t.Errorf("unresolvable vnet1 resolved to %+v (problem %v), want closed", v1, r.problems["vnet1"])
	}
	if r.NIC("veth9") != nil {
		t.Errorf("an unknown interface resolved")
	}
	got := r.present(map[string]bool{"vnet0": true, "tap110i1": true})
	if len(got) != 2 || got[0].Tap != "tap110i1" || got[1].Tap != "vnet0" {
		t.Errorf("present: %+v", got)
	}
}

func TestDetachWhere(t *testing.T) {
	e, _, st := attEngine(t)
	ctx := context.Background()
	if err := e.AttachRecords(ctx, attRecord("veth1", "198.51.100.2", "web"), attRecord("veth2", "198.51.100.3", "web")); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		got, err := e.DetachWhere(ctx, Selector{Record: func(a *state.Attachment) bool { return a.Iface == "veth1" }})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 1 || len(got) == 1 && got[0] != "veth1" {
			t.Errorf("DetachWhere removed %v", got)
		}
	}
	recs, err := st.List()
	if err != nil || len(recs) != 1 || recs["veth2"] == nil {
		t.Errorf("records after DetachWhere: %v, %v", recs, err)
	}
}
