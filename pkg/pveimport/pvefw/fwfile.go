package pvefw

import (
	"fmt"
	"regexp"
	"strings"
)

// Kind says which .fw file is read: the sections and options it allows
// differ.
type Kind int

// The kinds of .fw file.
const (
	// Cluster is firewall/cluster.fw.
	Cluster Kind = iota
	// Host is nodes/NODE/host.fw.
	Host
	// GuestFile is firewall/VMID.fw of a VM or a container.
	GuestFile
)

// Names as pve-firewall's patterns allow them ($security_group_name_pattern
// and friends); the length limits are those of generic_fw_config_parser.
var (
	namePattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9\-_]+$`)
	// namedHeader is the header of a section that has a name: the
	// keyword, the name and the comment.
	namedHeader = regexp.MustCompile(`(?i)^\[(group|ipset)\s+(\S+)\]\s*(?:#\s*(.*?)\s*)?$`)
)

// namedSection is what differs between the sections that have a name.
type namedSection struct {
	// what is the section's name in pve-firewall's messages.
	what   string
	maxLen int
	// in says which kinds of file have the section; in the others its
	// header is an ordinary line of the section before.
	in func(Kind) bool
}

// namedSections are the sections that have a name, by header keyword.
var namedSections = map[string]namedSection{
	"group": {"security group", 18, func(k Kind) bool { return k == Cluster }},
	"ipset": {"ipset", 64, func(k Kind) bool { return k != Host }},
}

// ParseFw parses the text of a .fw file at path (relative to the tree) of
// the given kind, line by line as generic_fw_config_parser does: lines are
// trimmed, blank lines and lines starting with '#' are skipped, section
// headers are case-insensitive.
func ParseFw(path string, kind Kind, text string) *FwFile {
	f := &FwFile{
		Path:    path,
		Options: map[string]Option{},
		Aliases: map[string]Alias{},
		IPSets:  map[string]*IPSet{},
		Groups:  map[string]*Group{},
	}
	section := ""
	var group *Group
	var ipset *IPSet
	seen := map[string]bool{} // entries of the current IP set, for duplicates
	for i, raw := range strings.Split(text, "\n") {
		line := strings.Trim(raw, " \t\r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		l := Line{Pos: Pos{File: path, Line: i + 1}, Text: line}
		f.Lines = append(f.Lines, l)
		problem := func(reason string) { f.Problems = append(f.Problems, Problem{Line: l, Reason: reason}) }
		lower := strings.ToLower(line)
		switch {
		case lower == "[options]":
			section = "options"
			continue
		case lower == "[aliases]" && kind != Host:
			section = "aliases"
			continue
		case lower == "[rules]":
			section = "rules"
			continue
		}
		if keyword, name, comment, ok := namedSectionHeader(kind, line); ok {
			section, group, ipset = "", nil, nil
			if reason := badSectionName(namedSections[keyword], name); reason != "" {
				problem(reason)
				continue
			}
			section = keyword
			// A second section of the same name starts it anew, as
			// pve-firewall's assignment does.
			if keyword == "group" {
				group = &Group{Line: l, Name: name, Comment: comment}
				f.GroupOrder = putInOrder(f.Groups, f.GroupOrder, name, group)
			} else {
				ipset = &IPSet{Line: l, Name: name, Comment: comment}
				f.IPSetOrder = putInOrder(f.IPSets, f.IPSetOrder, name, ipset)
				seen = map[string]bool{}
			}
			continue
		}
		switch section {
		case "":
			problem("skip line - no section")
		case "options":
			key, value, reason := parseOption(kind, line)
			if reason != "" {
				problem(reason)
				continue
			}
			f.Options[key] = Option{Line: l, Key: key, Value: value}
		case "aliases":
			a, reason := parseAlias(l)
			if reason != "" {
				problem(reason)
				continue
			}
			f.Aliases[a.Name] = a
		case "rules", "group":
			r, reason := ParseRule(l)
			if reason != "" {
				problem(reason)
				continue
			}
			if section == "rules" {
				f.Rules = append(f.Rules, r)
			} else {
				group.Rules = append(group.Rules, r)
			}
		case "ipset":
			e := parseIPSetEntry(l)
			key := strings.ToLower(e.CIDR)
			if seen[key] {
				// generic_fw_config_parser flags it and
				// generate_ipset_chains skips flagged entries.
				problem("duplicate ipset entry for " + quote(e.CIDR))
				continue
			}
			seen[key] = true
			ipset.Entries = append(ipset.Entries, e)
		}
	}
	return f
}

// Option syntax, from parse_clusterfw_option, parse_hostfw_option and
// parse_vmfw_option.
var (
	logLevels        = `emerg|alert|crit|err|warning|notice|info|debug|nolog`
	clusterBool      = regexp.MustCompile(`(?i)^(ebtables):\s*(0|1)\s*$`)
	clusterEnable    = regexp.MustCompile(`(?i)^(enable):\s*(\d+)\s*$`)
	policyOpt        = regexp.MustCompile(`(?i)^(policy_(?:in|out|forward)):\s*(ACCEPT|DROP|REJECT)\s*$`)
	clusterRatelimit = regexp.MustCompile(`^(log_ratelimit):\s*(\S+)\s*$`)
	hostBool         = regexp.MustCompile(`(?i)^(enable|nosmurfs|tcpflags|ndp|log_nf_conntrack|nf_conntrack_allow_invalid|protection_synflood|nftables):\s*(0|1)\s*$`)
	hostLog          = regexp.MustCompile(`(?i)^(log_level_(?:in|out|forward)|tcp_flags_log_level|smurf_log_level):\s*((` + logLevels + `)\s*)?$`)
	hostHelpers      = regexp.MustCompile(`(?i)^(nf_conntrack_helpers):\s*(((\S+)[,]?)+)\s*$`)
	hostNumber       = regexp.MustCompile(`(?i)^(nf_conntrack_max|nf_conntrack_tcp_timeout_established|nf_conntrack_tcp_timeout_syn_recv|protection_synflood_rate|protection_synflood_burst|protection_limit):\s*(\d+)\s*$`)
	guestBool        = regexp.MustCompile(`(?i)^(enable|dhcp|ndp|radv|macfilter|ipfilter|ips):\s*(0|1)\s*$`)
	guestLog         = regexp.MustCompile(`(?i)^(log_level_in|log_level_out):\s*((` + logLevels + `)\s*)?$`)
	guestPolicy      = regexp.MustCompile(`(?i)^(policy_(?:in|out)):\s*(ACCEPT|DROP|REJECT)\s*$`)
	guestQueues      = regexp.MustCompile(`(?i)^(ips_queues):\s*((\d+)(:(\d+))?)\s*$`)
	guestL2          = regexp.MustCompile(`(?i)^(layer2_protocols):\s*(((\S+)[,]?)+)\s*$`)
)

// parseOption returns an option's key and value in pve-firewall's
// normalised form (booleans "0"/"1", policies upper case, log levels
// lower case), or the reason it skips the line.
func parseOption(kind Kind, line string) (key, value, reason string) {
	type form struct {
		re    *regexp.Regexp
		value func(m []string) string
	}
	plain := func(m []string) string { return m[2] }
	upper := func(m []string) string { return strings.ToUpper(m[2]) }
	level := func(m []string) string { return strings.ToLower(m[3]) }
	var forms []form
	switch kind {
	case Cluster:
		forms = []form{{clusterEnable, plain}, {clusterBool, plain}, {policyOpt, upper}, {clusterRatelimit, plain}}
	case Host:
		forms = []form{{hostBool, plain}, {hostLog, level}, {hostHelpers, func(m []string) string { return strings.ToLower(m[2]) }}, {hostNumber, plain}}
	default:
		forms = []form{{guestBool, plain}, {guestLog, level}, {guestPolicy, upper}, {guestQueues, plain}, {guestL2, plain}}
	}
	for _, fm := range forms {
		if m := fm.re.FindStringSubmatch(line); m != nil {
			return strings.ToLower(m[1]), fm.value(m), ""
		}
	}
	return "", "", "can't parse option " + quote(line)
}

// parseAlias reads "NAME CIDR # comment" (parse_alias).
func parseAlias(l Line) (Alias, string) {
	text, comment := cutComment(l.Text)
	fields := strings.Fields(text)
	if len(fields) != 2 {
		return Alias{}, "can't parse alias " + quote(l.Text)
	}
	return Alias{Line: l, Name: strings.ToLower(fields[0]), CIDR: fields[1], Comment: comment}, ""
}

// parseIPSetEntry reads "[!]CIDR # comment".
func parseIPSetEntry(l Line) IPSetEntry {
	text, comment := cutComment(l.Text)
	text = strings.TrimSpace(text)
	e := IPSetEntry{Line: l, Comment: comment}
	if rest, ok := strings.CutPrefix(text, "!"); ok {
		e.NoMatch = true
		text = strings.TrimSpace(rest)
	}
	e.CIDR = text
	return e
}

// cutComment splits off the text after the first '#', trimmed.
func cutComment(s string) (text, comment string) {
	text, comment, _ = strings.Cut(s, "#")
	return strings.TrimSpace(text), strings.TrimSpace(comment)
}

// namedSectionHeader returns the keyword, the name (lower case) and the
// comment of line when it is the header of a named section that a file of
// kind has.
func namedSectionHeader(kind Kind, line string) (keyword, name, comment string, ok bool) {
	m := namedHeader.FindStringSubmatch(line)
	if m == nil {
		return "", "", "", false
	}
	keyword = strings.ToLower(m[1])
	return keyword, strings.ToLower(m[2]), m[3], namedSections[keyword].in(kind)
}

// badSectionName says why name cannot name a section ns, or returns ""
// when it can.
func badSectionName(ns namedSection, name string) string {
	switch {
	case len(name) > ns.maxLen:
		return fmt.Sprintf("%s name too long (at most %d characters)", ns.what, ns.maxLen)
	case !namePattern.MatchString(name):
		return "invalid " + ns.what + " name " + quote(name)
	}
	return ""
}

// putInOrder sets m[name] to v and returns order with name appended the
// first time it is set, so that sections keep the order of their first
// header.
func putInOrder[T any](m map[string]T, order []string, name string, v T) []string {
	if _, dup := m[name]; !dup {
		order = append(order, name)
	}
	m[name] = v
	return order
}

func quote(s string) string { return "'" + s + "'" }
