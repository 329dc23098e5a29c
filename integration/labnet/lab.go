package labnet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultBridge is the bridge name used when Options.Bridge is empty.
const DefaultBridge = "vmbr0"

// DefaultBridgeAddrs are the bridge addresses used when Options.BridgeAddrs is
// empty.
var DefaultBridgeAddrs = []string{"192.0.2.1/24", "2001:db8::1/64"}

const (
	// cmdTimeout bounds every ip command the lab runs.
	cmdTimeout = 30 * time.Second
	// readyTimeout bounds every wait for a link, port or address to settle.
	readyTimeout = 5 * time.Second
	// pollInterval is the pause between two readiness checks.
	pollInterval = 10 * time.Millisecond
	// guestIf is the name of a VM's or external host's interface.
	guestIf = "eth0"
)

// Options configures a Lab. The zero value is usable.
type Options struct {
	// Bridge is the name of the bridge in the hypervisor namespace.
	// Default DefaultBridge ("vmbr0").
	Bridge string
	// BridgeAddrs are the bridge's addresses, "ADDR/PREFIXLEN", all in the
	// documentation ranges. Default DefaultBridgeAddrs.
	BridgeAddrs []string
}

// Lab is a set of network namespaces that model one hypervisor: a
// "hypervisor" namespace holding a Linux bridge, VM namespaces joined to it
// by veth pairs whose hypervisor end is named like a tap (tap101i0) and whose
// VM end is eth0, and "external" hosts joined through a veth attached to the
// bridge (an uplink).
//
// The namespaces are named "<id>-hv" and "<id>-<port>" (vf3a9c-tap101i0),
// with a random per-lab id, so labs in parallel tests do not collide. The lab
// never changes the namespace the process runs in: every ip command names one
// of the lab's namespaces, and the veth pairs are created there.
//
// In the hypervisor namespace the lab sets net.ipv6.conf.all.forwarding=0
// and leaves net.bridge.bridge-nf-call-iptables/ip6tables to the product. In
// every namespace it creates it sets the ICMP error rate limits to 0
// (net.ipv4.icmp_ratelimit, net.ipv6.icmp.ratelimit) so that probes which
// expect an ICMP error get one however many run in a row, and on the bridge
// and every eth0 the neighbour retransmit time to 100 ms, so that address
// resolution recovers quickly after a failed probe and a missing host is
// Unreachable after about 300 ms (3 s with the kernel default). The bridge
// has a fixed MAC (it does not change as ports come and go), STP off and
// multicast snooping off, so a port forwards as soon as it is up.
//
// New, AddVM and AddExternal undo their own work when they fail. Once New
// has returned a Lab, call Close (defer, t.Cleanup) whatever happens next. A
// Lab is safe for concurrent use.
type Lab struct {
	id     string
	bridge string
	hv     *NS

	mu      sync.Mutex
	guests  []*NS           // VM and external namespaces, in creation order
	ports   map[string]bool // hypervisor-side interface names in use
	closers []closer        // servers, streams, captures started in the lab
	closed  bool
}

// New creates the hypervisor namespace with its bridge. On error nothing it
// created is left behind.
func New(opts Options) (lab *Lab, err error) {
	if opts.Bridge == "" {
		opts.Bridge = DefaultBridge
	}
	if err := checkIfName(opts.Bridge); err != nil {
		return nil, err
	}
	if len(opts.BridgeAddrs) == 0 {
		opts.BridgeAddrs = DefaultBridgeAddrs
	}
	addrs, err := parseIfaceAddrs(opts.BridgeAddrs)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", opts.Bridge, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	// "hv" is reserved: a guest's namespace is named after its port.
	l := &Lab{bridge: opts.Bridge, ports: map[string]bool{opts.Bridge: true, "hv": true}}
	id, ns, err := FreshNS("vf", 2, "hv")
	if err != nil {
		return nil, fmt.Errorf("creating hypervisor namespace: %w", err)
	}
	l.id, ns.lab, l.hv = id, l, ns
	done := false
	defer func() { // also on panic
		if !done {
			if cerr := l.Close(); cerr != nil && err != nil {
				err = fmt.Errorf("%w (cleanup: %v)", err, cerr)
			}
		}
	}()

	hv := l.hv.Name
	if err := ipBatch(ctx, hv, "link set lo up",
		fmt.Sprintf("link add %s address %s type bridge stp_state 0 mcast_snooping 0", l.bridge, randomMAC()),
	); err != nil {
		return nil, fmt.Errorf("creating bridge %s: %w", l.bridge, err)
	}
	if err := sysctl(l.hv, append(append([]string{"net.ipv6.conf.all.forwarding=0"},
		probeSysctls...), neighSysctls(l.bridge)...)...); err != nil {
		return nil, err
	}
	batch := append([]string{"link set " + l.bridge + " up"}, addrCmds(l.bridge, addrs)...)
	if err := ipBatch(ctx, hv, batch...); err != nil {
		return nil, fmt.Errorf("configuring bridge %s: %w", l.bridge, err)
	}
	if err := waitAddrs(l.hv, addrs); err != nil {
		return nil, err
	}
	done = true
	return l, nil
}

// ID returns the lab's random id, the prefix of all its namespace names.
func (l *Lab) ID() string { return l.id }

// Hypervisor returns the hypervisor namespace (the one with the bridge).
func (l *Lab) Hypervisor() *NS { return l.hv }

// Bridge returns the bridge's name.
func (l *Lab) Bridge() string { return l.bridge }

// AddVM creates a VM namespace joined to the hypervisor by a veth pair. The
// hypervisor end is named tap (for example "tap101i0"), is up and is NOT a
// bridge port: the product's ifup attaches it, or AttachToBridge does. The VM
// end is eth0 with the given MAC (random if empty) and addresses
// ("192.0.2.101/24", "2001:db8::101/64"; IPv6 ones are added nodad), up, with
// lo up. The VM namespace is named "<id>-<tap>".
func (l *Lab) AddVM(tap, mac string, addrs ...string) (*NS, error) {
	return l.addGuest(tap, mac, false, addrs)
}

// AddExternal creates an external host: a namespace joined through a veth
// whose hypervisor end is named ifname (for example "uplink0") and IS
// attached to the bridge. Its own end is eth0 with the given MAC (random if
// empty) and addresses, as for AddVM. It returns once the port forwards.
func (l *Lab) AddExternal(ifname, mac string, addrs ...string) (*NS, error) {
	return l.addGuest(ifname, mac, true, addrs)
}

func (l *Lab) addGuest(port, mac string, attach bool, addrStrs []string) (guest *NS, err error) {
	if err := checkIfName(port); err != nil {
		return nil, err
	}
	if mac == "" {
		mac = randomMAC()
	}
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return nil, fmt.Errorf("port %s: bad MAC %q", port, mac)
	}
	addrs, err := parseIfaceAddrs(addrStrs)
	if err != nil {
		return nil, fmt.Errorf("port %s: %w", port, err)
	}

	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("labnet: lab is closed")
	}
	if l.ports[port] {
		l.mu.Unlock()
		return nil, fmt.Errorf("port %s: name already used in lab %s", port, l.id)
	}
	l.ports[port] = true
	guest = &NS{Name: l.id + "-" + port, lab: l}
	l.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := AddNS(guest.Name); err != nil {
		l.mu.Lock()
		delete(l.ports, port)
		l.mu.Unlock()
		return nil, fmt.Errorf("creating namespace for %s: %w", port, err)
	}
	l.mu.Lock()
	l.guests = append(l.guests, guest)
	closed := l.closed
	l.mu.Unlock()
	if closed {
		// Close ran meanwhile and may have missed this namespace.
		return nil, errors.Join(errors.New("labnet: lab is closed"), delNS(guest.Name))
	}
	done := false
	defer func() { // also on panic
		if !done {
			if derr := l.removeGuest(guest); derr != nil && err != nil {
				err = fmt.Errorf("%w (cleanup: %v)", err, derr)
			}
		}
	}()

	// The veth is created in the hypervisor namespace with its peer placed
	// straight into the guest namespace, so neither end ever exists in the
	// namespace this process runs in.
	if err := ipBatch(ctx, l.hv.Name,
		fmt.Sprintf("link add %s type veth peer name %s address %s netns %s", port, guestIf, hw, guest.Name),
	); err != nil {
		return nil, fmt.Errorf("adding veth %s: %w", port, err)
	}
	if err := sysctl(guest, append(slices.Clone(probeSysctls), neighSysctls(guestIf)...)...); err != nil {
		return nil, err
	}
	batch := []string{"link set lo up", "link set " + guestIf + " up"}
	batch = append(batch, addrCmds(guestIf, addrs)...)
	if err := ipBatch(ctx, guest.Name, batch...); err != nil {
		return nil, fmt.Errorf("configuring %s in %s: %w", guestIf, guest.Name, err)
	}
	hvCmd := "link set " + port + " up"
	if attach {
		hvCmd = fmt.Sprintf("link set %s master %s up", port, l.bridge)
	}
	if err := ipBatch(ctx, l.hv.Name, hvCmd); err != nil {
		return nil, fmt.Errorf("setting up %s: %w", port, err)
	}
	if err := waitAddrs(guest, addrs); err != nil {
		return nil, err
	}
	if err := waitRunning(guest, guestIf); err != nil {
		return nil, err
	}
	if attach {
		if err := l.WaitForwarding(port); err != nil {
			return nil, err
		}
	} else if err := waitRunning(l.hv, port); err != nil {
		return nil, err
	}
	done = true
	return guest, nil
}

// removeGuest deletes a guest namespace and forgets it.
func (l *Lab) removeGuest(g *NS) error {
	if err := delNS(g.Name); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, x := range l.guests {
		if x == g {
			l.guests = append(l.guests[:i], l.guests[i+1:]...)
			break
		}
	}
	delete(l.ports, strings.TrimPrefix(g.Name, l.id+"-"))
	return nil
}

// AttachToBridge makes ifname (a hypervisor-side interface) a port of the
// bridge, sets it up and waits until it forwards. It is what the product's
// ifup does, for tests that run without it.
func (l *Lab) AttachToBridge(ifname string) error {
	if err := checkIfName(ifname); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if err := ipBatch(ctx, l.hv.Name, fmt.Sprintf("link set %s master %s up", ifname, l.bridge)); err != nil {
		return fmt.Errorf("attaching %s to %s: %w", ifname, l.bridge, err)
	}
	return l.WaitForwarding(ifname)
}

// WaitForwarding waits (at most 5 s) until ifname is an operationally up
// port of the bridge in the forwarding state and the bridge itself is up.
// Call it after the product attached a tap, before sending traffic.
func (l *Lab) WaitForwarding(ifname string) error {
	var st portState
	var err error
	for deadline := time.Now().Add(readyTimeout); ; time.Sleep(pollInterval) {
		st, err = showPort(l.hv, ifname)
		if err == nil && st.Operstate == "UP" && st.Master == l.bridge &&
			st.Linkinfo.SlaveData.State == "forwarding" {
			break
		}
		if !time.Now().Before(deadline) {
			if err != nil {
				return fmt.Errorf("waiting for %s to forward: %w", ifname, err)
			}
			return fmt.Errorf("waiting for %s to forward: not ready after %v (operstate %s, master %q, port state %q)",
				ifname, readyTimeout, st.Operstate, st.Master, st.Linkinfo.SlaveData.State)
		}
	}
	return waitRunning(l.hv, l.bridge)
}

// closer stops something running in namespace ns.
type closer struct {
	ns string
	fn func()
}

// track registers fn, which stops something running in ns, to run when the
// lab closes or ns is removed. If the lab is already closed fn runs at once.
func (l *Lab) track(ns string, fn func()) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		fn()
		return
	}
	l.closers = append(l.closers, closer{ns, fn})
	l.mu.Unlock()
}

// stopIn runs, newest first, and forgets the closers of namespace ns, or of
// every namespace if ns is empty.
func (l *Lab) stopIn(ns string) {
	l.mu.Lock()
	var run, keep []closer
	for _, c := range l.closers {
		if ns == "" || c.ns == ns {
			run = append(run, c)
		} else {
			keep = append(keep, c)
		}
	}
	l.closers = keep
	l.mu.Unlock()
	for i := len(run) - 1; i >= 0; i-- {
		run[i].fn()
	}
}

// Remove deletes a VM or external host created by AddVM or AddExternal:
// servers, streams and captures started in it are stopped, then its
// namespace is deleted, which destroys its veth pair, so its tap disappears
// from the hypervisor as when a VM stops. Its port name can then be reused.
func (l *Lab) Remove(guest *NS) error {
	l.mu.Lock()
	known := slices.Contains(l.guests, guest)
	l.mu.Unlock()
	if !known {
		return fmt.Errorf("removing %v: not a VM or external host of lab %s", guest, l.id)
	}
	l.stopIn(guest.Name)
	// Deleting the hypervisor end first destroys the pair at once; the
	// kernel tears a deleted namespace down asynchronously, and its links
	// would linger for a while.
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	port := strings.TrimPrefix(guest.Name, l.id+"-")
	if err := ipBatch(ctx, l.hv.Name, "link delete "+port); err != nil {
		if _, serr := showPort(l.hv, port); serr == nil {
			return fmt.Errorf("removing %s: %w", guest.Name, err)
		} // already gone
	}
	return l.removeGuest(guest)
}

// Close stops every server, stream and capture started in the lab's
// namespaces and deletes all its namespaces (which removes their links).
// It is idempotent; after a partial failure a second Close retries what is
// left.
//
// Sockets opened directly with NS.Do are not tracked: until they are closed
// they keep their namespace, and its links, alive (though no longer listed
// by ip netns).
func (l *Lab) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.stopIn("")

	var errs []error
	l.mu.Lock()
	guests := append([]*NS(nil), l.guests...)
	l.mu.Unlock()
	for i := len(guests) - 1; i >= 0; i-- {
		if err := l.removeGuest(guests[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if l.hv != nil {
		if err := delNS(l.hv.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// probeSysctls are set in every namespace of a lab: no ICMP error rate
// limit.
var probeSysctls = []string{
	"net.ipv4.icmp_ratelimit=0",
	"net.ipv6.icmp.ratelimit=0",
}

// neighSysctls are set on every interface with addresses before it is up:
// neighbour resolution retried every 100 ms instead of every second, so that
// a probe right after a failed one does not wait for a stale resolution, and
// a missing host is reported after about 300 ms. (Network namespaces other
// than the initial one have no neigh "default" entries to set instead.)
func neighSysctls(dev string) []string {
	return []string{
		"net/ipv4/neigh/" + dev + "/retrans_time_ms=100",
		"net/ipv6/neigh/" + dev + "/retrans_time_ms=100",
	}
}

// ipBatch runs `ip -n NS -batch -` with the given lines. ns must be one of the
// lab's namespaces; it is never empty, so ip never acts on the process's own
// namespace.
func ipBatch(ctx context.Context, ns string, lines ...string) error {
	if ns == "" {
		return errors.New("labnet: ip command without a namespace")
	}
	c := exec.CommandContext(ctx, "ip", "-n", ns, "-batch", "-")
	c.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s -batch [%s]: %w: %s", ns, strings.Join(lines, "; "),
			err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sysctl sets kernel parameters ("net.ipv4.x=1" or "net/ipv4/neigh/eth0/y=1")
// inside ns by writing /proc/sys from a thread in the namespace: /proc/sys/net
// shows the network namespace of the thread that opens it.
func sysctl(ns *NS, settings ...string) error {
	err := ns.Do(func() error {
		for _, kv := range settings {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("sysctl %q: want KEY=VALUE", kv)
			}
			if !strings.Contains(k, "/") {
				k = strings.ReplaceAll(k, ".", "/")
			}
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
				return fmt.Errorf("sysctl %s: %w", kv, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("setting sysctls in %s: %w", ns.Name, err)
	}
	return nil
}

func addrCmds(dev string, addrs []netip.Prefix) []string {
	var cmds []string
	for _, a := range addrs {
		c := fmt.Sprintf("addr add %s dev %s", a, dev)
		if a.Addr().Is6() {
			c += " nodad"
		}
		cmds = append(cmds, c)
	}
	return cmds
}

func parseIfaceAddrs(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		p, err := parseIfaceAddr(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// checkIfName rejects names the kernel would refuse or that would confuse
// the ip command.
func checkIfName(name string) error {
	if name == "" || len(name) > 15 || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("bad interface name %q (1-15 characters, no '/', ':' or spaces)", name)
	}
	return nil
}

// portState is the part of `ip -j -d link show` that WaitForwarding reads.
type portState struct {
	Operstate string `json:"operstate"`
	Master    string `json:"master"`
	Linkinfo  struct {
		SlaveData struct {
			State string `json:"state"`
		} `json:"info_slave_data"`
	} `json:"linkinfo"`
}

// showPort reads the bridge-port state of dev in ns.
func showPort(ns *NS, dev string) (portState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := run(ctx, "ip", "-n", ns.Name, "-j", "-d", "link", "show", "dev", dev)
	if err != nil {
		return portState{}, err
	}
	var st []portState
	if err := json.Unmarshal(out, &st); err != nil || len(st) != 1 {
		return portState{}, fmt.Errorf("parsing ip -j link show dev %s in %s: %v: %s", dev, ns.Name, err, out)
	}
	return st[0], nil
}

// waitRunning waits until dev in ns is operationally up (IFF_RUNNING), which
// is also when the kernel has attached its queueing discipline: before that,
// frames sent on it are dropped.
func waitRunning(ns *NS, dev string) error {
	err := ns.Do(func() error {
		var ifi *net.Interface
		var err error
		for deadline := time.Now().Add(readyTimeout); time.Now().Before(deadline); time.Sleep(pollInterval) {
			ifi, err = net.InterfaceByName(dev)
			if err == nil && ifi.Flags&net.FlagRunning != 0 {
				return nil
			}
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("not running after %v (flags %v)", readyTimeout, ifi.Flags)
	})
	if err != nil {
		return fmt.Errorf("waiting for %s in %s: %w", dev, ns.Name, err)
	}
	return nil
}

// waitAddrs waits until every IPv6 address of addrs can be bound to in ns,
// that is until none is tentative. (IPv4 addresses are usable at once.)
func waitAddrs(ns *NS, addrs []netip.Prefix) error {
	err := ns.Do(func() error {
		for _, p := range addrs {
			if !p.Addr().Is6() {
				continue
			}
			sa := &unix.SockaddrInet6{Addr: p.Addr().As16()}
			var err error
			for deadline := time.Now().Add(readyTimeout); time.Now().Before(deadline); time.Sleep(pollInterval) {
				if err = bindable(sa); err == nil {
					break
				}
			}
			if err != nil {
				return fmt.Errorf("address %s not usable after %v: %w", p.Addr(), readyTimeout, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("waiting for addresses in %s: %w", ns.Name, err)
	}
	return nil
}

// bindable reports whether a UDP socket can bind to sa in the current
// namespace.
func bindable(sa unix.Sockaddr) error {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Bind(fd, sa)
}

func randHex(nbytes int) string {
	b := make([]byte, nbytes)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}

// randomMAC returns a random locally administered unicast MAC.
func randomMAC() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	b[0] = b[0]&0xfe | 0x02
	return net.HardwareAddr(b).String()
}
