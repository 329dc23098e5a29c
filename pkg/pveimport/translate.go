// Package pveimport translates the firewall configuration of a Proxmox
// VE cluster (a tree laid out like /etc/pve, read by package pvefw) into
// a vmfw configuration directory whose verdict on every guest packet is
// the one pve-firewall gives: the cluster's security groups and IP sets
// become groups and sets, each guest a VM file whose interfaces list, in
// pve-firewall's order, the groups that stand for its cluster-wide
// filters, its own rules (between its GROUP lines) and its policy's
// extras. docs/proxmox.md maps every notion and names the pve-firewall
// function each decision follows.
//
// What vmfw cannot express exactly fails the import with the source
// line and the reason; Options.SkipUntranslatable leaves out only lines
// whose absence cannot let more traffic through. The output is
// deterministic: the same tree gives byte-identical files.
package pveimport

import (
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/pveimport/pvefw"
)

// Options tune an import.
type Options struct {
	// Node limits the import to one node's guests (nodes/NODE).
	Node string
	// SkipUntranslatable leaves out, and reports, lines that cannot be
	// translated exactly when leaving them out cannot let more traffic
	// through: ACCEPT rules, and lines pve-firewall itself ignores.
	SkipUntranslatable bool
}

// Result is an import's configuration and report.
type Result struct {
	// Files are the configuration's files, sorted by path.
	Files  []File
	Report Report
}

// ProblemKind tells why a line could not be translated.
type ProblemKind string

// The kinds of problem.
const (
	// Ignored lines are lines pve-firewall skips (with a warning in its
	// log): a rule with an invalid value, an unknown option. Leaving them
	// out is exact.
	Ignored ProblemKind = "ignored by pve-firewall"
	// Untranslatable lines mean something vmfw cannot express.
	Untranslatable ProblemKind = "cannot be translated exactly"
)

// Problem is a line that could not be translated.
type Problem struct {
	pvefw.Line
	Kind   ProblemKind
	Reason string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s: %s: %s\n    %s", p.Pos, p.Kind, p.Reason, p.Text)
}

// Error is the import's failure: every line that could not be
// translated (and could not be skipped), with the report of the rest.
type Error struct {
	Problems []Problem
	Report   Report
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d lines cannot be imported", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n" + p.String())
	}
	return b.String()
}

// translator holds one import's state.
type translator struct {
	opts    Options
	tree    *pvefw.Tree
	cluster *pvefw.FwFile
	rep     *reporter
	// on is the cluster firewall's enable option: nothing is filtered
	// without it.
	on bool

	groups map[string]*outGroup
	sets   map[string]*outSet
	vms    []*outVM
	// owner records what claimed each vmfw group or set name, for
	// collisions.
	owner map[string]string
	// clusterSets and guestSets map pve-firewall IP set names to set
	// names.
	clusterSets map[string]string
	guestSets   map[int]map[string]string
	// groupOK says which cluster groups were written.
	groupOK map[string]bool

	hostLimit string
	hostBurst int
	hostSrc   []pvefw.Line

	problems []Problem
}

// Import reads the tree at src and translates it. A tree with lines that
// cannot be translated returns an *Error listing them.
func Import(src string, opts Options) (*Result, error) {
	tree, err := pvefw.Load(src, opts.Node)
	if err != nil {
		return nil, err
	}
	t := &translator{
		opts:        opts,
		tree:        tree,
		cluster:     tree.Cluster,
		rep:         newReporter(),
		groups:      map[string]*outGroup{},
		sets:        map[string]*outSet{},
		owner:       map[string]string{},
		clusterSets: map[string]string{},
		guestSets:   map[int]map[string]string{},
		groupOK:     map[string]bool{},
	}
	if t.cluster == nil {
		t.cluster = pvefw.ParseFw("firewall/cluster.fw", pvefw.Cluster, "")
	}
	t.registerLines()
	t.clusterOptions()
	t.clusterSetsAndAliases()
	t.clusterGroups()
	t.clusterRules()
	t.hosts()
	t.guests()
	res := &Result{Report: Report{Source: src}}
	res.Files = t.files()
	for _, f := range res.Files {
		res.Report.Files = append(res.Report.Files, f.Path)
	}
	res.Report.Lines = t.rep.report()
	if len(t.problems) > 0 {
		slices.SortStableFunc(t.problems, func(a, b Problem) int {
			if c := strings.Compare(a.File, b.File); c != 0 {
				return c
			}
			return a.Pos.Line - b.Pos.Line
		})
		return res, &Error{Problems: t.problems, Report: res.Report}
	}
	return res, nil
}

// registerLines enters every source line into the report.
func (t *translator) registerLines() {
	files := []*pvefw.FwFile{t.cluster}
	for _, n := range t.tree.Nodes {
		if h := t.tree.Hosts[n]; h != nil {
			files = append(files, h)
		}
	}
	for _, g := range t.tree.Guests {
		if f := t.tree.GuestFw[g.ID]; f != nil {
			files = append(files, f)
		}
		for _, n := range g.NICs {
			t.rep.add(n.Line)
		}
	}
	for _, f := range files {
		for _, l := range f.Lines {
			t.rep.add(l)
			if strings.HasPrefix(l.Text, "[") {
				t.rep.set(l, NoEffect, "section header")
			}
		}
		for _, p := range f.Problems {
			t.problem(p.Line, Ignored, p.Reason, true)
		}
	}
	for _, p := range t.tree.Problems {
		t.problem(p.Line, Ignored, p.Reason, true)
	}
}

// problem records a line that cannot be translated. skippable says that
// leaving it out cannot let more traffic through; with
// SkipUntranslatable such a line is skipped, and problem returns true.
func (t *translator) problem(l pvefw.Line, kind ProblemKind, reason string, skippable bool) bool {
	if t.opts.SkipUntranslatable && (skippable || kind == Ignored) {
		t.rep.set(l, Skipped, string(kind)+": "+reason)
		return true
	}
	t.rep.set(l, Failed, string(kind)+": "+reason)
	for _, p := range t.problems {
		if p.Pos == l.Pos && p.Reason == reason {
			return false
		}
	}
	t.problems = append(t.problems, Problem{Line: l, Kind: kind, Reason: reason})
	return false
}

// claim reserves a vmfw group or set name for what; two claims of one
// name are an error at line l.
func (t *translator) claim(kind, name, what string, l pvefw.Line) bool {
	key := kind + ":" + strings.ToLower(name)
	if other, ok := t.owner[key]; ok && other != what {
		t.problem(l, Untranslatable, fmt.Sprintf("the %s name %q stands for both %s and %s", kind, name, other, what), false)
		return false
	}
	t.owner[key] = what
	return true
}

// maxName is the longest vmfw group or set name.
const maxName = 20

// vmfwName maps a pve-firewall name (with a prefix for generated kinds)
// to a vmfw group or set name: as it is when it fits, otherwise its
// beginning and a hash of the whole, so that the mapping is deterministic
// and long names that share a beginning stay apart.
func vmfwName(name string) string {
	if len(name) <= maxName {
		return name
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	return name[:maxName-7] + "_" + fmt.Sprintf("%06x", h.Sum32()&0xffffff)
}

// clusterOptions reads cluster.fw's [OPTIONS].
func (t *translator) clusterOptions() {
	t.hostLimit, t.hostBurst = "1/second", 5
	for _, key := range slices.Sorted(maps.Keys(t.cluster.Options)) {
		o := t.cluster.Options[key]
		switch key {
		case "enable":
			n, _ := strconv.Atoi(o.Value)
			t.on = n == 1
			switch {
			case n == 1:
				t.rep.set(o.Line, Translated, "the cluster firewall is on: guests whose firewall is enabled are filtered")
			case n > 1:
				t.rep.set(o.Line, Translated, "a timestamp: pve-firewall enables the firewall only for 60 seconds after it, so it is off; no guest is filtered (enable = false)")
			default:
				t.rep.set(o.Line, Translated, "the cluster firewall is off: no guest is filtered (enable = false)")
			}
		case "ebtables":
			if o.Value == "0" {
				// Checked per interface: it matters only where
				// macfilter is on.
				t.rep.set(o.Line, Translated, "")
			} else {
				t.rep.set(o.Line, Translated, "MAC filtering at layer 2, as vmfw always does")
			}
		case "policy_in", "policy_out", "policy_forward":
			t.rep.set(o.Line, Host, "the host's own firewall policy")
		case "log_ratelimit":
			t.logRatelimit(o)
		}
	}
}

// logRatelimit maps "log_ratelimit: enable=1,rate=N/unit,burst=N" onto
// vmfw.toml's log_limit and log_burst.
func (t *translator) logRatelimit(o pvefw.Option) {
	enable := true
	for i, kv := range strings.Split(o.Value, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok && i == 0 {
			k, v = "enable", kv
		}
		switch k {
		case "enable":
			enable = v == "1"
		case "rate":
			t.hostLimit = v
		case "burst":
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				t.hostBurst = n
			}
		default:
			t.problem(o.Line, Ignored, "unknown log_ratelimit key "+strconv.Quote(k), true)
			return
		}
	}
	if !enable {
		// Logging only: leaving it out changes no verdict.
		t.problem(o.Line, Untranslatable, "vmfw always rate-limits logging; pve-firewall logs without a limit here", true)
		return
	}
	t.hostSrc = append(t.hostSrc, o.Line)
	t.rep.set(o.Line, Translated, "")
}

// clusterRules reports cluster.fw's [RULES], the host firewall's.
func (t *translator) clusterRules() {
	for _, r := range t.cluster.Rules {
		t.rep.set(r.Line, Host, "cluster.fw [RULES] filter the hosts' own traffic, not the guests'")
	}
}

// hosts reads the host.fw options that apply to guest traffic; the rest
// of host.fw is the host's own firewall.
func (t *translator) hosts() {
	for _, n := range t.tree.Nodes {
		h := t.tree.Hosts[n]
		if h == nil {
			continue
		}
		for _, l := range h.Lines {
			t.rep.set(l, Host, "host.fw configures the host's own firewall")
		}
		for _, r := range h.Rules {
			t.rep.set(r.Line, Host, "host.fw rules filter the host's own traffic")
		}
		for key, o := range h.Options {
			switch key {
			case "nosmurfs", "tcpflags", "nf_conntrack_allow_invalid", "smurf_log_level", "tcp_flags_log_level", "log_level_out":
				// Set per guest interface (guests.go), where they
				// take effect.
				t.rep.set(o.Line, NoEffect, "no firewalled guest on this node")
			}
		}
	}
}

// files renders every output file, sorted by path.
func (t *translator) files() []File {
	var out []File
	{
		out = append(out, writeHost(t.hostLimit, t.hostBurst,
			[]string{"Host-wide options, imported from a Proxmox VE cluster by vmfw import proxmox.",
				"pve-firewall rate-limits every log rule like this (cluster.fw log_ratelimit)."}, t.hostSrc, t.rep))
	}
	for _, name := range slices.Sorted(maps.Keys(t.groups)) {
		out = append(out, writeGroup(t.groups[name], t.rep))
	}
	for _, name := range slices.Sorted(maps.Keys(t.sets)) {
		out = append(out, writeSet(t.sets[name], t.rep))
	}
	for _, vm := range t.vms {
		out = append(out, writeVM(vm, t.rep))
	}
	slices.SortFunc(out, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	return out
}
