package nlmsg

import (
	"slices"
	"testing"
)

// TestAttrs walks what AppendAttr wrote: types without their flags,
// payloads exact though padded, and a truncated last attribute left out.
func TestAttrs(t *testing.T) {
	var b []byte
	b = AppendAttr(b, 1, []byte("abc"))
	b = AppendAttr(b, 2|0x8000, []byte{}) // nested flag
	b = AppendAttr(b, 3, []byte("defgh"))
	whole := len(b)
	b = AppendAttr(b, 4, []byte("cut short"))
	b = b[:whole+6]
	var types []uint16
	var vals []string
	Attrs(b, func(typ uint16, val []byte) {
		types = append(types, typ)
		vals = append(vals, string(val))
	})
	if !slices.Equal(types, []uint16{1, 2, 3}) || !slices.Equal(vals, []string{"abc", "", "defgh"}) {
		t.Errorf("walked types %v, payloads %q", types, vals)
	}
}
