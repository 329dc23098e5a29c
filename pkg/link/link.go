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

	"github.com/vishvananda/netlink"
)

// Names returns the names of every interface in the current network namespace.
func Names() (map[string]bool, error) {
	links, err := netlink.LinkList()
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
	_, err := netlink.LinkByName(name)
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
	l, err := netlink.LinkByName(tap)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", tap, err)
	}
	if bridge != "" {
		br, err := netlink.LinkByName(bridge)
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
