package config

import (
	"fmt"
	"strings"
)

// maxMultiport is the number of ports iptables' multiport match takes; a
// range counts as two.
const maxMultiport = 15

// parsePorts parses "22", "80,443" or "8000:8080" lists. On failure it
// returns a description of the problem.
func parsePorts(s string) ([]PortRange, string) {
	var out []PortRange
	slots := 0
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, "empty port in list; separate ports with commas, like \"80,443\""
		}
		if strings.Contains(item, "-") {
			return nil, "invalid port range, use lo:hi"
		}
		lo, hi, isRange := strings.Cut(item, ":")
		r := PortRange{}
		var ok bool
		if r.Lo, ok = parsePort(lo); !ok {
			return nil, fmt.Sprintf("port %q is not a number from 1 to 65535", lo)
		}
		r.Hi = r.Lo
		if isRange {
			if r.Hi, ok = parsePort(hi); !ok {
				return nil, fmt.Sprintf("port %q is not a number from 1 to 65535", hi)
			}
			if r.Lo > r.Hi {
				return nil, fmt.Sprintf("range %s starts above its end", item)
			}
		}
		slots++
		if r.Lo != r.Hi {
			slots++
		}
		out = append(out, r)
	}
	if slots > maxMultiport {
		return nil, fmt.Sprintf("%d ports, iptables allows at most %d in one rule (a range counts as two); split the rule", slots, maxMultiport)
	}
	return out, ""
}

func parsePort(s string) (uint16, bool) {
	n, ok := parseDecimal(s, 65535)
	if !ok || n < 1 {
		return 0, false
	}
	return uint16(n), true
}

// portProto reports whether proto has ports iptables can match.
func portProto(proto string) bool {
	return proto == "tcp" || proto == "udp" || proto == "sctp"
}
