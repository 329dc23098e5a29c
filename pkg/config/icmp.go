package config

import (
	"strconv"
	"strings"
)

// icmpTypes and icmpv6Types are the names iptables and ip6tables accept for
// --icmp-type and --icmpv6-type (see "iptables -p icmp -h"), mapped to their
// canonical spelling; aliases such as "ping" map to the name they stand for.
// Only these reach iptables, so a name valid for one family cannot fail in
// iptables-restore for the other.
var icmpTypes = canonical(
	"echo-reply", "pong:echo-reply",
	"destination-unreachable", "network-unreachable", "host-unreachable",
	"protocol-unreachable", "port-unreachable", "fragmentation-needed",
	"source-route-failed", "network-unknown", "host-unknown",
	"network-prohibited", "host-prohibited", "tos-network-unreachable",
	"tos-host-unreachable", "communication-prohibited",
	"host-precedence-violation", "precedence-cutoff",
	"source-quench",
	"redirect", "network-redirect", "host-redirect", "tos-network-redirect",
	"tos-host-redirect",
	"echo-request", "ping:echo-request",
	"router-advertisement", "router-solicitation",
	"time-exceeded", "ttl-exceeded:time-exceeded", "ttl-zero-during-transit",
	"ttl-zero-during-reassembly",
	"parameter-problem", "ip-header-bad", "required-option-missing",
	"timestamp-request", "timestamp-reply",
	"address-mask-request", "address-mask-reply",
)

var icmpv6Types = canonical(
	"destination-unreachable", "no-route", "communication-prohibited",
	"beyond-scope", "address-unreachable", "port-unreachable",
	"failed-policy", "reject-route",
	"packet-too-big",
	"time-exceeded", "ttl-exceeded:time-exceeded", "ttl-zero-during-transit",
	"ttl-zero-during-reassembly",
	"parameter-problem", "bad-header", "unknown-header-type", "unknown-option",
	"echo-request", "ping:echo-request", "echo-reply", "pong:echo-reply",
	"router-solicitation", "router-advertisement",
	"neighbour-solicitation", "neighbor-solicitation:neighbour-solicitation",
	"neighbour-advertisement", "neighbor-advertisement:neighbour-advertisement",
	"redirect",
)

// canonical builds a name table from "name" and "alias:name" entries.
func canonical(entries ...string) map[string]string {
	m := make(map[string]string, len(entries))
	for _, e := range entries {
		alias, name, ok := strings.Cut(e, ":")
		if !ok {
			name = alias
		}
		m[alias] = name
	}
	return m
}

// parseICMPType returns the canonical name or decimal number of an ICMP
// (proto "icmp") or ICMPv6 type; "any" matches every type and returns "".
// iptables compares names case-insensitively, and so does this.
func parseICMPType(proto string, v any) (string, bool) {
	switch v := v.(type) {
	case int64:
		if v < 0 || v > 255 {
			return "", false
		}
		return strconv.FormatInt(v, 10), true
	case string:
		if n, ok := parseDecimal(v, 255); ok {
			return strconv.Itoa(n), true
		}
		name := strings.ToLower(v)
		if name == "any" {
			return "", true
		}
		names := icmpTypes
		if proto == "icmpv6" {
			names = icmpv6Types
		}
		c, ok := names[name]
		return c, ok
	}
	return "", false
}
