package cni

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vmfw/vmfw/integration/firstvm"
	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
)

// cniShape is one kind of attachment a container may have: per interface,
// the address families its IPAM hands out (none: the bridge plugin runs
// without IPAM, layer 2 only) and more keys for vmfw's plugin
// configuration.
type cniShape struct {
	name   string
	ifaces []cniIface
}

type cniIface struct {
	families []string // "v4", "v6"
	extra    map[string]any
}

// cniShapes are the shapes of the report that a host's first VM did not
// start, as far as CNI can express them: IPv4 only, IPv6 only, both, no
// addresses, anti-spoofing off, and a container with an IPv4 interface
// and an IPv6 one.
var cniShapes = []cniShape{
	{name: "ipv4", ifaces: []cniIface{{families: []string{"v4"}}}},
	{name: "ipv6", ifaces: []cniIface{{families: []string{"v6"}}}},
	{name: "dual", ifaces: []cniIface{{families: []string{"v4", "v6"}}}},
	{name: "no-ips", ifaces: []cniIface{{}}},
	{name: "antispoof-off", ifaces: []cniIface{{families: []string{"v4"}, extra: map[string]any{"antispoof": false}}}},
	{name: "two-ifaces", ifaces: []cniIface{{families: []string{"v4"}}, {families: []string{"v6"}}}},
}

// shapeConflist is the network of interface i of shape k (k < 0: the
// client every case probes from): bridge cni-vmfw0 with host-local IPAM
// for its families (addresses of its own within 198.51.100.0/24 and
// 2001:db8:1::/64, so that the networks never hand out one address
// twice), then vmfw with group web and policy_in reject.
func (h *host) shapeConflist(backend string, k, i int, families []string, extra map[string]any) *libcni.NetworkConfigList {
	h.t.Helper()
	name, lo := fmt.Sprintf("first-%d-%d", k, i), 10+20*k+10*i
	if k < 0 {
		name, lo = "first-client", 200
	}
	bridge := map[string]any{"type": "bridge", "bridge": "cni-vmfw0"}
	var ranges [][]map[string]string
	for _, fam := range families {
		if fam == "v4" {
			ranges = append(ranges, []map[string]string{{"subnet": "198.51.100.0/24", "gateway": "198.51.100.1",
				"rangeStart": fmt.Sprintf("198.51.100.%d", lo), "rangeEnd": fmt.Sprintf("198.51.100.%d", lo+9)}})
		} else {
			ranges = append(ranges, []map[string]string{{"subnet": "2001:db8:1::/64", "gateway": "2001:db8:1::1",
				"rangeStart": fmt.Sprintf("2001:db8:1::%d", lo), "rangeEnd": fmt.Sprintf("2001:db8:1::%d", lo+9)}})
		}
	}
	if len(ranges) > 0 {
		bridge["isGateway"] = true
		bridge["ipam"] = map[string]any{"type": "host-local", "dataDir": h.ipam, "ranges": ranges}
	}
	vmfw := map[string]any{"type": "vmfw", "configDir": h.config, "stateDir": h.state, "iptables": backend,
		"groups": []string{"web"}, "policyIn": "reject"}
	for key, v := range extra {
		vmfw[key] = v
	}
	return h.networkList(map[string]any{"cniVersion": "1.1.0", "name": name, "plugins": []any{bridge, vmfw}}, "conflist")
}

// free returns an error naming the first of vmfw's objects in the host's
// kernel, nil on a host where vmfw never ran or was flushed.
func (h *host) free(backend string) error {
	h.t.Helper()
	return labtest.Free(h.t, h.ns, h.save(backend), "veth")
}

// applied fails the test unless an apply has nothing to do.
func (h *host) applied(backend, after string) {
	h.t.Helper()
	if out := h.vmfw(backend, "apply", "--dry-run"); !strings.HasPrefix(out, "# no changes") {
		h.t.Errorf("after %s an apply would change:\n%s", after, out)
	}
}

// attach runs ADD for interface ifName of c on list and returns the
// addresses it got.
func (h *host) attach(list *libcni.NetworkConfigList, c *container, ifName string) []string {
	h.t.Helper()
	rt := *c.rt
	rt.IfName = ifName
	var res *types100.Result
	err := h.in(func(ctx context.Context) error {
		r, err := h.client.AddNetworkList(ctx, list, &rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		h.t.Fatalf("ADD %s %s on %s: %v", c.id, ifName, list.Name, err)
	}
	var addrs []string
	for _, ip := range res.IPs {
		addrs = append(addrs, ip.Address.IP.String())
	}
	return addrs
}

// detach runs DEL for interface ifName of c on list.
func (h *host) detach(list *libcni.NetworkConfigList, c *container, ifName string) {
	h.t.Helper()
	rt := *c.rt
	rt.IfName = ifName
	if err := h.in(func(ctx context.Context) error { return h.client.DelNetworkList(ctx, list, &rt) }); err != nil {
		h.t.Fatalf("DEL %s %s on %s: %v", c.id, ifName, list.Name, err)
	}
}

// TestCNIFirstOnEmptyHost runs ADD as the first thing on a host where
// vmfw never ran, for a container of every shape, then for a container
// of the next shape; for every other shape a DEL of the container, before
// it was ever added, comes first. After each command the host holds what
// a full apply writes (or, after a DEL that had nothing to remove,
// nothing at all), and real connections from a client container reach
// each interface as its shape says: group web's http connects, ssh is
// rejected, and a container without addresses can claim none. Then
// everything is deleted, vmfw flush empties the host, and the next shape
// begins.
func TestCNIFirstOnEmptyHost(t *testing.T) {
	t.Parallel()
	labtest.EachBackend(t, []string{"nft", "legacy"}, testCNIFirst)
}

func testCNIFirst(t *testing.T, backend string) {
	h := newHost(t)
	clientList := h.shapeConflist(backend, -1, 0, []string{"v4", "v6"}, nil)
	firstvm.EachPair(t, &h.t, cniShapes, func(s cniShape) string { return s.name }, func(t *testing.T, k, j int) {
		if err := h.free(backend); err != nil {
			t.Fatalf("before the first command: %v", err)
		}
		type attached struct {
			list   *libcni.NetworkConfigList
			c      *container
			ifName string
		}
		var all []attached
		// Its namespace alone: it is attached after the others.
		client := h.newContainer("client", nil)
		var probes []labtest.Probe
		for _, s := range []int{k, j} {
			c := h.newContainer(fmt.Sprintf("s%d", s), nil)
			for i, ifc := range cniShapes[s].ifaces {
				ifName := fmt.Sprintf("eth%d", i)
				list := h.shapeConflist(backend, s, i, ifc.families, ifc.extra)
				if s == k && k%2 == 1 && i == 0 {
					h.detach(list, c, ifName)
					if h.free(backend) != nil {
						h.applied(backend, "DEL of a container never added, the first command")
					}
				}
				addrs := h.attach(list, c, ifName)
				all = append(all, attached{list, c, ifName})
				h.applied(backend, fmt.Sprintf("ADD of %s %s (%s)", c.id, ifName, cniShapes[s].name))
				what := cniShapes[s].name + " " + ifName
				for _, a := range addrs {
					probes = append(probes,
						labtest.Probe{What: what, From: client.ns, Addr: a, Port: 80, Want: labnet.Connected},
						labtest.Probe{What: what, From: client.ns, Addr: a, Port: 22, Want: labnet.Refused})
				}
				if len(ifc.families) == 0 {
					// An address of its own, which its ips do not list.
					a := fmt.Sprintf("198.51.100.%d", 190+s)
					if err := c.ns.IP("addr add " + a + "/24 dev " + ifName); err != nil {
						t.Fatal(err)
					}
					// Anti-spoofing lets it claim no address in ARP: any
					// outcome but a connection will do.
					for _, port := range []int{80, 22} {
						probes = append(probes, labtest.Probe{What: what, From: client.ns, Addr: a, Port: port, Blocked: true})
					}
				}
			}
			h.serve(c, 80, 22)
		}
		h.attach(clientList, client, "eth0")
		all = append(all, attached{clientList, client, "eth0"})
		labtest.ExpectProbes(t, probeTimeout, probes)
		for i := len(all) - 1; i >= 0; i-- {
			h.detach(all[i].list, all[i].c, all[i].ifName)
		}
		if recs := labtest.Records(t, h.state); len(recs) != 0 {
			t.Errorf("records after every DEL: %v", recs)
		}
		h.applied(backend, "every DEL")
		h.vmfw(backend, "flush")
	})
}
