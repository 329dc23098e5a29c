package config

import "net/netip"

// groupFile is a group file as written.
type groupFile struct {
	Description string     `toml:"description"`
	In          []ruleFile `toml:"in"`
	Out         []ruleFile `toml:"out"`
}

// ruleFile is one [[in]] or [[out]] table as written. Keys that take more
// than one TOML type are decoded as any and checked here; pointers tell
// absent keys from empty ones.
type ruleFile struct {
	Action      *string `toml:"action"`
	Proto       any     `toml:"proto"`
	DPort       any     `toml:"dport"`
	SPort       any     `toml:"sport"`
	ICMPType    any     `toml:"icmp_type"`
	Source      any     `toml:"source"`
	Dest        any     `toml:"dest"`
	SourceGroup *string `toml:"source_group"`
	DestGroup   *string `toml:"dest_group"`
	SourceSet   *string `toml:"source_set"`
	DestSet     *string `toml:"dest_set"`
	SourceMAC   *string `toml:"source_mac"`
	Log         any     `toml:"log"`
	Comment     string  `toml:"comment"`
}

const ruleKeys = "rule keys are action, proto, dport, sport, icmp_type, source, dest, source_group, dest_group, source_set, dest_set, source_mac, log and comment"

var groupSchema = &schema{
	top: "group keys are description, in and out",
	sub: func(table string) string {
		if table == "in" || table == "out" {
			return ruleKeys
		}
		return ""
	},
}

// loadGroup decodes and validates the group name. known holds every group
// name, for source_group and dest_group, and knownSets every set name, for
// source_set and dest_set.
func loadGroup(f *file, name string, known, knownSets map[string]bool) (*Group, *Error) {
	var gf groupFile
	if err := f.decode(&gf); err != nil {
		return nil, err
	}
	if err := checkDescription(f, gf.Description); err != nil {
		return nil, err
	}
	g := &Group{Name: name, File: f.path, Description: gf.Description}
	for _, d := range []Direction{In, Out} {
		rfs := gf.In
		if d == Out {
			rfs = gf.Out
		}
		rules := make([]Rule, 0, len(rfs))
		for i := range rfs {
			r, err := loadRule(f, d, i, &rfs[i], known, knownSets)
			if err != nil {
				return nil, err
			}
			rules = append(rules, r)
		}
		if d == In {
			g.In = rules
		} else {
			g.Out = rules
		}
	}
	return g, nil
}

// checkDescription validates the description of a group or set file.
func checkDescription(f *file, d string) *Error {
	if len(d) > maxDescription {
		return f.errorAt("description", "description is %d bytes, at most %d are allowed", len(d), maxDescription)
	}
	if !validDescription(d) {
		return f.errorAt("description", "description %q: control characters (tabs and newlines included) are not allowed", d)
	}
	return nil
}

// loadRule validates rule i of direction d.
func loadRule(f *file, d Direction, i int, rf *ruleFile, known, knownSets map[string]bool) (Rule, *Error) {
	base := index(string(d), i)
	at := func(key string) string { return base + "." + key }
	r := Rule{Line: f.lines.line(base), Action: Accept}

	// Keys that make no sense in this direction come first: they are a
	// misunderstanding of the rule, not a typo in a value.
	if err := checkDirection(f, d, rf, at); err != nil {
		return Rule{}, err
	}
	if rf.Action != nil {
		a, ok := parseAction(*rf.Action)
		if !ok {
			return Rule{}, f.errorAt(at("action"), "action %q: must be accept, drop or reject", *rf.Action)
		}
		r.Action = a
	}
	if rf.Log != nil {
		l, ok := ParseLogLevel(rf.Log)
		if !ok {
			return Rule{}, f.errorAt(at("log"), "log %s: %s", show(rf.Log), logLevelHelp)
		}
		r.Log, r.LogLevel = l != LogOff, l
	}
	if rf.Proto != nil {
		p, ok := parseProto(rf.Proto)
		if !ok {
			return Rule{}, f.errorAt(at("proto"), "proto %s: use tcp, udp, sctp, icmp, icmpv6, any or a protocol number from 0 to 255", show(rf.Proto))
		}
		r.Proto = p
	}
	var err *Error
	if r.DPort, err = loadPorts(f, at("dport"), "dport", r.Proto, rf.DPort); err != nil {
		return Rule{}, err
	}
	if r.SPort, err = loadPorts(f, at("sport"), "sport", r.Proto, rf.SPort); err != nil {
		return Rule{}, err
	}
	if rf.ICMPType != nil {
		if r.Proto != "icmp" && r.Proto != "icmpv6" {
			return Rule{}, f.errorAt(at("icmp_type"), "icmp_type %s: needs proto icmp or icmpv6 (proto is %s)", show(rf.ICMPType), protoLabel(r.Proto))
		}
		t, ok := parseICMPType(r.Proto, rf.ICMPType)
		if !ok {
			tool := "iptables -p icmp -h"
			if r.Proto == "icmpv6" {
				tool = "ip6tables -p icmpv6 -h"
			}
			return Rule{}, f.errorAt(at("icmp_type"), "icmp_type %s: not an %s type; use a number from 0 to 255 or a name listed by %q", show(rf.ICMPType), r.Proto, tool)
		}
		r.ICMPType = t
	}
	if r.Source, err = loadPrefixes(f, at("source"), "source", rf.Source); err != nil {
		return Rule{}, err
	}
	if r.Dest, err = loadPrefixes(f, at("dest"), "dest", rf.Dest); err != nil {
		return Rule{}, err
	}
	if r.SourceGroup, err = groupRef(f, at("source_group"), "source_group", rf.SourceGroup, known); err != nil {
		return Rule{}, err
	}
	if r.DestGroup, err = groupRef(f, at("dest_group"), "dest_group", rf.DestGroup, known); err != nil {
		return Rule{}, err
	}
	if r.SourceSet, err = setNameRef(f, at("source_set"), "source_set", rf.SourceSet, knownSets); err != nil {
		return Rule{}, err
	}
	if r.DestSet, err = setNameRef(f, at("dest_set"), "dest_set", rf.DestSet, knownSets); err != nil {
		return Rule{}, err
	}
	if rf.SourceMAC != nil {
		mac, problem := parseMAC(*rf.SourceMAC)
		if problem != "" {
			return Rule{}, f.errorAt(at("source_mac"), "source_mac %q: %s", *rf.SourceMAC, problem)
		}
		r.SourceMAC = mac
	}
	if len(rf.Comment) > maxComment {
		return Rule{}, f.errorAt(at("comment"), "comment is %d bytes, at most %d are allowed", len(rf.Comment), maxComment)
	}
	if !validComment(rf.Comment) {
		return Rule{}, f.errorAt(at("comment"), "comment %q: use only printable ASCII characters without quotes, backslash, backtick or $", rf.Comment)
	}
	r.Comment = rf.Comment
	return r, nil
}

// checkDirection refuses peer keys of the wrong direction: [[in]] rules see
// traffic to the VM, whose peer is its source; [[out]] rules see traffic
// from the VM, whose peer is its destination.
func checkDirection(f *file, d Direction, rf *ruleFile, at func(string) string) *Error {
	type key struct {
		name    string
		present bool
	}
	if d == In {
		for _, k := range []key{{"dest", rf.Dest != nil}, {"dest_group", rf.DestGroup != nil}, {"dest_set", rf.DestSet != nil}} {
			if k.present {
				return f.errorAt(at(k.name), "%s is only allowed in [[out]] rules; [[in]] rules filter traffic to the VM, match its sender with source, source_group, source_set or source_mac", k.name)
			}
		}
		return nil
	}
	for _, k := range []key{{"source", rf.Source != nil}, {"source_group", rf.SourceGroup != nil}, {"source_set", rf.SourceSet != nil}, {"source_mac", rf.SourceMAC != nil}} {
		if k.present {
			return f.errorAt(at(k.name), "%s is only allowed in [[in]] rules; [[out]] rules filter traffic from the VM, match its destination with dest, dest_group or dest_set", k.name)
		}
	}
	return nil
}

// loadPorts validates dport or sport, given as a string list or an integer.
func loadPorts(f *file, path, key, proto string, v any) ([]PortRange, *Error) {
	if v == nil {
		return nil, nil
	}
	if !portProto(proto) {
		return nil, f.errorAt(path, "%s %s: ports need proto tcp, udp or sctp (proto is %s)", key, show(v), protoLabel(proto))
	}
	switch p := v.(type) {
	case int64:
		if p < 1 || p > 65535 {
			return nil, f.errorAt(path, "%s %d: port must be from 1 to 65535", key, p)
		}
		return []PortRange{{Lo: uint16(p), Hi: uint16(p)}}, nil
	case string:
		ports, problem := parsePorts(p)
		if problem != "" {
			return nil, f.errorAt(path, "%s %q: %s", key, p, problem)
		}
		return ports, nil
	}
	return nil, f.errorAt(path, "%s: expected a string or an integer, got %s", key, kindOf(v))
}

// loadPrefixes validates source or dest: one string or an array of them.
func loadPrefixes(f *file, path, key string, v any) ([]netip.Prefix, *Error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		p, problem := parsePrefix(v)
		if problem != "" {
			return nil, f.errorAt(path, "%s %q: %s", key, v, problem)
		}
		return []netip.Prefix{p}, nil
	case []any:
		if len(v) == 0 {
			return nil, f.errorAt(path, "%s: empty list; leave %s out to match any address", key, key)
		}
		out := make([]netip.Prefix, 0, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, f.errorAt(index(path, i), "%s: expected strings, got %s", key, kindOf(e))
			}
			p, problem := parsePrefix(s)
			if problem != "" {
				return nil, f.errorAt(index(path, i), "%s %q: %s", key, s, problem)
			}
			out = append(out, p)
		}
		return out, nil
	}
	return nil, f.errorAt(path, "%s: expected a string or an array of strings, got %s", key, kindOf(v))
}

// groupRef validates a reference to a group.
func groupRef(f *file, path, key string, name *string, known map[string]bool) (string, *Error) {
	if name == nil {
		return "", nil
	}
	if p := groupProblem(*name, func(g string) bool { return known[g] }); p != "" {
		return "", f.errorAt(path, "%s", fieldError(FieldGroups, -1, *name, p).Render(key))
	}
	return *name, nil
}

// setNameRef validates a reference to an address set.
func setNameRef(f *file, path, key string, name *string, known map[string]bool) (string, *Error) {
	switch {
	case name == nil:
		return "", nil
	case !validGroupName(*name):
		return "", f.errorAt(path, "%s %q: not a set name (%s)", key, *name, nameRule)
	case !known[*name]:
		return "", f.errorAt(path, "%s %q: unknown set, there is no sets/%s.toml", key, *name, *name)
	}
	return *name, nil
}

// protoLabel names a stored proto for messages.
func protoLabel(proto string) string {
	if proto == "" {
		return "any"
	}
	return proto
}
