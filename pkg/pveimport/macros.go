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

// macros is pve-firewall's macro table ($pve_fw_macros and
// $pve_ipv6fw_macros), by the names it prefers.
var macros = map[string]macro{
	"Amanda":            {v4: []macroRule{{proto: "udp", dport: "10080"}, {proto: "tcp", dport: "10080"}}, v6: []macroRule{{proto: "udp", dport: "10080"}, {proto: "tcp", dport: "10080"}}},
	"Auth":              {v4: []macroRule{{proto: "tcp", dport: "113"}}, v6: []macroRule{{proto: "tcp", dport: "113"}}},
	"BGP":               {v4: []macroRule{{proto: "tcp", dport: "179"}}, v6: []macroRule{{proto: "tcp", dport: "179"}}},
	"BitTorrent":        {v4: []macroRule{{proto: "tcp", dport: "6881:6889"}, {proto: "udp", dport: "6881"}}, v6: []macroRule{{proto: "tcp", dport: "6881:6889"}, {proto: "udp", dport: "6881"}}},
	"BitTorrent32":      {v4: []macroRule{{proto: "tcp", dport: "6881:6999"}, {proto: "udp", dport: "6881"}}, v6: []macroRule{{proto: "tcp", dport: "6881:6999"}, {proto: "udp", dport: "6881"}}},
	"Ceph":              {v4: []macroRule{{proto: "tcp", dport: "6789"}, {proto: "tcp", dport: "3300"}, {proto: "tcp", dport: "6800:7300"}}, v6: []macroRule{{proto: "tcp", dport: "6789"}, {proto: "tcp", dport: "3300"}, {proto: "tcp", dport: "6800:7300"}}},
	"Citrix":            {v4: []macroRule{{proto: "tcp", dport: "1494"}, {proto: "udp", dport: "1604"}, {proto: "tcp", dport: "2598"}}, v6: []macroRule{{proto: "tcp", dport: "1494"}, {proto: "udp", dport: "1604"}, {proto: "tcp", dport: "2598"}}},
	"CVS":               {v4: []macroRule{{proto: "tcp", dport: "2401"}}, v6: []macroRule{{proto: "tcp", dport: "2401"}}},
	"DAAP":              {v4: []macroRule{{proto: "tcp", dport: "3689"}, {proto: "udp", dport: "3689"}}, v6: []macroRule{{proto: "tcp", dport: "3689"}, {proto: "udp", dport: "3689"}}},
	"DCC":               {v4: []macroRule{{proto: "tcp", dport: "6277"}}, v6: []macroRule{{proto: "tcp", dport: "6277"}}},
	"DHCPfwd":           {v4: []macroRule{{proto: "udp", dport: "67:68", sport: "67:68"}}, v6: []macroRule{{proto: "udp", dport: "67:68", sport: "67:68"}}},
	"DHCPv6":            {v6: []macroRule{{proto: "udp", dport: "546:547", sport: "546:547"}}},
	"Distcc":            {v4: []macroRule{{proto: "tcp", dport: "3632"}}, v6: []macroRule{{proto: "tcp", dport: "3632"}}},
	"DNS":               {v4: []macroRule{{proto: "udp", dport: "53"}, {proto: "tcp", dport: "53"}}, v6: []macroRule{{proto: "udp", dport: "53"}, {proto: "tcp", dport: "53"}}},
	"Finger":            {v4: []macroRule{{proto: "tcp", dport: "79"}}, v6: []macroRule{{proto: "tcp", dport: "79"}}},
	"FTP":               {v4: []macroRule{{proto: "tcp", dport: "21"}}, v6: []macroRule{{proto: "tcp", dport: "21"}}},
	"Git":               {v4: []macroRule{{proto: "tcp", dport: "9418"}}, v6: []macroRule{{proto: "tcp", dport: "9418"}}},
	"GNUnet":            {v4: []macroRule{{proto: "tcp", dport: "2086"}, {proto: "udp", dport: "2086"}, {proto: "tcp", dport: "1080"}, {proto: "udp", dport: "1080"}}, v6: []macroRule{{proto: "tcp", dport: "2086"}, {proto: "udp", dport: "2086"}, {proto: "tcp", dport: "1080"}, {proto: "udp", dport: "1080"}}},
	"GRE":               {v4: []macroRule{{proto: "47"}}, v6: []macroRule{{proto: "47"}}},
	"HKP":               {v4: []macroRule{{proto: "tcp", dport: "11371"}}, v6: []macroRule{{proto: "tcp", dport: "11371"}}},
	"HTTP":              {v4: []macroRule{{proto: "tcp", dport: "80"}}, v6: []macroRule{{proto: "tcp", dport: "80"}}},
	"HTTPS":             {v4: []macroRule{{proto: "tcp", dport: "443"}}, v6: []macroRule{{proto: "tcp", dport: "443"}}},
	"ICPV2":             {v4: []macroRule{{proto: "udp", dport: "3130"}}, v6: []macroRule{{proto: "udp", dport: "3130"}}},
	"ICQ":               {v4: []macroRule{{proto: "tcp", dport: "5190"}}, v6: []macroRule{{proto: "tcp", dport: "5190"}}},
	"IMAP":              {v4: []macroRule{{proto: "tcp", dport: "143"}}, v6: []macroRule{{proto: "tcp", dport: "143"}}},
	"IMAPS":             {v4: []macroRule{{proto: "tcp", dport: "993"}}, v6: []macroRule{{proto: "tcp", dport: "993"}}},
	"IPIP":              {v4: []macroRule{{proto: "94"}}, v6: []macroRule{{proto: "94"}}},
	"IPsec":             {v4: []macroRule{{proto: "udp", dport: "500", sport: "500"}, {proto: "50"}}, v6: []macroRule{{proto: "udp", dport: "500", sport: "500"}, {proto: "50"}}},
	"IPsecah":           {v4: []macroRule{{proto: "udp", dport: "500", sport: "500"}, {proto: "51"}}, v6: []macroRule{{proto: "udp", dport: "500", sport: "500"}, {proto: "51"}}},
	"IPsecnat":          {v4: []macroRule{{proto: "udp", dport: "500"}, {proto: "udp", dport: "4500"}, {proto: "50"}}, v6: []macroRule{{proto: "udp", dport: "500"}, {proto: "udp", dport: "4500"}, {proto: "50"}}},
	"IRC":               {v4: []macroRule{{proto: "tcp", dport: "6667"}}, v6: []macroRule{{proto: "tcp", dport: "6667"}}},
	"Jetdirect":         {v4: []macroRule{{proto: "tcp", dport: "9100"}}, v6: []macroRule{{proto: "tcp", dport: "9100"}}},
	"L2TP":              {v4: []macroRule{{proto: "udp", dport: "1701"}}, v6: []macroRule{{proto: "udp", dport: "1701"}}},
	"LDAP":              {v4: []macroRule{{proto: "tcp", dport: "389"}}, v6: []macroRule{{proto: "tcp", dport: "389"}}},
	"LDAPS":             {v4: []macroRule{{proto: "tcp", dport: "636"}}, v6: []macroRule{{proto: "tcp", dport: "636"}}},
	"Mail":              {v4: []macroRule{{proto: "tcp", dport: "25"}, {proto: "tcp", dport: "465"}, {proto: "tcp", dport: "587"}}, v6: []macroRule{{proto: "tcp", dport: "25"}, {proto: "tcp", dport: "465"}, {proto: "tcp", dport: "587"}}},
	"MDNS":              {v4: []macroRule{{proto: "udp", dport: "5353"}}, v6: []macroRule{{proto: "udp", dport: "5353"}}},
	"MSNP":              {v4: []macroRule{{proto: "tcp", dport: "1863"}}, v6: []macroRule{{proto: "tcp", dport: "1863"}}},
	"MSSQL":             {v4: []macroRule{{proto: "tcp", dport: "1433"}}, v6: []macroRule{{proto: "tcp", dport: "1433"}}},
	"Munin":             {v4: []macroRule{{proto: "tcp", dport: "4949"}}, v6: []macroRule{{proto: "tcp", dport: "4949"}}},
	"MySQL":             {v4: []macroRule{{proto: "tcp", dport: "3306"}}, v6: []macroRule{{proto: "tcp", dport: "3306"}}},
	"NeighborDiscovery": {v6: []macroRule{{proto: "icmpv6", dport: "router-solicitation"}, {proto: "icmpv6", dport: "router-advertisement"}, {proto: "icmpv6", dport: "neighbor-solicitation"}, {proto: "icmpv6", dport: "neighbor-advertisement"}}},
	"NNTP":              {v4: []macroRule{{proto: "tcp", dport: "119"}}, v6: []macroRule{{proto: "tcp", dport: "119"}}},
	"NNTPS":             {v4: []macroRule{{proto: "tcp", dport: "563"}}, v6: []macroRule{{proto: "tcp", dport: "563"}}},
	"NTP":               {v4: []macroRule{{proto: "udp", dport: "123"}}, v6: []macroRule{{proto: "udp", dport: "123"}}},
	"OpenVPN":           {v4: []macroRule{{proto: "udp", dport: "1194"}}, v6: []macroRule{{proto: "udp", dport: "1194"}}},
	"OSPF":              {v4: []macroRule{{proto: "89"}}, v6: []macroRule{{proto: "89"}}},
	"PCA":               {v4: []macroRule{{proto: "udp", dport: "5632"}, {proto: "tcp", dport: "5631"}}, v6: []macroRule{{proto: "udp", dport: "5632"}, {proto: "tcp", dport: "5631"}}},
	"Ping":              {v4: []macroRule{{proto: "icmp", dport: "echo-request"}}, v6: []macroRule{{proto: "icmpv6", dport: "echo-request"}}},
	"PMG":               {v4: []macroRule{{proto: "tcp", dport: "8006"}}, v6: []macroRule{{proto: "tcp", dport: "8006"}}},
	"POP3":              {v4: []macroRule{{proto: "tcp", dport: "110"}}, v6: []macroRule{{proto: "tcp", dport: "110"}}},
	"POP3S":             {v4: []macroRule{{proto: "tcp", dport: "995"}}, v6: []macroRule{{proto: "tcp", dport: "995"}}},
	"PostgreSQL":        {v4: []macroRule{{proto: "tcp", dport: "5432"}}, v6: []macroRule{{proto: "tcp", dport: "5432"}}},
	"PPtP":              {v4: []macroRule{{proto: "47"}, {proto: "tcp", dport: "1723"}}, v6: []macroRule{{proto: "47"}, {proto: "tcp", dport: "1723"}}},
	"Printer":           {v4: []macroRule{{proto: "tcp", dport: "515"}}, v6: []macroRule{{proto: "tcp", dport: "515"}}},
	"Razor":             {v4: []macroRule{{proto: "tcp", dport: "2703"}}, v6: []macroRule{{proto: "tcp", dport: "2703"}}},
	"Rdate":             {v4: []macroRule{{proto: "tcp", dport: "37"}}, v6: []macroRule{{proto: "tcp", dport: "37"}}},
	"RDP":               {v4: []macroRule{{proto: "tcp", dport: "3389"}}, v6: []macroRule{{proto: "tcp", dport: "3389"}}},
	"RIP":               {v4: []macroRule{{proto: "udp", dport: "520"}}, v6: []macroRule{{proto: "udp", dport: "520"}}},
	"RNDC":              {v4: []macroRule{{proto: "tcp", dport: "953"}}, v6: []macroRule{{proto: "tcp", dport: "953"}}},
	"Rsync":             {v4: []macroRule{{proto: "tcp", dport: "873"}}, v6: []macroRule{{proto: "tcp", dport: "873"}}},
	"SANE":              {v4: []macroRule{{proto: "tcp", dport: "6566"}}, v6: []macroRule{{proto: "tcp", dport: "6566"}}},
	"SixXS":             {v4: []macroRule{{proto: "tcp", dport: "3874"}, {proto: "udp", dport: "3740"}, {proto: "41"}, {proto: "udp", dport: "5072,8374"}}, v6: []macroRule{{proto: "tcp", dport: "3874"}, {proto: "udp", dport: "3740"}, {proto: "41"}, {proto: "udp", dport: "5072,8374"}}},
	"SMB":               {v4: []macroRule{{proto: "udp", dport: "135,445"}, {proto: "udp", dport: "137:139"}, {proto: "udp", dport: "1024:65535", sport: "137"}, {proto: "tcp", dport: "135,139,445"}}, v6: []macroRule{{proto: "udp", dport: "135,445"}, {proto: "udp", dport: "137:139"}, {proto: "udp", dport: "1024:65535", sport: "137"}, {proto: "tcp", dport: "135,139,445"}}},
	"SMBswat":           {v4: []macroRule{{proto: "tcp", dport: "901"}}, v6: []macroRule{{proto: "tcp", dport: "901"}}},
	"SMTP":              {v4: []macroRule{{proto: "tcp", dport: "25"}}, v6: []macroRule{{proto: "tcp", dport: "25"}}},
	"SMTPS":             {v4: []macroRule{{proto: "tcp", dport: "465"}}, v6: []macroRule{{proto: "tcp", dport: "465"}}},
	"SNMP":              {v4: []macroRule{{proto: "udp", dport: "161:162"}, {proto: "tcp", dport: "161"}}, v6: []macroRule{{proto: "udp", dport: "161:162"}, {proto: "tcp", dport: "161"}}},
	"SPAMD":             {v4: []macroRule{{proto: "tcp", dport: "783"}}, v6: []macroRule{{proto: "tcp", dport: "783"}}},
	"SPICEproxy":        {v4: []macroRule{{proto: "tcp", dport: "3128"}}, v6: []macroRule{{proto: "tcp", dport: "3128"}}},
	"Squid":             {v4: []macroRule{{proto: "tcp", dport: "3128"}}, v6: []macroRule{{proto: "tcp", dport: "3128"}}},
	"SSH":               {v4: []macroRule{{proto: "tcp", dport: "22"}}, v6: []macroRule{{proto: "tcp", dport: "22"}}},
	"Submission":        {v4: []macroRule{{proto: "tcp", dport: "587"}}, v6: []macroRule{{proto: "tcp", dport: "587"}}},
	"SVN":               {v4: []macroRule{{proto: "tcp", dport: "3690"}}, v6: []macroRule{{proto: "tcp", dport: "3690"}}},
	"Syslog":            {v4: []macroRule{{proto: "udp", dport: "514"}, {proto: "tcp", dport: "514"}}, v6: []macroRule{{proto: "udp", dport: "514"}, {proto: "tcp", dport: "514"}}},
	"Telnet":            {v4: []macroRule{{proto: "tcp", dport: "23"}}, v6: []macroRule{{proto: "tcp", dport: "23"}}},
	"Telnets":           {v4: []macroRule{{proto: "tcp", dport: "992"}}, v6: []macroRule{{proto: "tcp", dport: "992"}}},
	"TFTP":              {v4: []macroRule{{proto: "udp", dport: "69"}}, v6: []macroRule{{proto: "udp", dport: "69"}}},
	"Time":              {v4: []macroRule{{proto: "tcp", dport: "37"}}, v6: []macroRule{{proto: "tcp", dport: "37"}}},
	"Trcrt":             {v4: []macroRule{{proto: "udp", dport: "33434:33524"}, {proto: "icmp", dport: "echo-request"}}, v6: []macroRule{{proto: "udp", dport: "33434:33524"}, {proto: "icmpv6", dport: "echo-request"}}},
	"VNC":               {v4: []macroRule{{proto: "tcp", dport: "5900:5999"}}, v6: []macroRule{{proto: "tcp", dport: "5900:5999"}}},
	"VNCL":              {v4: []macroRule{{proto: "tcp", dport: "5500"}}, v6: []macroRule{{proto: "tcp", dport: "5500"}}},
	"Web":               {v4: []macroRule{{proto: "tcp", dport: "80"}, {proto: "tcp", dport: "443"}}, v6: []macroRule{{proto: "tcp", dport: "80"}, {proto: "tcp", dport: "443"}}},
	"Webcache":          {v4: []macroRule{{proto: "tcp", dport: "8080"}}, v6: []macroRule{{proto: "tcp", dport: "8080"}}},
	"Webmin":            {v4: []macroRule{{proto: "tcp", dport: "10000"}}, v6: []macroRule{{proto: "tcp", dport: "10000"}}},
	"Whois":             {v4: []macroRule{{proto: "tcp", dport: "43"}}, v6: []macroRule{{proto: "tcp", dport: "43"}}},
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
