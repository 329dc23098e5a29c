package pveimport

import "strings"

// macroRule is one rule a macro stands for; the macro's rule supplies the
// action and whatever else it sets.
type macroRule struct {
	proto, dport, sport string
}

// macro is a pve-firewall macro: the rules it stands for in the IPv4 and
// in the IPv6 table. pve-firewall has IPv6 variants of a few macros (Ping
// is ICMPv6 echo in the IPv6 table) and macros of one family only
// (DHCPv6, NeighborDiscovery), whose list for the other family is empty.
type macro struct {
	v4, v6 []macroRule
}

// anyFamily is a macro whose rules are the same in both tables, as
// pve-firewall's are for every macro its IPv6 table does not redefine.
func anyFamily(rules []macroRule) macro {
	return macro{v4: rules, v6: rules}
}

// macros is pve-firewall's macro table ($pve_fw_macros and
// $pve_ipv6fw_macros), by the names it prefers.
var macros = map[string]macro{
	"Amanda":            anyFamily([]macroRule{{proto: "udp", dport: "10080"}, {proto: "tcp", dport: "10080"}}),
	"Auth":              anyFamily([]macroRule{{proto: "tcp", dport: "113"}}),
	"BGP":               anyFamily([]macroRule{{proto: "tcp", dport: "179"}}),
	"BitTorrent":        anyFamily([]macroRule{{proto: "tcp", dport: "6881:6889"}, {proto: "udp", dport: "6881"}}),
	"BitTorrent32":      anyFamily([]macroRule{{proto: "tcp", dport: "6881:6999"}, {proto: "udp", dport: "6881"}}),
	"Ceph":              anyFamily([]macroRule{{proto: "tcp", dport: "6789"}, {proto: "tcp", dport: "3300"}, {proto: "tcp", dport: "6800:7300"}}),
	"Citrix":            anyFamily([]macroRule{{proto: "tcp", dport: "1494"}, {proto: "udp", dport: "1604"}, {proto: "tcp", dport: "2598"}}),
	"CVS":               anyFamily([]macroRule{{proto: "tcp", dport: "2401"}}),
	"DAAP":              anyFamily([]macroRule{{proto: "tcp", dport: "3689"}, {proto: "udp", dport: "3689"}}),
	"DCC":               anyFamily([]macroRule{{proto: "tcp", dport: "6277"}}),
	"DHCPfwd":           anyFamily([]macroRule{{proto: "udp", dport: "67:68", sport: "67:68"}}),
	"DHCPv6":            {v6: []macroRule{{proto: "udp", dport: "546:547", sport: "546:547"}}},
	"Distcc":            anyFamily([]macroRule{{proto: "tcp", dport: "3632"}}),
	"DNS":               anyFamily([]macroRule{{proto: "udp", dport: "53"}, {proto: "tcp", dport: "53"}}),
	"Finger":            anyFamily([]macroRule{{proto: "tcp", dport: "79"}}),
	"FTP":               anyFamily([]macroRule{{proto: "tcp", dport: "21"}}),
	"Git":               anyFamily([]macroRule{{proto: "tcp", dport: "9418"}}),
	"GNUnet":            anyFamily([]macroRule{{proto: "tcp", dport: "2086"}, {proto: "udp", dport: "2086"}, {proto: "tcp", dport: "1080"}, {proto: "udp", dport: "1080"}}),
	"GRE":               anyFamily([]macroRule{{proto: "47"}}),
	"HKP":               anyFamily([]macroRule{{proto: "tcp", dport: "11371"}}),
	"HTTP":              anyFamily([]macroRule{{proto: "tcp", dport: "80"}}),
	"HTTPS":             anyFamily([]macroRule{{proto: "tcp", dport: "443"}}),
	"ICPV2":             anyFamily([]macroRule{{proto: "udp", dport: "3130"}}),
	"ICQ":               anyFamily([]macroRule{{proto: "tcp", dport: "5190"}}),
	"IMAP":              anyFamily([]macroRule{{proto: "tcp", dport: "143"}}),
	"IMAPS":             anyFamily([]macroRule{{proto: "tcp", dport: "993"}}),
	"IPIP":              anyFamily([]macroRule{{proto: "94"}}),
	"IPsec":             anyFamily([]macroRule{{proto: "udp", dport: "500", sport: "500"}, {proto: "50"}}),
	"IPsecah":           anyFamily([]macroRule{{proto: "udp", dport: "500", sport: "500"}, {proto: "51"}}),
	"IPsecnat":          anyFamily([]macroRule{{proto: "udp", dport: "500"}, {proto: "udp", dport: "4500"}, {proto: "50"}}),
	"IRC":               anyFamily([]macroRule{{proto: "tcp", dport: "6667"}}),
	"Jetdirect":         anyFamily([]macroRule{{proto: "tcp", dport: "9100"}}),
	"L2TP":              anyFamily([]macroRule{{proto: "udp", dport: "1701"}}),
	"LDAP":              anyFamily([]macroRule{{proto: "tcp", dport: "389"}}),
	"LDAPS":             anyFamily([]macroRule{{proto: "tcp", dport: "636"}}),
	"Mail":              anyFamily([]macroRule{{proto: "tcp", dport: "25"}, {proto: "tcp", dport: "465"}, {proto: "tcp", dport: "587"}}),
	"MDNS":              anyFamily([]macroRule{{proto: "udp", dport: "5353"}}),
	"MSNP":              anyFamily([]macroRule{{proto: "tcp", dport: "1863"}}),
	"MSSQL":             anyFamily([]macroRule{{proto: "tcp", dport: "1433"}}),
	"Munin":             anyFamily([]macroRule{{proto: "tcp", dport: "4949"}}),
	"MySQL":             anyFamily([]macroRule{{proto: "tcp", dport: "3306"}}),
	"NeighborDiscovery": {v6: []macroRule{{proto: "icmpv6", dport: "router-solicitation"}, {proto: "icmpv6", dport: "router-advertisement"}, {proto: "icmpv6", dport: "neighbor-solicitation"}, {proto: "icmpv6", dport: "neighbor-advertisement"}}},
	"NNTP":              anyFamily([]macroRule{{proto: "tcp", dport: "119"}}),
	"NNTPS":             anyFamily([]macroRule{{proto: "tcp", dport: "563"}}),
	"NTP":               anyFamily([]macroRule{{proto: "udp", dport: "123"}}),
	"OpenVPN":           anyFamily([]macroRule{{proto: "udp", dport: "1194"}}),
	"OSPF":              anyFamily([]macroRule{{proto: "89"}}),
	"PCA":               anyFamily([]macroRule{{proto: "udp", dport: "5632"}, {proto: "tcp", dport: "5631"}}),
	"Ping":              {v4: []macroRule{{proto: "icmp", dport: "echo-request"}}, v6: []macroRule{{proto: "icmpv6", dport: "echo-request"}}},
	"PMG":               anyFamily([]macroRule{{proto: "tcp", dport: "8006"}}),
	"POP3":              anyFamily([]macroRule{{proto: "tcp", dport: "110"}}),
	"POP3S":             anyFamily([]macroRule{{proto: "tcp", dport: "995"}}),
	"PostgreSQL":        anyFamily([]macroRule{{proto: "tcp", dport: "5432"}}),
	"PPtP":              anyFamily([]macroRule{{proto: "47"}, {proto: "tcp", dport: "1723"}}),
	"Printer":           anyFamily([]macroRule{{proto: "tcp", dport: "515"}}),
	"Razor":             anyFamily([]macroRule{{proto: "tcp", dport: "2703"}}),
	"Rdate":             anyFamily([]macroRule{{proto: "tcp", dport: "37"}}),
	"RDP":               anyFamily([]macroRule{{proto: "tcp", dport: "3389"}}),
	"RIP":               anyFamily([]macroRule{{proto: "udp", dport: "520"}}),
	"RNDC":              anyFamily([]macroRule{{proto: "tcp", dport: "953"}}),
	"Rsync":             anyFamily([]macroRule{{proto: "tcp", dport: "873"}}),
	"SANE":              anyFamily([]macroRule{{proto: "tcp", dport: "6566"}}),
	"SixXS":             anyFamily([]macroRule{{proto: "tcp", dport: "3874"}, {proto: "udp", dport: "3740"}, {proto: "41"}, {proto: "udp", dport: "5072,8374"}}),
	"SMB":               anyFamily([]macroRule{{proto: "udp", dport: "135,445"}, {proto: "udp", dport: "137:139"}, {proto: "udp", dport: "1024:65535", sport: "137"}, {proto: "tcp", dport: "135,139,445"}}),
	"SMBswat":           anyFamily([]macroRule{{proto: "tcp", dport: "901"}}),
	"SMTP":              anyFamily([]macroRule{{proto: "tcp", dport: "25"}}),
	"SMTPS":             anyFamily([]macroRule{{proto: "tcp", dport: "465"}}),
	"SNMP":              anyFamily([]macroRule{{proto: "udp", dport: "161:162"}, {proto: "tcp", dport: "161"}}),
	"SPAMD":             anyFamily([]macroRule{{proto: "tcp", dport: "783"}}),
	"SPICEproxy":        anyFamily([]macroRule{{proto: "tcp", dport: "3128"}}),
	"Squid":             anyFamily([]macroRule{{proto: "tcp", dport: "3128"}}),
	"SSH":               anyFamily([]macroRule{{proto: "tcp", dport: "22"}}),
	"Submission":        anyFamily([]macroRule{{proto: "tcp", dport: "587"}}),
	"SVN":               anyFamily([]macroRule{{proto: "tcp", dport: "3690"}}),
	"Syslog":            anyFamily([]macroRule{{proto: "udp", dport: "514"}, {proto: "tcp", dport: "514"}}),
	"Telnet":            anyFamily([]macroRule{{proto: "tcp", dport: "23"}}),
	"Telnets":           anyFamily([]macroRule{{proto: "tcp", dport: "992"}}),
	"TFTP":              anyFamily([]macroRule{{proto: "udp", dport: "69"}}),
	"Time":              anyFamily([]macroRule{{proto: "tcp", dport: "37"}}),
	"Trcrt":             {v4: []macroRule{{proto: "udp", dport: "33434:33524"}, {proto: "icmp", dport: "echo-request"}}, v6: []macroRule{{proto: "udp", dport: "33434:33524"}, {proto: "icmpv6", dport: "echo-request"}}},
	"VNC":               anyFamily([]macroRule{{proto: "tcp", dport: "5900:5999"}}),
	"VNCL":              anyFamily([]macroRule{{proto: "tcp", dport: "5500"}}),
	"Web":               anyFamily([]macroRule{{proto: "tcp", dport: "80"}, {proto: "tcp", dport: "443"}}),
	"Webcache":          anyFamily([]macroRule{{proto: "tcp", dport: "8080"}}),
	"Webmin":            anyFamily([]macroRule{{proto: "tcp", dport: "10000"}}),
	"Whois":             anyFamily([]macroRule{{proto: "tcp", dport: "43"}}),
}

// lookupMacro finds a macro by name; pve-firewall compares macro names
// case-insensitively and uses its own spelling.
func lookupMacro(name string) (string, macro, bool) {
	for k, m := range macros {
		if strings.EqualFold(k, name) {
			return k, m, true
		}
	}
	return "", macro{}, false
}
