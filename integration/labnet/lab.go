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
)

// Defaults for Options.
const (
	DefaultBridge = "vmbr0"
)

// DefaultBridgeAddrs are the bridge addresses used when Options.BridgeAddrs is
// empty.
var DefaultBridgeAddrs = []string{"192.0.2.1/24", "2001:db8::1/64"}

const (
	// cmdTimeout bounds every ip/sysctl command the lab runs.
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
// Every namespace is named "<id>-<role>" with a random per-lab id, so labs
// in parallel tests do not collide. The lab never touches the namespace the
// process runs in: every command it runs names one of its own namespaces.
//
// In the hypervisor namespace the lab sets net.ipv6.conf.all.forwarding=0
// and leaves net.bridge.bridge-nf-call-iptables/ip6tables to the product. In
// every namespace it creates it sets the ICMP error rate limits to 0
// (net.ipv4.icmp_ratelimit, net.ipv6.icmp.ratelimit) so that probes which
// expect an ICMP error get one however many run in a row, and on the bridge
// and every eth0 the neighbour retransmit time to 100 ms, so that address
// resolution recovers quickly after a failed probe and a missing host is
// Unreachable after about 300 ms (3 s with the kernel default). The bridge
// has a fixed MAC (it does not change as ports come and go), STP off and multicast
// snooping off, so every port forwards as soon as it is up.
//
// Close removes everything; call it (defer, t.Cleanup) even when setup
// failed half way. A Lab is safe for concurrent use.
type Lab struct {
	id     string
	bridge string
	hv     *NS

	mu      sync.Mutex
	guests  []*NS           // VM and external namespaces, in creation order
	ports   map[string]bool // hypervisor-side interface names in use
	closers []func()        // servers, streams, captures started in the lab
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
	l := &Lab{bridge: opts.Bridge, ports: map[string]bool{opts.Bridge: true}}
	// The per-lab id is random; a clash with a live lab shows up as an
	// existing namespace and is retried with another id.
	for try := 0; l.hv == nil; try++ {
		if try == 16 {
			return nil, errors.New("creating hypervisor namespace: no free lab id after 16 tries")
		}
		l.id = "vf" + randHex(2)
		name := l.id + "-hv"
		if _, serr := os.Stat(netnsDir + "/" + name); serr == nil {
			continue // id in use by another lab
		}
		if _, err := run(ctx, "ip", "netns", "add", name); err != nil {
			if _, serr := os.Stat(netnsDir + "/" + name); serr == nil {
				continue // lost a race for the id
			}
			return nil, fmt.Errorf("creating hypervisor namespace: %w", err)
		}
		l.hv = &NS{Name: name, lab: l}
	}
	defer func() {
		if err != nil {
			if cerr := l.Close(); cerr != nil {
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
	if err := sysctl(ctx, l.hv, append(append([]string{"net.ipv6.conf.all.forwarding=0"},
		probeSysctls...), neighSysctls(l.bridge)...)...); err != nil {
		return nil, err
	}
	batch := append([]string{"link set " + l.bridge + " up"}, addrCmds(l.bridge, addrs)...)
	if err := ipBatch(ctx, hv, batch...); err != nil {
		return nil, fmt.Errorf("configuring bridge %s: %w", l.bridge, err)
	}
	if err := waitAddrs(l.hv, l.bridge, addrs); err != nil {
		return nil, err
	}
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
	if _, err := run(ctx, "ip", "netns", "add", guest.Name); err != nil {
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
	defer func() {
		if err != nil {
			if derr := l.removeGuest(guest); derr != nil {
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
	if err := sysctl(ctx, guest, append(slices.Clone(probeSysctls), neighSysctls(guestIf)...)...); err != nil {
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
	if err := waitAddrs(guest, guestIf, addrs); err != nil {
		return nil, err
	}
	if err := waitLink(guest, guestIf, "", nil); err != nil {
		return nil, err
	}
	if attach {
		if err := l.WaitForwarding(port); err != nil {
			return nil, err
		}
	} else if err := waitLink(l.hv, port, "", nil); err != nil {
		return nil, err
	}
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
	if err := waitLink(l.hv, ifname, l.bridge, func(st linkState) bool {
		return st.Linkinfo.SlaveData.State == "forwarding"
	}); err != nil {
		return err
	}
	return waitLink(l.hv, l.bridge, "", nil)
}

// track registers fn to run when the lab closes. If the lab is already
// closed fn runs at once.
func (l *Lab) track(fn func()) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		fn()
		return
	}
	l.closers = append(l.closers, fn)
	l.mu.Unlock()
}

// Close stops every server, stream and capture started in the lab's
// namespaces and deletes all its namespaces (which removes their links).
// It is idempotent; after a partial failure a second Close retries what is
// left.
func (l *Lab) Close() error {
	l.mu.Lock()
	l.closed = true
	closers := l.closers
	l.closers = nil
	l.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}

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

// delNS deletes a named namespace; one that is already gone is not an error.
func delNS(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := run(ctx, "ip", "netns", "delete", name); err != nil {
		if _, serr := os.Stat(netnsDir + "/" + name); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("deleting namespace %s: %w", name, err)
	}
	return nil
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

// sysctl sets kernel parameters inside ns.
func sysctl(ctx context.Context, ns *NS, settings ...string) error {
	args := append([]string{"sysctl", "-q", "-w"}, settings...)
	if _, err := ns.Exec(ctx, args...); err != nil {
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

// linkState is the part of `ip -j -d link show` the lab reads.
type linkState struct {
	Ifname    string `json:"ifname"`
	Operstate string `json:"operstate"`
	Master    string `json:"master"`
	Linkinfo  struct {
		SlaveData struct {
			State string `json:"state"`
		} `json:"info_slave_data"`
	} `json:"linkinfo"`
	AddrInfo []struct {
		Local     string `json:"local"`
		Tentative bool   `json:"tentative"`
	} `json:"addr_info"`
}

// showLink reads the state of dev in ns.
func showLink(ns *NS, dev string, withAddrs bool) (linkState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	obj := "link"
	if withAddrs {
		obj = "addr"
	}
	out, err := run(ctx, "ip", "-n", ns.Name, "-j", "-d", obj, "show", "dev", dev)
	if err != nil {
		return linkState{}, err
	}
	var st []linkState
	if err := json.Unmarshal(out, &st); err != nil || len(st) != 1 {
		return linkState{}, fmt.Errorf("parsing ip -j %s show dev %s in %s: %v: %s", obj, dev, ns.Name, err, out)
	}
	return st[0], nil
}

// waitLink waits until dev in ns is operationally up, a port of master if
// master is set, and ok(state) if ok is set.
func waitLink(ns *NS, dev, master string, ok func(linkState) bool) error {
	var st linkState
	var err error
	deadline := time.Now().Add(readyTimeout)
	for time.Now().Before(deadline) {
		st, err = showLink(ns, dev, false)
		if err == nil && st.Operstate == "UP" && st.Master == master && (ok == nil || ok(st)) {
			return nil
		}
		time.Sleep(pollInterval)
	}
	if err != nil {
		return fmt.Errorf("waiting for %s in %s: %w", dev, ns.Name, err)
	}
	return fmt.Errorf("waiting for %s in %s: not ready after %v (operstate %s, master %q, port state %q)",
		dev, ns.Name, readyTimeout, st.Operstate, st.Master, st.Linkinfo.SlaveData.State)
}

// waitAddrs waits until none of addrs on dev in ns is tentative, so that
// they can be bound to.
func waitAddrs(ns *NS, dev string, addrs []netip.Prefix) error {
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		if a.Addr().Is6() {
			want[a.Addr()] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	var pending []string
	deadline := time.Now().Add(readyTimeout)
	for time.Now().Before(deadline) {
		st, err := showLink(ns, dev, true)
		if err != nil {
			return fmt.Errorf("waiting for addresses on %s in %s: %w", dev, ns.Name, err)
		}
		pending = pending[:0]
		seen := 0
		for _, ai := range st.AddrInfo {
			a, err := netip.ParseAddr(ai.Local)
			if err != nil || !want[a] {
				continue
			}
			seen++
			if ai.Tentative {
				pending = append(pending, ai.Local)
			}
		}
		if seen == len(want) && len(pending) == 0 {
			return nil
		}
		time.Sleep(pollInterval)
	}
	return fmt.Errorf("waiting for addresses on %s in %s: not usable after %v (tentative: %v)",
		dev, ns.Name, readyTimeout, pending)
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
