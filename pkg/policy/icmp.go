package policy

import "github.com/vmfw/vmfw/pkg/ruleset"

// ICMPv6 types the tap chains single out.
const (
	icmp6RouterSolicit = 133
	icmp6RouterAdvert  = 134
	icmp6NeighSolicit  = 135
	icmp6NeighAdvert   = 136
	icmp6Redirect      = 137
)

// icmpMatches reports whether a rule's icmp_type (as config keeps it)
// matches a packet of type t and code c.
func icmpMatches(proto, ruleType string, t, c uint8) bool {
	rt, rc, ok := ruleset.ParseICMPType(proto, ruleType)
	return ok && rt == int(t) && (rc < 0 || rc == int(c))
}
