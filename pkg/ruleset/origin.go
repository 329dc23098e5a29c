package ruleset

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/config"
)

// Origin is the part of the configuration a backend's rule implements: a
// group's rule, or a VM's policy for one direction of one interface. A
// backend carries it beside the kernel objects it writes, so that vmfw
// trace and vmfw log can name a rule's file and line. A value, not a
// pointer, so that rules carrying it still compare with ==.
type Origin struct {
	// Group is the group of a group rule, "" for a policy.
	Group string
	// Dir is the direction of the rule or policy.
	Dir config.Direction
	// Index is the rule's position among the group's Dir rules, from 0.
	Index int
	// Tap is the interface of a policy rule, "" for a group rule.
	Tap string
}

// IsZero reports whether o names nothing: a rule a backend adds by itself
// (anti-spoofing, state, dispatch).
func (o Origin) IsZero() bool { return o == Origin{} }

// Object names what o belongs to as operators see it in logs and traces:
// the group's direction ("sg-web-in") or the interface's ("tap110i0-out").
func (o Origin) Object() string {
	if o.Group != "" {
		return GroupObject(o.Group, string(o.Dir))
	}
	return TapObject(o.Tap, string(o.Dir))
}

// TapObject names an interface's filtering in one direction ("in",
// "out") as logs, traces and the iptables backend's chains name it:
// "tap110i0-in".
func TapObject(tap, dir string) string { return tap + "-" + dir }

// GroupObject names a group's rules in one direction: "sg-web-in"; "lin"
// names its in rules without source MAC matches, which packets the host
// sends meet (docs/routing.md).
func GroupObject(group, dir string) string { return config.GroupChainPrefix + group + "-" + dir }

// NFLOGPrefix is the prefix of the NFLOG rule logging for origin o with
// verdict a: "vmfw sg-web-in #2 DROP" for the second in rule of group web,
// "vmfw tap110i0-in policy DROP" for a policy. It names the rule by its
// position, not its line, so that editing comments in a group file does
// not rewrite the group's kernel objects; vmfw log resolves it against the
// configuration (ParseNFLOGPrefix). At most 47 characters: NFLOG keeps 64.
// Every backend writes the same prefixes, so vmfw log reads them all.
func NFLOGPrefix(o Origin, a config.Action) string {
	verdict := strings.ToUpper(string(a))
	if o.Group == "" {
		return fmt.Sprintf("vmfw %s policy %s", o.Object(), verdict)
	}
	return fmt.Sprintf("vmfw %s #%d %s", o.Object(), o.Index+1, verdict)
}

// ParseNFLOGPrefix reverses NFLOGPrefix: the origin and the verdict
// (accept, drop, reject). ok is false for a prefix vmfw did not write.
func ParseNFLOGPrefix(prefix string) (o Origin, a config.Action, ok bool) {
	f := strings.Fields(prefix)
	if len(f) != 4 || f[0] != "vmfw" {
		return o, "", false
	}
	a = config.Action(strings.ToLower(f[3]))
	if a != config.Accept && a != config.Drop && a != config.Reject {
		return o, "", false
	}
	object, dir, found := cutLast(f[1], "-")
	if !found || (dir != string(config.In) && dir != string(config.Out)) {
		return o, "", false
	}
	o.Dir = config.Direction(dir)
	if f[2] == "policy" {
		// The nftables backend's policy rules are shared by every
		// interface, so their prefix names none ("vmfw -in policy
		// DROP"): the reader takes the tap from the packet's bridge
		// port.
		o.Tap = object
		return o, a, true
	}
	group, isGroup := strings.CutPrefix(object, "sg-")
	n, err := strconv.Atoi(strings.TrimPrefix(f[2], "#"))
	if !isGroup || group == "" || !strings.HasPrefix(f[2], "#") || err != nil || n < 1 {
		return o, "", false
	}
	o.Group, o.Index = group, n-1
	return o, a, true
}

// cutLast splits s around the last sep.
func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}
