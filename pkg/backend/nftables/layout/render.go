package layout

import (
	"strconv"
	"strings"
)

// Render prints the table in nft syntax, as vmfw writes it: its sets
// with their elements, then its chains with their rules, each rule with
// the comment that carries its fingerprint.
func (t *Table) Render() string {
	var b strings.Builder
	b.WriteString("table " + string(t.Family) + " " + TableName + " {\n")
	for _, s := range t.Sets {
		b.WriteString(s.Render("\t"))
	}
	for _, c := range t.Chains {
		b.WriteString(c.Render("\t"))
	}
	b.WriteString("}\n")
	return b.String()
}

// Render prints the set's declaration and elements.
func (s *Set) Render(indent string) string {
	var b strings.Builder
	kind := "set "
	if s.IsMap() {
		kind = "map "
	}
	b.WriteString(indent + kind + s.Name + " {\n")
	b.WriteString(indent + "\t" + strings.ReplaceAll(s.Signature(), "; ", "\n"+indent+"\t") + "\n")
	if len(s.Elements) > 0 {
		parts := make([]string, len(s.Elements))
		for i, e := range s.Elements {
			parts[i] = e.Text()
		}
		b.WriteString(indent + "\telements = { " + strings.Join(parts, ", ") + " }\n")
	}
	b.WriteString(indent + "}\n")
	return b.String()
}

// Render prints the chain and its rules.
func (c *Chain) Render(indent string) string {
	var b strings.Builder
	b.WriteString(indent + "chain " + c.Name + " {\n")
	if h := c.Header(); h != "" {
		b.WriteString(indent + "\t" + h + "\n")
	}
	for _, r := range c.Rules {
		b.WriteString(indent + "\t" + r.Text() + " comment " + strconv.Quote(r.UserComment(c.Name)) + "\n")
	}
	b.WriteString(indent + "}\n")
	return b.String()
}
