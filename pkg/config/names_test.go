package config

import (
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
