package config

import (
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

func TestParseLogLevel(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want LogLevel
		ok   bool
	}{
		{true, LogWarning, true},
		{false, LogOff, true},
		{"emerg", LogEmerg, true},
		{"alert", LogAlert, true},
		{"crit", LogCrit, true},
		{"err", LogErr, true},
		{"warning", LogWarning, true},
		{"notice", LogNotice, true},
		{"info", LogInfo, true},
		{"debug", LogDebug, true},
		{"DEBUG", LogDebug, true},
		{"Info", LogInfo, true},
		{"", LogOff, false},
		{"nolog", LogOff, false},
		{"error", LogOff, false},
		{"true", LogOff, false},
		{int64(4), LogOff, false},
		{nil, LogOff, false},
	} {
		got, ok := ParseLogLevel(tc.v)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseLogLevel(%#v) = %q %v, want %q %v", tc.v, got, ok, tc.want, tc.ok)
		}
	}
}

// TestLogLevels: a rule's log and a VM's log, log_in and log_out take a
// level; log_in and log_out override log per direction; Log stays what it
// was (logging or not) so that code reading only it is unchanged.
func TestLogLevels(t *testing.T) {
	m := mustLoad(t, configtest.Dir(t, map[string]string{
		"groups/web.toml": "[[in]]\nlog = \"info\"\n[[in]]\nlog = true\n[[in]]\nlog = false\n[[in]]\n[[out]]\nlog = \"EMERG\"\n",
		"vms/1.toml":      "log = true\n",
		"vms/2.toml":      "log = \"debug\"\nlog_out = false\n",
		"vms/3.toml":      "log_in = \"notice\"\n",
		"vms/4.toml":      "log = false\nlog_in = true\nlog_out = \"crit\"\n",
		"vms/5.toml":      "log = false\n",
		"vms/6.toml":      "",
	}))
	g := m.Groups["web"]
	for i, want := range []LogLevel{LogInfo, LogWarning, LogOff, LogOff} {
		if r := g.In[i]; r.LogLevel != want || r.Log != (want != LogOff) {
			t.Errorf("in rule %d: Log %v LogLevel %q, want %q", i+1, r.Log, r.LogLevel, want)
		}
	}
	if r := g.Out[0]; r.LogLevel != LogEmerg || !r.Log {
		t.Errorf("out rule: Log %v LogLevel %q, want emerg", r.Log, r.LogLevel)
	}
	for id, want := range map[int]struct {
		log     bool
		in, out LogLevel
	}{
		1: {true, LogWarning, LogWarning},
		2: {true, LogDebug, LogOff},
		3: {true, LogNotice, LogOff},
		4: {true, LogWarning, LogCrit},
		5: {false, LogOff, LogOff},
		6: {false, LogOff, LogOff},
	} {
		vm := m.VMs[id]
		if vm.Log != want.log || vm.LogIn != want.in || vm.LogOut != want.out {
			t.Errorf("VM %d: Log %v LogIn %q LogOut %q, want %v %q %q", id, vm.Log, vm.LogIn, vm.LogOut, want.log, want.in, want.out)
		}
	}
	// Entry points that only know on and off log at the default level.
	nic, fe := ValidateIface(&IfaceSettings{Iface: "veth1", Log: true}, nil)
	if fe != nil || !nic.VM.Log || nic.VM.LogIn != DefaultLogLevel || nic.VM.LogOut != DefaultLogLevel {
		t.Fatalf("ValidateIface with Log: %+v, %v", nic.VM, fe)
	}
	nic, _ = ValidateIface(&IfaceSettings{Iface: "veth1"}, nil)
	if nic.VM.Log || nic.VM.LogIn != LogOff || nic.VM.LogOut != LogOff {
		t.Fatalf("ValidateIface without Log: %+v", nic.VM)
	}
}
