package pvefw

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// GuestKind tells a QEMU VM from an LXC container: their interfaces are
// named differently (tapVMIDiN, vethVMIDiN).
type GuestKind string

// The kinds of guest.
const (
	VM        GuestKind = "qemu"
	Container GuestKind = "lxc"
)

// Guest is the part of a guest's configuration (qemu-server/VMID.conf or
// lxc/VMID.conf) the firewall reads: its network interfaces.
type Guest struct {
	// Path is the file's path relative to the tree.
	Path string
	// ID is the VMID, Kind a VM or a container, Node the node whose
	// directory holds the file ("" for the top-level directories).
	ID   int
	Kind GuestKind
	Node string
	// Name is the name line, "" if none.
	Name string
	// NICs are the netN lines, ordered by N.
	NICs []NIC
}

// NIC is one netN line.
type NIC struct {
	Line
	// Index is N.
	Index int
	// MAC is the interface's MAC address ("" if the line has none).
	MAC string
	// Bridge is the bridge it is plugged into.
	Bridge string
	// Firewall is firewall=1: pve-firewall filters the interface only
	// then.
	Firewall bool
	// IP and IP6 are a container's ip= and ip6= values ("dhcp",
	// "manual", "auto" or an address with its prefix length).
	IP, IP6 string
}

var netKey = regexp.MustCompile(`^net(\d+):\s*(.*)$`)

// QEMU's NIC models, which take the MAC address as their value
// (PVE::QemuServer::Network's $nic_model_list).
var nicModels = map[string]bool{
	"e1000": true, "e1000-82540em": true, "e1000-82544gc": true, "e1000-82545em": true,
	"e1000e": true, "i82551": true, "i82557b": true, "i82559er": true, "ne2k_isa": true,
	"ne2k_pci": true, "pcnet": true, "rtl8139": true, "virtio": true, "vmxnet3": true,
}

// ParseGuest reads the current configuration of a guest: the lines before
// the first section ("[snapshot]", "[PENDING]"), which hold older or
// pending states that pve-firewall does not read.
func ParseGuest(path string, kind GuestKind, id int, node, text string) (*Guest, []Problem) {
	g := &Guest{Path: path, ID: id, Kind: kind, Node: node}
	var problems []Problem
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "[") {
			break
		}
		if name, ok := strings.CutPrefix(line, "name:"); ok && kind == VM {
			g.Name = strings.TrimSpace(name)
		}
		if name, ok := strings.CutPrefix(line, "hostname:"); ok && kind == Container {
			g.Name = strings.TrimSpace(name)
		}
		m := netKey.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		l := Line{Pos: Pos{File: path, Line: i + 1}, Text: line}
		idx, err := strconv.Atoi(m[1])
		if err != nil || idx > 31 {
			problems = append(problems, Problem{Line: l, Reason: "interface number out of range (net0 to net31)"})
			continue
		}
		nic := NIC{Line: l, Index: idx}
		for _, kv := range strings.Split(m[2], ",") {
			k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
			switch {
			case kind == VM && nicModels[k]:
				nic.MAC = v
			case k == "macaddr" || k == "hwaddr":
				nic.MAC = v
			case k == "bridge":
				nic.Bridge = v
			case k == "firewall":
				nic.Firewall = v == "1" || v == "on" || v == "yes" || v == "true"
			case k == "ip" && kind == Container:
				nic.IP = v
			case k == "ip6" && kind == Container:
				nic.IP6 = v
			}
		}
		g.NICs = append(g.NICs, nic)
	}
	slices.SortStableFunc(g.NICs, func(a, b NIC) int { return a.Index - b.Index })
	return g, problems
}

// IfaceName is the host-side interface pve-firewall filters for NIC n of
// g: tapVMIDiN for a VM, vethVMIDiN for a container.
func (g *Guest) IfaceName(n NIC) string {
	prefix := "tap"
	if g.Kind == Container {
		prefix = "veth"
	}
	return prefix + strconv.Itoa(g.ID) + "i" + strconv.Itoa(n.Index)
}
