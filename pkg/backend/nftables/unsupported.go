package nftables

import (
	"fmt"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// unsupported returns an error naming the first part of p this backend
// does not lay out yet, so that nothing is installed without it rather
// than installed without what it asks for: rules on address sets
// (source_set, dest_set) and anti-spoofing by MAC alone (antispoof =
// "mac"). docs/nftables.md, "Known gaps".
func unsupported(p *ruleset.Policy) error {
	for _, g := range p.Groups {
		for _, d := range []config.Direction{config.In, config.Out} {
			for _, r := range g.Rules(d) {
				if s := r.Match.SourceSet + r.Match.DestSet; s != "" {
					return fmt.Errorf("%s:%d: the nftables backend does not lay out address sets yet (the rule uses set %s); use the iptables backend for it", g.File, r.Line, s)
				}
			}
		}
	}
	for _, n := range p.Interfaces {
		if n.AntispoofMACOnly {
			return fmt.Errorf("%s: the nftables backend does not lay out antispoof = \"mac\" yet; use the iptables backend for it", n.Name)
		}
	}
	return nil
}
