package config

import (
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

func TestIfaceNameProblem(t *testing.T) {
	for name, want := range map[string]bool{
		"veth1234abcd": true, "vnet0": true, "tap110i0": true, "eth0.100": true, "a_b-c": true, "sgweb": true,
		"": false, ".": false, "..": false, "-a": false, "a/b": false, "a b": false, "tap+": false,
		"sg-web": false, "vmfw-out": false, "1234567890123456": false,
	} {
		if got := IfaceNameProblem(name) == ""; got != want {
			t.Errorf("IfaceNameProblem(%q) = %q, want valid %v", name, IfaceNameProblem(name), want)
		}
	}
}

func TestParseAntispoof(t *testing.T) {
	for _, tc := range []struct {
		v               any
		on, macOnly, ok bool
	}{
		{true, true, false, true},
		{false, false, false, true},
		{"mac", true, true, true},
		{"MAC", true, true, true},
		{"ip", false, false, false},
		{"true", false, false, false},
		{"", false, false, false},
		{int64(1), false, false, false},
		{nil, false, false, false},
	} {
		on, macOnly, ok := ParseAntispoof(tc.v)
		if on != tc.on || macOnly != tc.macOnly || ok != tc.ok {
			t.Errorf("ParseAntispoof(%#v) = %v %v %v, want %v %v %v", tc.v, on, macOnly, ok, tc.on, tc.macOnly, tc.ok)
		}
	}
}

// TestAntispoofMACOnly: antispoof = "mac" is anti-spoofing (Antispoof)
// limited to the MAC (AntispoofMACOnly), in a VM file and through
// ValidateIface alike, and needs a MAC to check.
func TestAntispoofMACOnly(t *testing.T) {
	m := mustLoad(t, configtest.Dir(t, map[string]string{"vms/110.toml": `[net0]
mac = "02:00:00:00:01:10"
ips = ["192.0.2.10"]
antispoof = "mac"

[net1]
mac = "02:00:00:00:01:11"
antispoof = "MAC"

[net2]
antispoof = true

[net3]
antispoof = false

[net4]
`}))
	for i, want := range []struct{ on, macOnly bool }{{true, true}, {true, true}, {true, false}, {false, false}, {true, false}} {
		n := m.VMs[110].NICs[i]
		if n.Antispoof != want.on || n.AntispoofMACOnly != want.macOnly {
			t.Errorf("net%d: Antispoof %v, AntispoofMACOnly %v, want %v %v", i, n.Antispoof, n.AntispoofMACOnly, want.on, want.macOnly)
		}
	}
	if ips := m.VMs[110].NICs[0].IPs; len(ips) != 1 {
		t.Errorf("net0 ips %v: MAC-only anti-spoofing must keep the addresses (membership)", ips)
	}

	nic, fe := ValidateIface(&IfaceSettings{Iface: "veth1", MAC: "02:00:00:00:00:01", AntispoofMACOnly: true}, nil)
	if fe != nil || !nic.Antispoof || !nic.AntispoofMACOnly {
		t.Fatalf("ValidateIface with AntispoofMACOnly: %+v, %v", nic, fe)
	}
	_, fe = ValidateIface(&IfaceSettings{Iface: "veth1", Antispoof: true, AntispoofMACOnly: true}, nil)
	if fe == nil || fe.Field != FieldAntispoof || fe.Index != -1 ||
		fe.Render("args.cni.antispoof") != `args.cni.antispoof "mac": checks the source MAC, but the interface has no mac; give its mac, or set antispoof = false` {
		t.Fatalf("MAC-only without a MAC: %v", fe)
	}
}
