package config

import "testing"

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
