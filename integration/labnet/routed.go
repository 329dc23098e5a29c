package labnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Routed topologies: what a hypervisor reaches through its IP stack rather
// than through its bridge. A routed host sits behind a veth that is not a
// bridge port and has addresses on the hypervisor side (an uplink the
// hypervisor routes to); a second bridge carries VMs of another subnet; and
// a few probes and knobs (a bound source address, a UDP datagram from a given
// port, sysctls, ip commands) let tests build libvirt's NAT network or a
// Proxmox routed setup out of them.

// AddRoutedHost creates a host the hypervisor reaches by routing: a
// namespace joined by a veth whose hypervisor end, ifname (for example
// "uplink0"), is NOT a bridge port but carries the addresses hvAddrs
// ("203.0.113.1/24", "2001:db8:203::1/64"), and whose own end is eth0 with
// the given MAC (random if empty) and addresses, as for AddVM. All addresses
// must be documentation addresses; IPv6 ones are added nodad. The host has
// no routes beyond its connected networks: add them with IP. It returns once
// both ends are up and every address is usable.
func (l *Lab) AddRoutedHost(ifname, mac string, hvAddrs []string, addrs ...string) (*NS, error) {
	hvp, err := parseIfaceAddrs(hvAddrs)
	if err != nil {
		return nil, fmt.Errorf("port %s: %w", ifname, err)
	}
	guest, err := l.addGuest(ifname, mac, false, addrs)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	err = sysctl(l.hv, neighSysctls(ifname)...)
	if err == nil {
		err = ipBatch(ctx, l.hv.Name, addrCmds(ifname, hvp)...)
	}
	if err == nil {
		err = waitAddrs(l.hv, hvp)
	}
	if err != nil {
		if rerr := l.Remove(guest); rerr != nil {
			err = fmt.Errorf("%w (cleanup: %v)", err, rerr)
		}
		return nil, fmt.Errorf("addressing %s: %w", ifname, err)
	}
	return guest, nil
}

// AddBridge creates another bridge in the hypervisor namespace, set up like
// the lab's own (fixed MAC, STP off, multicast snooping off, neighbour
// retransmit time 100 ms) with the given addresses (documentation addresses
// only; IPv6 ones nodad). VMs join it with AttachTo, or through the
// product's ifup of a VM whose config names it. It goes away with the lab.
func (l *Lab) AddBridge(name string, addrs ...string) error {
	if err := checkIfName(name); err != nil {
		return err
	}
	p, err := parseIfaceAddrs(addrs)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		return errors.New("labnet: lab is closed")
	case l.ports[name]:
		l.mu.Unlock()
		return fmt.Errorf("bridge %s: name already used in lab %s", name, l.id)
	}
	l.ports[name] = true
	l.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	err = ipBatch(ctx, l.hv.Name,
		fmt.Sprintf("link add %s address %s type bridge stp_state 0 mcast_snooping 0", name, randomMAC()))
	if err == nil {
		err = sysctl(l.hv, neighSysctls(name)...)
	}
	if err == nil {
		err = ipBatch(ctx, l.hv.Name, append([]string{"link set " + name + " up"}, addrCmds(name, p)...)...)
	}
	if err == nil {
		err = waitAddrs(l.hv, p)
	}
	if err != nil {
		// The bridge may or may not exist; deleting the hypervisor
		// namespace removes it in any case, so this is best effort.
		_ = ipBatch(ctx, l.hv.Name, "link delete "+name)
		l.mu.Lock()
		delete(l.ports, name)
		l.mu.Unlock()
		return fmt.Errorf("creating bridge %s: %w", name, err)
	}
	return nil
}

// AttachTo makes ifname (a hypervisor-side interface) a port of bridge, sets
// it up and waits until it forwards: AttachToBridge for any bridge of the
// hypervisor namespace.
func (l *Lab) AttachTo(ifname, bridge string) error {
	if err := checkIfName(ifname); err != nil {
		return err
	}
	if err := checkIfName(bridge); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if err := ipBatch(ctx, l.hv.Name, fmt.Sprintf("link set %s master %s up", ifname, bridge)); err != nil {
		return fmt.Errorf("attaching %s to %s: %w", ifname, bridge, err)
	}
	return l.WaitForwardingOn(ifname, bridge)
}

// WaitForwardingOn is WaitForwarding for any bridge of the hypervisor
// namespace: it waits (at most 5 s) until ifname is an up port of bridge in
// the forwarding state and the bridge is running.
func (l *Lab) WaitForwardingOn(ifname, bridge string) error {
	var st portState
	var err error
	for deadline := time.Now().Add(readyTimeout); ; time.Sleep(pollInterval) {
		st, err = showPort(l.hv, ifname)
		if err == nil && st.Operstate == "UP" && st.Master == bridge &&
			st.Linkinfo.SlaveData.State == "forwarding" {
			break
		}
		if !time.Now().Before(deadline) {
			if err != nil {
				return fmt.Errorf("waiting for %s to forward on %s: %w", ifname, bridge, err)
			}
			return fmt.Errorf("waiting for %s to forward on %s: not ready after %v (operstate %s, master %q, port state %q)",
				ifname, bridge, readyTimeout, st.Operstate, st.Master, st.Linkinfo.SlaveData.State)
		}
	}
	return waitRunning(l.hv, bridge)
}

// IP runs ip commands in the namespace, one per line as for `ip -batch`
// ("route add default via 192.0.2.1", "neigh replace 2001:db8::5 lladdr
// ..."; ip takes the family from the addresses, as a batch line cannot say
// -6), and fails naming them and ip's output.
func (n *NS) IP(lines ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	return ipBatch(ctx, n.Name, lines...)
}

// Sysctl sets kernel parameters inside the namespace: "net.ipv4.ip_forward=1"
// or, for names with dots in them, "net/ipv4/conf/eth0/accept_redirects=0".
func (n *NS) Sysctl(settings ...string) error { return sysctl(n, settings...) }

// LinkLocal waits (at most 5 s) until interface ifname of the namespace has
// an IPv6 link-local address that is no longer tentative, and returns it
// (without zone). The kernel assigns these itself when a link comes up.
func (n *NS) LinkLocal(ifname string) (netip.Addr, error) {
	type addrInfo struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		Scope     string `json:"scope"`
		Tentative bool   `json:"tentative"`
		DADFailed bool   `json:"dadfailed"`
	}
	var last string
	// Duplicate address detection keeps the address tentative for a
	// second or two, and for longer on a loaded machine (a 5 s bound ran
	// out under a benchmark beside the suite): a bound, not a measure.
	wait := 3 * readyTimeout
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(pollInterval) {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		out, err := run(ctx, "ip", "-n", n.Name, "-j", "-6", "addr", "show", "dev", ifname, "scope", "link")
		cancel()
		if err != nil {
			return netip.Addr{}, err
		}
		last = strings.TrimSpace(string(out))
		var links []struct {
			AddrInfo []addrInfo `json:"addr_info"`
		}
		if err := json.Unmarshal(out, &links); err != nil {
			return netip.Addr{}, fmt.Errorf("parsing ip -j addr show dev %s in %s: %w: %s", ifname, n.Name, err, out)
		}
		for _, l := range links {
			for _, a := range l.AddrInfo {
				if a.Family != "inet6" || a.Scope != "link" || a.Tentative || a.DADFailed {
					continue
				}
				if ip, err := netip.ParseAddr(a.Local); err == nil && ip.IsLinkLocalUnicast() {
					return ip, nil
				}
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("%s in %s has no usable link-local address after %v: %s", ifname, n.Name, wait, last)
}

// TCPConnectFrom is TCPConnect with the connection's source address bound
// to src, an address of ns ("" lets the kernel choose, as TCPConnect does).
// A host with several addresses can so probe a rule that matches one source
// address and not another.
func TCPConnectFrom(ctx context.Context, ns *NS, src, addr string, timeout time.Duration) (Result, error) {
	if src == "" {
		return TCPConnect(ctx, ns, addr, timeout)
	}
	ap, err := parseTarget(addr)
	if err != nil {
		return Failed, err
	}
	sa, err := parseProbeAddr("probe source", src)
	if err != nil {
		return Failed, err
	}
	if sa.Is4() != ap.Addr().Is4() {
		return Failed, fmt.Errorf("probe source %s and target %s are of different families", src, addr)
	}
	res, err := probeOn(ns, ap.Addr(), unix.SOCK_STREAM, func(fd int) (Result, error) {
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(sa, 0))); err != nil {
			return Failed, fmt.Errorf("binding %s: %w", src, err)
		}
		return connectFD(ctx, fd, ap, timeout)
	})
	if err != nil {
		return Failed, fmt.Errorf("tcp probe %s -> %s from %s: %w", ns.Name, addr, src, err)
	}
	return res, nil
}

// SendUDP sends payload as a UDP datagram from src to dst through the IP
// stack of ns (so its routes, netfilter hooks and neighbour resolution
// apply), three times 100 ms apart so that one lost to address resolution
// does not matter. src and dst are "ADDR:PORT" or "[ADDR%ZONE]:PORT"; src's
// address may be unspecified (0.0.0.0, ::) to let the kernel choose. Every
// address must be a documentation address, or an IPv6 link-local unicast
// or multicast address with a zone naming an interface of ns (the zone
// keeps it on that link). Broadcast is allowed (SO_BROADCAST), so dst may be
// a subnet's broadcast address such as 192.0.2.255. Pair it with
// StartCapture and a NewMarker payload to see whether it arrived.
func SendUDP(ns *NS, src, dst string, payload []byte) error {
	sap, err := parseUDPEnd(src, true)
	if err != nil {
		return err
	}
	dap, err := parseUDPEnd(dst, false)
	if err != nil {
		return err
	}
	if sap.Addr().Is4() != dap.Addr().Is4() {
		return fmt.Errorf("udp %s -> %s: addresses of different families", src, dst)
	}
	err = ns.Do(func() error {
		family := unix.AF_INET
		if dap.Addr().Is6() {
			family = unix.AF_INET6
		}
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
			return fmt.Errorf("setting SO_BROADCAST: %w", err)
		}
		ssa, err := zonedSockaddr(sap)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, ssa); err != nil {
			return fmt.Errorf("binding %s: %w", src, err)
		}
		dsa, err := zonedSockaddr(dap)
		if err != nil {
			return err
		}
		for i := range 3 {
			if i > 0 {
				time.Sleep(100 * time.Millisecond)
			}
			if err := unix.Sendto(fd, payload, 0, dsa); err != nil {
				return fmt.Errorf("sending to %s: %w", dst, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("udp %s -> %s in %s: %w", src, dst, ns.Name, err)
	}
	return nil
}

// parseUDPEnd parses one end of SendUDP and checks that the lab may use it.
func parseUDPEnd(s string, source bool) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("udp address %q: want ADDR:PORT: %w", s, err)
	}
	a := ap.Addr()
	if a.Is4In6() {
		a = a.Unmap()
		ap = netip.AddrPortFrom(a, ap.Port())
	}
	switch {
	case source && a.IsUnspecified() && a.Zone() == "":
		return ap, nil
	case a.Is6() && (a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast()) && a.Zone() != "":
		return ap, nil
	case a.Zone() == "" && IsDocAddr(a):
		return ap, nil
	}
	return netip.AddrPort{}, fmt.Errorf("udp address %s: not a documentation address, nor a link-local IPv6 address with a zone", s)
}

// zonedSockaddr is sockaddr with the zone (an interface name) resolved to
// its index; it must run inside Do.
func zonedSockaddr(ap netip.AddrPort) (unix.Sockaddr, error) {
	a := ap.Addr()
	if a.Is4() {
		return sockaddr(ap), nil
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.WithZone("").As16()}
	if z := a.Zone(); z != "" {
		idx, err := ifindex(z)
		if err != nil {
			return nil, fmt.Errorf("zone %s: %w", z, err)
		}
		sa.ZoneId = uint32(idx)
	}
	return sa, nil
}
