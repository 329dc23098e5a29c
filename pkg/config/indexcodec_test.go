package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// fill sets every field v holds, recursively, to a value that is not its
// zero value (a pointer back up, as NIC.VM, to the value above it of its
// type, in up), so that a codec that forgets a field gives a value that
// differs.
func fill(t *testing.T, v reflect.Value, up map[reflect.Type]reflect.Value, n *int) {
	t.Helper()
	*n++
	switch v.Kind() {
	case reflect.String:
		v.SetString("s" + string(rune('a'+*n%26)))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(*n))
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[netip.Addr]() {
			v.Set(reflect.ValueOf(netip.AddrFrom4([4]byte{192, 0, 2, byte(*n)})))
			return
		}
		for i := range v.NumField() {
			fill(t, v.Field(i), up, n)
		}
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := range 2 {
			fill(t, s.Index(i), up, n)
		}
		v.Set(s)
	case reflect.Uint8, reflect.Uint64:
		v.SetUint(uint64(*n))
	case reflect.Pointer:
		if p, ok := up[v.Type()]; ok {
			v.Set(p)
			return
		}
		p := reflect.New(v.Type().Elem())
		up[v.Type()] = p
		fill(t, p.Elem(), up, n)
		delete(up, v.Type())
		v.Set(p)
	default:
		t.Fatalf("fill: a field of kind %s: teach fill and the index codec (indexcodec.go) about it", v.Kind())
	}
}

// TestIndexCodecCoversEveryField: a VM with every field of it and of its
// NICs set is read back equal, and so is one whose lists are empty, or
// nil: a field added to VM or NIC and not to the codec fails it.
func TestIndexCodecCoversEveryField(t *testing.T) {
	full := &VM{}
	var n int
	fill(t, reflect.ValueOf(full).Elem(), map[reflect.Type]reflect.Value{reflect.TypeOf(full): reflect.ValueOf(full)}, &n)
	empty := &VM{ID: 3, NICs: []*NIC{{Tap: "tap3i0", MAC: []byte{}, IPs: []netip.Addr{}, Groups: []string{}, L2Protocols: []string{}}}}
	empty.NICs[0].VM = empty
	for name, vm := range map[string]*VM{"every field set": full, "empty lists": empty, "nil lists": {ID: 4}, "no NIC": {ID: 5, NICs: []*NIC{}}} {
		e := &encoder{}
		e.vms([]*VM{vm})
		d := newDecoder(e.buf)
		got := d.vms()
		if d.err != nil || len(d.buf) != 0 || len(got) != 1 {
			t.Fatalf("%s: decode: %v, %d bytes left, %d VMs", name, d.err, len(d.buf), len(got))
		}
		if !reflect.DeepEqual(&got[0], vm) {
			t.Errorf("%s: read back %+v, wrote %+v", name, &got[0], vm)
		}
	}
	// Together, the VMs' lists share the decoder's arrays: each list is
	// its own all the same, an append to one leaving the next as it is.
	twin := &VM{}
	fill(t, reflect.ValueOf(twin).Elem(), map[reflect.Type]reflect.Value{reflect.TypeOf(twin): reflect.ValueOf(twin)}, &n)
	all := []*VM{full, empty, {ID: 4}, twin}
	e := &encoder{}
	e.vms(all)
	d := newDecoder(e.buf)
	got := d.vms()
	if d.err != nil || len(d.buf) != 0 || len(got) != len(all) {
		t.Fatalf("together: decode: %v, %d bytes left, %d VMs", d.err, len(d.buf), len(got))
	}
	for i, vm := range all {
		if !reflect.DeepEqual(&got[i], vm) {
			t.Errorf("together, VM %d: read back %+v, wrote %+v", i, &got[i], vm)
		}
	}
	first := got[0].NICs[1]
	_ = append(first.IPs, netip.MustParseAddr("203.0.113.1"))
	_ = append(first.Groups, "appended")
	_ = append(got[0].NICs, &NIC{})
	if !reflect.DeepEqual(&got[3], twin) {
		t.Errorf("an append to one VM's lists changed the next VM's: %+v", &got[3])
	}
	var id fileID
	fill(t, reflect.ValueOf(&id).Elem(), map[reflect.Type]reflect.Value{}, &n)
	e = &encoder{}
	fileIDLayout(e, &id)
	d = newDecoder(e.buf)
	var gotID fileID
	if fileIDLayout(d, &gotID); gotID != id || d.err != nil {
		t.Errorf("fileID read back %+v (%v), wrote %+v", gotID, d.err, id)
	}
}

// TestIndexCorruptIsNotUsed: an index cut short anywhere, or with a
// byte changed anywhere, is not used: the load gives what Load
// gives, without failing.
func TestIndexCorruptIsNotUsed(t *testing.T) {
	dir := configtest.Dir(t, manyVMs(3))
	index := filepath.Join(t.TempDir(), "config.index")
	want, err := LoadIndexed(dir, index)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	for cut := 0; cut < len(data); cut += 1 + cut/8 {
		for _, bad := range [][]byte{data[:cut], append(append(data[:cut:cut], data[cut]^0xff), data[cut+1:]...)} {
			if err := os.WriteFile(index, bad, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := LoadIndexed(dir, index)
			if err != nil {
				t.Fatalf("index changed at byte %d: %v", cut, err)
			}
			want.Dir = got.Dir
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("index changed at byte %d: another Model than Load's", cut)
			}
		}
	}
}

// TestIdentifyAtAgrees: a stat relative to the directory's descriptor
// identifies a file, a link, a directory and a missing file as a stat of
// the path does, so an index written from one is read with the other.
func TestIdentifyAtAgrees(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a.toml")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(file, filepath.Join(dir, "b.toml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "vms"), 0o755); err != nil {
		t.Fatal(err)
	}
	var paths []fileID
	for _, name := range []string{"a.toml", "b.toml", "vms", "missing.toml", "gone/c.toml"} {
		paths = append(paths, identify(filepath.Join(dir, name)))
	}
	if !statAll(paths)() {
		t.Fatalf("unchanged files are found changed: %+v", paths)
	}
	if err := os.WriteFile(file, []byte("xy"), 0o644); err != nil {
		t.Fatal(err)
	}
	if statAll(paths[1:2])() {
		t.Error("a link whose target grew is found unchanged")
	}
}
