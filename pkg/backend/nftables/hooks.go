package nftables

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/vmfw/vmfw/pkg/backend/iptables/xtables"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// hookComment marks vmfw's rule in iptables' FORWARD and OUTPUT chains.
const hookComment = "vmfw nftables: allowed"

// HookChain is one of iptables' built-in chains that traffic to or from a
// VM passes after vmfw's tables: FORWARD (bridged and routed traffic) and
// OUTPUT (host-sent traffic), in the IPv4 and IPv6 filter tables.
type HookChain struct {
	// Family is "ipv4" or "ipv6"; Chain "FORWARD" or "OUTPUT".
	Family, Chain string
}

func (c HookChain) String() string { return c.Family + " " + c.Chain }

// hookChains are the chains vmfw's rule goes into.
var hookChains = []HookChain{{"ipv4", "FORWARD"}, {"ipv4", "OUTPUT"}, {"ipv6", "FORWARD"}, {"ipv6", "OUTPUT"}}

// HookState is what a read of iptables' built-in chains found.
type HookState struct {
	// Exists holds the chains whose filter table exists.
	Exists map[HookChain]bool
	// Policy holds each existing chain's policy (ACCEPT, DROP).
	Policy map[HookChain]string
	// Rules holds vmfw's rules found in each chain, as iptables-save
	// prints them ("-A FORWARD ... -j ACCEPT").
	Rules map[HookChain][]string
}

// Hooks reads and writes vmfw's one rule in each of iptables' FORWARD and
// OUTPUT chains, which accepts what vmfw's tables let through (the ACC
// mark bit): an accept in vmfw's own tables ends only their chains, and a
// foreign FORWARD policy of DROP (Docker sets one) would drop it after
// them. xtablesHooks implements it; tests fake it.
type Hooks interface {
	Read(ctx context.Context) (*HookState, error)
	// Change removes the rules given in del, as Read returned them, and
	// puts rule at the head of each chain in insert: one transaction per
	// family, so that a crash leaves each family's chains as they were
	// or as they are meant to be.
	Change(ctx context.Context, del map[HookChain][]string, insert []HookChain, rule []string) error
}

// hookRule is vmfw's rule for the mark bit acc, as iptables arguments.
func hookRule(acc uint32) []string {
	return []string{"-m", "mark", "--mark", fmt.Sprintf("0x%x/0x%x", acc, acc), "-m", "comment", "--comment", hookComment, "-j", "ACCEPT"}
}

// hookLine is hookRule as iptables-save prints it in chain.
func hookLine(chain string, acc uint32) string { return saveLine(chain, hookRule(acc)) }

// saveLine is a rule of args in chain as iptables-save prints it.
func saveLine(chain string, rule []string) string {
	args := slices.Clone(rule)
	for i, a := range args {
		if strings.Contains(a, " ") {
			args[i] = `"` + a + `"`
		}
	}
	return "-A " + chain + " " + strings.Join(args, " ")
}

// xtablesHooks runs the host's iptables (nft or legacy, whichever its
// iptables command uses, as Docker does), detected at first use.
type xtablesHooks struct {
	mode xtables.Mode

	once    sync.Once
	client  *xtables.Client
	openErr error
}

func (h *xtablesHooks) open(ctx context.Context) (*xtables.Client, error) {
	h.once.Do(func() {
		h.client, h.openErr = xtables.New(ctx, h.mode, nil)
	})
	return h.client, h.openErr
}

func (h *xtablesHooks) Read(ctx context.Context) (*HookState, error) {
	st := &HookState{Exists: map[HookChain]bool{}, Policy: map[HookChain]string{}, Rules: map[HookChain][]string{}}
	exists, err := xtables.FilterTablesExist(ctx)
	if err != nil {
		return nil, err
	}
	if !exists["ipv4"] && !exists["ipv6"] {
		return st, nil // a host without iptables' filter tables: nothing to pass
	}
	c, err := h.open(ctx)
	if err != nil {
		return nil, err
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		if !exists[fam] {
			continue
		}
		save, err := c.SaveFilter(ctx, fam == "ipv6")
		if err != nil {
			return nil, err
		}
		for _, l := range strings.Split(save, "\n") {
			for _, hc := range hookChains {
				if hc.Family != fam {
					continue
				}
				if p, ok := strings.CutPrefix(l, ":"+hc.Chain+" "); ok {
					st.Exists[hc] = true
					st.Policy[hc], _, _ = strings.Cut(p, " ")
				}
				if strings.HasPrefix(l, "-A "+hc.Chain+" ") && strings.Contains(l, hookComment) {
					st.Rules[hc] = append(st.Rules[hc], l)
				}
			}
		}
	}
	return st, nil
}

func (h *xtablesHooks) Change(ctx context.Context, del map[HookChain][]string, insert []HookChain, rule []string) error {
	c, err := h.open(ctx)
	if err != nil {
		return err
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		var text strings.Builder
		for _, hc := range hookChains {
			if hc.Family != fam {
				continue
			}
			for _, line := range del[hc] {
				rest, ok := strings.CutPrefix(line, "-A "+hc.Chain+" ")
				if !ok {
					return fmt.Errorf("deleting vmfw's rule from %s: not a rule of the chain: %s", hc, line)
				}
				fmt.Fprintf(&text, "-D %s %s\n", hc.Chain, rest)
			}
			if slices.Contains(insert, hc) {
				fmt.Fprintf(&text, "-I %s 1 %s\n", hc.Chain, strings.TrimPrefix(saveLine(hc.Chain, rule), "-A "+hc.Chain+" "))
			}
		}
		if text.Len() == 0 {
			continue
		}
		f := ruleset.IPv4
		if fam == "ipv6" {
			f = ruleset.IPv6
		}
		if err := c.Restore(ctx, f, "*filter\n"+text.String()+"COMMIT\n"); err != nil {
			return fmt.Errorf("writing vmfw's rules in iptables' chains: %w", err)
		}
	}
	return nil
}

// hookChange is what a plan does to vmfw's rules in iptables' chains.
type hookChange struct {
	insert []HookChain
	delete map[HookChain][]string
	rule   []string
}

func (c *hookChange) empty() bool { return c == nil || len(c.insert)+len(c.delete) == 0 }

// planHooks compares what st found with vmfw's rule for acc (want false:
// none): each chain gets exactly one rule, the current one. A chain whose
// table does not exist gets it too (iptables creates the table, with an
// ACCEPT policy): a DROP policy set later, by Docker starting after the
// VMs, then finds the rule already there.
func planHooks(st *HookState, want bool, acc uint32) *hookChange {
	ch := &hookChange{delete: map[HookChain][]string{}, rule: hookRule(acc)}
	for _, hc := range hookChains {
		rules := st.Rules[hc]
		if want && slices.Equal(rules, []string{hookLine(hc.Chain, acc)}) {
			continue
		}
		if len(rules) > 0 {
			ch.delete[hc] = rules
		}
		if want {
			ch.insert = append(ch.insert, hc)
		}
	}
	if len(ch.delete) == 0 {
		ch.delete = nil
	}
	return ch
}
