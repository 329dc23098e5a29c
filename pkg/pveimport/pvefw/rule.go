package pvefw

import (
	"regexp"
	"strings"
)

var (
	ruleHead  = regexp.MustCompile(`^(\S+)\s+(\S+)\s*`)
	macroCall = regexp.MustCompile(`^(\S+)\((ACCEPT|DROP|REJECT)\)$`)
	// ruleOptions are parse_fw_rule's option forms, in the order it tries
	// them; a value is one run of non-blanks.
	ruleOptions = []struct {
		re  *regexp.Regexp
		set func(r *Rule, v string)
	}{
		{regexp.MustCompile(`^(?:-p|--?proto) (\S+)\s*`), func(r *Rule, v string) { r.Proto = v }},
		{regexp.MustCompile(`^--?dport (\S+)\s*`), func(r *Rule, v string) { r.DPort = v }},
		{regexp.MustCompile(`^--?sport (\S+)\s*`), func(r *Rule, v string) { r.SPort = v }},
		{regexp.MustCompile(`^--?source (\S+)\s*`), func(r *Rule, v string) { r.Source = v }},
		{regexp.MustCompile(`^--?dest (\S+)\s*`), func(r *Rule, v string) { r.Dest = v }},
		{regexp.MustCompile(`^--?log (emerg|alert|crit|err|warning|notice|info|debug|nolog)\s*`), func(r *Rule, v string) { r.Log = v }},
		{regexp.MustCompile(`^--?icmp-type (\S+)\s*`), func(r *Rule, v string) { r.ICMPType = v }},
	}
	ifaceOption = regexp.MustCompile(`^-i (\S+)\s*`)
)

// ParseRule parses a rule line as parse_fw_rule does before it verifies
// the values: the comment after the first '#', a leading '|' for a
// disabled rule, TYPE ACTION, then the options. It returns the reason
// when pve-firewall cannot parse the line at all (and so skips it).
func ParseRule(l Line) (Rule, string) {
	r := Rule{Line: l}
	line := l.Text
	if i := strings.IndexByte(line, '#'); i >= 0 {
		r.Comment = strings.TrimSpace(line[i+1:])
		line = line[:i]
	}
	if rest, ok := strings.CutPrefix(line, "|"); ok {
		r.Disabled = true
		line = rest
	}
	m := ruleHead.FindStringSubmatchIndex(line)
	if m == nil {
		return Rule{}, "unable to parse rule: " + strings.TrimSpace(line)
	}
	r.Type = strings.ToLower(line[m[2]:m[3]])
	r.Action = line[m[4]:m[5]]
	line = line[m[1]:]
	if r.Type == "in" || r.Type == "out" || r.Type == "forward" {
		if mm := macroCall.FindStringSubmatch(r.Action); mm != nil {
			r.Macro, r.Action = mm[1], mm[2]
		}
	}
next:
	for line != "" {
		if mm := ifaceOption.FindStringSubmatchIndex(line); mm != nil {
			r.Iface = line[mm[2]:mm[3]]
			line = line[mm[1]:]
			continue
		}
		if r.Type == "group" {
			break
		}
		for _, o := range ruleOptions {
			if mm := o.re.FindStringSubmatchIndex(line); mm != nil {
				o.set(&r, line[mm[2]:mm[3]])
				line = line[mm[1]:]
				continue next
			}
		}
		break
	}
	if line != "" {
		return Rule{}, "unable to parse rule parameters: " + strings.TrimSpace(line)
	}
	return r, ""
}
