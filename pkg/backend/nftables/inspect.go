package nftables

import (
	"context"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nftrace"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
)

var _ backend.Tracer = (*Backend)(nil)

// inspector is a Kernel that reads what a trace walks: the rules as
// netlink expressions with every set's elements, the anonymous sets
// inside rules included (nlnft.Client).
type inspector interface {
	Inspect() (*nlnft.Inspection, error)
}

// Inspect reads vmfw's tables for vmfw trace (package nftrace walks
// them). It changes nothing.
func (b *Backend) Inspect(ctx context.Context) (backend.Inspection, error) {
	var ins *nlnft.Inspection
	if k, ok := b.kernel.(inspector); ok {
		var err error
		if ins, err = k.Inspect(); err != nil {
			return nil, err
		}
	} else {
		obs, err := b.kernel.Read(true)
		if err != nil {
			return nil, err
		}
		ins = &nlnft.Inspection{Observed: obs, Anon: map[layout.Family]map[string]*nlnft.AnonSet{}}
	}
	st := &state{obs: ins.Observed, full: true}
	return &nftrace.Kernel{Read: ins, Marks: b.marks, Interfaces: st.Installed()}, nil
}
