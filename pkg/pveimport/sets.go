package pveimport

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"

	"github.com/vmfw/vmfw/pkg/pveimport/pvefw"
)

// setScope is where IP sets and aliases are looked up: a guest's own
// first (fw), then the cluster's, as pve-firewall's
// ipt_gen_src_or_dst_match does; for security groups only the cluster's.
type setScope struct {
	id int
	fw *pvefw.FwFile
}

// resolveAlias returns the prefix an alias stands for (resolve_alias): a
// guest's own alias first unless the scope is dc/, then the cluster's
// unless it is guest/.
func (t *translator) resolveAlias(sc setScope, scope, name string) (netip.Prefix, pvefw.Line, error) {
	name = lowerASCII(name)
	var a pvefw.Alias
	found := false
	if scope != "dc/" && sc.fw != nil {
		a, found = sc.fw.Aliases[name]
	}
	if !found && scope != "guest/" {
		a, found = t.cluster.Aliases[name]
	}
	if !found {
		return netip.Prefix{}, pvefw.Line{}, fmt.Errorf("no such alias '%s%s'", scope, name)
	}
	p, masked, err := parsePrefix(a.CIDR)
	if err != nil {
		return netip.Prefix{}, a.Line, fmt.Errorf("alias %s: %v", a.Name, err)
	}
	_ = masked
	t.rep.set(a.Line, Inlined, "")
	return p, a.Line, nil
}

// clusterSetsAndAliases checks the cluster's aliases and translates its IP
// sets.
func (t *translator) clusterSetsAndAliases() {
	t.checkAliases(t.cluster)
	for _, name := range t.cluster.IPSetOrder {
		s := t.cluster.IPSets[name]
		setName := vmfwName(name)
		if !t.claim("set", setName, "the cluster IP set "+name, s.Line) {
			continue
		}
		t.clusterSets[name] = setName
		t.translateSet(s, setName, setScope{}, "IP set "+name+" of the cluster, imported from "+s.Pos.String()+" by vmfw import proxmox.")
	}
}

// checkAliases refuses aliases pve-firewall cannot read and marks the
// others unused until a rule or entry uses them.
func (t *translator) checkAliases(f *pvefw.FwFile) {
	for _, name := range slices.Sorted(maps.Keys(f.Aliases)) {
		a := f.Aliases[name]
		if _, _, err := parsePrefix(a.CIDR); err != nil {
			t.problem(a.Line, Ignored, err.Error(), true)
			continue
		}
		t.rep.set(a.Line, NoEffect, "alias not used by any guest rule or IP set")
	}
}

// guestSets translates a guest's own IP sets (but ipfilter-netN, which the
// guest's interfaces use).
func (t *translator) guestIPSets(id int, f *pvefw.FwFile) {
	t.guestSets[id] = map[string]string{}
	t.checkAliases(f)
	for _, name := range f.IPSetOrder {
		s := f.IPSets[name]
		if len(name) > len("ipfilter-net") && name[:len("ipfilter-net")] == "ipfilter-net" {
			continue
		}
		setName := vmfwName("G" + strconv.Itoa(id) + "_" + name)
		if !t.claim("set", setName, "IP set "+name+" of guest "+strconv.Itoa(id), s.Line) {
			continue
		}
		t.guestSets[id][name] = setName
		t.translateSet(s, setName, setScope{id: id, fw: f}, "IP set "+name+" of guest "+strconv.Itoa(id)+", imported from "+s.Pos.String()+" by vmfw import proxmox.")
	}
}

// translateSet writes an IP set as a vmfw set (generate_ipset_chains): its
// entries resolved (aliases) and normalised, a later entry for the same
// prefix replacing an earlier one, nomatch entries in except (those no
// entry contains left out: they exclude nothing). pve-firewall
// leaves out entries it cannot read; so does the import, when told to.
func (t *translator) translateSet(s *pvefw.IPSet, name string, sc setScope, header string) {
	out := &outSet{name: name, description: s.Comment, header: []string{header}, src: s.Line}
	type entry struct {
		prefix  netip.Prefix
		nomatch bool
		e       setEntry
	}
	var order []netip.Prefix
	byPrefix := map[netip.Prefix]entry{}
	for _, e := range s.Entries {
		var p netip.Prefix
		var err error
		note := ""
		var also []pvefw.Line
		if m := aliasRef.FindStringSubmatch(e.CIDR); m != nil {
			var al pvefw.Line
			p, al, err = t.resolveAlias(sc, m[1], m[2])
			if err == nil {
				note, also = "alias "+m[2], []pvefw.Line{al}
			}
		} else {
			var masked bool
			p, masked, err = parsePrefix(e.CIDR)
			if masked {
				note = "ipset stores " + p.String()
			}
		}
		if err == nil && p.Bits() == 0 {
			err = fmt.Errorf("a zero prefix is not allowed in ipset entries")
		}
		if err != nil {
			t.problem(e.Line, Ignored, err.Error(), true)
			continue
		}
		if old, dup := byPrefix[p]; !dup {
			order = append(order, p)
		} else {
			t.rep.set(old.e.src, NoEffect, "replaced by "+e.Pos.String()+", an entry for the same prefix")
		}
		byPrefix[p] = entry{prefix: p, nomatch: e.NoMatch, e: setEntry{prefix: prefixText(p), src: e.Line, note: note, also: also}}
		t.rep.set(e.Line, Translated, "")
	}
	for _, p := range order {
		en := byPrefix[p]
		if !en.nomatch {
			out.entries = append(out.entries, en.e)
			continue
		}
		// ipset looks an address up from its most specific prefix: a
		// nomatch entry that no entry contains decides only for
		// addresses that would match nothing without it, so leaving it
		// out changes no lookup (and vmfw refuses an except outside
		// every entry as a mistake).
		inside := false
		for q, other := range byPrefix {
			if !other.nomatch && q.Bits() < p.Bits() && q.Contains(p.Addr()) {
				inside = true
				break
			}
		}
		if !inside {
			t.rep.set(en.e.src, NoEffect, "a ! entry that no entry of the set contains excludes nothing")
			continue
		}
		out.except = append(out.except, en.e)
	}
	t.rep.set(s.Line, Translated, "")
	t.sets[name] = out
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
