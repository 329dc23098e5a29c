package cni

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/state"
)

func TestEffectivePrecedence(t *testing.T) {
	for name, tc := range map[string]struct {
		conf string
		want state.Spec
	}{
		"defaults": {
			conf: `{"name":"n","type":"vmfw"}`,
			want: state.Spec{Groups: []string{}, PolicyIn: "drop", PolicyOut: "accept", Antispoof: true},
		},
		"plugin configuration": {
			conf: `{"name":"n","type":"vmfw","groups":["web"],"policyIn":"reject","log":true,"antispoof":false,"dhcp":true}`,
			want: state.Spec{Groups: []string{"web"}, PolicyIn: "reject", PolicyOut: "accept", Log: true, DHCP: true},
		},
		"args override the plugin configuration key by key": {
			conf: `{"name":"n","type":"vmfw","groups":["web"],"policyIn":"reject","args":{"cni":{"groups":["db","web"],"policyOut":"drop"}}}`,
			want: state.Spec{Groups: []string{"db", "web"}, PolicyIn: "reject", PolicyOut: "drop", Antispoof: true},
		},
		"runtimeConfig overrides args": {
			conf: `{"name":"n","type":"vmfw","groups":["web"],"args":{"cni":{"groups":["db"],"policyIn":"accept"}},"runtimeConfig":{"vmfw":{"groups":["ssh"],"log":true}}}`,
			want: state.Spec{Groups: []string{"ssh"}, PolicyIn: "accept", PolicyOut: "accept", Log: true, Antispoof: true},
		},
		"an empty list clears the groups": {
			conf: `{"name":"n","type":"vmfw","groups":["web"],"runtimeConfig":{"vmfw":{"groups":[]}}}`,
			want: state.Spec{Groups: []string{}, PolicyIn: "drop", PolicyOut: "accept", Antispoof: true},
		},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := parseConf([]byte(tc.conf))
			if err != nil {
				t.Fatal(err)
			}
			nic, err := c.effective().validate("", &attachment{host: "veth1"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := spec(nic); !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("got %+v, want %+v", *got, tc.want)
			}
		})
	}
}

// TestAntispoofMAC: antispoof takes "mac" (in any case) as VM files do,
// from any source; the record keeps it, and a less specific source's
// value is overridden.
func TestAntispoofMAC(t *testing.T) {
	for _, conf := range []string{
		`{"name":"n","type":"vmfw","antispoof":"MAC"}`,
		`{"name":"n","type":"vmfw","antispoof":false,"runtimeConfig":{"vmfw":{"antispoof":"mac"}}}`,
	} {
		c, err := parseConf([]byte(conf))
		if err != nil {
			t.Fatal(err)
		}
		nic, err := c.effective().validate("", &attachment{host: "veth1", mac: "02:00:00:00:00:01"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := spec(nic)
		if !got.Antispoof || !got.AntispoofMACOnly || got.AntispoofSetting() != `"mac"` {
			t.Errorf("%s: record %+v, want MAC-only anti-spoofing", conf, *got)
		}
		if back := got.Settings("veth1"); !back.AntispoofMACOnly {
			t.Errorf("%s: the record's settings lost \"mac\": %+v", conf, back)
		}
	}
}

func TestConfErrors(t *testing.T) {
	for _, conf := range []string{
		`{"name":"n","iptables":"ebtables"}`,
		`{"name":"n","policyIn":"allow"}`,
		`{"name":"n","args":{"cni":{"policyOut":"pass"}}}`,
		`{"name":"n","groups":["web","web"]}`,
		`{"name":"n","antispoof":"ip"}`,
		`{"name":"n","antispoof":"mac"}`, // no MAC to check
		`{"name":`,
	} {
		c, err := parseConf([]byte(conf))
		if err == nil {
			_, err = c.effective().validate("", &attachment{host: "veth1"}, nil)
		}
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig && te.Code != types.ErrDecodingFailure {
			t.Errorf("%s: %v, want code 6 or 7", conf, err)
		}
	}
}

func TestCNIError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code uint
	}{
		{&engine.ConfigError{Err: errors.New("bad group")}, types.ErrInvalidNetworkConfig},
		{fmt.Errorf("hook: %w", &engine.DriftError{Iface: "veth1", Problems: []string{"x"}}), ErrDrift},
		{fmt.Errorf("waiting for lock: %w", context.DeadlineExceeded), types.ErrTryAgainLater},
		{errors.New("iptables-restore: exit status 1"), ErrApply},
		{types.NewError(types.ErrPluginNotAvailable, "x", ""), types.ErrPluginNotAvailable},
	} {
		var te *types.Error
		if err := cniError(tc.err); !errors.As(err, &te) || te.Code != tc.code {
			t.Errorf("cniError(%v) = %v, want code %d", tc.err, err, tc.code)
		}
	}
	if cniError(nil) != nil {
		t.Errorf("cniError(nil) is not nil")
	}
}
