package system

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/engine"
)

// TestChooseBackend: --backend, then $VMFW_BACKEND, then vmfw.toml, then
// iptables; a name that is neither backend is a configuration error
// naming where it came from.
func TestChooseBackend(t *testing.T) {
	for _, c := range []struct {
		flag, env, file string
		want            backend.Name
		err             string
	}{
		{want: backend.IPTables},
		{file: "nftables", want: backend.NFTables},
		{env: "iptables", file: "nftables", want: backend.IPTables},
		{flag: "nftables", env: "iptables", file: "iptables", want: backend.NFTables},
		{env: "ebpf", err: `$VMFW_BACKEND "ebpf": must be iptables or nftables`},
		{flag: "nft", err: `--backend "nft": must be iptables or nftables`},
	} {
		t.Setenv("VMFW_BACKEND", c.env)
		got, err := ChooseBackend(backend.Name(c.flag), &config.Host{Backend: c.file})
		var ce *engine.ConfigError
		switch {
		case c.err != "" && (!errors.As(err, &ce) || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%+v: error %v, want a configuration error %q", c, err, c.err)
		case c.err == "" && (err != nil || got != c.want):
			t.Errorf("%+v: %q, %v, want %q", c, got, err, c.want)
		}
	}
}
