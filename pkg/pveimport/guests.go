package pveimport

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/pveimport/pvefw"
)

// nicMode is how pve-firewall treats one guest interface.
type nicMode int

const (
	// unfiltered: no firewall bridge, or the cluster firewall is off.
	unfiltered nicMode = iota
	// inputOnly: firewall=1 on a guest whose own firewall is off: only
	// the cluster-wide input filters of PVEFW-FWBR-IN (blacklist,
	// smurfs) apply.
	inputOnly
	// full: the guest's tap chains as well.
	full
)

// guestCtx is what the translation of one guest needs.
type guestCtx struct {
	g     *pvefw.Guest
	fw    *pvefw.FwFile
	host  *pvefw.FwFile
	vmOn  bool
	modes map[int]nicMode
	// prefix is the input filters' groups, for every firewalled
	// interface.
	prefix []groupRef
}

var labelOK = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,64}$`)

// guests translates every guest: a VM file per VM, an error per
// firewalled container.
func (t *translator) guests() {
	macs := map[string]pvefw.Line{}
	for _, g := range t.tree.Guests {
		c := &guestCtx{g: g, fw: t.tree.GuestFw[g.ID], host: t.tree.HostOptions(g), modes: map[int]nicMode{}}
		if c.fw != nil {
			t.guestIPSets(g.ID, c.fw)
			o, ok := c.fw.Options["enable"]
			c.vmOn = ok && o.Value == "1"
		}
		filtered := false
		for _, n := range g.NICs {
			c.modes[n.Index] = unfiltered
			if !t.on || !n.Firewall {
				continue
			}
			if c.vmOn {
				c.modes[n.Index], filtered = full, true
			}
		}
		anyFirewalled := t.on && slices.ContainsFunc(g.NICs, func(n pvefw.NIC) bool { return n.Firewall })
		if anyFirewalled {
			c.prefix = t.inputFilters(c)
			if !c.vmOn && len(c.prefix) > 0 {
				for _, n := range g.NICs {
					if n.Firewall {
						c.modes[n.Index], filtered = inputOnly, true
					}
				}
			}
		}
		if !filtered {
			t.unfilteredGuest(c)
			continue
		}
		if g.Kind == pvefw.Container {
			t.container(c)
			continue
		}
		if vm := t.vm(c); vm != nil {
			for _, n := range vm.nics {
				if n.mac == "" {
					continue
				}
				key := strings.ToLower(n.mac)
				if other, dup := macs[key]; dup {
					t.problem(n.src, Untranslatable, fmt.Sprintf("MAC %s is also the MAC of %s; vmfw binds a MAC to one interface", n.mac, other.Pos), false)
					continue
				}
				macs[key] = n.src
			}
			t.vms = append(t.vms, vm)
		}
	}
}

// why names the reason a guest is not filtered.
func (t *translator) whyUnfiltered(c *guestCtx) string {
	switch {
	case !t.on:
		return "the cluster firewall is off (cluster.fw enable)"
	case !slices.ContainsFunc(c.g.NICs, func(n pvefw.NIC) bool { return n.Firewall }):
		return "no interface of the guest has firewall=1"
	case c.fw == nil:
		return "the guest has no firewall/" + strconv.Itoa(c.g.ID) + ".fw, so its firewall is off"
	default:
		return "the guest's firewall is off (enable)"
	}
}

// unfilteredGuest writes a guest pve-firewall does not filter: a VM file
// with enable = false (vmfw refuses to bring up a tap it has no file
// for), nothing for a container (vmfw does not manage veth interfaces).
func (t *translator) unfilteredGuest(c *guestCtx) {
	why := t.whyUnfiltered(c)
	t.guestLinesNoEffect(c, "not enforced: "+why)
	if c.g.Kind == pvefw.Container {
		for _, n := range c.g.NICs {
			note := why + "; vmfw leaves the container's " + c.g.IfaceName(n) + " alone"
			if t.on {
				// A VM here gets drop_invalid; a veth has no VM file.
				note += ", so its INVALID packets pass, which PVEFW-FORWARD drops (docs/proxmox.md, known difference 2)"
			}
			t.rep.set(n.Line, NoEffect, note)
		}
		return
	}
	vm := &outVM{id: c.g.ID, name: label(c.g.Name), enable: false, dropInvalid: t.on, optionSrc: t.enableSrc(),
		header: []string{fmt.Sprintf("VM %d, imported from %s by vmfw import proxmox: not filtered, as %s.", c.g.ID, c.g.Path, why)}}
	if o, ok := c.fw.Opt("enable"); ok {
		vm.optionSrc = append(vm.optionSrc, o.Line)
		t.rep.set(o.Line, Translated, "")
	}
	for _, n := range c.g.NICs {
		vm.nics = append(vm.nics, &outNIC{index: n.Index, src: n.Line, bridge: n.Bridge, antispoof: "false"})
		t.rep.set(n.Line, Translated, why)
	}
	t.vms = append(t.vms, vm)
}

// guestLinesNoEffect marks every line of the guest's .fw file.
func (t *translator) guestLinesNoEffect(c *guestCtx, note string) {
	if c.fw == nil {
		return
	}
	for _, l := range c.fw.Lines {
		t.rep.set(l, NoEffect, note)
	}
}

// container refuses a firewalled container: its interfaces are
// vethVMIDiN, and a vmfw VM file names tapVMIDiN only.
func (t *translator) container(c *guestCtx) {
	for _, n := range c.g.NICs {
		if c.modes[n.Index] == unfiltered {
			t.rep.set(n.Line, NoEffect, t.whyUnfiltered(c))
			continue
		}
		t.problem(n.Line, Untranslatable, fmt.Sprintf("container interface %s is firewalled, and vmfw's VM files name only tap interfaces (tap%di%d); the container would be left unfiltered", c.g.IfaceName(n), c.g.ID, n.Index), false)
	}
	if c.fw != nil {
		for _, l := range c.fw.Lines {
			t.rep.set(l, Failed, "container "+strconv.Itoa(c.g.ID)+" cannot be imported (see its netN lines)")
		}
	}
}

// inputFilters returns the groups for PVEFW-FWBR-IN's filters, which
// pve-firewall applies to every interface with firewall=1
// (ruleset_chain_add_input_filters): the blacklist, the smurf filter,
// the TCP flags filter. It reports the host.fw options they come from.
func (t *translator) inputFilters(c *guestCtx) []groupRef {
	var refs []groupRef
	h := c.host
	level := func(key string) (string, pvefw.Line) {
		o, ok := h.Opt(key)
		if !ok || o.Value == "" || o.Value == "nolog" {
			return "", o.Line
		}
		return o.Value, o.Line
	}
	if s, ok := t.cluster.IPSets["blacklist"]; ok {
		if name, ok := t.clusterSets["blacklist"]; ok {
			lvl, ll := level("log_level_out")
			ref := groupRef{name: t.blacklistGroup(name, s.Line, lvl), why: "cluster blacklist, " + s.Pos.String(), src: []pvefw.Line{s.Line}}
			if ll.Line != 0 {
				ref.src = append(ref.src, ll)
				t.rep.set(ll, Translated, "log level of the blacklist")
			}
			refs = append(refs, ref)
		}
	}
	if o, ok := h.Opt("nosmurfs"); ok && o.Value == "0" {
		t.rep.set(o.Line, NoEffect, "no smurf filter, so no group for it")
	} else {
		lvl, ll := level("smurf_log_level")
		ref := groupRef{name: t.smurfGroup(pvefw.Line{}, lvl), why: "smurf filter (host.fw nosmurfs)"}
		if ok {
			ref.src = append(ref.src, o.Line)
			t.rep.set(o.Line, Translated, "")
		}
		if ll.Line != 0 {
			ref.src = append(ref.src, ll)
			t.rep.set(ll, Translated, "log level of the smurf filter")
		}
		refs = append(refs, ref)
	}
	if o, ok := h.Opt("tcpflags"); ok && o.Value == "1" {
		t.problem(o.Line, Untranslatable, "the TCP flags filter drops SYN packets from source port 0, which vmfw cannot match (its other combinations are INVALID to conntrack and dropped by vmfw)", false)
	}
	if o, ok := h.Opt("nf_conntrack_allow_invalid"); ok && o.Value == "1" {
		t.problem(o.Line, Untranslatable, "vmfw always drops packets conntrack finds INVALID; pve-firewall passes them to the rules here (leaving this out only drops more)", true)
	}
	return refs
}

// segment is a run of a guest's IN and OUT rules between two GROUP lines.
type segment struct {
	// rules holds each rule with the interface it is limited to ("" for
	// every interface).
	rules []segRule
}

type segRule struct {
	r     pvefw.Rule
	iface string
	rules []outRule
}

// vm translates a VM with at least one filtered interface.
func (t *translator) vm(c *guestCtx) *outVM {
	g, fw := c.g, c.fw
	vm := &outVM{id: g.ID, name: label(g.Name), enable: true, policyIn: "accept", policyOut: "accept", optionSrc: t.enableSrc(),
		header: []string{fmt.Sprintf("VM %d, imported from %s and firewall/%d.fw by vmfw import proxmox.", g.ID, g.Path, g.ID)}}
	opts := map[string]string{}
	if c.vmOn {
		for _, key := range slices.Sorted(maps.Keys(fw.Options)) {
			opts[key] = fw.Options[key].Value
		}
		vm.policyIn, vm.policyOut = "drop", "accept"
		t.vmOptions(c, vm)
	} else {
		t.guestLinesNoEffect(c, "not enforced: "+t.whyUnfiltered(c)+"; only the cluster's input filters apply")
	}
	var segs []*segment
	var groupLines []pvefw.Rule // the GROUP line after each segment
	if c.vmOn {
		segs, groupLines = t.vmRules(c)
	}
	// GROUP lines that name a group an interface lists already decide
	// nothing: the first time the group matched nothing, so it matches
	// nothing the second time.
	dups, listed := map[pvefw.Pos]pvefw.Line{}, map[pvefw.Pos]bool{}
	defer func() {
		for pos, l := range dups {
			if !listed[pos] {
				t.rep.set(l, NoEffect, "the group is listed already; the first occurrence decides everything it can")
			}
		}
	}()
	ebtablesOff := false
	if o, ok := t.cluster.Options["ebtables"]; ok && o.Value == "0" {
		ebtablesOff = true
	}
	for _, n := range g.NICs {
		on := &outNIC{index: n.Index, src: n.Line, bridge: n.Bridge, antispoof: "false"}
		vm.nics = append(vm.nics, on)
		switch c.modes[n.Index] {
		case unfiltered:
			on.groups = []groupRef{{name: t.openGroup(), why: "not filtered: " + t.whyNICUnfiltered(n)}}
			t.rep.set(n.Line, Translated, "not filtered: "+t.whyNICUnfiltered(n))
			continue
		case inputOnly:
			on.groups = append(slices.Clone(c.prefix), groupRef{name: t.openGroup(), why: "the guest's firewall is off"})
			t.rep.set(n.Line, Translated, "only the cluster's input filters apply: the guest's firewall is off")
			continue
		}
		t.rep.set(n.Line, Translated, "")
		if o, ok := fw.Options["macfilter"]; ok {
			on.antispoofSrc = o.Line
		}
		if o, ok := fw.Options["dhcp"]; ok {
			on.srcs = append(on.srcs, o.Line)
		}
		if o, ok := fw.Options["ndp"]; ok {
			on.ndpSrcs = append(on.ndpSrcs, o.Line)
		}
		if n.MAC != "" && opts["macfilter"] != "0" {
			on.mac, on.antispoof = strings.ToLower(n.MAC), "mac"
			if ebtablesOff {
				t.problem(t.cluster.Options["ebtables"].Line, Untranslatable, "with ebtables off pve-firewall checks the MAC of IP packets only, after letting DHCP through; vmfw checks every frame", false)
			}
		}
		if s, ok := fw.IPSets["ipfilter-net"+strconv.Itoa(n.Index)]; ok {
			t.problem(s.Line, Untranslatable, "ipfilter sets bind source addresses and CIDRs (and only the MAC's link-local address) after DHCP; vmfw's antispoof binds single addresses and any link-local one", false)
		}
		on.groups = slices.Clone(c.prefix)
		if opts["dhcp"] != "0" {
			ref := groupRef{name: t.dhcpGroup(), why: "guest option dhcp (on unless 0)"}
			if o, ok := fw.Options["dhcp"]; ok {
				ref.src = []pvefw.Line{o.Line}
			}
			on.groups = append(on.groups, ref)
		}
		if opts["ndp"] != "0" {
			ref := groupRef{name: t.ndpGroup(), why: "guest option ndp (on unless 0)"}
			if o, ok := fw.Options["ndp"]; ok {
				ref.src = []pvefw.Line{o.Line}
			}
			on.groups = append(on.groups, ref)
		}
		radv := groupRef{name: t.radvGroup(opts["radv"] == "1"), why: "guest option radv"}
		if o, ok := fw.Options["radv"]; ok {
			radv.src = []pvefw.Line{o.Line}
		}
		on.groups = append(on.groups, radv)
		for i, s := range segs {
			if name, src := t.segmentGroup(g.ID, i+1, s, n.Index, segs); name != "" {
				on.groups = appendGroup(on.groups, groupRef{name: name, why: "the guest's rules " + src})
			}
			if i < len(groupLines) {
				gl := groupLines[i]
				if gl.Iface != "" && gl.Iface != "net"+strconv.Itoa(n.Index) {
					continue
				}
				if !t.groupOK[gl.Action] {
					continue
				}
				before := len(on.groups)
				on.groups = appendGroup(on.groups, groupRef{name: gl.Action, why: gl.Pos.String() + ": GROUP " + gl.Action, src: []pvefw.Line{gl.Line}})
				if len(on.groups) == before {
					dups[gl.Pos] = gl.Line
				} else {
					listed[gl.Pos] = true
				}
			}
		}
		for _, d := range []struct {
			dir, policy, level string
		}{{"in", vm.policyIn, vm.logIn}, {"out", vm.policyOut, vm.logOut}} {
			switch d.policy {
			case "drop":
				on.groups = append(on.groups, groupRef{name: t.dropPolicyGroup(d.dir), why: "what the DROP policy does first"})
			case "reject":
				on.groups = append(on.groups, groupRef{name: t.rejectPolicyGroup(d.dir, d.level), why: "what the REJECT policy drops"})
			}
		}
	}
	return vm
}

// appendGroup appends ref unless the list has it already: a group met a
// second time decides nothing, as the first time it matched nothing.
func appendGroup(list []groupRef, ref groupRef) []groupRef {
	if slices.ContainsFunc(list, func(r groupRef) bool { return r.name == ref.name }) {
		return list
	}
	return append(list, ref)
}

func (t *translator) whyNICUnfiltered(n pvefw.NIC) string {
	if !n.Firewall {
		return "no firewall=1"
	}
	return "the guest's firewall is off"
}

// vmOptions translates a filtered VM's [OPTIONS].
func (t *translator) vmOptions(c *guestCtx, vm *outVM) {
	for _, key := range slices.Sorted(maps.Keys(c.fw.Options)) {
		o := c.fw.Options[key]
		switch key {
		case "enable":
			vm.optionSrc = append(vm.optionSrc, o.Line)
			t.rep.set(o.Line, Translated, "")
		case "policy_in", "policy_out":
			p := strings.ToLower(o.Value)
			if key == "policy_in" {
				vm.policyIn, vm.policyInSrc = p, o.Line
			} else {
				vm.policyOut, vm.policyOutSrc = p, o.Line
			}
			t.rep.set(o.Line, Translated, "")
		case "log_level_in", "log_level_out":
			if o.Value == "" || o.Value == "nolog" {
				t.rep.set(o.Line, NoEffect, "no logging")
				continue
			}
			if key == "log_level_in" {
				vm.logIn, vm.logInSrc = o.Value, o.Line
			} else {
				vm.logOut, vm.logOutSrc = o.Value, o.Line
			}
			t.rep.set(o.Line, Translated, "")
		case "macfilter", "dhcp", "radv", "ndp":
			t.rep.set(o.Line, Translated, "")
		case "ipfilter":
			if o.Value == "1" {
				t.problem(o.Line, Untranslatable, "ipfilter binds the guest's source addresses (ipfilter-netN sets, the MAC's link-local address) after DHCP; vmfw cannot express it", false)
			} else {
				t.rep.set(o.Line, Translated, "")
			}
		case "ips":
			if o.Value == "1" {
				t.problem(o.Line, Untranslatable, "the intrusion prevention queue (NFQUEUE) has no vmfw counterpart", false)
			} else {
				t.rep.set(o.Line, NoEffect, "")
			}
		case "ips_queues":
			t.rep.set(o.Line, NoEffect, "only used with ips: 1")
		case "layer2_protocols":
			t.problem(o.Line, Untranslatable, "pve-firewall restricts ethertypes whether macfilter is on or not; vmfw's l2_protocols apply only with full antispoof", false)
		}
	}
}

// vmRules splits the guest's [RULES] into segments between GROUP lines
// and translates them.
func (t *translator) vmRules(c *guestCtx) ([]*segment, []pvefw.Rule) {
	sc := setScope{id: c.g.ID, fw: c.fw}
	segs := []*segment{{}}
	var groupLines []pvefw.Rule
	nics := map[string]bool{}
	for _, n := range c.g.NICs {
		if c.modes[n.Index] == full {
			nics["net"+strconv.Itoa(n.Index)] = true
		}
	}
	for _, r := range c.fw.Rules {
		if r.Disabled {
			t.rep.set(r.Line, Disabled, disabledNote)
			continue
		}
		if r.Iface != "" && netID.MatchString(r.Iface) && !nics[r.Iface] {
			t.rep.set(r.Line, NoEffect, r.Iface+" is not a firewalled interface of the guest")
			continue
		}
		switch r.Type {
		case "group":
			if r.Iface != "" && !netID.MatchString(r.Iface) {
				t.problem(r.Line, Ignored, "value does not match the regex pattern 'net\\d+'", true)
				continue
			}
			if _, ok := t.cluster.Groups[r.Action]; !ok {
				t.problem(r.Line, Ignored, "no such security group '"+r.Action+"' (pve-firewall uses an empty one; group names are lower case)", true)
				continue
			}
			t.rep.set(r.Line, Translated, "")
			groupLines = append(groupLines, r)
			segs = append(segs, &segment{})
		case "in", "out":
			rules, ok := t.translateRule(r, sc, false)
			if !ok || len(rules) == 0 {
				continue
			}
			t.rep.set(r.Line, Translated, "")
			s := segs[len(segs)-1]
			s.rules = append(s.rules, segRule{r: r, iface: r.Iface, rules: rules})
		default:
			t.problem(r.Line, Ignored, "invalid rule type '"+r.Type+"' for a guest", true)
		}
	}
	return segs, groupLines
}

// segmentGroup returns the group holding segment k's rules for interface
// index, creating it: VMID_k when the segment is the same for every
// interface (no -i in it), VMID_knN otherwise. "" when the interface has
// no rule in it.
func (t *translator) segmentGroup(id, k int, s *segment, index int, _ []*segment) (string, string) {
	iface := "net" + strconv.Itoa(index)
	shared := true
	var mine []segRule
	for _, r := range s.rules {
		if r.iface != "" {
			shared = false
		}
		if r.iface == "" || r.iface == iface {
			mine = append(mine, r)
		}
	}
	if len(mine) == 0 {
		return "", ""
	}
	name := "VM" + strconv.Itoa(id) + "_" + strconv.Itoa(k)
	if !shared {
		name += "n" + strconv.Itoa(index)
	}
	src := mine[0].r.Pos.String()
	if len(mine) > 1 {
		src += "-" + strconv.Itoa(mine[len(mine)-1].r.Pos.Line)
	}
	if _, ok := t.groups[name]; ok {
		return name, src
	}
	if !t.claim("group", name, fmt.Sprintf("rules of guest %d", id), mine[0].r.Line) {
		return "", ""
	}
	og := &outGroup{name: name, header: []string{fmt.Sprintf("Rules of VM %d between its GROUP lines (%s), imported by vmfw import proxmox.", id, src)}}
	for _, r := range mine {
		og.add(r.r.Type, r.rules...)
	}
	t.groups[name] = og
	return name, src
}

func label(name string) string {
	if labelOK.MatchString(name) {
		return name
	}
	return ""
}

// enableSrc is the cluster's enable line, which every VM's enable comes
// from.
func (t *translator) enableSrc() []pvefw.Line {
	if o, ok := t.cluster.Options["enable"]; ok {
		return []pvefw.Line{o.Line}
	}
	return nil
}
