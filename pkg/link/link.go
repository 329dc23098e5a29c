// Package link handles the network interfaces vmfw firewalls: which exist,
// attaching a tap to its bridge, and the bridge-netfilter switches without
// which no bridged packet reaches iptables at all.
package link

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// dumpAttempts is how many times a netlink read is tried when the kernel
// flags it as interrupted. A dump that spans several messages is flagged
// when an interface appears or disappears while it runs (QEMU creating or
// deleting taps during an apply); its result may lack interfaces that
// exist, or hold ones that are gone, so it is read again rather than used.
const dumpAttempts = 10

// dumpPause is the pause before the n-th retry (n*dumpPause): it lets a
// burst of interface changes, such as many VMs starting at once, settle.
const dumpPause = time.Millisecond

// retryDump runs read until the kernel does not flag it as interrupted,
// at most dumpAttempts times. Results of interrupted reads are discarded:
// only a consistent one is returned.
func retryDump[T any](read func() (T, error)) (T, error) {
	for attempt := 1; ; attempt++ {
		v, err := read()
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
		if attempt == dumpAttempts {
			var zero T
			return zero, fmt.Errorf("interfaces kept changing during %d reads: %w", attempt, err)
		}
		time.Sleep(time.Duration(attempt) * dumpPause)
	}
}

// linkByName looks up one interface. The kernel answers such a lookup
// directly, but the library falls back to a dump on kernels that cannot
// look up by name, and that dump can be interrupted.
func linkByName(name string) (netlink.Link, error) {
	return retryDump(func() (netlink.Link, error) { return netlink.LinkByName(name) })
}

// linkList reads every interface of the calling thread's network
// namespace; a variable so that tests can watch each read.
var linkList = netlink.LinkList

// Names returns the names of every interface in the current network namespace.
func Names() (map[string]bool, error) {
	links, err := retryDump(linkList)
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	names := make(map[string]bool, len(links))
	for _, l := range links {
		names[l.Attrs().Name] = true
	}
	return names, nil
}

// Exists reports whether the interface exists.
func Exists(name string) (bool, error) {
	_, err := linkByName(name)
	if err == nil {
		return true, nil
	}
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return false, nil
	}
	return false, fmt.Errorf("looking up %s: %w", name, err)
}

// Attach makes tap a port of bridge (when bridge is not empty) and sets it
// up. It runs after the tap's chains are installed, so the tap never
// forwards a packet unfiltered.
func Attach(tap, bridge string) error {
	l, err := linkByName(tap)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", tap, err)
	}
	if bridge != "" {
		br, err := linkByName(bridge)
		if err != nil {
			return fmt.Errorf("looking up bridge %s for %s: %w", bridge, tap, err)
		}
		if _, ok := br.(*netlink.Bridge); !ok {
			return fmt.Errorf("attaching %s: %s is a %s, not a bridge", tap, bridge, br.Type())
		}
		if l.Attrs().MasterIndex != br.Attrs().Index {
			if err := netlink.LinkSetMaster(l, br); err != nil {
				return fmt.Errorf("attaching %s to %s: %w", tap, bridge, err)
			}
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", tap, err)
	}
	return nil
}

// bridgeNetfilter lists the switches that send bridged IPv4 and IPv6
// packets through iptables and ip6tables.
var bridgeNetfilter = []string{
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
}

// EnableBridgeNetfilter turns on bridge netfilter in the current network
// namespace, loading br_netfilter if needed. Without it iptables never sees
// bridged packets and every vmfw rule would silently not apply.
func EnableBridgeNetfilter() error {
	if _, err := os.Stat(bridgeNetfilter[0]); errors.Is(err, os.ErrNotExist) {
		if out, err := exec.Command("modprobe", "br_netfilter").CombinedOutput(); err != nil {
			return fmt.Errorf("bridge netfilter is unavailable (%s missing) and loading br_netfilter failed: %v: %s",
				bridgeNetfilter[0], err, strings.TrimSpace(string(out)))
		}
	}
	for _, p := range bridgeNetfilter {
		cur, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("bridge netfilter: %w", err)
		}
		if strings.TrimSpace(string(cur)) == "1" {
			continue
		}
		if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("bridge netfilter: enabling %s: %w", p, err)
		}
	}
	return nil
}

// BridgeNetfilterEnabled reports whether both switches are on.
func BridgeNetfilterEnabled() (bool, error) {
	for _, p := range bridgeNetfilter {
		cur, err := os.ReadFile(p)
		if err != nil {
			return false, fmt.Errorf("bridge netfilter: %w", err)
		}
		if strings.TrimSpace(string(cur)) != "1" {
			return false, nil
		}
	}
	return true, nil
}
