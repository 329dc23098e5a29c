package config

import (
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// TestLogGroup: log_group switches logging to NFLOG; absent it is 0 (the
// kernel's LOG); out of range or not an integer is an error naming the
// line.
func TestLogGroup(t *testing.T) {
	if m := mustLoad(t, configtest.Dir(t, map[string]string{"vmfw.toml": "log_burst = 5\n"})); m.Host.LogGroup != 0 {
		t.Errorf("without log_group: %d, want 0", m.Host.LogGroup)
	}
	if m := mustLoad(t, configtest.Dir(t, map[string]string{"vmfw.toml": "log_group = 65535\n"})); m.Host.LogGroup != 65535 {
		t.Errorf("log_group = 65535: %d", m.Host.LogGroup)
	}
	for _, c := range []struct{ file, phrase string }{
		{"mark = \"0x1000\"\nlog_group = 0\n", "log_group 0: must be an NFLOG group from 1 to 65535"},
		{"log_group = 65536\n", "log_group 65536: must be an NFLOG group from 1 to 65535"},
		{"log_group = \"5\"\n", "log_group"},
	} {
		_, err := Load(configtest.Dir(t, map[string]string{"vmfw.toml": c.file}))
		line := "vmfw.toml:1: "
		if c.file[0] == 'm' {
			line = "vmfw.toml:2: "
		}
		checkError(t, err, line, c.phrase)
	}
}
