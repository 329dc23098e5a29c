package main

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	"github.com/vmfw/vmfw/pkg/ruleset"
)

// foreignChain is a chain another tool owns, named like a vmfw tap chain
// so that a name-based mistake would show.
const foreignChain = "web-in"

// addForeign installs rules, a chain, an ipset and an ebtables chain that
// belong to someone else, before anything is measured.
func (l *lab) addForeign() error {
	for _, f := range ruleset.Families {
		src := "203.0.113.0/24"
		if f == ruleset.IPv6 {
			src = "2001:db8:ffff::/48"
		}
		rules := fmt.Sprintf("*filter\n:%s - [0:0]\n-A %s -s %s -j ACCEPT\n-A FORWARD -s %s -j %s\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n",
			foreignChain, foreignChain, src, src, foreignChain)
		if _, err := l.hv.runIn(l.ctx, []byte(rules), l.tool(f, "-restore"), "--noflush"); err != nil {
			return err
		}
	}
	if _, err := l.hv.runIn(l.ctx, []byte("create foreign-set hash:ip\nadd foreign-set 203.0.113.9\n"), "ipset", "restore"); err != nil {
		return err
	}
	_, err := l.hv.runIn(l.ctx, []byte("*filter\n:FOREIGN RETURN\n-A FOREIGN -s 02:00:00:00:ff:01 -j DROP\n-A FORWARD -j FOREIGN\nCOMMIT\n"), "ebtables-nft-restore", "--noflush")
	return err
}

// foreign returns what the lab holds that vmfw did not write: every line
// of the saved tables except vmfw's chains and rules, the foreign ipset,
// and the bridge table's foreign lines.
func (l *lab) foreign() (string, error) {
	var b strings.Builder
	for _, f := range ruleset.Families {
		out, err := l.hv.run(l.ctx, l.tool(f, "-save"))
		if err != nil {
			return "", err
		}
		for _, line := range bytes.Split(out, []byte("\n")) {
			s := string(line)
			if strings.HasPrefix(s, "#") || strings.Contains(s, "vmfw:") || strings.Contains(s, "vmfw nftables") || isVMFWDeclaration(s) {
				continue
			}
			// Policy counters move with traffic, which is not a change.
			if i := strings.LastIndex(s, " ["); strings.HasPrefix(s, ":") && i > 0 {
				s = s[:i]
			}
			b.WriteString(s + "\n")
		}
	}
	out, err := l.hv.run(l.ctx, "ipset", "list", "foreign-set")
	if err != nil {
		return "", err
	}
	b.Write(out)
	out, err = l.hv.run(l.ctx, "ebtables-nft-save")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "FOREIGN") {
			b.WriteString(line + "\n")
		}
	}
	return b.String(), nil
}

// isVMFWDeclaration reports whether a saved line declares one of vmfw's
// chains (":NAME - [p:b]"); declarations carry no comment to recognise.
func isVMFWDeclaration(line string) bool {
	name, ok := strings.CutPrefix(line, ":")
	if !ok {
		return false
	}
	name, _, _ = strings.Cut(name, " ")
	return name != foreignChain && layout.IsOwnedName(name)
}

// checkForeign fails when what others own changed since want was taken.
func (l *lab) checkForeign(want string) error {
	got, err := l.foreign()
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%s, %d taps: rules vmfw does not own changed:\nbefore:\n%s\nafter:\n%s", l.backend, l.n, want, got)
	}
	return nil
}
