package agent

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/cluster"
	"github.com/vmfw/vmfw/pkg/config"
)

// Cluster mode (docs/cluster.md): with a [cluster] table in the local
// vmfw.toml the agent enforces the configuration pushed to etcd (cached
// in [cluster] cache_dir), publishes its attached interfaces and puts
// other hosts' members in the group sets.

// clusterWait bounds the wait for etcd at start before the agent goes on
// with its cached configuration.
const clusterWait = 3 * time.Second

// startCluster starts cluster mode when the local vmfw.toml asks for it.
func (a *Agent) startCluster(ctx context.Context) error {
	local, err := config.LoadHost(a.ConfigDir)
	if err != nil || local.Cluster == nil {
		return nil // file mode; reload reports a broken configuration
	}
	n := cluster.NewNode(local.Cluster, a.Log)
	a.cluster = n
	a.Log.Info("cluster mode", "host", n.Cfg.Host, "endpoints", n.Cfg.Endpoints, "prefix", n.Cfg.Prefix, "cache", n.Cache.Dir)
	return n.Start(ctx, clusterWait)
}

// waitCluster waits for the cluster node's goroutines to end, once the
// context Run gave it is done.
func (a *Agent) waitCluster() {
	if a.cluster != nil {
		a.cluster.Wait()
	}
}

// loadDir is the directory reload loads: the local configuration
// directory, or in cluster mode the cached revision (resolved, so that a
// revision stored while loading cannot mix two revisions) and its number.
func (a *Agent) loadDir() (string, int64) {
	if a.cluster == nil {
		return a.ConfigDir, 0
	}
	rev := a.cluster.Cache.Revision()
	if rev == 0 {
		return a.cluster.Cache.ConfigDir(), 0
	}
	target, err := os.Readlink(a.cluster.Cache.ConfigDir())
	if err != nil {
		return a.cluster.Cache.ConfigDir(), rev
	}
	return filepath.Join(a.cluster.Cache.Dir, target), rev
}

// clusterConfig and clusterMembers are the cluster's signals, nil (never
// ready) in file mode.
func (a *Agent) clusterConfig() chan struct{} {
	if a.cluster == nil {
		return nil
	}
	return a.cluster.ConfigChanged
}

func (a *Agent) clusterMembers() chan struct{} {
	if a.cluster == nil {
		return nil
	}
	return a.cluster.MembersChanged
}

// withRemote returns m with the other hosts' members (caller holds a.mu).
func (a *Agent) withRemote(m *config.Model) *config.Model {
	if a.remote == nil {
		return m
	}
	c := *m
	c.RemoteMembers = a.remote
	return &c
}

// membersChanged takes the other hosts' current members and enforces
// them: the group sets change, and flows they no longer allow are cut.
func (a *Agent) membersChanged(ctx context.Context) {
	remote := a.cluster.Remote()
	a.mu.Lock()
	a.remote = remote
	a.mu.Unlock()
	a.Log.Info("cluster membership changed", "remote_interfaces", a.cluster.RemoteCount())
	const reason = "cluster membership changed"
	if a.attached != nil {
		// Only set members change: the backend writes no rule unless a
		// set must appear or go.
		start := time.Now()
		ch, err := a.engine.SyncSets(ctx, a.attached)
		took := time.Since(start)
		a.Metrics.applied(took, err)
		if err != nil {
			a.Log.Error("apply failed", "reason", reason, "error", err.Error(), "took", took.String())
			return
		}
		if g, ok := a.Kernel.Backend.(backend.Generationer); ok {
			g.Mark(ctx)
		}
		a.Log.Info("applied", append([]any{"reason", reason, "took", took.Round(time.Microsecond).String(), "flows_cut", ch.FlowsCut}, changeAttrs(ch)...)...)
		return
	}
	a.sync(ctx, reason)
}

// publish tells the cluster which interfaces this host has attached and
// the configuration revision it enforces.
func (a *Agent) publish(ctx context.Context) {
	if a.cluster == nil {
		return
	}
	nics, err := a.engine.Attached(ctx)
	if err != nil {
		a.Log.Error("reading the attached interfaces to publish", "error", err.Error())
		return
	}
	a.attached = nics
	members := make([]cluster.Member, 0, len(nics))
	for _, n := range nics {
		m := cluster.Member{Tap: n.Tap, VM: n.VM.ID, VMName: n.VM.Name, IPs: append([]netip.Addr{}, n.IPs...), Groups: append([]string{}, n.Groups...)}
		if n.MAC != nil {
			m.MAC = n.MAC.String()
		}
		members = append(members, m)
	}
	a.mu.Lock()
	rev := a.revision
	a.mu.Unlock()
	a.cluster.Publish(members, rev)
}
