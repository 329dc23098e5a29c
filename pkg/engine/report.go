package engine

import "github.com/vmfw/vmfw/pkg/backend"

// Report is what "apply -o json" and "check -o json" print: what an
// apply changed, or would change, in a form scripts can read.
type Report struct {
	// Changed says whether anything changed (check: whether an apply
	// would change anything).
	Changed bool `json:"changed"`
	// DryRun is true when nothing was written (apply --dry-run, check).
	DryRun bool `json:"dry_run"`
	// Chains maps each part of the kernel the backend writes (ipv4, ipv6
	// and bridge for iptables) to what was written there.
	Chains map[string]backend.TableChanges `json:"chains"`
	// Sets is what changed in vmfw's sets.
	Sets backend.SetChanges `json:"sets"`
	// FlowsCut counts the tracked connections deleted because the new
	// rules deny them; 0 in a dry run.
	FlowsCut int `json:"flows_cut"`
	// Backend names the backend that made the change.
	Backend string `json:"backend"`
	// Removed is what removing the other backend's ruleset changed (a
	// host switching backends, flush); absent when it was not installed.
	Removed *RemovedReport `json:"removed_backend,omitempty"`
}

// RemovedReport is the removal of the other backend's ruleset.
type RemovedReport struct {
	Backend string                          `json:"backend"`
	Chains  map[string]backend.TableChanges `json:"chains"`
	Sets    backend.SetChanges              `json:"sets"`
}

// Report summarises the change for scripts.
func (c *Change) Report(dryRun bool) *Report {
	sum := c.Summary()
	r := &Report{Changed: !c.Empty(), DryRun: dryRun, Chains: sum.Tables, Sets: sum.Sets, FlowsCut: c.FlowsCut}
	if r.Chains == nil {
		r.Chains = map[string]backend.TableChanges{}
	}
	if r.Sets.Created == nil {
		r.Sets = backend.NewSetChanges()
	}
	r.Backend = string(c.Backend)
	if c.Removed != nil {
		s := c.Removed.Plan.Summary()
		r.Removed = &RemovedReport{Backend: string(c.Removed.Backend), Chains: s.Tables, Sets: s.Sets}
	}
	return r
}
