package hooks

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
)

// libvirtConfig: VM 200 ("web", tagged in its domain metadata) serves http
// on net0 and takes ssh on net2 only from members of group web; VM 210
// ("db", found by its MAC) is a member of web.
var libvirtConfig = map[string]string{
	"groups/web.toml": labtest.WebGroup,
	"groups/ssh_from_web.toml": `
[[in]]
proto = "tcp"
dport = "22"
source_group = "web"
`,
	"vms/200.toml": `
name = "web"

[net0]
mac = "52:54:00:6b:3c:01"
ips = ["192.0.2.200"]
groups = ["web"]

[net2]
ips = ["192.0.2.202"]
groups = ["ssh_from_web"]
`,
	"vms/210.toml": `
name = "db"

[net0]
mac = "52:54:00:6b:3c:10"
ips = ["192.0.2.210"]
groups = ["web"]
`,
}

// webXML is a domain as "virsh dumpxml" prints a running one (and as
// libvirt passes it to the hook): interface 0 is bridged and matched by
// MAC, interface 1 is user-mode networking (no bridge, ignored), interface
// 2 is on a libvirt network whose bridge is vmbr0 and, having a MAC no VM
// file lists, maps to [net2] by position.
const webXML = `<domain type='kvm' id='7'>
  <name>web</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
    <vmfw:vm xmlns:vmfw="https://github.com/vmfw/vmfw/xmlns/libvirt/1" id="200"/>
  </metadata>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/var/lib/libvirt/images/web.qcow2' index='1'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <controller type='pci' index='0' model='pcie-root'>
      <alias name='pcie.0'/>
    </controller>
    <interface type='bridge'>
      <mac address='52:54:00:6b:3c:01'/>
      <source bridge='vmbr0'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:6b:3c:02'/>
      <model type='virtio'/>
      <alias name='net1'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:03'/>
      <source network='lan' portid='f1f6a3a1-34c5-4a1e-8c9a-51b1d2ad9b61' bridge='vmbr0'/>
      <target dev='vnet1'/>
      <model type='virtio'/>
      <alias name='net2'/>
      <address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>
    </interface>
    <serial type='pty'>
      <source path='/dev/pts/3'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
      <alias name='serial0'/>
    </serial>
    <graphics type='vnc' port='5900' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
  </devices>
  <seclabel type='dynamic' model='apparmor' relabel='yes'>
    <label>libvirt-4dea22b3-1d52-d8f3-2516-782e98ab3fa0</label>
  </seclabel>
</domain>
`

// domainXML returns a minimal running domain without vmfw metadata and
// one bridged interface.
func domainXML(name, uuid, mac, dev string) string {
	return minimalXML(9, name, uuid, "", bridgedXML(0, mac, dev))
}

// minimalXML is a running domain (id, name, uuid) with no more than the
// hook reads: its metadata (lines of XML, "" for none) and its interfaces.
func minimalXML(id int, name, uuid, metadata, ifaces string) string {
	if metadata != "" {
		metadata = "  <metadata>\n" + metadata + "  </metadata>\n"
	}
	return fmt.Sprintf(`<domain type='kvm' id='%d'>
  <name>%s</name>
  <uuid>%s</uuid>
%s  <memory unit='KiB'>1048576</memory>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
%s  </devices>
</domain>
`, id, name, uuid, metadata, ifaces)
}

// bridgedXML is interface n of a domain as libvirt lists it: on bridge
// vmbr0 with mac, its host end dev.
func bridgedXML(n int, mac, dev string) string {
	return fmt.Sprintf(`    <interface type='bridge'>
      <mac address='%s'/>
      <source bridge='vmbr0'/>
      <target dev='%s'/>
      <model type='virtio'/>
      <alias name='net%d'/>
    </interface>
`, mac, dev, n)
}

// hookArgs are the arguments libvirt passes to /etc/libvirt/hooks/qemu.
func hookArgs(guest, op, subop string) []string {
	return []string{guest, op, subop, "-"}
}

// TestLibvirtHook runs the qemu hook with libvirt's arguments and the
// domain XML on stdin for two domains, one tagged with vmfw metadata and
// one found by MAC, plus one that is not vmfw's.
func TestLibvirtHook(t *testing.T) {
	t.Parallel()
	labtest.EachBackend(t, []string{"nft", labtest.NftablesBackend}, libvirtHook)
}

func libvirtHook(t *testing.T, backend string) {
	h := newHost(t, backend, libvirtConfig)
	qemu := script(t, "libvirt/qemu")
	web0 := h.vm("vnet0", "52:54:00:6b:3c:01", "192.0.2.200/24")
	web2 := h.vm("vnet1", "52:54:00:6b:3c:03", "192.0.2.202/24")
	db := h.vm("vnet2", "52:54:00:6b:3c:10", "192.0.2.210/24")
	other := h.vm("vnet3", "52:54:00:99:99:99", "192.0.2.230/24")
	client := h.external("uplink0", "192.0.2.250/24")
	h.serve(web0, ":80", ":22")
	h.serve(web2, ":22")
	h.serve(other, ":22")
	h.serve(db, ":22")
	dbXML := domainXML("db", "8b1c4f0e-5a4b-4d38-a0a3-0d1e6c1f5a10", "52:54:00:6b:3c:10", "vnet2")
	otherXML := domainXML("other", "0c9b3a5e-2b1d-4c3f-9e8a-7f6d5c4b3a21", "52:54:00:99:99:99", "vnet3")

	// Operations other than started/stopped/release neither read the XML
	// nor change anything nor print anything.
	before := h.save()
	for _, op := range [][2]string{{"prepare", "begin"}, {"start", "begin"}, {"started", "end"}, {"migrate", "begin"}, {"restore", "begin"}, {"reconnect", "begin"}, {"stopped", "begin"}} {
		h.hook(qemu, strings.NewReader(webXML), hookArgs("web", op[0], op[1])...)
	}
	// A domain that is not vmfw's is left alone.
	h.hook(qemu, strings.NewReader(otherXML), hookArgs("other", "started", "begin")...)
	if after := h.save(); after != before {
		t.Errorf("hook operations that do nothing changed the firewall:\n%s", after)
	}
	if recs := labtest.Records(h.t, h.state); len(recs) != 0 {
		t.Errorf("records after no-op hook calls: %v", recs)
	}

	h.hook(qemu, strings.NewReader(webXML), hookArgs("web", "started", "begin")...)
	h.hook(qemu, strings.NewReader(dbXML), hookArgs("db", "started", "begin")...)
	save := h.save()
	for _, dev := range []string{"vnet0", "vnet1", "vnet2"} {
		if len(chains(save, dev)) == 0 {
			t.Errorf("no chains for %s:\n%s", dev, save)
		}
	}
	if len(chains(save, "vnet3")) != 0 {
		t.Errorf("chains for vnet3, whose domain is not vmfw's")
	}
	if got, want := labtest.Records(h.t, h.state), []string{"vnet0", "vnet1", "vnet2"}; !slices.Equal(got, want) {
		t.Errorf("records: got %v, want %v", got, want)
	}
	// Group web's members are vnet0 (VM 200 net0) and vnet2 (VM 210).
	sets := h.ipset()
	for _, m := range []string{"add sg-web-v4 192.0.2.200", "add sg-web-v4 192.0.2.210"} {
		if !strings.Contains(sets, m) {
			t.Errorf("ipsets lack %q:\n%s", m, sets)
		}
	}

	h.expect(client, "192.0.2.200:80", labnet.Connected) // web on net0
	h.expect(client, "192.0.2.200:22", labnet.Timeout)   // policy_in drop
	h.expect(db, "192.0.2.202:22", labnet.Connected)     // db is in group web
	h.expect(client, "192.0.2.202:22", labnet.Timeout)   // the client is not
	h.expect(client, "192.0.2.230:22", labnet.Connected) // not vmfw's domain

	status, stderr, code := h.run(nil, "status")
	if code != 0 || !strings.Contains(status, "vnet0") || !strings.Contains(status, "200 (web)") {
		t.Errorf("status: exit %d\n%s%s", code, status, stderr)
	}

	// Stopping web removes its interfaces and memberships only.
	h.hook(qemu, strings.NewReader(webXML), hookArgs("web", "stopped", "end")...)
	save = h.save()
	if len(chains(save, "vnet0"))+len(chains(save, "vnet1")) != 0 {
		t.Errorf("stopped left chains of web:\n%s", save)
	}
	if got, want := labtest.Records(h.t, h.state), []string{"vnet2"}; !slices.Equal(got, want) {
		t.Errorf("records after stop: got %v, want %v", got, want)
	}
	if sets := h.ipset(); strings.Contains(sets, "192.0.2.200") {
		t.Errorf("web's address is still a group member:\n%s", sets)
	}
	// vnet names are not fail-closed: without chains web is open again.
	h.expect(client, "192.0.2.200:22", labnet.Connected)
	h.expect(client, "192.0.2.210:22", labnet.Timeout) // db is still firewalled

	// release after stopped finds nothing left to do.
	h.hook(qemu, strings.NewReader(webXML), hookArgs("web", "release", "end")...)
	if got, want := labtest.Records(h.t, h.state), []string{"vnet2"}; !slices.Equal(got, want) {
		t.Errorf("records after release: got %v, want %v", got, want)
	}

	// libvirtd lost db without running the stop hook and gives vnet2 to a
	// domain that is not vmfw's: db's record and chains must not stay.
	reused := domainXML("other", "0c9b3a5e-2b1d-4c3f-9e8a-7f6d5c4b3a21", "52:54:00:99:99:99", "vnet2")
	h.hook(qemu, strings.NewReader(reused), hookArgs("other", "started", "begin")...)
	if recs := labtest.Records(h.t, h.state); len(recs) != 0 {
		t.Errorf("records after vnet2 was reused: %v", recs)
	}
	if save := h.save(); len(chains(save, "vnet2")) != 0 {
		t.Errorf("chains of db's vnet2 survived its reuse:\n%s", save)
	}
	h.expect(client, "192.0.2.210:22", labnet.Connected)

	// db again, then its interface vanishes without a hook (a crash):
	// apply drops the record with the chains, and release finds nothing.
	h.hook(qemu, strings.NewReader(dbXML), hookArgs("db", "started", "begin")...)
	h.expect(client, "192.0.2.210:22", labnet.Timeout)
	if _, stderr, code := h.exec(nil, "ip", "link", "del", "vnet2"); code != 0 {
		t.Fatalf("deleting vnet2: %s", stderr)
	}
	h.ok(nil, "apply")
	if recs := labtest.Records(h.t, h.state); len(recs) != 0 {
		t.Errorf("records after apply without vnet2: %v", recs)
	}
	if save := h.save(); len(chains(save, "vnet2")) != 0 {
		t.Errorf("apply left chains of the vanished vnet2:\n%s", save)
	}
	h.hook(qemu, nil, hookArgs("db", "release", "end")...)
}

// TestLibvirtHookRefuses: a domain whose metadata names a VM without a file,
// or one of whose bridged interfaces maps to no [netN], makes the hook fail
// (so libvirt aborts the start) without changing anything.
func TestLibvirtHookRefuses(t *testing.T) {
	t.Parallel()
	h := newHost(t, "nft", libvirtConfig)
	h.vm("vnet0", "52:54:00:6b:3c:01", "192.0.2.200/24")
	before := h.save()

	noFile := strings.Replace(webXML, `id="200"`, `id="300"`, 1)
	_, stderr, code := h.run(strings.NewReader(noFile), append([]string{"hook", "libvirt"}, hookArgs("web", "started", "begin")...)...)
	if code != 2 || !strings.Contains(stderr, "vms/300.toml") {
		t.Errorf("metadata naming a missing VM: exit %d, stderr %q; want 2 naming vms/300.toml", code, stderr)
	}
	// Move net2's interface to position 3: VM 200 has no [net3].
	noNet := strings.Replace(webXML, "<serial type='pty'>", `<interface type='direct'><mac address='52:54:00:6b:3c:04'/><source dev='eth0' mode='bridge'/><target dev='macvtap0'/></interface>
    <serial type='pty'>`, 1)
	noNet = strings.Replace(noNet, `<interface type='user'>`, `<interface type='user'>
    </interface>
    <interface type='user'>`, 1)
	_, stderr, code = h.run(strings.NewReader(noNet), append([]string{"hook", "libvirt"}, hookArgs("web", "started", "begin")...)...)
	if code != 2 || !strings.Contains(stderr, "no [net3] table") {
		t.Errorf("interface without [netN]: exit %d, stderr %q; want 2 naming [net3]", code, stderr)
	}
	_, _, code = h.run(strings.NewReader("<domain><name>web"), append([]string{"hook", "libvirt"}, hookArgs("web", "started", "begin")...)...)
	if code != 2 {
		t.Errorf("broken XML: exit %d, want 2", code)
	}
	if after := h.save(); after != before {
		t.Errorf("refused hooks changed the firewall:\n%s", after)
	}
	if recs := labtest.Records(h.t, h.state); len(recs) != 0 {
		t.Errorf("refused hooks left records: %v", recs)
	}
}
