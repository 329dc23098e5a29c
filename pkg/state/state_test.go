package state

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func cniRecord(iface string) *Attachment {
	return &Attachment{
		Iface: iface, Owner: CNI, Network: "net", ContainerID: "c1", IfName: "eth0",
		Spec: &Spec{Name: "net/c1", MAC: "02:00:00:00:00:01", IPs: []string{"198.51.100.2"}, Groups: []string{"web"},
			PolicyIn: "drop", PolicyOut: "accept", Antispoof: true},
	}
}

func TestPutListDelete(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), "state"))
	recs, err := s.List()
	if err != nil || len(recs) != 0 {
		t.Fatalf("List of a missing directory: %v, %v", recs, err)
	}
	a := cniRecord("veth1234abcd")
	b := &Attachment{Iface: "vnet0", Owner: Libvirt, Domain: "web", VM: &VMRef{ID: 200, Index: 2}}
	for _, r := range []*Attachment{a, b} {
		if err := s.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	recs, err = s.List()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(recs, map[string]*Attachment{a.Iface: a, b.Iface: b}) {
		t.Errorf("List: got %+v", recs)
	}
	if got := Sorted(recs); got[0].Iface != "veth1234abcd" || got[1].Iface != "vnet0" {
		t.Errorf("Sorted: %v, %v", got[0].Iface, got[1].Iface)
	}
	// Replacing leaves no temporary file behind.
	a.Spec.Groups = []string{"db"}
	if err := s.Put(a); err != nil {
		t.Fatal(err)
	}
	des, err := os.ReadDir(filepath.Join(s.Dir, "attachments"))
	if err != nil || len(des) != 2 {
		t.Errorf("directory after replace: %v, %v", des, err)
	}
	got, err := s.Get(a.Iface)
	if err != nil || !reflect.DeepEqual(got, a) {
		t.Errorf("Get after replace: %+v, %v", got, err)
	}
	for range 2 {
		if err := s.Delete(a.Iface); err != nil {
			t.Errorf("Delete: %v", err)
		}
	}
	if got, err := s.Get(a.Iface); got != nil || err != nil {
		t.Errorf("Get after Delete: %+v, %v", got, err)
	}
}

func TestPutRefuses(t *testing.T) {
	s := New(t.TempDir())
	for _, a := range []*Attachment{
		cniRecord("../etc"),
		cniRecord("sg-web"),
		cniRecord("vmfw-in"),
		cniRecord("-x"),
		cniRecord("averyveryverylongname"),
		{Iface: "vnet0", Owner: Libvirt},
		{Iface: "vnet0", Owner: Libvirt, VM: &VMRef{}, Spec: &Spec{}},
	} {
		if err := s.Put(a); err == nil {
			t.Errorf("Put(%+v) succeeded", a)
		}
	}
}

func TestListRejectsBadRecords(t *testing.T) {
	for name, tc := range map[string]struct{ file, content, want string }{
		"not json":      {"veth1.json", "{", "unexpected EOF"},
		"unknown field": {"veth1.json", `{"iface":"veth1","owner":"cni","spec":{},"extra":1}`, "unknown field"},
		"wrong iface":   {"veth1.json", `{"iface":"veth2","owner":"cni","spec":{}}`, `describes interface "veth2"`},
		"no settings":   {"veth1.json", `{"iface":"veth1","owner":"cni"}`, "exactly one"},
		"bad name":      {"sg-x.json", `{}`, "not a valid interface name"},
	} {
		t.Run(name, func(t *testing.T) {
			s := New(t.TempDir())
			dir := filepath.Join(s.Dir, "attachments")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, tc.file), []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			// Temp files of an interrupted write are not records.
			if err := os.WriteFile(filepath.Join(dir, ".veth9.json.123"), []byte("{"), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := s.List()
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.file) {
				t.Errorf("List: %v, want an error naming %s and %q", err, tc.file, tc.want)
			}
		})
	}
}

func TestDirFromEnv(t *testing.T) {
	t.Setenv("VMFW_STATE_DIR", "")
	if got := DirFromEnv(); got != DefaultDir {
		t.Errorf("DirFromEnv() = %q, want %q", got, DefaultDir)
	}
	t.Setenv("VMFW_STATE_DIR", "/tmp/x")
	if got := DirFromEnv(); got != "/tmp/x" {
		t.Errorf("DirFromEnv() = %q", got)
	}
}
