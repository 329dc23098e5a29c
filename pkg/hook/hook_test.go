package hook

import (
	"context"
	"encoding/xml"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/config/configtest/scenario"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/state"
)

// fakeEngine records what the hooks ask for.
type fakeEngine struct {
	model    *config.Model
	attached []*state.Attachment
	vms      []int
	detached []engine.Selector
}

func (f *fakeEngine) Config() (*config.Model, error) { return f.model, nil }
func (f *fakeEngine) AttachVM(_ context.Context, vmid int) ([]string, error) {
	f.vms = append(f.vms, vmid)
	return nil, nil
}
func (f *fakeEngine) AttachRecords(_ context.Context, recs ...*state.Attachment) error {
	f.attached = append(f.attached, recs...)
	return nil
}
func (f *fakeEngine) DetachWhere(_ context.Context, sel engine.Selector) ([]string, error) {
	f.detached = append(f.detached, sel)
	return nil, nil
}

func loadModel(t *testing.T) *config.Model {
	t.Helper()
	m, _ := scenario.Load(t, configtest.Dir(t, map[string]string{
		"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n",
		"vms/200.toml":    "[net0]\nmac = \"52:54:00:00:00:01\"\ngroups = [\"web\"]\n\n[net2]\nips = [\"192.0.2.202\"]\n",
		"vms/210.toml":    "[net0]\nmac = \"52:54:00:00:00:10\"\n",
	}))
	return m
}

const (
	tag     = `<metadata><vmfw:vm xmlns:vmfw="https://github.com/vmfw/vmfw/xmlns/libvirt/1" id="200"/></metadata>`
	bridge0 = `<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/><target dev='vnet0'/></interface>`
	user1   = `<interface type='user'><mac address='52:54:00:00:00:02'/></interface>`
	net2    = `<interface type='network'><mac address='52:54:00:00:00:03'/><source network='default' bridge='virbr0'/><target dev='vnet1'/></interface>`
	db0     = `<interface type='bridge'><mac address='52:54:00:00:00:10'/><source bridge='br0'/><target dev='vnet5'/></interface>`
	other0  = `<interface type='bridge'><mac address='52:54:00:00:00:99'/><source bridge='br0'/><target dev='vnet9'/></interface>`
)

func domain(metadata string, ifaces ...string) *domainXML {
	var dom domainXML
	xmlText := "<domain><name>d</name><uuid>u-1</uuid>" + metadata + "<devices>" + strings.Join(ifaces, "") + "</devices></domain>"
	if err := xml.Unmarshal([]byte(xmlText), &dom); err != nil {
		panic(err)
	}
	return &dom
}

func TestMapInterfaces(t *testing.T) {
	m := loadModel(t)
	ref := func(dev string, id, index int) *state.Attachment {
		return &state.Attachment{Iface: dev, Owner: state.Libvirt, Domain: "d", DomainUUID: "u-1", VM: &state.VMRef{ID: id, Index: index}}
	}
	for name, tc := range map[string]struct {
		dom  *domainXML
		want []*state.Attachment
		err  string
	}{
		"tagged: by MAC and by position": {dom: domain(tag, bridge0, user1, net2), want: []*state.Attachment{ref("vnet0", 200, 0), ref("vnet1", 200, 2)}},
		"untagged: by MAC":               {dom: domain("", db0), want: []*state.Attachment{ref("vnet5", 210, 0)}},
		"not vmfw's":                     {dom: domain("", other0, user1)},
		"no bridged interface":           {dom: domain(tag, user1)},
		"untagged, one unknown MAC":      {dom: domain("", bridge0, other0), err: "no interface of"},
		"tagged, no [netN]":              {dom: domain(tag, bridge0, other0), err: "no [net1] table"},
		"MAC of another VM":              {dom: domain(tag, db0), err: "its mac belongs to"},
		"tagged VM without file":         {dom: domain(strings.Replace(tag, `"200"`, `"300"`, 1), bridge0), err: "vms/300.toml does not exist"},
		"bad id":                         {dom: domain(strings.Replace(tag, `"200"`, `"x"`, 1), bridge0), err: "not a VM id"},
		"no target":                      {dom: domain(tag, `<interface type='bridge'><source bridge='br0'/></interface>`), err: "has no target device"},
		"unusable target":                {dom: domain(tag, `<interface type='bridge'><target dev='sg-x'/></interface>`), err: "cannot be firewalled"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := mapInterfaces(m, "d", tc.dom)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestLibvirtOperations(t *testing.T) {
	full := "<domain><name>d</name><uuid>u-1</uuid>" + tag + "<devices>" + bridge0 + "</devices></domain>"
	for _, args := range [][]string{{"d", "prepare", "begin", "-"}, {"d", "started", "end", "-"}, {"d", "migrate", "begin", "-"}, {"d", "stopped", "begin", "-"}} {
		f := &fakeEngine{model: loadModel(t)}
		if _, err := Libvirt(context.Background(), f, args, errReader{}); err != nil {
			t.Errorf("%v: %v", args, err)
		}
		if len(f.attached)+len(f.detached) != 0 {
			t.Errorf("%v changed something", args)
		}
	}
	f := &fakeEngine{model: loadModel(t)}
	if _, err := Libvirt(context.Background(), f, []string{"d", "started", "begin", "-"}, strings.NewReader(full)); err != nil {
		t.Fatal(err)
	}
	if len(f.attached) != 1 || f.attached[0].Iface != "vnet0" {
		t.Errorf("started attached %+v", f.attached)
	}
	// stopped selects the domain's records by UUID, or by name without XML.
	for _, in := range []string{full, ""} {
		f := &fakeEngine{model: loadModel(t)}
		if _, err := Libvirt(context.Background(), f, []string{"d", "stopped", "end", "-"}, strings.NewReader(in)); err != nil {
			t.Fatal(err)
		}
		sel := f.detached[0].Record
		mine := &state.Attachment{Owner: state.Libvirt, Domain: "d", DomainUUID: "u-1"}
		renamed := &state.Attachment{Owner: state.Libvirt, Domain: "e", DomainUUID: "u-1"}
		other := &state.Attachment{Owner: state.Libvirt, Domain: "e", DomainUUID: "u-2"}
		cni := &state.Attachment{Owner: state.CNI, Domain: "d"}
		if !sel(mine) || sel(other) || sel(cni) || sel(renamed) != (in != "") {
			t.Errorf("stopped with XML %v: wrong records selected", in != "")
		}
	}
	if _, err := Libvirt(context.Background(), f, []string{"d", "started"}, nil); err == nil {
		t.Errorf("two arguments accepted")
	}
}

func TestProxmox(t *testing.T) {
	f := &fakeEngine{}
	for _, phase := range []string{"pre-start", "pre-stop", "bogus"} {
		if _, err := Proxmox(context.Background(), f, "110", phase); err != nil {
			t.Errorf("%s: %v", phase, err)
		}
	}
	if len(f.vms)+len(f.detached) != 0 {
		t.Errorf("no-op phases did something")
	}
	if _, err := Proxmox(context.Background(), f, "110", "post-start"); err != nil || !reflect.DeepEqual(f.vms, []int{110}) {
		t.Errorf("post-start: %v, %v", f.vms, err)
	}
	if _, err := Proxmox(context.Background(), f, "110", "post-stop"); err != nil || len(f.detached) != 1 {
		t.Fatalf("post-stop: %v", err)
	}
	sel := f.detached[0].Iface
	for name, want := range map[string]bool{"tap110i0": true, "tap110i12": true, "tap1100i0": false, "tap11i0": false, "vnet0": false} {
		if sel(name) != want {
			t.Errorf("post-stop selects %s: %v, want %v", name, !want, want)
		}
	}
	for _, id := range []string{"", "x", "-1", "0110"} {
		var ce *engine.ConfigError
		if _, err := Proxmox(context.Background(), f, id, "post-start"); !errors.As(err, &ce) {
			t.Errorf("VM id %q: %v, want a ConfigError", id, err)
		}
	}
}

// errReader fails every read: operations that ignore the XML must not read.
type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("stdin must not be read") }
