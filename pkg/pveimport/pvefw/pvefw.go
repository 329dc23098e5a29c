// Package pvefw reads the firewall configuration of a Proxmox VE cluster
// as it lies under /etc/pve — firewall/cluster.fw, firewall/VMID.fw,
// nodes/NODE/host.fw and the netN lines of qemu-server/VMID.conf and
// lxc/VMID.conf — into typed values that keep the file and line of every
// element. It reads the files the way pve-firewall's
// generic_fw_config_parser and parse_fw_rule do, and where pve-firewall
// skips a line with a warning it records the line and the reason instead
// (Problem), so that an importer can refuse to lose it silently. It only
// parses: what a rule means is the importer's business.
package pvefw

import "strconv"

// Pos is where an element was written: a path relative to the tree's root
// and a 1-based line.
type Pos struct {
	File string `json:"file"`
	Line int    `json:"line"`
}

func (p Pos) String() string {
	if p.Line == 0 {
		return p.File
	}
	return p.File + ":" + strconv.Itoa(p.Line)
}

// Line is one line of a source file as written, with its position; every
// element keeps the line it came from so that a report can quote it.
type Line struct {
	Pos
	Text string `json:"text"`
}

// Problem is a line pve-firewall skips with a warning (an unknown option,
// a rule it cannot parse, an entry outside any section).
type Problem struct {
	Line
	Reason string `json:"reason"`
}

// Rule is one rule line: "IN ACCEPT -p tcp -dport 22", "OUT SSH(DROP)",
// "GROUP web -i net0", "|IN DROP ..." (disabled).
type Rule struct {
	Line
	// Disabled is a rule written with a leading '|'.
	Disabled bool
	// Type is "in", "out", "group" or "forward", lower-cased as
	// pve-firewall does.
	Type string
	// Action is ACCEPT, DROP or REJECT as written (pve-firewall compares
	// it case-sensitively), or the group's name for a GROUP line.
	Action string
	// Macro is the macro of MACRO(ACTION), "" for none.
	Macro string
	// The options, as written; "" when absent.
	Iface, Proto, DPort, SPort, Source, Dest, ICMPType, Log string
	// Comment is the text after '#'.
	Comment string
}

// Option is one line of an [OPTIONS] section, key lower-cased.
type Option struct {
	Line
	Key, Value string
}

// Alias is one line of an [ALIASES] section.
type Alias struct {
	Line
	// Name is lower-cased: pve-firewall looks aliases up that way.
	Name, CIDR, Comment string
}

// IPSet is an [IPSET name] section.
type IPSet struct {
	Line
	// Name is lower-cased, as pve-firewall keeps it.
	Name, Comment string
	Entries       []IPSetEntry
}

// IPSetEntry is one line of an IP set: an address, a CIDR or an alias,
// "!" in front for nomatch.
type IPSetEntry struct {
	Line
	CIDR    string
	NoMatch bool
	Comment string
}

// Group is a [group name] section of cluster.fw.
type Group struct {
	Line
	// Name is lower-cased, as pve-firewall keeps it.
	Name, Comment string
	Rules         []Rule
}

// FwFile is one parsed .fw file.
type FwFile struct {
	// Path is the file's path relative to the tree.
	Path string
	// Options by key; the last line of a key wins, as in pve-firewall.
	Options map[string]Option
	// Aliases by lower-cased name.
	Aliases map[string]Alias
	// IPSets by lower-cased name, and their names in file order.
	IPSets     map[string]*IPSet
	IPSetOrder []string
	// Rules are the [RULES] section's lines, in order.
	Rules []Rule
	// Groups by name and their names in file order (cluster.fw only).
	Groups     map[string]*Group
	GroupOrder []string
	// Problems are the lines pve-firewall skips.
	Problems []Problem
	// Lines are every non-blank, non-comment line, for the report.
	Lines []Line
}

// Opt returns the value of option key and whether it is set.
func (f *FwFile) Opt(key string) (Option, bool) {
	if f == nil {
		return Option{}, false
	}
	o, ok := f.Options[key]
	return o, ok
}
