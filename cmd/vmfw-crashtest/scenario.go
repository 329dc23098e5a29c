package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The scenario has two configurations, A and B, and every kind of change
// between them, so that a kill can land in each step of an apply:
//
//   - group web is rewritten (its chains change), in B with a port range
//     in a list, which the nftables backend stages (a first transaction
//     adds the new rules where no packet reaches them);
//   - group old exists only in A and group new only in B, each admitting its
//     own members, so their chains and ipsets are created and removed
//     (new's with a port range too);
//   - group app changes members (ipset adds and deletes only);
//   - group bulk has every interface as a member in B (thousands of
//     addresses: an ipset script longer than a pipe buffer) and none in A;
//   - the first ten interfaces are configured only in A, the last ten only
//     in B, so tap chains and ebtables chains come and go.
//
// The interfaces are ifb devices named like taps in the hypervisor
// namespace: an apply firewalls every configured tap that exists, and no
// packet is needed to check what was installed.

// addrsPerTap is how many IPv6 addresses each interface lists.
const addrsPerTap = 8

// firstID is the VM id of the first interface.
const firstID = 1000

func tapName(i int) string { return fmt.Sprintf("tap%di0", firstID+i) }

var groupsA = map[string]string{
	"web.toml":  "[[in]]\nproto = \"tcp\"\ndport = \"80\"\ncomment = \"version a\"\n",
	"db.toml":   "[[in]]\nproto = \"tcp\"\ndport = \"5432\"\nsource_group = \"app\"\n",
	"app.toml":  "description = \"membership\"\n",
	"bulk.toml": "[[in]]\nproto = \"tcp\"\ndport = \"9000\"\nsource_group = \"bulk\"\n",
	"old.toml":  "[[in]]\nproto = \"tcp\"\ndport = \"22\"\nsource_group = \"old\"\n",
}

var groupsB = map[string]string{
	"web.toml":  "[[in]]\nproto = \"tcp\"\ndport = \"80,443,8000:8080\"\ncomment = \"version b\"\n\n[[in]]\nproto = \"udp\"\ndport = \"53\"\naction = \"drop\"\n",
	"db.toml":   groupsA["db.toml"],
	"app.toml":  groupsA["app.toml"],
	"bulk.toml": groupsA["bulk.toml"],
	"new.toml":  "[[in]]\nproto = \"tcp\"\ndport = \"2222,3000:3010\"\nsource_group = \"new\"\n",
}

// vmFile returns the VM file of interface i in configuration b (false: A).
func vmFile(i int, b bool) string {
	groups := []string{"web", "db"}
	if (!b && i%2 == 0) || (b && i%3 == 0) {
		groups = append(groups, "app")
	}
	if b {
		groups = append(groups, "bulk")
	}
	if i < 20 {
		if b {
			groups = append(groups, "new")
		} else {
			groups = append(groups, "old")
		}
	}
	ips := []string{fmt.Sprintf("%q", fmt.Sprintf("198.51.100.%d", 1+i%250))}
	if i >= 250 {
		ips = nil // IPv4 documentation addresses run out
	}
	for k := range addrsPerTap {
		ips = append(ips, fmt.Sprintf("%q", fmt.Sprintf("2001:db8:%x::%x", 1+k, i+1)))
	}
	quoted := make([]string, len(groups))
	for k, g := range groups {
		quoted[k] = fmt.Sprintf("%q", g)
	}
	return fmt.Sprintf("[net0]\nmac = \"02:00:00:%02x:%02x:%02x\"\nips = [%s]\ngroups = [%s]\n",
		(i>>16)&0xff, (i>>8)&0xff, i&0xff, strings.Join(ips, ", "), strings.Join(quoted, ", "))
}

// writeConfig replaces the configuration in dir with A or B (b true).
func writeConfig(dir string, taps int, b bool) error {
	for _, sub := range []string{"groups", "vms"} {
		if err := os.RemoveAll(filepath.Join(dir, sub)); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	groups := groupsA
	if b {
		groups = groupsB
	}
	for name, content := range groups {
		if err := os.WriteFile(filepath.Join(dir, "groups", name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	for i := range taps {
		if (!b && i >= taps-10) || (b && i < 10) {
			continue // configured only in the other configuration
		}
		path := filepath.Join(dir, "vms", fmt.Sprintf("%d.toml", firstID+i))
		if err := os.WriteFile(path, []byte(vmFile(i, b)), 0o644); err != nil {
			return err
		}
	}
	return nil
}
