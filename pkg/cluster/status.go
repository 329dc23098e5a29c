package cluster

import (
	"context"
	"encoding/json"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// HostStatus is one host as vmfw cluster status shows it.
type HostStatus struct {
	HostInfo
	// Alive says whether the host's lease is alive; a dead host's
	// HostInfo is what it said last.
	Alive bool `json:"alive"`
}

// ClusterStatus is the cluster as vmfw cluster status shows it.
type ClusterStatus struct {
	// Revision is the configuration's revision in etcd, 0 when nothing
	// was pushed.
	Revision int64        `json:"revision"`
	Meta     Meta         `json:"meta"`
	Hosts    []HostStatus `json:"hosts"`
}

// ReadStatus reads every host that ever joined, whether its lease is
// alive and the revision it enforces, in one consistent read.
func ReadStatus(ctx context.Context, cli *clientv3.Client, k Keys) (*ClusterStatus, error) {
	tctx, cancel := withTimeout(ctx)
	defer cancel()
	resp, err := cli.Txn(tctx).Then(
		clientv3.OpGet(k.ConfigMeta()),
		clientv3.OpGet(k.Hosts(), clientv3.WithPrefix()),
		clientv3.OpGet(k.Known(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, err
	}
	st := &ClusterStatus{Hosts: []HostStatus{}}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
		st.Revision = kvs[0].ModRevision
		json.Unmarshal(kvs[0].Value, &st.Meta)
	}
	hosts := map[string]*HostStatus{}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		var h HostStatus
		if json.Unmarshal(kv.Value, &h.HostInfo) == nil {
			h.Host = strings.TrimPrefix(string(kv.Key), k.Known())
			hosts[h.Host] = &h
		}
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		h := &HostStatus{Alive: true}
		if json.Unmarshal(kv.Value, &h.HostInfo) == nil {
			h.Host = strings.TrimPrefix(string(kv.Key), k.Hosts())
			hosts[h.Host] = h
		}
	}
	for _, h := range hosts {
		st.Hosts = append(st.Hosts, *h)
	}
	sort.Slice(st.Hosts, func(i, j int) bool { return st.Hosts[i].Host < st.Hosts[j].Host })
	return st, nil
}
