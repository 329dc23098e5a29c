package config

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzParseTapName: a name parses exactly when TapName writes it back,
// so that names and (VM, interface) pairs map one to one.
func FuzzParseTapName(f *testing.F) {
	for _, s := range []string{"tap110i0", "tap0i0", "tap05i0", "tap5i01", "tap+5i0", "tap-1i0", "tapi0", "tap5i", "tap5", "tap5i0x", "tap1x2i0", "tap99999999999999999999i0", "veth0", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		vmid, index, ok := ParseTapName(name)
		if ok && TapName(vmid, index) != name {
			t.Fatalf("%q parses to VM %d interface %d, which TapName writes %q", name, vmid, index, TapName(vmid, index))
		}
		if !ok {
			rest, _ := strings.CutPrefix(name, "tap")
			id, idx, _ := strings.Cut(rest, "i")
			v, err1 := strconv.Atoi(id)
			i, err2 := strconv.Atoi(idx)
			if err1 == nil && err2 == nil && v >= 0 && i >= 0 && TapName(v, i) == name {
				t.Fatalf("%q is TapName(%d, %d) and does not parse", name, v, i)
			}
		}
	})
}
