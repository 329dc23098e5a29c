package labnet

import (
	"context"
	"errors"
	"fmt"
)

// Cluster is several hypervisors (Labs) whose bridges share one L2
// segment, as the hypervisors of a real cluster share their VM network,
// and whose hypervisor namespaces reach a management network, where the
// cluster's store (etcd) listens.
//
// A "core" namespace holds two bridges: seg0, the VM segment, with each
// hypervisor's uplink up0 (a port of its bridge) at the other end of a
// veth pair; and mgmt0, the management network 198.51.100.0/24, with
// the core's own address 198.51.100.1 and each hypervisor's mg0 at the
// other end of a veth pair, addressed 198.51.100.(11+i). The core's
// ends are spI and mpI. Hypervisor i's
// bridge has the addresses 192.0.2.(241+i)/24 and 2001:db8::f:(i+1)/64.
// Close deletes every namespace.
type Cluster struct {
	// Labs are the hypervisors, in order.
	Labs []*Lab
	// Core holds the segment and the management network.
	Core *NS
}

// CoreAddr is the core namespace's management address.
const CoreAddr = "198.51.100.1"

// MgmtAddr returns hypervisor i's management address.
func MgmtAddr(i int) string { return fmt.Sprintf("198.51.100.%d", 11+i) }

// NewCluster builds n hypervisors sharing a segment and a management
// network. On error nothing it created is left behind.
func NewCluster(n int) (_ *Cluster, err error) {
	c := &Cluster{}
	done := false
	defer func() {
		if !done {
			if cerr := c.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, c.Core, err = FreshNS("vc", 2, "core"); err != nil {
		return nil, fmt.Errorf("creating core namespace: %w", err)
	}
	if err := ipBatch(ctx, c.Core.Name, "link set lo up",
		"link add seg0 type bridge stp_state 0 mcast_snooping 0",
		"link set seg0 up",
		"link add mgmt0 type bridge stp_state 0",
		"addr add "+CoreAddr+"/24 dev mgmt0",
		"link set mgmt0 up",
	); err != nil {
		return nil, fmt.Errorf("core bridges: %w", err)
	}
	for i := range n {
		lab, err := New(Options{BridgeAddrs: []string{fmt.Sprintf("192.0.2.%d/24", 241+i), fmt.Sprintf("2001:db8::f:%d/64", i+1)}})
		if err != nil {
			return nil, err
		}
		c.Labs = append(c.Labs, lab)
		hv := lab.Hypervisor().Name
		seg, mg := fmt.Sprintf("sp%d", i), fmt.Sprintf("mp%d", i)
		if err := ipBatch(ctx, hv,
			"link add up0 type veth peer name "+seg+" netns "+c.Core.Name,
			"link add mg0 type veth peer name "+mg+" netns "+c.Core.Name,
			"link set up0 master "+lab.Bridge()+" up",
			"addr add "+MgmtAddr(i)+"/24 dev mg0",
			"link set mg0 up",
		); err != nil {
			return nil, fmt.Errorf("hypervisor %d uplinks: %w", i, err)
		}
		if err := ipBatch(ctx, c.Core.Name,
			"link set "+seg+" master seg0 up",
			"link set "+mg+" master mgmt0 up",
		); err != nil {
			return nil, fmt.Errorf("hypervisor %d uplinks in the core: %w", i, err)
		}
		if err := lab.WaitForwarding("up0"); err != nil {
			return nil, err
		}
	}
	done = true
	return c, nil
}

// SetManagement cuts (up false) or restores hypervisor i's link to the
// management network: a partition between it and the store.
func (c *Cluster) SetManagement(i int, up bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	state := "down"
	if up {
		state = "up"
	}
	return ipBatch(ctx, c.Core.Name, fmt.Sprintf("link set mp%d %s", i, state))
}

// Close deletes every lab and the core namespace.
func (c *Cluster) Close() error {
	var errs []error
	for _, l := range c.Labs {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Core != nil {
		if err := delNS(c.Core.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
