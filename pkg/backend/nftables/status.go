package nftables

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// Status lays out want and compares it with the kernel: chains by
// fingerprint, sets by signature and element. A difference in an element
// keyed by an interface's name, in a membership element of its address
// or in the chains of a group or group list it lists is that interface's
// drift; the rest is the base's. Each interface's drops are its elements' counters
// in drops-out and drops-in.
func (b *Backend) Status(ctx context.Context, s backend.State, want *ruleset.Policy) (*backend.Status, error) {
	st := s.(*state)
	if !st.full || st.remembered {
		obs, err := b.kernel.Read(true)
		if err != nil {
			return nil, err
		}
		st = &state{obs: obs, full: true}
	}
	rs := layout.Build(want, b.marks)
	out := &backend.Status{Interfaces: map[string]*backend.InterfaceStatus{}}
	for _, n := range want.Interfaces {
		out.Interfaces[n.Name] = &backend.InterfaceStatus{}
	}
	byGroup := map[string][]string{}
	byList := map[string][]string{}
	for _, n := range want.Interfaces {
		if n.Enabled {
			for _, g := range n.Groups {
				byGroup[g] = append(byGroup[g], n.Name)
			}
			if len(n.Groups) > 0 {
				k := layout.ListKey(n.Groups)
				byList[k] = append(byList[k], n.Name)
			}
		}
	}
	report := func(iface string, d backend.Drift) {
		if is := out.Interfaces[iface]; is != nil {
			is.Drifted = append(is.Drifted, d)
			return
		}
		out.BaseDrifted = append(out.BaseDrifted, d)
	}
	for _, t := range rs.Tables() {
		have := st.obs.Tables[t.Family]
		prefix := string(t.Family) + "/"
		if have == nil {
			out.BaseDrifted = append(out.BaseDrifted, backend.Drift{Object: "table " + string(t.Family) + " " + layout.TableName, Problem: "missing"})
			continue
		}
		for _, c := range t.Chains {
			o := have.Chains[c.Name]
			problem := ""
			switch {
			case o == nil:
				problem = "missing"
			case !sameHook(o.Hook, c.Hook) || !slices.Equal(o.Hashes, c.Hashes()):
				problem = "drifted"
			}
			if problem == "" {
				continue
			}
			d := backend.Drift{Object: prefix + c.Name, Problem: problem}
			if g, _, ok := layout.ParseGroupChain(c.Name); ok && len(byGroup[g]) > 0 {
				for _, iface := range byGroup[g] {
					report(iface, d)
				}
				continue
			}
			if k, _, ok := layout.ParseListChain(c.Name); ok && len(byList[k]) > 0 {
				for _, iface := range byList[k] {
					report(iface, d)
				}
				continue
			}
			out.BaseDrifted = append(out.BaseDrifted, d)
		}
		for _, name := range slices.Sorted(maps.Keys(have.Chains)) {
			if t.Chain(name) == nil {
				out.BaseDrifted = append(out.BaseDrifted, backend.Drift{Object: prefix + name, Problem: "unexpected"})
			}
		}
		for _, set := range t.Sets {
			o := have.Sets[set.Name]
			obj := "set " + prefix + set.Name
			if isListSet(set.Name) {
				addressSetStatus(out, set, o, obj)
				continue
			}
			if o == nil || o.Signature != set.Signature() {
				problem := "missing"
				if o != nil {
					problem = "drifted"
				}
				out.BaseDrifted = append(out.BaseDrifted, backend.Drift{Object: obj, Problem: problem})
				continue
			}
			wanted := map[string]bool{}
			for _, e := range set.Elements {
				k := string(e.KeyBytes())
				wanted[k] = true
				if _, ok := o.Elements[k]; !ok {
					report(owner(want, e), backend.Drift{Object: obj, Problem: "element " + e.Text() + " missing"})
				} else if o.Data[k] != e.DataText() {
					// A verdict map's element jumping elsewhere, or an
					// interface's fingerprint in the ports set that is not
					// its settings' (a plan would write it again).
					report(owner(want, e), backend.Drift{Object: obj, Problem: "element " + e.Text() + " holds " + strconv.Quote(o.Data[k])})
				}
			}
			for _, k := range slices.Sorted(maps.Keys(o.Elements)) {
				if wanted[k] {
					continue
				}
				e, ok := set.Decode([]byte(k))
				if !ok {
					out.BaseDrifted = append(out.BaseDrifted, backend.Drift{Object: obj, Problem: "foreign element"})
					continue
				}
				report(owner(want, e), backend.Drift{Object: obj, Problem: "element " + e.Text() + " unexpected"})
			}
		}
		for _, name := range slices.Sorted(maps.Keys(have.Sets)) {
			if t.Set(name) == nil {
				out.BaseDrifted = append(out.BaseDrifted, backend.Drift{Object: "set " + prefix + name, Problem: "unexpected"})
			}
		}
	}
	hs, err := b.hooks.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading iptables' FORWARD and OUTPUT chains: %w", err)
	}
	if h := planHooks(hs, true, b.marks.Acc); !h.empty() {
		for _, hc := range hookChains {
			if slices.Contains(h.insert, hc) {
				out.BaseDrifted = append(out.BaseDrifted, backend.Drift{Object: "iptables " + hc.String(), Problem: "vmfw's accept rule missing"})
			} else if len(h.delete[hc]) > 0 {
				out.BaseDrifted = append(out.BaseDrifted, backend.Drift{Object: "iptables " + hc.String(), Problem: "vmfw's accept rule drifted"})
			}
		}
	}
	if br := st.obs.Tables[layout.Bridge]; br != nil {
		for name, is := range out.Interfaces {
			key := string(layout.Ifname(name).Bytes)
			is.DroppedOut = counter(br.Sets[layout.SetDropsOut], key)
			is.DroppedIn = counter(br.Sets[layout.SetDropsIn], key)
		}
	}
	return out, nil
}

func counter(s *nlnft.ObservedSet, key string) backend.Counter {
	if s == nil {
		return backend.Counter{}
	}
	c := s.Elements[key]
	return backend.Counter{Packets: c.Packets, Bytes: c.Bytes}
}

// owner names the interface an element belongs to: the interface a key
// starts with, or the interface owning an address; "" for none.
func owner(p *ruleset.Policy, e layout.Element) string {
	first := e.Key[0]
	switch first.Type {
	case layout.TypeIfname:
		return strings.TrimRight(string(first.Bytes), "\x00")
	case layout.TypeIPv4, layout.TypeIPv6:
		for _, n := range p.Interfaces {
			for _, ip := range n.IPs {
				if string(layout.Addr(ip).Bytes) == string(first.Bytes) {
					return n.Name
				}
			}
		}
	}
	return ""
}
