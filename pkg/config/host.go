package config

import (
	"errors"
	"io/fs"
	"math/bits"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// hostFile is vmfw.toml as written; pointers tell absent keys (defaults)
// from present ones.
type hostFile struct {
	Backend  *string   `toml:"backend"`
	Managed  *[]string `toml:"managed"`
	Mark     any       `toml:"mark"`
	LogLimit *string   `toml:"log_limit"`
	LogBurst *int64    `toml:"log_burst"`
	LogGroup *int64    `toml:"log_group"`
	// RepairInterval and MetricsListen are the agent's (docs/agent.md).
	RepairInterval *string `toml:"repair_interval"`
	MetricsListen  *string `toml:"metrics_listen"`
	// Cluster is cluster mode's table (docs/cluster.md).
	Cluster *clusterFile `toml:"cluster"`
}

// clusterFile is the [cluster] table as written.
type clusterFile struct {
	Endpoints *[]string `toml:"endpoints"`
	CA        *string   `toml:"ca_file"`
	Cert      *string   `toml:"cert_file"`
	Key       *string   `toml:"key_file"`
	Prefix    *string   `toml:"prefix"`
	Host      *string   `toml:"host"`
	LeaseTTL  *string   `toml:"lease_ttl"`
	CacheDir  *string   `toml:"cache_dir"`
}

var hostSchema = &schema{
	top: "vmfw.toml keys are backend, managed, mark, log_limit, log_burst, log_group, repair_interval, metrics_listen and [cluster]",
	sub: func(table string) string {
		if table == "cluster" {
			return "cluster keys are endpoints, ca_file, cert_file, key_file, prefix, host, lease_ttl and cache_dir"
		}
		return ""
	},
}

// Cluster is the [cluster] table of vmfw.toml: how this host reaches the
// etcd cluster that holds the configuration and the group membership.
type Cluster struct {
	// Endpoints are etcd's client URLs, http:// or https://.
	Endpoints []string
	// CA, Cert and Key are PEM files for TLS: CA verifies the servers,
	// Cert and Key authenticate this host. Empty is unused.
	CA, Cert, Key string
	// Prefix starts every key vmfw writes (default "/vmfw/").
	Prefix string
	// Host names this host in the cluster (default: the host name).
	Host string
	// LeaseTTL is the lease this host's membership lives under: a host
	// that stops keeping it alive loses its members after it.
	LeaseTTL time.Duration
	// CacheDir holds the last configuration received, for outages.
	CacheDir string
}

// Defaults of the [cluster] table.
const (
	DefaultClusterPrefix   = "/vmfw/"
	DefaultClusterLeaseTTL = 10 * time.Second
	DefaultClusterCacheDir = "/var/lib/vmfw/cluster"
)

// Defaults of the host-wide options.
const (
	defaultLogLimit = "10/second"
	defaultLogBurst = 20
	// DefaultRepairInterval is how often the agent looks for drift.
	DefaultRepairInterval = 10 * time.Second
)

// defaultManaged is the default fail-closed pattern: every tap.
var defaultManaged = []string{"tap+"}

// Limits of the kernel's limit match: it accepts at most 10000 packets a
// second and bursts of at most 10000.
const maxLogRate, maxLogBurst = 10000, 10000

// maxLogGroup is the largest NFLOG group: the kernel's group is 16 bits.
// Group 0 is not offered, so that the zero Host logs with LOG.
const maxLogGroup = 65535

// loadHost reads vmfw.toml if there is one.
func (l *loader) loadHost() (*Host, *Error) {
	h := &Host{
		Managed:        append([]string(nil), defaultManaged...),
		Mark:           DefaultMark,
		MarkMask:       DefaultMarkMask,
		LogLimit:       defaultLogLimit,
		LogBurst:       defaultLogBurst,
		RepairInterval: DefaultRepairInterval,
	}
	path := filepath.Join(l.dir, "vmfw.toml")
	fi, lerr := os.Lstat(path)
	if errors.Is(lerr, fs.ErrNotExist) {
		return h, nil
	}
	if lerr != nil {
		return nil, &Error{File: "vmfw.toml", Msg: "cannot read: " + ioReason(lerr)}
	}
	f, err := l.open(&l.parser, entry{rel: "vmfw.toml", path: path, stem: "vmfw", mode: fi.Mode().Type()}, hostSchema)
	if err != nil {
		return nil, err
	}
	var hf hostFile
	if err := f.decode(&hf); err != nil {
		return nil, err
	}
	if hf.Managed != nil {
		seen := map[string]bool{}
		for i, p := range *hf.Managed {
			if !validIfacePattern(p) {
				return nil, f.errorAt(index("managed", i), "managed %q: not an interface pattern; use up to 15 characters of letters, digits, _ . - with an optional trailing + as wildcard, like \"tap+\"", p)
			}
			if seen[p] {
				return nil, f.errorAt(index("managed", i), "managed %q: listed twice", p)
			}
			seen[p] = true
		}
		h.Managed = append([]string{}, *hf.Managed...)
	}
	if hf.Backend != nil {
		switch b := *hf.Backend; b {
		case BackendIPTables, BackendNFTables:
			h.Backend = b
		default:
			return nil, f.errorAt("backend", "backend %q: must be \"iptables\" or \"nftables\"", b)
		}
	}
	if hf.Mark != nil {
		if err := h.setMark(f, hf.Mark); err != nil {
			return nil, err
		}
	}
	if hf.LogLimit != nil {
		limit, ok := parseLogLimit(*hf.LogLimit)
		if !ok {
			return nil, f.errorAt("log_limit", "log_limit %q: use N/second, N/minute, N/hour or N/day with N from 1 to %d", *hf.LogLimit, maxLogRate)
		}
		h.LogLimit = limit
	}
	if hf.LogBurst != nil {
		b := *hf.LogBurst
		if b < 1 || b > maxLogBurst {
			return nil, f.errorAt("log_burst", "log_burst %d: must be from 1 to %d", b, maxLogBurst)
		}
		h.LogBurst = int(b)
	}
	if hf.LogGroup != nil {
		g := *hf.LogGroup
		if g < 1 || g > maxLogGroup {
			return nil, f.errorAt("log_group", "log_group %d: must be an NFLOG group from 1 to %d", g, maxLogGroup)
		}
		h.LogGroup = int(g)
	}
	if hf.RepairInterval != nil {
		d, err := time.ParseDuration(*hf.RepairInterval)
		if err != nil || d < time.Second || d > time.Hour {
			return nil, f.errorAt("repair_interval", "repair_interval %q: use a duration from 1s to 1h, like \"10s\"", *hf.RepairInterval)
		}
		h.RepairInterval = d
	}
	if hf.MetricsListen != nil {
		addr := *hf.MetricsListen
		if addr != "" {
			if _, err := netip.ParseAddrPort(addr); err != nil {
				return nil, f.errorAt("metrics_listen", "metrics_listen %q: use ADDRESS:PORT, like \"127.0.0.1:9469\", or \"\" for off", addr)
			}
		}
		h.MetricsListen = addr
	}
	if hf.Cluster != nil {
		c, err := loadCluster(f, hf.Cluster)
		if err != nil {
			return nil, err
		}
		h.Cluster = c
	}
	return h, nil
}

// loadCluster validates the [cluster] table.
func loadCluster(f *file, cf *clusterFile) (*Cluster, *Error) {
	c := &Cluster{Prefix: DefaultClusterPrefix, LeaseTTL: DefaultClusterLeaseTTL, CacheDir: DefaultClusterCacheDir}
	if cf.Endpoints == nil || len(*cf.Endpoints) == 0 {
		return nil, f.errorAt("cluster", "[cluster]: endpoints is required, like [\"https://192.0.2.10:2379\"]")
	}
	for i, e := range *cf.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
			return nil, f.errorAt(index("cluster.endpoints", i), "cluster endpoint %q: use http://HOST:PORT or https://HOST:PORT", e)
		}
		c.Endpoints = append(c.Endpoints, e)
	}
	for _, k := range []struct {
		key string
		v   *string
		to  *string
	}{{"ca_file", cf.CA, &c.CA}, {"cert_file", cf.Cert, &c.Cert}, {"key_file", cf.Key, &c.Key}} {
		if k.v == nil {
			continue
		}
		if !filepath.IsAbs(*k.v) {
			return nil, f.errorAt("cluster."+k.key, "cluster %s %q: must be an absolute path", k.key, *k.v)
		}
		*k.to = *k.v
	}
	if (c.Cert == "") != (c.Key == "") {
		return nil, f.errorAt("cluster", "[cluster]: cert_file and key_file go together")
	}
	if cf.Prefix != nil {
		p := *cf.Prefix
		if !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") || strings.ContainsAny(p, " \t\n") {
			return nil, f.errorAt("cluster.prefix", "cluster prefix %q: must start and end with /, like \"/vmfw/\"", p)
		}
		c.Prefix = p
	}
	if cf.Host != nil {
		if !validHostName(*cf.Host) {
			return nil, f.errorAt("cluster.host", "cluster host %q: use up to 63 letters, digits, - _ and .", *cf.Host)
		}
		c.Host = *cf.Host
	} else if name, err := os.Hostname(); err == nil && validHostName(name) {
		c.Host = name
	} else {
		return nil, f.errorAt("cluster", "[cluster]: host is required (the host name %q cannot be used)", name)
	}
	if cf.LeaseTTL != nil {
		d, err := time.ParseDuration(*cf.LeaseTTL)
		if err != nil || d < 2*time.Second || d > time.Hour || d%time.Second != 0 {
			return nil, f.errorAt("cluster.lease_ttl", "cluster lease_ttl %q: use whole seconds from 2s to 1h, like \"10s\"", *cf.LeaseTTL)
		}
		c.LeaseTTL = d
	}
	if cf.CacheDir != nil {
		if !filepath.IsAbs(*cf.CacheDir) {
			return nil, f.errorAt("cluster.cache_dir", "cluster cache_dir %q: must be an absolute path", *cf.CacheDir)
		}
		c.CacheDir = filepath.Clean(*cf.CacheDir)
	}
	return c, nil
}

// validHostName accepts a cluster host name: it becomes part of etcd keys.
func validHostName(s string) bool {
	if s == "" || len(s) > 63 || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

// validIfacePattern accepts what iptables' -i/-o and physdev accept: an
// interface name with an optional trailing "+", 15 characters at most in all
// (IFNAMSIZ - 1). A lone "+" would match every interface and is refused.
func validIfacePattern(p string) bool {
	name := strings.TrimSuffix(p, "+")
	return len(p) <= maxIfName && linuxNameProblem(name) == ""
}

// setMark validates vmfw.toml's mark. One bit is the iptables backend's
// mark, five or more the nftables backend's mask (docs/nftables.md, "The
// mark"); the file's backend, when it names one, says which is wanted.
// Both backends are installed at once while a host switches, so the one
// configured must stay clear of the other's default.
func (h *Host) setMark(f *file, v any) *Error {
	m, ok := parseMark(v)
	if !ok {
		return f.errorAt("mark", "mark %s: must be a hexadecimal value, like \"0x1000\"", show(v))
	}
	n := bits.OnesCount32(m)
	switch {
	case n == 1 && h.Backend != BackendNFTables:
		if m&DefaultMarkMask != 0 {
			return f.errorAt("mark", "mark %s: is one of the nftables backend's bits (0x%x), which a switch of backends installs beside it", show(v), DefaultMarkMask)
		}
		h.Mark = m
	case n >= minMarkMaskBits && h.Backend != BackendIPTables:
		if m&DefaultMark != 0 {
			return f.errorAt("mark", "mark %s: holds the iptables backend's bit 0x%x, which a switch of backends installs beside it", show(v), DefaultMark)
		}
		h.MarkMask = m
	case h.Backend == BackendIPTables:
		return f.errorAt("mark", "mark %s: the iptables backend needs exactly one bit, like \"0x1000\"", show(v))
	case h.Backend == BackendNFTables:
		return f.errorAt("mark", "mark %s: the nftables backend needs a mask of at least %d bits, like \"0x%x\"", show(v), minMarkMaskBits, DefaultMarkMask)
	default:
		return f.errorAt("mark", "mark %s: must be one bit (the iptables backend) or a mask of at least %d bits (the nftables backend)", show(v), minMarkMaskBits)
	}
	return nil
}

// parseMark accepts "0x1000" or, since TOML has hexadecimal integers,
// 0x1000: a non-zero 32-bit packet mark.
func parseMark(v any) (uint32, bool) {
	var m uint64
	switch v := v.(type) {
	case string:
		hex, ok := strings.CutPrefix(strings.ToLower(v), "0x")
		if !ok || hex == "" || len(hex) > 8 {
			return 0, false
		}
		n, err := strconv.ParseUint(hex, 16, 32)
		if err != nil {
			return 0, false
		}
		m = n
	case int64:
		if v <= 0 || v > 0xffffffff {
			return 0, false
		}
		m = uint64(v)
	default:
		return 0, false
	}
	if m == 0 {
		return 0, false
	}
	return uint32(m), true
}

// parseLogLimit accepts a rate for iptables' limit match and returns it in
// canonical form.
func parseLogLimit(s string) (string, bool) {
	num, unit, ok := strings.Cut(s, "/")
	if !ok {
		return "", false
	}
	switch unit {
	case "second", "minute", "hour", "day":
	default:
		return "", false
	}
	n, ok := parseDecimal(num, maxLogRate)
	if !ok || n < 1 {
		return "", false
	}
	return strconv.Itoa(n) + "/" + unit, true
}

// parseDecimal parses digits only (no sign, no spaces) up to limit.
func parseDecimal(s string, limit int) (int, bool) {
	if s == "" || len(s) > 10 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	if n > limit {
		return 0, false
	}
	return n, true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// LoadHost reads only dir/vmfw.toml, as Load does: what a command needs to
// know whether cluster mode is on, or which backend to use, without
// reading every VM file.
func LoadHost(dir string) (*Host, error) {
	l := &loader{read: readFile}
	if err := l.setRoot(dir); err != nil {
		return nil, err
	}
	h, err := l.loadHost()
	if err != nil {
		return nil, err
	}
	return h, nil
}

// ChosenBackend names the backend a command uses, by the precedence every
// entry point follows: flag (--backend), then $VMFW_BACKEND, then
// vmfw.toml's backend in dir, then iptables. It is "" when the choice
// falls to a vmfw.toml that does not load: what callers of the agent send,
// so that an agent on the other backend refuses them and the command's
// own run reports the broken file.
func ChosenBackend(flag, dir string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("VMFW_BACKEND"); env != "" {
		return env
	}
	h, err := LoadHost(dir)
	if err != nil {
		return ""
	}
	if h.Backend != "" {
		return h.Backend
	}
	return BackendIPTables
}
