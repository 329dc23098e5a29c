package pveimport

import (
	"github.com/vmfw/vmfw/pkg/pveimport/pvefw"
)

// outRule is one vmfw rule to write.
type outRule struct {
	// src is the source line it comes from; note says what the
	// translation did to it beyond the obvious ("REJECT drops ICMP").
	src  pvefw.Line
	note string
	// also are further source lines the rule uses (aliases, IP set
	// headers).
	also []pvefw.Line

	action, proto, dport, sport, icmpType string
	source, dest                          []string
	sourceSet, destSet                    string
	// log is "" (no logging) or a syslog level.
	log     string
	comment string
}

// outGroup is one group file to write.
type outGroup struct {
	name, description string
	// header are comment lines on top of the file.
	header []string
	// src is the source line the group as a whole comes from (a [group]
	// header); zero for generated groups.
	src     pvefw.Line
	in, out []outRule
}

// add appends rules to the group's in rules when dir is "in", else to
// its out rules.
func (g *outGroup) add(dir string, rules ...outRule) {
	if dir == "in" {
		g.in = append(g.in, rules...)
	} else {
		g.out = append(g.out, rules...)
	}
}

// outSet is one set file to write.
type outSet struct {
	name, description string
	header            []string
	src               pvefw.Line
	entries, except   []setEntry
}

// setEntry is one prefix of a set and the line it comes from.
type setEntry struct {
	prefix string
	src    pvefw.Line
	note   string
	also   []pvefw.Line
}

// outVM is one VM file to write.
type outVM struct {
	id     int
	header []string
	name   string
	enable bool
	// dropInvalid, for a VM not filtered while the cluster firewall is
	// on, is PVEFW-FORWARD's INVALID drop, which every bridged packet
	// meets.
	dropInvalid         bool
	policyIn, policyOut string
	// logIn and logOut are syslog levels, "" for none; logSrc are the
	// option lines they come from.
	logIn, logOut       string
	logInSrc, logOutSrc pvefw.Line
	// optionSrc is the enable line; policyInSrc and policyOutSrc the
	// policy lines.
	optionSrc                 []pvefw.Line
	policyInSrc, policyOutSrc pvefw.Line
	nics                      []*outNIC
}

// outNIC is one [netN] table.
type outNIC struct {
	index     int
	src       pvefw.Line
	mac       string
	bridge    string
	antispoof string // "mac" or "false"
	// antispoofSrc is the macfilter option line.
	antispoofSrc pvefw.Line
	groups       []groupRef
	// srcs are further lines the interface's settings come from (options).
	srcs []pvefw.Line
	// ndpSrcs is the ndp option line, which ndp = false comes from.
	ndpSrcs []pvefw.Line
}

// groupRef is one entry of an interface's group list with a comment
// saying where it comes from.
type groupRef struct {
	name, why string
	src       []pvefw.Line
}
