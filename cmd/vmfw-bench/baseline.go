package main

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// baseline adds and removes the same tap's chains the way the original
// design script and containernetworking's firewall plugin do: one iptables
// command per chain and per rule, through go-iptables (ChainExists,
// NewChain, AppendUnique, which runs -C then -A; InsertUnique for the
// dispatch jump; ClearAndDeleteChain to remove). Each command is its own
// transaction, so on nf_tables each pays the kernel's validation of the
// whole table and on legacy each rewrites the whole table. Like them it
// also creates missing group chains and sets and adds members one command
// each; unlike vmfw it writes no ebtables rules.
func (l *lab) baseline(m *config.Model, nic *config.NIC) (up, down time.Duration, err error) {
	rs, err := layout.FromConfig(m, []*config.NIC{nic})
	if err != nil {
		return 0, 0, err
	}
	mine := func(c layout.Chain) bool {
		return strings.HasPrefix(string(c), nic.Tap+"-") || strings.HasPrefix(string(c), "sg-")
	}
	jumps := map[layout.Chain][]string{
		layout.ChainOut: {"-m", "physdev", "--physdev-in", nic.Tap, "-g", string(layout.TapChain(nic.Tap, "out"))},
		layout.ChainIn:  {"-m", "physdev", "--physdev-out", nic.Tap, "-g", string(layout.TapChain(nic.Tap, "in"))},
	}
	// What the add creates that was not there (the first member's group
	// chains, sets) the remove deletes again, so every run starts equal.
	created := map[ruleset.Family][]string{}
	var sets []string
	err = l.hv.do(func() error {
		start := time.Now()
		for _, s := range rs.Sets {
			out, _ := exec.Command("ipset", "list", "-n").Output()
			if !slices.Contains(strings.Fields(string(out)), s.Name) {
				sets = append(sets, s.Name)
			}
			if err := exec.Command("ipset", "create", s.Name, string(s.Type), "family", ipsetFamily(s.Family), "-exist").Run(); err != nil {
				return fmt.Errorf("ipset create %s: %w", s.Name, err)
			}
			for _, member := range s.Members {
				if err := exec.Command("ipset", "add", s.Name, member, "-exist").Run(); err != nil {
					return fmt.Errorf("ipset add %s %s: %w", s.Name, member, err)
				}
			}
		}
		for _, f := range ruleset.Families {
			ipt, err := l.goIPTables(f)
			if err != nil {
				return err
			}
			for _, c := range rs.Tables[f].Chains {
				if !mine(c.Name) {
					continue
				}
				exists, err := ipt.ChainExists("filter", string(c.Name))
				if err != nil {
					return err
				}
				if !exists {
					if err := ipt.NewChain("filter", string(c.Name)); err != nil {
						return err
					}
					created[f] = append(created[f], string(c.Name))
				}
				for _, r := range c.Rules {
					if err := l.ctx.Err(); err != nil {
						return err // interrupted: every command here can take seconds
					}
					args, err := ruleArgs(r.Line(c.Name))
					if err != nil {
						return err
					}
					if err := ipt.AppendUnique("filter", string(c.Name), args...); err != nil {
						return err
					}
				}
			}
			for chain, rule := range jumps {
				// Second, after the mark reset and before the fail-closed drops.
				if err := ipt.InsertUnique("filter", string(chain), 2, rule...); err != nil {
					return err
				}
			}
		}
		up = time.Since(start)

		start = time.Now()
		for _, f := range ruleset.Families {
			ipt, err := l.goIPTables(f)
			if err != nil {
				return err
			}
			for chain, rule := range jumps {
				if err := ipt.DeleteIfExists("filter", string(chain), rule...); err != nil {
					return err
				}
			}
			// Referring chains first: out jumps to src and nd.
			chains := layout.TapChains(nic.Tap)
			slices.Reverse(chains)
			for _, tc := range chains {
				c := string(tc)
				exists, err := ipt.ChainExists("filter", c)
				if err != nil {
					return err
				}
				if exists {
					if err := ipt.ClearAndDeleteChain("filter", c); err != nil {
						return err
					}
				}
			}
			for _, c := range created[f] {
				if strings.HasPrefix(c, "sg-") {
					if err := ipt.ClearAndDeleteChain("filter", c); err != nil {
						return err
					}
				}
			}
		}
		for _, s := range rs.Sets {
			for _, member := range s.Members {
				if err := exec.Command("ipset", "del", s.Name, member, "-exist").Run(); err != nil {
					return fmt.Errorf("ipset del %s %s: %w", s.Name, member, err)
				}
			}
		}
		for _, name := range sets {
			if err := exec.Command("ipset", "destroy", name).Run(); err != nil {
				return fmt.Errorf("ipset destroy %s: %w", name, err)
			}
		}
		down = time.Since(start)
		return nil
	})
	return up, down, err
}

func ipsetFamily(f ruleset.Family) string {
	if f == ruleset.IPv6 {
		return "inet6"
	}
	return "inet"
}

// goIPTables returns a go-iptables handle on the lab's backend.
func (l *lab) goIPTables(f ruleset.Family) (*goipt.IPTables, error) {
	proto := goipt.ProtocolIPv4
	if f == ruleset.IPv6 {
		proto = goipt.ProtocolIPv6
	}
	path := "/usr/sbin/" + l.tool(f, "")
	return goipt.New(goipt.IPFamily(proto), goipt.Path(path), goipt.Timeout(5))
}

// ruleArgs splits an "-A CHAIN ..." line into the arguments after the
// chain, honouring the quotes around comments (layout.SplitWords).
func ruleArgs(line string) ([]string, error) {
	words, err := layout.SplitWords(line)
	if err != nil {
		return nil, err
	}
	if len(words) < 2 || words[0] != "-A" {
		return nil, fmt.Errorf("not an -A line: %q", line)
	}
	return words[2:], nil
}
