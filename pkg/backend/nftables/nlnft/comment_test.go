package nlnft

import (
	"maps"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/internal/backendtest"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

// TestElementCommentsWithKernel: an element's comment is written, read
// back as its data, and replaced by deleting and adding the element in
// one batch; Observed.Apply's model of each write equals a read.
func TestElementCommentsWithKernel(t *testing.T) {
	backendtest.InNamespace(t, func() {
		c := Client{}
		ports := &layout.Set{Name: "ports", Key: []layout.Type{layout.TypeIfname}}
		el := func(name, comment string) layout.Element {
			return layout.Element{Key: []layout.Value{layout.Ifname(name)}, Comment: comment}
		}
		first := &Batch{Tables: []*TableChange{{Family: layout.Bridge, Create: true, Sets: []*layout.Set{ports}, NewSets: []*layout.Set{ports},
			AddElements: map[string][]layout.Element{"ports": {el("tap1", "vmfw:settings 1"), el("tap2", "")}}}}}
		second := &Batch{Tables: []*TableChange{{Family: layout.Bridge, Sets: []*layout.Set{ports},
			DelElements: map[string][]layout.Element{"ports": {el("tap1", "vmfw:settings 1")}},
			AddElements: map[string][]layout.Element{"ports": {el("tap1", "vmfw:settings 2")}}}}}
		model := &Observed{Tables: map[layout.Family]*ObservedTable{}}
		for i, b := range []*Batch{first, second} {
			if err := c.Write(b); err != nil {
				t.Fatalf("write %d: %v", i+1, err)
			}
			if err := model.Apply(b); err != nil {
				t.Fatalf("model of write %d: %v", i+1, err)
			}
			read, err := c.Read(false, "ports")
			if err != nil {
				t.Fatal(err)
			}
			got, want := read.Tables[layout.Bridge].Sets["ports"], model.Tables[layout.Bridge].Sets["ports"]
			if !maps.Equal(got.Data, want.Data) || len(got.Elements) != 2 {
				t.Errorf("after write %d the kernel holds %d elements with data %q, the model %q", i+1, len(got.Elements), got.Data, want.Data)
			}
		}
		if got := model.Tables[layout.Bridge].Sets["ports"].Data[string(layout.Ifname("tap1").Bytes)]; got != `comment "vmfw:settings 2"` {
			t.Errorf("tap1's element carries %q after the replacement", got)
		}
	})
}
