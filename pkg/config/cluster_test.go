package config

import (
	"testing"
	"time"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

func TestClusterTable(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{"vmfw.toml": `
[cluster]
endpoints = ["https://192.0.2.10:2379", "http://[2001:db8::10]:2379"]
ca_file = "/etc/vmfw/etcd-ca.pem"
cert_file = "/etc/vmfw/etcd.pem"
key_file = "/etc/vmfw/etcd-key.pem"
host = "pve1"
lease_ttl = "5s"
cache_dir = "/var/cache/vmfw/"
`})
	c := mustLoad(t, dir).Host.Cluster
	want := Cluster{Endpoints: []string{"https://192.0.2.10:2379", "http://[2001:db8::10]:2379"}, CA: "/etc/vmfw/etcd-ca.pem",
		Cert: "/etc/vmfw/etcd.pem", Key: "/etc/vmfw/etcd-key.pem", Prefix: DefaultClusterPrefix, Host: "pve1",
		LeaseTTL: 5 * time.Second, CacheDir: "/var/cache/vmfw"}
	if c == nil || c.Prefix != want.Prefix || c.Host != want.Host || c.LeaseTTL != want.LeaseTTL || c.CacheDir != want.CacheDir ||
		c.CA != want.CA || c.Cert != want.Cert || c.Key != want.Key || len(c.Endpoints) != 2 {
		t.Fatalf("got %+v, want %+v", c, want)
	}
	h, err := LoadHost(dir)
	if err != nil || h.Cluster == nil || h.Cluster.Host != "pve1" {
		t.Fatalf("LoadHost: %+v, %v", h, err)
	}
	if m := mustLoad(t, configtest.Dir(t, map[string]string{"vmfw.toml": "repair_interval = \"5s\"\n"})); m.Host.Cluster != nil {
		t.Fatalf("no [cluster] table, got %+v", m.Host.Cluster)
	}
	d := mustLoad(t, configtest.Dir(t, map[string]string{"vmfw.toml": "[cluster]\nendpoints = [\"http://192.0.2.10:2379\"]\nhost = \"a\"\n"})).Host.Cluster
	if d.LeaseTTL != DefaultClusterLeaseTTL || d.CacheDir != DefaultClusterCacheDir || d.Prefix != "/vmfw/" {
		t.Fatalf("defaults: %+v", d)
	}
}

func TestClusterTableErrors(t *testing.T) {
	for _, tc := range []struct {
		name, toml, prefix, phrase string
	}{
		{"no endpoints", "[cluster]\nhost = \"a\"\n", "vmfw.toml:1: ", "endpoints is required"},
		{"bad endpoint", "[cluster]\nendpoints = [\n  \"http://192.0.2.1:2379\",\n  \"192.0.2.1:2379\",\n]\nhost = \"a\"\n", "vmfw.toml:4: ", "use http://HOST:PORT"},
		{"no port", "[cluster]\nendpoints = [\"https://etcd\"]\nhost = \"a\"\n", "vmfw.toml:2: ", "use http://HOST:PORT"},
		{"relative ca", "[cluster]\nendpoints = [\"https://192.0.2.1:2379\"]\nhost = \"a\"\nca_file = \"ca.pem\"\n", "vmfw.toml:4: ", "must be an absolute path"},
		{"cert without key", "[cluster]\nendpoints = [\"https://192.0.2.1:2379\"]\nhost = \"a\"\ncert_file = \"/c.pem\"\n", "vmfw.toml:1: ", "cert_file and key_file go together"},
		{"bad prefix", "[cluster]\nendpoints = [\"https://192.0.2.1:2379\"]\nhost = \"a\"\nprefix = \"vmfw\"\n", "vmfw.toml:4: ", "must start and end with /"},
		{"bad host", "[cluster]\nendpoints = [\"https://192.0.2.1:2379\"]\nhost = \"a/b\"\n", "vmfw.toml:3: ", "cluster host \"a/b\""},
		{"short ttl", "[cluster]\nendpoints = [\"https://192.0.2.1:2379\"]\nhost = \"a\"\nlease_ttl = \"1s\"\n", "vmfw.toml:4: ", "from 2s to 1h"},
		{"fractional ttl", "[cluster]\nendpoints = [\"https://192.0.2.1:2379\"]\nhost = \"a\"\nlease_ttl = \"2500ms\"\n", "vmfw.toml:4: ", "whole seconds"},
		{"relative cache", "[cluster]\nendpoints = [\"https://192.0.2.1:2379\"]\nhost = \"a\"\ncache_dir = \"cache\"\n", "vmfw.toml:4: ", "cache_dir \"cache\""},
		{"unknown key", "[cluster]\nendpoints = [\"https://192.0.2.1:2379\"]\nhosts = \"a\"\n", "vmfw.toml:3: ", "cluster keys are"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(configtest.Dir(t, map[string]string{"vmfw.toml": tc.toml}))
			checkError(t, err, tc.prefix, tc.phrase)
		})
	}
}
