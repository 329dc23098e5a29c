package ruleset

import (
	"strconv"
	"strings"
)

// icmpCodes maps the type names iptables accepts (the canonical ones
// config keeps) to type and code; code -1 matches every code.
var icmpCodes = map[string][2]int{
	"echo-reply": {0, -1}, "destination-unreachable": {3, -1}, "network-unreachable": {3, 0},
	"host-unreachable": {3, 1}, "protocol-unreachable": {3, 2}, "port-unreachable": {3, 3},
	"fragmentation-needed": {3, 4}, "source-route-failed": {3, 5}, "network-unknown": {3, 6},
	"host-unknown": {3, 7}, "network-prohibited": {3, 9}, "host-prohibited": {3, 10},
	"tos-network-unreachable": {3, 11}, "tos-host-unreachable": {3, 12},
	"communication-prohibited": {3, 13}, "host-precedence-violation": {3, 14},
	"precedence-cutoff": {3, 15}, "source-quench": {4, -1}, "redirect": {5, -1},
	"network-redirect": {5, 0}, "host-redirect": {5, 1}, "tos-network-redirect": {5, 2},
	"tos-host-redirect": {5, 3}, "echo-request": {8, -1}, "router-advertisement": {9, -1},
	"router-solicitation": {10, -1}, "time-exceeded": {11, -1}, "ttl-zero-during-transit": {11, 0},
	"ttl-zero-during-reassembly": {11, 1}, "parameter-problem": {12, -1}, "ip-header-bad": {12, 0},
	"required-option-missing": {12, 1}, "timestamp-request": {13, -1}, "timestamp-reply": {14, -1},
	"address-mask-request": {17, -1}, "address-mask-reply": {18, -1},
}

var icmpv6Codes = map[string][2]int{
	"destination-unreachable": {1, -1}, "no-route": {1, 0}, "communication-prohibited": {1, 1},
	"beyond-scope": {1, 2}, "address-unreachable": {1, 3}, "port-unreachable": {1, 4},
	"failed-policy": {1, 5}, "reject-route": {1, 6}, "packet-too-big": {2, -1},
	"time-exceeded": {3, -1}, "ttl-zero-during-transit": {3, 0}, "ttl-zero-during-reassembly": {3, 1},
	"parameter-problem": {4, -1}, "bad-header": {4, 0}, "unknown-header-type": {4, 1},
	"unknown-option": {4, 2}, "echo-request": {128, -1}, "echo-reply": {129, -1},
	"router-solicitation": {133, -1}, "router-advertisement": {134, -1},
	"neighbour-solicitation": {135, -1}, "neighbour-advertisement": {136, -1}, "redirect": {137, -1},
}

// ParseICMPType reads an ICMP (proto "icmp") or ICMPv6 ("icmpv6") type as
// iptables does: a name ("echo-request", "port-unreachable", the aliases
// "ping", "pong", "neighbor-..." too), a number, or "TYPE/CODE". code is -1
// when the name or number names every code of the type.
func ParseICMPType(proto, s string) (typ, code int, ok bool) {
	s = strings.ToLower(s)
	if t, c, found := strings.Cut(s, "/"); found {
		ti, err1 := strconv.Atoi(t)
		ci, err2 := strconv.Atoi(c)
		if err1 != nil || err2 != nil || ti < 0 || ti > 255 || ci < 0 || ci > 255 {
			return 0, 0, false
		}
		return ti, ci, true
	}
	if n, err := strconv.Atoi(s); err == nil {
		return n, -1, n >= 0 && n <= 255
	}
	names := icmpCodes
	if proto == "icmpv6" {
		names = icmpv6Codes
	}
	switch s {
	case "ping":
		s = "echo-request"
	case "pong":
		s = "echo-reply"
	case "ttl-exceeded":
		s = "time-exceeded"
	case "neighbor-solicitation":
		s = "neighbour-solicitation"
	case "neighbor-advertisement":
		s = "neighbour-advertisement"
	}
	tc, found := names[s]
	return tc[0], tc[1], found
}
