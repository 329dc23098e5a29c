package config

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// web is a valid group for VM files to refer to.
const web = "description = \"web\"\n"

// vmWith returns a VM file with one interface whose body is nic.
func vmWith(nic string) string {
	return "name = \"vm\"\n\n[net0]\n" + nic
}

// TestLoadErrors has one case per validation rule. Each names the exact
// file:line the operator must be sent to and a phrase of the explanation.
func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name   string
		files  map[string]string
		setup  func(t *testing.T, dir string)
		prefix string
		phrase string
	}{
		// Files.
		{
			name:   "non-UTF-8",
			files:  map[string]string{"groups/web.toml": "description = \"ok\"\n# caf\xe9\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "not valid UTF-8",
		},
		{
			name:   "larger than 1 MiB",
			files:  map[string]string{"groups/web.toml": "#" + strings.Repeat("x", maxFileSize) + "\n"},
			prefix: "groups/web.toml: ",
			phrase: "larger than 1 MiB",
		},
		{
			name: "symlink outside the directory",
			setup: func(t *testing.T, dir string) {
				outside := filepath.Join(t.TempDir(), "web.toml")
				if err := os.WriteFile(outside, []byte(web), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Mkdir(filepath.Join(dir, "groups"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(outside, filepath.Join(dir, "groups", "web.toml")); err != nil {
					t.Fatal(err)
				}
			},
			prefix: "groups/web.toml: ",
			phrase: "outside the configuration directory",
		},
		{
			name:   "broken symlink",
			setup:  symlink("groups/web.toml", "missing.toml"),
			prefix: "groups/web.toml: ",
			phrase: "broken symlink",
		},
		{
			name:   "not a regular file",
			setup:  mkdir("vms/110.toml"),
			prefix: "vms/110.toml: ",
			phrase: "not a regular file",
		},
		{
			name:   "groups is not a directory",
			files:  map[string]string{"groups": "x"},
			prefix: "groups: ",
			phrase: "not a directory",
		},
		{
			name:   "group file name",
			files:  map[string]string{"groups/1web.toml": web},
			prefix: "groups/1web.toml: ",
			phrase: "invalid group name \"1web\"",
		},
		{
			name:   "group file name starting with a dash",
			files:  map[string]string{"groups/-web.toml": web},
			prefix: "groups/-web.toml: ",
			phrase: "invalid group name \"-web\": the file name must be a letter followed by up to 19 letters, digits, _ or -",
		},
		{
			name:   "group file name with a dot",
			files:  map[string]string{"groups/web.v2.toml": web},
			prefix: "groups/web.v2.toml: ",
			phrase: "invalid group name \"web.v2\"",
		},
		{
			name:   "group file name too long with dashes",
			files:  map[string]string{"groups/a-b-c-d-e-f-g-h-i-j-k.toml": web},
			prefix: "groups/a-b-c-d-e-f-g-h-i-j-k.toml: ",
			phrase: "invalid group name",
		},
		{
			name:   "groups names a group with a space",
			files:  map[string]string{"vms/110.toml": vmWith("groups = [\"web 1\"]\n")},
			prefix: "vms/110.toml:4: ",
			phrase: "groups \"web 1\": not a group name",
		},
		{
			name:   "group file name too long",
			files:  map[string]string{"groups/abcdefghijklmnopqrstu.toml": web},
			prefix: "groups/abcdefghijklmnopqrstu.toml: ",
			phrase: "invalid group name",
		},
		{
			name:   "VM file name with leading zero",
			files:  map[string]string{"vms/0110.toml": ""},
			prefix: "vms/0110.toml: ",
			phrase: "invalid VM id \"0110\"",
		},
		{
			name:   "VM file name not a number",
			files:  map[string]string{"vms/web.toml": ""},
			prefix: "vms/web.toml: ",
			phrase: "invalid VM id",
		},
		{
			name:   "VM id too large",
			files:  map[string]string{"vms/1000000000.toml": ""},
			prefix: "vms/1000000000.toml: ",
			phrase: "invalid VM id",
		},

		// vmfw.toml.
		{
			name:   "managed pattern characters",
			files:  map[string]string{"vmfw.toml": "managed = [\n  \"tap+\",\n  \"tap*\",\n]\n"},
			prefix: "vmfw.toml:3: ",
			phrase: "managed \"tap*\": not an interface pattern",
		},
		{
			name:   "managed pattern too long",
			files:  map[string]string{"vmfw.toml": "managed = [\"abcdefghijklmno+\"]\n"},
			prefix: "vmfw.toml:1: ",
			phrase: "not an interface pattern",
		},
		{
			name:   "managed pattern alone",
			files:  map[string]string{"vmfw.toml": "managed = [\"+\"]\n"},
			prefix: "vmfw.toml:1: ",
			phrase: "not an interface pattern",
		},
		{
			name:   "managed pattern twice",
			files:  map[string]string{"vmfw.toml": "managed = [\"tap+\", \"tap+\"]\n"},
			prefix: "vmfw.toml:1: ",
			phrase: "listed twice",
		},
		{
			name:   "mark with two bits",
			files:  map[string]string{"vmfw.toml": "# host\nmark = \"0x3000\"\n"},
			prefix: "vmfw.toml:2: ",
			phrase: "mark \"0x3000\": must be one bit (the iptables backend) or a mask of at least 5 bits (the nftables backend)",
		},
		{
			name:   "mark not hexadecimal",
			files:  map[string]string{"vmfw.toml": "mark = \"4096\"\n"},
			prefix: "vmfw.toml:1: ",
			phrase: "must be a hexadecimal value",
		},
		{
			name:   "backend unknown",
			files:  map[string]string{"vmfw.toml": "# host\nbackend = \"ebpf\"\n"},
			prefix: "vmfw.toml:2: ",
			phrase: "backend \"ebpf\": must be \"iptables\" or \"nftables\"",
		},
		{
			name:   "backend iptables with a mask",
			files:  map[string]string{"vmfw.toml": "backend = \"iptables\"\nmark = \"0xf0000\"\n"},
			prefix: "vmfw.toml:2: ",
			phrase: "the iptables backend needs exactly one bit",
		},
		{
			name:   "backend nftables with one bit",
			files:  map[string]string{"vmfw.toml": "backend = \"nftables\"\nmark = \"0x10000\"\n"},
			prefix: "vmfw.toml:2: ",
			phrase: "the nftables backend needs a mask of at least 5 bits",
		},
		{
			name:   "mask holding the iptables bit",
			files:  map[string]string{"vmfw.toml": "mark = \"0x1f000\"\n"},
			prefix: "vmfw.toml:1: ",
			phrase: "holds the iptables backend's bit 0x1000",
		},
		{
			name:   "bit of the nftables mask",
			files:  map[string]string{"vmfw.toml": "mark = \"0x2000\"\n"},
			prefix: "vmfw.toml:1: ",
			phrase: "is one of the nftables backend's bits (0x20c6)",
		},
		{
			name:   "log_limit unit",
			files:  map[string]string{"vmfw.toml": "log_limit = \"10/sec\"\n"},
			prefix: "vmfw.toml:1: ",
			phrase: "log_limit \"10/sec\": use N/second",
		},
		{
			name:   "log_limit rate",
			files:  map[string]string{"vmfw.toml": "log_limit = \"10001/second\"\n"},
			prefix: "vmfw.toml:1: ",
			phrase: "N from 1 to 10000",
		},
		{
			name:   "log_burst",
			files:  map[string]string{"vmfw.toml": "log_burst = 0\n"},
			prefix: "vmfw.toml:1: ",
			phrase: "log_burst 0: must be from 1 to 10000",
		},
		{
			name:   "repair_interval",
			files:  map[string]string{"vmfw.toml": "log_burst = 5\nrepair_interval = \"100ms\"\n"},
			prefix: "vmfw.toml:2: ",
			phrase: "repair_interval \"100ms\": use a duration from 1s to 1h",
		},
		{
			name:   "metrics_listen",
			files:  map[string]string{"vmfw.toml": "metrics_listen = \"localhost\"\n"},
			prefix: "vmfw.toml:1: ",
			phrase: "metrics_listen \"localhost\": use ADDRESS:PORT",
		},
		{
			name:   "vmfw.toml unknown key",
			files:  map[string]string{"vmfw.toml": "log_burst = 5\nlogburst = 5\n"},
			prefix: "vmfw.toml:2: ",
			phrase: "unknown key \"logburst\"; vmfw.toml keys are",
		},

		// Groups.
		{
			name:   "syntax error",
			files:  map[string]string{"groups/web.toml": "description = \"web\"\n[[in]\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "to close array table",
		},
		{
			name:   "group unknown key",
			files:  map[string]string{"groups/web.toml": "descrption = \"web\"\n"},
			prefix: "groups/web.toml:1: ",
			phrase: "unknown key \"descrption\"; group keys are description, in and out",
		},
		{
			name:   "description too long",
			files:  map[string]string{"groups/web.toml": "description = \"" + strings.Repeat("x", 1025) + "\"\n"},
			prefix: "groups/web.toml:1: ",
			phrase: "description is 1025 bytes, at most 1024",
		},
		{
			name:   "description control character",
			files:  map[string]string{"groups/web.toml": "\ndescription = \"a\\tb\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "description \"a\\tb\": control characters",
		},
		{
			name:   "in is not an array of tables",
			files:  map[string]string{"groups/web.toml": "in = 5\n"},
			prefix: "groups/web.toml:1: ",
			phrase: "in: expected an array of tables, got an integer",
		},
		{
			name:   "rule unknown key",
			files:  map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcp\"\nport = \"22\"\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "unknown key \"in.port\"; rule keys are action, proto, dport",
		},
		{
			name:   "action",
			files:  map[string]string{"groups/web.toml": "[[out]]\naction = \"deny\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "action \"deny\": must be accept, drop or reject",
		},
		{
			name:   "proto name",
			files:  map[string]string{"groups/web.toml": "[[in]]\n[[in]]\nproto = \"tpc\"\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "proto \"tpc\": use tcp, udp",
		},
		{
			name:   "proto number",
			files:  map[string]string{"groups/web.toml": "[[in]]\nproto = 256\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "proto 256:",
		},
		{
			name:   "dport range with a dash",
			files:  map[string]string{"groups/web.toml": "description = \"web\"\n\n[[in]]\nproto = \"tcp\"\n\n\ndport = \"80-90\"\n"},
			prefix: "groups/web.toml:7: ",
			phrase: "dport \"80-90\": invalid port range, use lo:hi",
		},
		{
			name:   "dport zero",
			files:  map[string]string{"groups/web.toml": "[[in]]\nproto = \"udp\"\ndport = \"0,53\"\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "port \"0\" is not a number from 1 to 65535",
		},
		{
			name:   "dport integer out of range",
			files:  map[string]string{"groups/web.toml": "[[in]]\nproto = \"udp\"\ndport = 65536\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "dport 65536: port must be from 1 to 65535",
		},
		{
			name:   "dport range backwards",
			files:  map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"90:80\"\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "range 90:80 starts above its end",
		},
		{
			name:   "dport more than 15 ports",
			files:  map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15:16\"\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "16 ports, iptables allows at most 15",
		},
		{
			name:   "dport without proto",
			files:  map[string]string{"groups/web.toml": "[[in]]\ndport = \"22\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "dport \"22\": ports need proto tcp, udp or sctp (proto is any)",
		},
		{
			name:   "sport with icmp",
			files:  map[string]string{"groups/web.toml": "[[out]]\nproto = \"icmp\"\nsport = 22\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "sport 22: ports need proto tcp, udp or sctp (proto is icmp)",
		},
		{
			name:   "dport wrong type",
			files:  map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = [22]\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "dport: expected a string or an integer, got an array",
		},
		{
			name:   "icmp_type without icmp",
			files:  map[string]string{"groups/web.toml": "[[in]]\nproto = \"tcp\"\nicmp_type = \"echo-request\"\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "needs proto icmp or icmpv6 (proto is tcp)",
		},
		{
			name:   "icmp_type of the other family",
			files:  map[string]string{"groups/web.toml": "[[in]]\nproto = \"icmp\"\nicmp_type = \"neighbour-solicitation\"\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "icmp_type \"neighbour-solicitation\": not an icmp type",
		},
		{
			name:   "icmp_type number",
			files:  map[string]string{"groups/web.toml": "[[in]]\nproto = \"icmpv6\"\nicmp_type = 256\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "icmp_type 256: not an icmpv6 type",
		},
		{
			name:   "source address",
			files:  map[string]string{"groups/web.toml": "[[in]]\nsource = [\n  \"192.0.2.1\",\n  \"192.0.2.300\",\n]\n"},
			prefix: "groups/web.toml:4: ",
			phrase: "source \"192.0.2.300\": not an IP address",
		},
		{
			name:   "source host bits",
			files:  map[string]string{"groups/web.toml": "[[in]]\nsource = \"10.1.2.3/8\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "host bits set; did you mean \"10.0.0.0/8\"",
		},
		{
			name:   "source zone",
			files:  map[string]string{"groups/web.toml": "[[in]]\nsource = \"fe80::1%eth0\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "zones (%) are not allowed",
		},
		{
			name:   "source IPv4-mapped",
			files:  map[string]string{"groups/web.toml": "[[in]]\nsource = [\"::ffff:192.0.2.1\"]\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "IPv4-mapped",
		},
		{
			name:   "source empty list",
			files:  map[string]string{"groups/web.toml": "[[in]]\nsource = []\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "empty list",
		},
		{
			name:   "dest in an in rule",
			files:  map[string]string{"groups/web.toml": "[[in]]\ndest = \"192.0.2.1\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "dest is only allowed in [[out]] rules",
		},
		{
			name:   "dest_group in an in rule",
			files:  map[string]string{"groups/web.toml": "[[in]]\ndest_group = \"web\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "dest_group is only allowed in [[out]] rules",
		},
		{
			name:   "source in an out rule",
			files:  map[string]string{"groups/web.toml": "[[out]]\nsource = \"192.0.2.1\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "source is only allowed in [[in]] rules",
		},
		{
			name:   "source_group in an out rule",
			files:  map[string]string{"groups/web.toml": "[[out]]\nsource_group = \"web\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "source_group is only allowed in [[in]] rules",
		},
		{
			name:   "source_mac in an out rule",
			files:  map[string]string{"groups/web.toml": "[[out]]\nsource_mac = \"02:00:00:00:00:01\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "source_mac is only allowed in [[in]] rules",
		},
		{
			name:   "dest_set in an in rule",
			files:  map[string]string{"sets/bl.toml": "", "groups/web.toml": "[[in]]\ndest_set = \"bl\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "dest_set is only allowed in [[out]] rules; [[in]] rules filter traffic to the VM, match its sender with source, source_group, source_set or source_mac",
		},
		{
			name:   "source_set in an out rule",
			files:  map[string]string{"sets/bl.toml": "", "groups/web.toml": "[[out]]\nproto = \"tcp\"\nsource_set = \"bl\"\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "source_set is only allowed in [[in]] rules; [[out]] rules filter traffic from the VM, match its destination with dest, dest_group or dest_set",
		},
		{
			name:   "source_set unknown",
			files:  map[string]string{"sets/bl.toml": "", "groups/web.toml": "[[in]]\n\nsource_set = \"blocked\"\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "source_set \"blocked\": unknown set, there is no sets/blocked.toml",
		},
		{
			name:   "dest_set names a group",
			files:  map[string]string{"groups/web.toml": "[[out]]\ndest_set = \"web\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "dest_set \"web\": unknown set, there is no sets/web.toml",
		},
		{
			name:   "source_group names a set",
			files:  map[string]string{"sets/bl.toml": "", "groups/web.toml": "[[in]]\nsource_group = \"bl\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "source_group \"bl\": unknown group, there is no groups/bl.toml",
		},
		{
			name:   "dest_set invalid name",
			files:  map[string]string{"groups/web.toml": "[[out]]\ndest_set = \"../bl\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "dest_set \"../bl\": not a set name (a letter followed by up to 19 letters, digits, _ or -)",
		},
		{
			name:   "source_set wrong type",
			files:  map[string]string{"groups/web.toml": "[[in]]\nsource_set = [\"bl\"]\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "in.source_set: expected a string, got an array",
		},
		{
			name:   "source_group unknown",
			files:  map[string]string{"groups/web.toml": "[[in]]\nsource_group = \"admins\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "source_group \"admins\": unknown group, there is no groups/admins.toml",
		},
		{
			name:   "dest_group invalid name",
			files:  map[string]string{"groups/web.toml": "[[out]]\ndest_group = \"my.group\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "dest_group \"my.group\": not a group name (a letter followed by up to 19 letters, digits, _ or -)",
		},
		{
			name:   "source_mac not a MAC",
			files:  map[string]string{"groups/web.toml": "[[in]]\nsource_mac = \"02:00:00:00:00\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "source_mac \"02:00:00:00:00\": not a MAC address",
		},
		{
			name:   "source_mac multicast",
			files:  map[string]string{"groups/web.toml": "[[in]]\nsource_mac = \"01:00:5e:00:00:01\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "multicast",
		},
		{
			name:   "source_mac zero",
			files:  map[string]string{"groups/web.toml": "[[in]]\nsource_mac = \"00:00:00:00:00:00\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "all-zero",
		},
		{
			name:   "source_mac 64 bits",
			files:  map[string]string{"groups/web.toml": "[[in]]\nsource_mac = \"02:00:00:00:00:00:00:01\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "not a 48-bit",
		},
		{
			name:   "log wrong type",
			files:  map[string]string{"groups/web.toml": "[[in]]\nlog = 4\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "log 4: use true (level warning), false (off) or a syslog level: emerg, alert, crit, err, warning, notice, info or debug",
		},
		{
			name:   "log level unknown",
			files:  map[string]string{"groups/web.toml": "[[out]]\naction = \"drop\"\nlog = \"warn\"\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "log \"warn\": use true (level warning), false (off) or a syslog level: emerg, alert, crit, err, warning, notice, info or debug",
		},
		{
			name:   "log nolog",
			files:  map[string]string{"groups/web.toml": "[[in]]\nlog = \"nolog\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "log \"nolog\": use true (level warning), false (off)",
		},
		{
			name:   "comment with a quote",
			files:  map[string]string{"groups/web.toml": "[[in]]\ncomment = 'a\" --jump ACCEPT'\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "printable ASCII characters without quotes",
		},
		{
			name:   "comment with a dollar",
			files:  map[string]string{"groups/web.toml": "[[in]]\ncomment = \"$(reboot)\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "comment \"$(reboot)\"",
		},
		{
			name:   "comment too long",
			files:  map[string]string{"groups/web.toml": "[[in]]\ncomment = \"" + strings.Repeat("c", 129) + "\"\n"},
			prefix: "groups/web.toml:2: ",
			phrase: "comment is 129 bytes, at most 128",
		},
		{
			name:   "rule key in another case",
			files:  map[string]string{"groups/web.toml": "[[In]]\nPROTO = \"udp\"\n\nDport = \"x\"\n"},
			prefix: "groups/web.toml:4: ",
			phrase: "dport \"x\"",
		},
		{
			name:   "rule in an inline table",
			files:  map[string]string{"groups/web.toml": "in = [\n  {proto = \"tcp\"},\n  {proto = \"udp\", dport = \"x\"},\n]\n"},
			prefix: "groups/web.toml:3: ",
			phrase: "dport \"x\"",
		},

		// Sets.
		{
			name:   "set file name",
			files:  map[string]string{"sets/block list.toml": ""},
			prefix: "sets/block list.toml: ",
			phrase: "invalid set name \"block list\": the file name must be a letter followed by up to 19 letters, digits, _ or -",
		},
		{
			name:   "set file name too long",
			files:  map[string]string{"sets/abcdefghijklmnopqrstu.toml": ""},
			prefix: "sets/abcdefghijklmnopqrstu.toml: ",
			phrase: "invalid set name",
		},
		{
			name:   "set unknown key",
			files:  map[string]string{"sets/bl.toml": "entries = []\nexcepts = []\n"},
			prefix: "sets/bl.toml:2: ",
			phrase: "unknown key \"excepts\"; set keys are description, entries and except",
		},
		{
			name:   "set table",
			files:  map[string]string{"sets/bl.toml": "entries = []\n[more]\n"},
			prefix: "sets/bl.toml:2: ",
			phrase: "unknown key \"more\"; set keys are",
		},
		{
			name:   "set syntax error",
			files:  map[string]string{"sets/bl.toml": "entries = [\n  \"10.0.0.1\"\n  \"10.0.0.2\",\n]\n"},
			prefix: "sets/bl.toml:3: ",
			phrase: "array",
		},
		{
			name:   "set key twice",
			files:  map[string]string{"sets/bl.toml": "entries = []\nentries = []\n"},
			prefix: "sets/bl.toml:2: ",
			phrase: "entries",
		},
		{
			name:   "set entries not an array",
			files:  map[string]string{"sets/bl.toml": "entries = \"10.0.0.1\"\n"},
			prefix: "sets/bl.toml:1: ",
			phrase: "entries: expected an array, got a string",
		},
		{
			name:   "set entry not a string",
			files:  map[string]string{"sets/bl.toml": "entries = [\n  \"10.0.0.1\",\n  167772162,\n]\n"},
			prefix: "sets/bl.toml:3: ",
			phrase: "entries: expected a string, got an integer",
		},
		{
			name:   "set description",
			files:  map[string]string{"sets/bl.toml": "entries = []\ndescription = \"a\\nb\"\n"},
			prefix: "sets/bl.toml:2: ",
			phrase: "description \"a\\nb\": control characters",
		},
		{
			name:   "set description too long",
			files:  map[string]string{"sets/bl.toml": "description = \"" + strings.Repeat("x", 1025) + "\"\n"},
			prefix: "sets/bl.toml:1: ",
			phrase: "description is 1025 bytes, at most 1024",
		},
		{
			name:   "set entry not an address",
			files:  map[string]string{"sets/bl.toml": "entries = [\n  \"10.0.0.1\",\n  \"10.0.0.256\",\n]\n"},
			prefix: "sets/bl.toml:3: ",
			phrase: "entries \"10.0.0.256\": not an IP address",
		},
		{
			name:   "set entry with host bits",
			files:  map[string]string{"sets/bl.toml": "entries = [\"2001:db8::1/64\"]\n"},
			prefix: "sets/bl.toml:1: ",
			phrase: "entries \"2001:db8::1/64\": host bits set; did you mean \"2001:db8::/64\"?",
		},
		{
			name:   "set entry a range",
			files:  map[string]string{"sets/bl.toml": "entries = [\"10.0.0.1-10.0.0.9\"]\n"},
			prefix: "sets/bl.toml:1: ",
			phrase: "not an IP address",
		},
		{
			name:   "set except with host bits",
			files:  map[string]string{"sets/bl.toml": "entries = [\"10.0.0.0/8\"]\nexcept = [\"10.1.0.1/16\"]\n"},
			prefix: "sets/bl.toml:2: ",
			phrase: "except \"10.1.0.1/16\": host bits set; did you mean \"10.1.0.0/16\"?",
		},
		{
			name:   "set entry twice",
			files:  map[string]string{"sets/bl.toml": "entries = [\n  \"192.0.2.1\",\n  \"10.0.0.0/8\",\n  \"192.0.2.1/32\",\n]\n"},
			prefix: "sets/bl.toml:4: ",
			phrase: "entries \"192.0.2.1/32\": listed twice (192.0.2.1/32 at line 2 is the same prefix)",
		},
		{
			name:   "set except twice",
			files:  map[string]string{"sets/bl.toml": "entries = [\"2001:db8::/32\"]\nexcept = [\n  \"2001:db8:1::/48\",\n  \"2001:DB8:1::/48\",\n]\n"},
			prefix: "sets/bl.toml:4: ",
			phrase: "except \"2001:DB8:1::/48\": listed twice (2001:db8:1::/48 at line 3 is the same prefix)",
		},
		{
			name:   "set prefix as entry and except",
			files:  map[string]string{"sets/bl.toml": "entries = [\"10.0.0.0/8\", \"10.1.0.0/16\"]\n\nexcept = [\"10.1.0.0/16\"]\n"},
			prefix: "sets/bl.toml:3: ",
			phrase: "except \"10.1.0.0/16\": also listed in entries (10.1.0.0/16 at line 1); a prefix is either an entry or an except",
		},
		{
			name:   "set except inside no entry",
			files:  map[string]string{"sets/bl.toml": "entries = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nexcept = [\n  \"10.1.0.0/16\",\n  \"11.1.0.0/16\",\n]\n"},
			prefix: "sets/bl.toml:4: ",
			phrase: "except \"11.1.0.0/16\": lies inside no entry, so it would exclude nothing",
		},
		{
			name:   "set except wider than its entry",
			files:  map[string]string{"sets/bl.toml": "entries = [\"10.1.0.0/16\"]\nexcept = [\"10.0.0.0/8\"]\n"},
			prefix: "sets/bl.toml:2: ",
			phrase: "except \"10.0.0.0/8\": lies inside no entry",
		},
		{
			name:   "set except inside an entry of the other family",
			files:  map[string]string{"sets/bl.toml": "entries = [\"::/0\"]\nexcept = [\"10.0.0.0/8\"]\n"},
			prefix: "sets/bl.toml:2: ",
			phrase: "except \"10.0.0.0/8\": lies inside no entry",
		},
		{
			name:   "set without entries but with an except",
			files:  map[string]string{"sets/bl.toml": "except = [\"192.0.2.1\"]\n"},
			prefix: "sets/bl.toml:1: ",
			phrase: "except \"192.0.2.1\": lies inside no entry",
		},
		{
			name:   "sets is not a directory",
			files:  map[string]string{"sets": "x"},
			prefix: "sets: ",
			phrase: "not a directory",
		},

		// VMs.
		{
			name:   "VM unknown key",
			files:  map[string]string{"vms/110.toml": "name = \"a\"\npolicy = \"drop\"\n"},
			prefix: "vms/110.toml:2: ",
			phrase: "unknown key \"policy\"; VM keys are name, enable",
		},
		{
			name:   "VM name characters",
			files:  map[string]string{"vms/110.toml": "name = \"web 01\"\n"},
			prefix: "vms/110.toml:1: ",
			phrase: "name \"web 01\": use only letters",
		},
		{
			name:   "VM name too long",
			files:  map[string]string{"vms/110.toml": "name = \"" + strings.Repeat("n", 65) + "\"\n"},
			prefix: "vms/110.toml:1: ",
			phrase: "is 65 characters, at most 64",
		},
		{
			name:   "enable wrong type",
			files:  map[string]string{"vms/110.toml": "enable = \"yes\"\n"},
			prefix: "vms/110.toml:1: ",
			phrase: "enable: expected a boolean, got a string",
		},
		{
			name:   "policy_in",
			files:  map[string]string{"vms/110.toml": "name = \"a\"\npolicy_in = \"deny\"\n"},
			prefix: "vms/110.toml:2: ",
			phrase: "policy_in \"deny\": must be drop, reject or accept",
		},
		{
			name:   "drop_invalid = false on a filtered VM",
			files:  map[string]string{"vms/110.toml": "name = \"a\"\ndrop_invalid = false\n"},
			prefix: "vms/110.toml:2: ",
			phrase: "drop_invalid = false: a filtered VM always drops packets conntrack finds INVALID",
		},
		{
			name:   "ndp wrong type",
			files:  map[string]string{"vms/110.toml": "[net0]\nndp = \"no\"\n"},
			prefix: "vms/110.toml:2: ",
			phrase: "ndp: expected a boolean, got a string",
		},
		{
			name:   "policy_out",
			files:  map[string]string{"vms/110.toml": "policy_out = \"allow\"\n"},
			prefix: "vms/110.toml:1: ",
			phrase: "policy_out \"allow\": must be accept, drop or reject",
		},
		{
			name:   "VM log wrong type",
			files:  map[string]string{"vms/110.toml": "log = 1\n"},
			prefix: "vms/110.toml:1: ",
			phrase: "log 1: use true (level warning), false (off) or a syslog level",
		},
		{
			name:   "VM log_in level",
			files:  map[string]string{"vms/110.toml": "log = true\nlog_in = \"loud\"\n"},
			prefix: "vms/110.toml:2: ",
			phrase: "log_in \"loud\": use true (level warning), false (off) or a syslog level",
		},
		{
			name:   "VM log_out type",
			files:  map[string]string{"vms/110.toml": "name = \"a\"\n\nlog_out = [\"info\"]\n"},
			prefix: "vms/110.toml:3: ",
			phrase: "log_out [info]: use true (level warning), false (off) or a syslog level",
		},
		{
			name:   "netN with a leading zero",
			files:  map[string]string{"vms/110.toml": "name = \"a\"\n[net01]\n"},
			prefix: "vms/110.toml:2: ",
			phrase: "[net01]: interface numbers are written without leading zeros",
		},
		{
			name:   "netN not a table",
			files:  map[string]string{"vms/110.toml": "net0 = \"tap\"\n"},
			prefix: "vms/110.toml:1: ",
			phrase: "net0: expected a table, got a string",
		},
		{
			name:   "tap name too long",
			files:  map[string]string{"vms/999999999.toml": "[net0]\n[net10]\n[net100]\n"},
			prefix: "vms/999999999.toml:3: ",
			phrase: "[net100]: tap name \"tap999999999i100\": not an interface name: 16 characters, Linux allows 15",
		},
		{
			name:   "interface unknown key",
			files:  map[string]string{"vms/110.toml": "[net0]\nmac = \"02:00:00:00:00:01\"\nip = [\"192.0.2.1\"]\n"},
			prefix: "vms/110.toml:3: ",
			phrase: "unknown key \"net0.ip\"; interface keys are mac, ips",
		},
		{
			name:   "interface mac",
			files:  map[string]string{"vms/110.toml": vmWith("mac = \"ff:ff:ff:ff:ff:ff\"\n")},
			prefix: "vms/110.toml:4: ",
			phrase: "mac \"ff:ff:ff:ff:ff:ff\": a multicast MAC address",
		},
		{
			name:   "ips prefix",
			files:  map[string]string{"vms/110.toml": vmWith("ips = [\"192.0.2.0/24\"]\n")},
			prefix: "vms/110.toml:4: ",
			phrase: "ips \"192.0.2.0/24\": a single address is expected, not a prefix",
		},
		{
			name:   "ips not an address",
			files:  map[string]string{"vms/110.toml": vmWith("ips = [\n  \"192.0.2.1\",\n  \"web01\",\n]\n")},
			prefix: "vms/110.toml:6: ",
			phrase: "ips \"web01\": not an IP address",
		},
		{
			name:   "ips not unicast",
			files:  map[string]string{"vms/110.toml": vmWith("ips = [\"0.0.0.0\"]\n")},
			prefix: "vms/110.toml:4: ",
			phrase: "not a unicast address",
		},
		{
			name:   "ips wrong type",
			files:  map[string]string{"vms/110.toml": vmWith("ips = \"192.0.2.1\"\n")},
			prefix: "vms/110.toml:4: ",
			phrase: "net0.ips: expected an array, got a string",
		},
		{
			name:   "bridge",
			files:  map[string]string{"vms/110.toml": vmWith("bridge = \"vmbr0;reboot\"\n")},
			prefix: "vms/110.toml:4: ",
			phrase: "bridge \"vmbr0;reboot\": not an interface name",
		},
		{
			name:   "bridge too long",
			files:  map[string]string{"vms/110.toml": vmWith("bridge = \"abcdefghijklmnop\"\n")},
			prefix: "vms/110.toml:4: ",
			phrase: "not an interface name",
		},
		{
			name:   "antispoof value",
			files:  map[string]string{"vms/110.toml": vmWith("mac = \"02:00:00:00:01:10\"\nantispoof = \"ip\"\n")},
			prefix: "vms/110.toml:5: ",
			phrase: "antispoof \"ip\": use true (MAC and addresses), false or \"mac\" (the MAC alone)",
		},
		{
			name:   "antispoof type",
			files:  map[string]string{"vms/110.toml": vmWith("antispoof = 1\n")},
			prefix: "vms/110.toml:4: ",
			phrase: "antispoof 1: use true (MAC and addresses), false or \"mac\"",
		},
		{
			name:   "antispoof mac without a mac",
			files:  map[string]string{"vms/110.toml": vmWith("ips = [\"192.0.2.1\"]\nantispoof = \"mac\"\n")},
			prefix: "vms/110.toml:5: ",
			phrase: "antispoof \"mac\": checks the source MAC, but the interface has no mac; give its mac, or set antispoof = false",
		},
		{
			name:   "groups unknown",
			files:  map[string]string{"groups/web.toml": web, "vms/110.toml": vmWith("groups = [\"web\", \"db\"]\n")},
			prefix: "vms/110.toml:4: ",
			phrase: "groups \"db\": unknown group, there is no groups/db.toml",
		},
		{
			name:   "groups listed twice",
			files:  map[string]string{"groups/web.toml": web, "vms/110.toml": vmWith("groups = [\n  \"web\",\n  \"web\",\n]\n")},
			prefix: "vms/110.toml:6: ",
			phrase: "groups \"web\": listed twice",
		},
		{
			name: "ip claimed by another VM",
			files: map[string]string{
				"vms/110.toml": "[net0]\nmac = \"02:00:00:00:01:10\"\nbridge = \"vmbr0\"\nips = [\"192.0.2.10\"]\n",
				"vms/111.toml": "name = \"b\"\n\n[net0]\nmac = \"02:00:00:00:01:11\"\n\nips = [\"192.0.2.10\"]\n",
			},
			prefix: "vms/111.toml:6: ",
			phrase: "ip 192.0.2.10 is already claimed by tap110i0 (vms/110.toml:4)",
		},
		{
			name:   "ip listed twice by one interface",
			files:  map[string]string{"vms/110.toml": vmWith("ips = [\"2001:db8::10\", \"2001:DB8:0::10\"]\n")},
			prefix: "vms/110.toml:4: ",
			phrase: "ips \"2001:DB8:0::10\": listed twice (\"2001:db8::10\" is the same address)",
		},
		{
			name: "ip claimed by two interfaces of one VM",
			files: map[string]string{
				"vms/110.toml": "[net1]\nips = [\"192.0.2.10\"]\n[net0]\nips = [\"192.0.2.10\"]\n",
			},
			prefix: "vms/110.toml:4: ",
			phrase: "ip 192.0.2.10 is already claimed by tap110i1 (vms/110.toml:2)",
		},
		{
			name: "mac used twice",
			files: map[string]string{
				"vms/110.toml": vmWith("mac = \"02:00:00:00:01:10\"\n"),
				"vms/111.toml": vmWith("mac = \"02-00-00-00-01-10\"\n"),
			},
			prefix: "vms/111.toml:4: ",
			phrase: "mac 02:00:00:00:01:10 is already used by tap110i0 (vms/110.toml:4)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := configtest.Dir(t, tc.files)
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			_, err := Load(dir)
			checkError(t, err, tc.prefix, tc.phrase)
			t.Log(err)
		})
	}
}

// symlink returns a setup that links rel to target.
func symlink(rel, target string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		path := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
	}
}

// mkdir returns a setup that creates the directory rel.
func mkdir(rel string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(rel)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLoadUnreadable checks that a file that cannot be read is reported,
// not a panic. Root reads any file whatever its mode, so when running as
// root the read error is injected instead.
func TestLoadUnreadable(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{"groups/web.toml": web})
	path := filepath.Join(dir, "groups", "web.toml")
	if err := os.Chmod(path, 0); err != nil {
		t.Fatal(err)
	}
	l := &loader{read: readFile}
	if os.Geteuid() == 0 {
		l.read = func(p string, _ int) ([]byte, error) {
			return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrPermission}
		}
	}
	_, err := l.load(dir)
	if err == nil {
		t.Fatal("load succeeded on an unreadable file")
	}
	checkError(t, err, "groups/web.toml: ", "cannot read: permission denied")
}

// TestLoadMissingDir checks the error for a directory that does not exist.
func TestLoadMissingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nope")
	_, err := Load(dir)
	checkError(t, err, dir+": ", "no such file or directory")
}

// TestLoadErrorOrder checks that the first error is reported in file order:
// vmfw.toml, sets by name, groups by name, VMs by numeric id.
func TestLoadErrorOrder(t *testing.T) {
	files := map[string]string{
		"vmfw.toml":        "mark = \"0x3\"\n",
		"sets/z.toml":      "bad = 1\n",
		"groups/b.toml":    "bad = 1\n",
		"groups/a.toml":    "bad = 1\n",
		"vms/10.toml":      "bad = 1\n",
		"vms/9.toml":       "bad = 1\n",
		"groups/notes.txt": "not configuration",
		"vms/.#9.toml":     "editor lock file",
	}
	for _, want := range []string{"vmfw.toml:1: ", "sets/z.toml:1: ", "groups/a.toml:1: ", "groups/b.toml:1: ", "vms/9.toml:1: ", "vms/10.toml:1: "} {
		dir := configtest.Dir(t, files)
		_, err := Load(dir)
		checkError(t, err, want, "")
		rel := strings.TrimSuffix(want, ":1: ")
		delete(files, rel)
	}
	mustLoad(t, configtest.Dir(t, files))
}
