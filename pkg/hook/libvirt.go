package hook

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/state"
)

// XMLNamespace is the namespace of the <vmfw:vm id="VMID"/> element that
// ties a libvirt domain to vms/VMID.toml, written into the domain with
//
//	virsh metadata DOMAIN --uri https://github.com/vmfw/vmfw/xmlns/libvirt/1 \
//	    --key vmfw --set '<vm id="110"/>'
//
// Any namespace whose URI contains "vmfw" is accepted.
const XMLNamespace = "https://github.com/vmfw/vmfw/xmlns/libvirt/1"

// maxDomainXML bounds what the hook reads from stdin.
const maxDomainXML = 8 << 20

// domainXML is the part of a libvirt domain definition the hook reads;
// everything else is ignored.
type domainXML struct {
	Name     string `xml:"name"`
	UUID     string `xml:"uuid"`
	Metadata struct {
		Items []metadataItem `xml:",any"`
	} `xml:"metadata"`
	Interfaces []interfaceXML `xml:"devices>interface"`
}

type metadataItem struct {
	XMLName xml.Name
	ID      string `xml:"id,attr"`
}

type interfaceXML struct {
	Type string `xml:"type,attr"`
	MAC  struct {
		Address string `xml:"address,attr"`
	} `xml:"mac"`
	Source struct {
		Bridge  string `xml:"bridge,attr"`
		Network string `xml:"network,attr"`
	} `xml:"source"`
	Target struct {
		Dev string `xml:"dev,attr"`
	} `xml:"target"`
}

// bridged reports whether the interface is a port of a Linux bridge on the
// host: type bridge, or type network when libvirt's live XML names the
// network's bridge. Other types (user, direct/macvtap, hostdev, ...) carry
// no traffic vmfw could filter.
func (i *interfaceXML) bridged() bool {
	return i.Type == "bridge" || i.Type == "network" && i.Source.Bridge != ""
}

// Libvirt operations and sub-operations the hook acts on.
const (
	OpStarted  = "started"
	OpStopped  = "stopped"
	OpRelease  = "release"
	SubOpBegin = "begin"
	SubOpEnd   = "end"
)

// Libvirt runs libvirt's qemu hook: args are GUEST OP SUBOP [EXTRA] and
// stdin is the domain XML. On "started begin" every bridged interface's
// target device is firewalled as the VM file's interface it maps to; on
// "stopped end" and "release end" the domain's interfaces are removed;
// every other operation returns at once, reading nothing and changing
// nothing. It returns the interfaces it changed.
//
// The VM is found by a <vmfw:vm id="VMID"/> element in the domain's
// <metadata> or, failing that, by matching the interfaces' MAC addresses
// against the VM files; a domain neither way finds is not vmfw's and is
// left alone. With the metadata element, interface k of the domain (in XML
// order, counting every <interface>) is the VM's interface with the same
// MAC address or else its [netk] table.
func Libvirt(ctx context.Context, e Engine, args []string, stdin io.Reader) ([]string, error) {
	if len(args) < 3 || len(args) > 4 {
		return nil, &engine.ConfigError{Err: fmt.Errorf("libvirt hook: want GUEST OP SUBOP [EXTRA], got %d arguments", len(args))}
	}
	guest, op, subop := args[0], args[1], args[2]
	switch {
	case op == OpStarted && subop == SubOpBegin:
		dom, err := readDomain(stdin)
		if err != nil {
			return nil, &engine.ConfigError{Err: fmt.Errorf("libvirt hook, %s started: %w", guest, err)}
		}
		return started(ctx, e, guest, dom)
	case (op == OpStopped || op == OpRelease) && subop == SubOpEnd:
		// The XML only narrows the match to the domain's UUID; removal
		// must work even when it is missing or unreadable.
		var uuid string
		if dom, err := readDomain(stdin); err == nil {
			uuid = dom.UUID
		}
		ifaces, err := e.DetachWhere(ctx, engine.Selector{Record: func(a *state.Attachment) bool {
			if a.Owner != state.Libvirt {
				return false
			}
			if uuid != "" && a.DomainUUID != "" {
				return a.DomainUUID == uuid
			}
			return a.Domain == guest
		}})
		if err != nil {
			return nil, fmt.Errorf("libvirt hook, %s %s: %w", guest, op, err)
		}
		return ifaces, nil
	}
	return nil, nil
}

func readDomain(r io.Reader) (*domainXML, error) {
	if r == nil {
		return nil, errors.New("no domain XML on stdin")
	}
	data, err := io.ReadAll(io.LimitReader(r, maxDomainXML+1))
	if err != nil {
		return nil, fmt.Errorf("reading domain XML: %w", err)
	}
	if len(data) > maxDomainXML {
		return nil, fmt.Errorf("domain XML is larger than %d bytes", maxDomainXML)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("no domain XML on stdin")
	}
	var dom domainXML
	if err := xml.Unmarshal(data, &dom); err != nil {
		return nil, fmt.Errorf("parsing domain XML: %w", err)
	}
	return &dom, nil
}

// started firewalls the domain's bridged interfaces.
func started(ctx context.Context, e Engine, guest string, dom *domainXML) ([]string, error) {
	m, err := e.Config()
	if err != nil {
		return nil, err
	}
	name := dom.Name
	if name == "" {
		name = guest
	}
	recs, err := mapInterfaces(m, name, dom)
	if err != nil {
		return nil, &engine.ConfigError{Err: fmt.Errorf("libvirt hook, %s started: %w", name, err)}
	}
	keep := map[string]bool{}
	var ifaces []string
	for _, a := range recs {
		keep[a.Iface] = true
		ifaces = append(ifaces, a.Iface)
	}
	devs := map[string]bool{}
	for _, ifc := range dom.Interfaces {
		if ifc.bridged() && ifc.Target.Dev != "" {
			devs[ifc.Target.Dev] = true
		}
	}
	// Records whose stop hook never ran (libvirtd crashed) go first: the
	// domain's old interfaces, and any other domain's record for a device
	// libvirt has now given to this one, vmfw's or not.
	if _, err := e.DetachWhere(ctx, engine.Selector{Record: func(a *state.Attachment) bool {
		if a.Owner != state.Libvirt || keep[a.Iface] {
			return false
		}
		return sameDomain(a, name, dom.UUID) || devs[a.Iface]
	}}); err != nil {
		return nil, fmt.Errorf("libvirt hook, %s started: %w", name, err)
	}
	if recs == nil {
		return nil, nil // not a vmfw VM
	}
	if err := e.AttachRecords(ctx, recs...); err != nil {
		return nil, fmt.Errorf("libvirt hook, %s started: %w", name, err)
	}
	return ifaces, nil
}

func sameDomain(a *state.Attachment, name, uuid string) bool {
	if uuid != "" && a.DomainUUID != "" {
		return a.DomainUUID == uuid
	}
	return a.Domain == name
}

// mapInterfaces returns the records of the domain's bridged interfaces, nil
// when the domain is not vmfw's.
func mapInterfaces(m *config.Model, name string, dom *domainXML) ([]*state.Attachment, error) {
	vmid, tagged, err := metadataVM(dom)
	if err != nil {
		return nil, err
	}
	var vm *config.VM
	if tagged {
		if vm = m.VMs[vmid]; vm == nil {
			return nil, fmt.Errorf("the domain's metadata names VM %d, but %s/vms/%d.toml does not exist", vmid, m.Dir, vmid)
		}
	}
	byMAC := map[string]*config.NIC{}
	for _, v := range m.VMs {
		for _, n := range v.NICs {
			if n.MAC != nil {
				byMAC[n.MAC.String()] = n
			}
		}
	}
	var recs []*state.Attachment
	used := map[*config.NIC]string{}
	for k, ifc := range dom.Interfaces {
		if !ifc.bridged() {
			continue
		}
		dev := ifc.Target.Dev
		what := fmt.Sprintf("interface %d (mac %s)", k, ifc.MAC.Address)
		if dev == "" {
			return nil, fmt.Errorf("%s has no target device", what)
		}
		what = fmt.Sprintf("interface %d (%s, mac %s)", k, dev, ifc.MAC.Address)
		if p := config.IfaceNameProblem(dev); p != "" {
			return nil, fmt.Errorf("%s: target device %q cannot be firewalled: %s", what, dev, p)
		}
		var mac net.HardwareAddr
		if ifc.MAC.Address != "" {
			if mac, err = net.ParseMAC(ifc.MAC.Address); err != nil || len(mac) != 6 {
				return nil, fmt.Errorf("%s: bad mac address", what)
			}
		}
		var nic *config.NIC
		if mac != nil {
			nic = byMAC[mac.String()]
		}
		switch {
		case nic != nil && vm == nil:
			vm = nic.VM
		case nic != nil && nic.VM != vm:
			return nil, fmt.Errorf("%s: its mac belongs to %s, but the domain is VM %d (%s)", what, nic.VM.File, vm.ID, vm.File)
		case nic == nil && tagged:
			for _, n := range vm.NICs {
				if n.Index == k {
					nic = n
				}
			}
			if nic == nil {
				return nil, fmt.Errorf("%s: %s has no interface with that mac and no [net%d] table", what, vm.File, k)
			}
			if nic.MAC != nil && mac != nil && nic.MAC.String() != mac.String() {
				return nil, fmt.Errorf("%s: [net%d] of %s has mac %s; anti-spoofing would drop every packet", what, k, vm.File, nic.MAC)
			}
		}
		if nic == nil {
			// Untagged and unmatched: known only if another interface
			// matches; checked below.
			recs = append(recs, &state.Attachment{Iface: dev})
			continue
		}
		if prev, dup := used[nic]; dup {
			return nil, fmt.Errorf("%s and %s both map to [net%d] of %s", prev, dev, nic.Index, nic.VM.File)
		}
		used[nic] = dev
		recs = append(recs, &state.Attachment{
			Iface: dev, Owner: state.Libvirt, Domain: name, DomainUUID: dom.UUID,
			VM: &state.VMRef{ID: nic.VM.ID, Index: nic.Index},
		})
	}
	if vm == nil {
		return nil, nil
	}
	for _, a := range recs {
		if a.VM == nil {
			return nil, fmt.Errorf("%s: no interface of %s has its mac (the domain's other interfaces belong to VM %d; tag the domain with <vmfw:vm id=\"%d\"/> to map interfaces by position)", a.Iface, vm.File, vm.ID, vm.ID)
		}
	}
	if len(recs) == 0 {
		return nil, nil
	}
	return recs, nil
}

// metadataVM returns the id of the domain's <vmfw:vm id="..."/>, if any.
func metadataVM(dom *domainXML) (int, bool, error) {
	for _, it := range dom.Metadata.Items {
		if it.XMLName.Local != "vm" || !strings.Contains(strings.ToLower(it.XMLName.Space), "vmfw") {
			continue
		}
		id, err := strconv.Atoi(it.ID)
		if err != nil || id < 0 || strconv.Itoa(id) != it.ID {
			return 0, false, fmt.Errorf("metadata <vmfw:vm id=%q/>: not a VM id", it.ID)
		}
		return id, true, nil
	}
	return 0, false, nil
}
