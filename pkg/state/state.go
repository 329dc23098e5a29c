// Package state persists the attachments vmfw firewalls that the
// configuration directory cannot name: a CNI container's host-side veth
// (veth1234abcd) or a libvirt tap (vnet3). The configuration maps only
// tap<VMID>i<N> names to interfaces; every other attached interface has a
// record here saying what it is and which settings it gets.
//
// The store is a directory (default /var/lib/vmfw) holding one JSON file per
// attachment, attachments/IFACE.json. Files are written atomically (a temp
// file in the same directory, fsync, rename, fsync of the directory), so a
// crash leaves either the old or the new record, never half of one. The
// store does no locking itself: the engine reads and writes it only while it
// holds its per-namespace lock.
package state

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/config"
)

// DefaultDir is the state directory unless told otherwise.
const DefaultDir = "/var/lib/vmfw"

// DirFromEnv returns $VMFW_STATE_DIR or DefaultDir.
func DirFromEnv() string {
	return cmp.Or(os.Getenv("VMFW_STATE_DIR"), DefaultDir)
}

// Owner says which entry point created an attachment, and so which one
// removes it.
type Owner string

// The entry points that create attachment records.
const (
	// CNI attachments are created by ADD and removed by DEL or GC.
	CNI Owner = "cni"
	// Libvirt attachments are created by the libvirt hook on "started" and
	// removed on "stopped" or "release".
	Libvirt Owner = "libvirt"
)

// Attachment is one firewalled interface that is not a configured tap.
// Exactly one of VM and Spec is set: VM points at an interface of a VM file
// (its settings follow the configuration), Spec carries the settings itself.
type Attachment struct {
	// Iface is the host-side interface name and the record's key.
	Iface string `json:"iface"`
	// Owner is the entry point that created the record.
	Owner Owner `json:"owner"`

	// Network, ContainerID and IfName identify a CNI attachment: the
	// network's name and the runtime's container id and interface name.
	Network     string `json:"network,omitempty"`
	ContainerID string `json:"containerID,omitempty"`
	IfName      string `json:"ifName,omitempty"`

	// Domain and DomainUUID identify the libvirt domain.
	Domain     string `json:"domain,omitempty"`
	DomainUUID string `json:"domainUUID,omitempty"`

	// VM refers to the [netN] table of a VM file whose settings apply.
	VM *VMRef `json:"vm,omitempty"`
	// Spec holds the settings of an interface no VM file describes.
	Spec *Spec `json:"spec,omitempty"`
}

// VMRef names interface Index ([netIndex]) of VM ID (vms/ID.toml).
type VMRef struct {
	// ID is the VM id, the VM file's name.
	ID int `json:"id"`
	// Index is N of the VM's [netN] table.
	Index int `json:"index"`
}

// Spec is the firewall settings of an interface described by its record
// rather than by a VM file. Values are as an operator writes them in a VM
// file; the engine validates them against the configuration on every use,
// by the rules VM files and CNI configurations follow (Settings,
// config.ValidateIface).
type Spec struct {
	// Name labels the attachment in status output and logs.
	Name string `json:"name,omitempty"`
	// MAC is the guest's MAC address, "" if unknown.
	MAC string `json:"mac,omitempty"`
	// IPs are the addresses the guest may send from.
	IPs []string `json:"ips,omitempty"`
	// Groups are the security groups, evaluated in this order.
	Groups []string `json:"groups"`
	// PolicyIn and PolicyOut decide what no rule matched: accept, drop or reject.
	PolicyIn  string `json:"policyIn"`
	PolicyOut string `json:"policyOut"`
	// Log logs packets dropped or rejected by policy.
	Log bool `json:"log"`
	// Antispoof restricts source MAC and IP to MAC and IPs.
	Antispoof bool `json:"antispoof"`
	// AntispoofMACOnly narrows Antispoof to the source MAC (antispoof =
	// "mac"); omitted when false, so records written before it existed
	// read the same and read the same back.
	AntispoofMACOnly bool `json:"antispoofMACOnly,omitempty"`
	// DHCP allows DHCP and DHCPv6 client traffic.
	DHCP bool `json:"dhcp"`
}

// Key names an interface setting as a record spells it, for messages
// about a record's settings: "iface", "spec.policyIn", "spec.ips[1]".
func Key(f config.Field, index int) string {
	key := map[config.Field]string{
		config.FieldIface:     "iface",
		config.FieldLabel:     "spec.name",
		config.FieldPolicyIn:  "spec.policyIn",
		config.FieldPolicyOut: "spec.policyOut",
		config.FieldMAC:       "spec.mac",
		config.FieldIPs:       "spec.ips",
		config.FieldGroups:    "spec.groups",
	}[f]
	if key == "" {
		key = "spec." + string(f) // a setting records do not have
	}
	if index >= 0 {
		key += "[" + strconv.Itoa(index) + "]"
	}
	return key
}

// Settings returns the record's settings for validation
// (config.ValidateIface); s must not be nil.
func (s *Spec) Settings(iface string) *config.IfaceSettings {
	return &config.IfaceSettings{
		Iface: iface, Label: s.Name,
		PolicyIn: s.PolicyIn, PolicyOut: s.PolicyOut, Log: s.Log,
		MAC: s.MAC, IPs: s.IPs, Groups: s.Groups,
		Antispoof: s.Antispoof, AntispoofMACOnly: s.AntispoofMACOnly, DHCP: s.DHCP,
	}
}

// AntispoofSetting words the record's anti-spoofing as a configuration
// writes it: true, false or "mac".
func (s *Spec) AntispoofSetting() string {
	if s.AntispoofMACOnly {
		return `"mac"`
	}
	return strconv.FormatBool(s.Antispoof)
}

// Store is a state directory.
type Store struct {
	// Dir is the state directory; records live in Dir/attachments.
	Dir string
}

// New returns the store in dir.
func New(dir string) *Store { return &Store{Dir: dir} }

// maxRecord bounds a record file; records are a few hundred bytes.
const maxRecord = 64 << 10

func (s *Store) dir() string { return filepath.Join(s.Dir, "attachments") }

// Path returns the file that holds iface's record.
func (s *Store) Path(iface string) string { return filepath.Join(s.dir(), iface+".json") }

// List returns every record by interface name. A missing directory holds
// no records. A record that cannot be read or does not describe the
// interface its file is named after is an error naming the file.
func (s *Store) List() (map[string]*Attachment, error) {
	des, err := os.ReadDir(s.dir())
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]*Attachment{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading attachment records: %w", err)
	}
	out := make(map[string]*Attachment, len(des))
	for _, de := range des {
		iface, ok := strings.CutSuffix(de.Name(), ".json")
		if !ok || strings.HasPrefix(de.Name(), ".") {
			continue // temp files of an interrupted write, editor backups
		}
		a, err := s.read(iface)
		if err != nil {
			return nil, err
		}
		out[iface] = a
	}
	return out, nil
}

// Get returns iface's record, or nil when there is none.
func (s *Store) Get(iface string) (*Attachment, error) {
	if !config.ValidIfaceName(iface) {
		return nil, nil
	}
	a, err := s.read(iface)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return a, err
}

func (s *Store) read(iface string) (*Attachment, error) {
	path := s.Path(iface)
	if !config.ValidIfaceName(iface) {
		return nil, fmt.Errorf("attachment record %s: %q is not a valid interface name", path, iface)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading attachment record: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading attachment record: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxRecord {
		return nil, fmt.Errorf("attachment record %s: not a regular file of at most %d bytes", path, maxRecord)
	}
	var a Attachment
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("attachment record %s: %w", path, err)
	}
	if a.Iface != iface {
		return nil, fmt.Errorf("attachment record %s: describes interface %q, not %q", path, a.Iface, iface)
	}
	if (a.VM == nil) == (a.Spec == nil) {
		return nil, fmt.Errorf("attachment record %s: needs exactly one of \"vm\" and \"spec\"", path)
	}
	return &a, nil
}

// Put writes a's record atomically, replacing any record of the same
// interface.
func (s *Store) Put(a *Attachment) error {
	if !config.ValidIfaceName(a.Iface) {
		return fmt.Errorf("writing attachment record: %q is not a valid interface name", a.Iface)
	}
	if (a.VM == nil) == (a.Spec == nil) {
		return fmt.Errorf("writing attachment record for %s: needs exactly one of VM and Spec", a.Iface)
	}
	data, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding attachment record for %s: %w", a.Iface, err)
	}
	data = append(data, '\n')
	if err := os.MkdirAll(s.dir(), 0o755); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	return writeAtomic(s.Path(a.Iface), data)
}

// writeAtomic replaces path with data so that readers and crashes see the
// old or the new content, never a mix.
func writeAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return syncDir(dir)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// Delete removes iface's record; a missing record is not an error.
func (s *Store) Delete(iface string) error {
	if !config.ValidIfaceName(iface) {
		return nil
	}
	err := os.Remove(s.Path(iface))
	if err == nil {
		return syncDir(s.dir())
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("removing attachment record: %w", err)
}

// Sorted returns the records ordered by interface name.
func Sorted(recs map[string]*Attachment) []*Attachment {
	out := make([]*Attachment, 0, len(recs))
	for _, a := range recs {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Iface < out[j].Iface })
	return out
}
