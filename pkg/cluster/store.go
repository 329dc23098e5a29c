// Package cluster is vmfw's cluster mode (docs/cluster.md): the
// configuration and the cluster-wide group membership kept in etcd. Push
// and Pull move a configuration directory in and out of etcd; Cache keeps
// the last configuration a host received, for outages; Node is what an
// agent runs: it follows the configuration, publishes the host's attached
// interfaces under a lease it keeps alive, and follows every other host's.
package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/netip"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/vmfw/vmfw/pkg/config"
)

// Keys names what vmfw keeps under a prefix:
//
//	PREFIX config/meta            the pushed configuration's summary (Meta)
//	PREFIX config/files           its files (vmfw.toml, sets/*.toml, groups/*.toml, vms/*.toml), one archive
//	PREFIX config/parts/ID/N      or that archive in parts, when one value is too large for etcd
//	PREFIX members/HOST/TAP       an attached interface (Member), under HOST's lease
//	PREFIX hosts/HOST             HOST's liveness and revision (HostInfo), under its lease
//	PREFIX known/HOST             every host that ever joined (HostInfo at join)
type Keys struct{ Prefix string }

// ConfigPrefix is where the configuration lives.
func (k Keys) ConfigPrefix() string { return k.Prefix + "config/" }

// ConfigMeta is the configuration's summary; its ModRevision is the
// configuration's revision.
func (k Keys) ConfigMeta() string { return k.Prefix + "config/meta" }

// ConfigFiles holds the configuration's files as one archive (see
// encodeFiles): one key, so that a push of any number of files is two
// puts in one transaction, within etcd's --max-txn-ops.
func (k Keys) ConfigFiles() string { return k.Prefix + "config/files" }

// ConfigParts is the prefix of the parts of an archive too large for one
// value (see Push); the meta key names them.
func (k Keys) ConfigParts() string { return k.Prefix + "config/parts/" }

// configPart is part i of the archive of digest sum cut in parts of size
// bytes: the name says both, so that the parts of two pushes never mix.
func (k Keys) configPart(sum string, size, i int) string {
	return fmt.Sprintf("%s%s-%d/%04d", k.ConfigParts(), sum[:16], size, i)
}

// Members is the prefix of every host's members.
func (k Keys) Members() string { return k.Prefix + "members/" }

// MembersOf is the prefix of host's members.
func (k Keys) MembersOf(host string) string { return k.Prefix + "members/" + host + "/" }

// Hosts is the prefix of the live hosts' keys.
func (k Keys) Hosts() string { return k.Prefix + "hosts/" }

// Known is the prefix of every host that ever joined.
func (k Keys) Known() string { return k.Prefix + "known/" }

// Meta summarises a pushed configuration.
type Meta struct {
	Files    int       `json:"files"`
	SHA256   string    `json:"sha256"`
	PushedAt time.Time `json:"pushed_at"`
	PushedBy string    `json:"pushed_by,omitempty"`
	// Parts is the number of parts the archive was written in under
	// ConfigParts, 0 when it is the one value of ConfigFiles.
	Parts int `json:"parts,omitempty"`
	// PartSize is the size of every part but the last.
	PartSize int `json:"part_size,omitempty"`
	// Archive is the SHA-256 of the whole archive, which the parts
	// must make up.
	Archive string `json:"archive,omitempty"`
}

// Member is one interface attached on a host: what every other host puts
// in the sets of its groups.
type Member struct {
	Host   string       `json:"host"`
	Tap    string       `json:"tap"`
	VM     int          `json:"vm"`
	VMName string       `json:"vm_name,omitempty"`
	MAC    string       `json:"mac,omitempty"`
	IPs    []netip.Addr `json:"ips"`
	Groups []string     `json:"groups"`
}

// HostInfo is what a host says about itself.
type HostInfo struct {
	Host string `json:"host"`
	// Revision is the configuration revision the host enforces, 0 before
	// it enforced one.
	Revision int64 `json:"revision"`
	// Members counts its attached interfaces.
	Members int `json:"members"`
	// LeaseTTL is its lease's TTL in seconds.
	LeaseTTL int64     `json:"lease_ttl"`
	Since    time.Time `json:"since"`
}

// Dial returns a client of c's endpoints. With wait it fails when no
// endpoint answers within a few seconds (the CLI); without, it returns at
// once and connects in the background (the agent, which must start
// during an outage). opts are added to the gRPC dial options: a program
// whose etcd listens inside a network namespace passes a dialer that
// opens its sockets there (grpc.WithContextDialer).
func Dial(c *config.Cluster, wait bool, opts ...grpc.DialOption) (*clientv3.Client, error) {
	var tlsConf *tls.Config
	if c.CA != "" || c.Cert != "" {
		info := transport.TLSInfo{TrustedCAFile: c.CA, CertFile: c.Cert, KeyFile: c.Key}
		var err error
		if tlsConf, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("cluster TLS: %w", err)
		}
	}
	cfg := clientv3.Config{
		Endpoints:            c.Endpoints,
		TLS:                  tlsConf,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
		// Reconnect within a second of etcd coming back, not after
		// gRPC's default backoff of up to two minutes.
		DialOptions: append([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		})}, opts...),
	}
	if wait {
		cfg.DialTimeout = 3 * time.Second
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd %v: %w", c.Endpoints, err)
	}
	return cli, nil
}

// txnOps is the most operations vmfw puts in one etcd transaction:
// etcd refuses a transaction of more than its --max-txn-ops (128 by
// default), so larger writes are split.
const txnOps = 100

// opTimeout bounds one etcd request.
const opTimeout = 3 * time.Second

func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, opTimeout)
}
