package config

import (
	"strconv"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

func TestValidGroupName(t *testing.T) {
	for name, want := range map[string]bool{
		"web": true, "W": true, "web_1": true, "web-1": true, "a-": true, "a--b": true,
		"abcdefghijklmnopqrst": true, "a-b-c-d-e-f-g-h-i-j-": true,
		"": false, "1web": false, "-web": false, "_web": false, "web.1": false, "web 1": false,
		"web/1": false, "abcdefghijklmnopqrstu": false, "wéb": false, "web+": false,
	} {
		if got := validGroupName(name); got != want {
			t.Errorf("validGroupName(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestDashedGroupNames: names with '-', as Proxmox allows them, work
// wherever a group is named: its file, a VM's groups, source_group and
// dest_group.
func TestDashedGroupNames(t *testing.T) {
	m := mustLoad(t, configtest.Dir(t, map[string]string{
		"groups/web-front.toml":  "[[in]]\nsource_group = \"ssh-admins\"\n[[out]]\ndest_group = \"web-front\"\n",
		"groups/ssh-admins.toml": "",
		"vms/110.toml":           "[net0]\ngroups = [\"web-front\", \"ssh-admins\"]\n",
	}))
	g := m.Groups["web-front"]
	if g == nil || g.Name != "web-front" || g.In[0].SourceGroup != "ssh-admins" || g.Out[0].DestGroup != "web-front" {
		t.Fatalf("group web-front = %+v", g)
	}
	if got := m.VMs[110].NICs[0].Groups; len(got) != 2 || got[0] != "web-front" || got[1] != "ssh-admins" {
		t.Fatalf("groups of net0 = %v", got)
	}
	if _, fe := ValidateIface(&IfaceSettings{Iface: "veth1", Groups: []string{"web-front"}}, nil); fe != nil {
		t.Fatalf("ValidateIface refuses a dashed group: %v", fe)
	}
}

// FuzzParseTapName: a name parses exactly when TapName writes it back,
// so that names and (VM, interface) pairs map one to one.
func FuzzParseTapName(f *testing.F) {
	for _, s := range []string{"tap110i0", "tap0i0", "tap05i0", "tap5i01", "tap+5i0", "tap-1i0", "tapi0", "tap5i", "tap5", "tap5i0x", "tap1x2i0", "tap99999999999999999999i0", "veth0", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		vmid, index, ok := ParseTapName(name)
		if ok && TapName(vmid, index) != name {
			t.Fatalf("%q parses to VM %d interface %d, which TapName writes %q", name, vmid, index, TapName(vmid, index))
		}
		if !ok {
			rest, _ := strings.CutPrefix(name, "tap")
			id, idx, _ := strings.Cut(rest, "i")
			v, err1 := strconv.Atoi(id)
			i, err2 := strconv.Atoi(idx)
			if err1 == nil && err2 == nil && v >= 0 && i >= 0 && TapName(v, i) == name {
				t.Fatalf("%q is TapName(%d, %d) and does not parse", name, v, i)
			}
		}
	})
}
