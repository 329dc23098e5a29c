package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/config/configtest"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/state"
)

// ifaceCase is one interface's settings, written the way each entry point
// takes them: a VM file, a CNI configuration with its prevResult, an
// attachment record. A nil pointer leaves the key out.
type ifaceCase struct {
	name   string
	iface  string // default tap110i0
	label  *string
	mac    *string
	ips    []string
	groups []string
	// groupsSet writes groups even when empty.
	groupsSet           bool
	policyIn, policyOut *string
	// want is "" for settings every entry point takes, otherwise the
	// words of the problem every one of them must report.
	want string
	// cni is how the CNI path differs, when its format cannot carry the
	// input as written.
	cni cniPath
}

// cniPath says whether a case runs through the CNI plugin.
type cniPath int

const (
	// cniRuns: the case runs like through the other entry points.
	cniRuns cniPath = iota
	// cniCannot: the CNI format cannot say it (the label is generated
	// from the network name; prevResult addresses are CIDRs, parsed by
	// the CNI library into addresses).
	cniCannot
	// cniLibrary: the CNI library refuses the prevResult before vmfw
	// reads it; vmfw's words cannot appear, the refusal must.
	cniLibrary
)

func p(s string) *string { return &s }

// ifaceCases are the interface settings every entry point must judge
// alike.
var ifaceCases = []ifaceCase{
	// Valid settings.
	{name: "every setting", label: p("web01"), mac: p("02:00:00:00:01:10"), ips: []string{"198.51.100.10", "2001:db8::10"},
		groups: []string{"web", "db"}, policyIn: p("reject"), policyOut: p("drop")},
	{name: "nothing but the interface"},
	{name: "MAC written with dashes", mac: p("02-00-00-00-01-10")},
	{name: "MAC in upper case", mac: p("02:AB:CD:EF:01:10")},
	{name: "empty MAC is an unknown one", mac: p("")},
	{name: "policies in upper case", policyIn: p("DROP"), policyOut: p("Reject")},
	{name: "empty policies are the defaults", policyIn: p(""), policyOut: p("")},
	{name: "empty group list", groupsSet: true},
	{name: "IPv6 link-local address", ips: []string{"fe80::10"}},
	{name: "label with a slash", label: p("net/c0ffee"), cni: cniCannot},
	{name: "veth name", iface: "veth1a2b3c4d"},
	{name: "libvirt name", iface: "vnet0"},
	{name: "15-character name", iface: "tap99999999i100"},

	// MAC addresses.
	{name: "multicast MAC", mac: p("01:00:5e:00:00:01"), want: "a multicast MAC address"},
	{name: "broadcast MAC", mac: p("ff:ff:ff:ff:ff:ff"), want: "a multicast MAC address"},
	{name: "all-zero MAC", mac: p("00:00:00:00:00:00"), want: "the all-zero MAC address"},
	{name: "MAC too short", mac: p("02:00:00:00:01"), want: "not a MAC address"},
	{name: "64-bit MAC", mac: p("02:00:00:00:00:00:00:01"), want: "not a 48-bit Ethernet MAC address"},
	{name: "MAC of words", mac: p("web01"), want: "not a MAC address"},

	// Addresses.
	{name: "IPv4 multicast", ips: []string{"224.0.0.1"}, want: "not a unicast address"},
	{name: "IPv6 multicast", ips: []string{"198.51.100.10", "ff02::1"}, want: "not a unicast address"},
	{name: "IPv4 unspecified", ips: []string{"0.0.0.0"}, want: "not a unicast address"},
	{name: "IPv6 unspecified", ips: []string{"::"}, want: "not a unicast address"},
	{name: "IPv4 loopback", ips: []string{"127.0.0.1"}, want: "not a unicast address"},
	{name: "IPv6 loopback", ips: []string{"::1"}, want: "not a unicast address"},
	{name: "IPv4 broadcast", ips: []string{"255.255.255.255"}, want: "not a unicast address"},
	{name: "IPv4 CIDR", ips: []string{"198.51.100.0/24"}, want: "a single address is expected, not a prefix", cni: cniCannot},
	{name: "IPv6 CIDR", ips: []string{"2001:db8::/64"}, want: "a single address is expected, not a prefix", cni: cniCannot},
	{name: "IPv4-mapped IPv6", ips: []string{"::ffff:198.51.100.10"}, want: "IPv4-mapped IPv6 address", cni: cniCannot},
	{name: "not an address", ips: []string{"web01"}, want: "not an IP address", cni: cniLibrary},
	{name: "IPv6 with a zone", ips: []string{"fe80::1%eth0"}, want: "zones (%) are not allowed", cni: cniLibrary},
	{name: "IPv4 listed twice", ips: []string{"198.51.100.10", "198.51.100.10"}, want: "listed twice"},
	{name: "IPv6 listed twice, spelt differently", ips: []string{"2001:db8::10", "2001:DB8:0::10"}, want: "listed twice"},

	// Groups.
	{name: "unknown group", groups: []string{"web", "nosuch"}, want: "unknown group, there is no groups/nosuch.toml"},
	{name: "group name with a dot", groups: []string{"my.group"}, want: "not a group name"},
	{name: "group name too long", groups: []string{"abcdefghijklmnopqrstu"}, want: "not a group name"},
	{name: "group name starting with a digit", groups: []string{"1web"}, want: "not a group name"},
	{name: "group listed twice", groups: []string{"web", "db", "web"}, want: "listed twice"},

	// Policies.
	{name: "policy in", policyIn: p("deny"), want: "must be drop, reject or accept"},
	{name: "policy out", policyOut: p("allow"), want: "must be accept, drop or reject"},
	{name: "policy with spaces", policyIn: p(" drop"), want: "must be drop, reject or accept"},

	// Interface names. A VM file's interface is named tap<VMID>i<N>, so
	// only such names run through VM files.
	{name: "name of 16 characters", iface: "tap999999999i100", want: "16 characters, Linux allows 15"},
	{name: "name like a group chain", iface: "sg-web", want: `starts with "sg-" like vmfw's own chains`},
	{name: "name like a base chain", iface: "vmfw-out", want: `starts with "vmfw-" like vmfw's own chains`},
	{name: "name starting with a dash", iface: "-veth1", want: "not an interface name"},
	{name: "name with a slash", iface: "veth/1", want: "not an interface name"},
	{name: "name with a space", iface: "veth 1", want: "not an interface name"},
	{name: "name dot-dot", iface: "..", want: "not an interface name"},

	// Labels.
	{name: "label with a space", label: p("web 01"), want: "use only letters, digits", cni: cniCannot},
	{name: "label with a newline", label: p("web\n01"), want: "use only letters, digits", cni: cniCannot},
	{name: "label too long", label: p(strings.Repeat("n", 65)), want: "is 65 characters, at most 64", cni: cniCannot},
}

// TestIfaceSettingsAgree runs every case through the three entry points
// that take an interface's settings and checks they take and refuse the
// same settings in the same words, each with its own location: a VM
// file's file:line, the CNI key, the record's file.
func TestIfaceSettingsAgree(t *testing.T) {
	for _, tc := range ifaceCases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.iface == "" {
				tc.iface = "tap110i0"
			}
			paths := 0
			if vmid, _, ok := config.ParseTapName(tc.iface); ok {
				paths++
				err := viaVMFile(t, tc)
				prefix := fmt.Sprintf("vms/%d.toml:", vmid)
				agree(t, "VM file", err, tc.want, func(msg string) bool { return strings.HasPrefix(msg, prefix) })
			}
			var te *types.Error
			switch tc.cni {
			case cniRuns:
				paths++
				err := viaCNI(t, tc)
				agree(t, "CNI", err, tc.want, func(string) bool {
					return errors.As(err, &te) && te.Code == types.ErrInvalidNetworkConfig && strings.HasPrefix(te.Msg, "vmfw: ")
				})
			case cniLibrary:
				paths++
				if err := viaCNI(t, tc); !errors.As(err, &te) || te.Code != types.ErrDecodingFailure {
					t.Errorf("CNI: %v, want the library's refusal (code %d)", err, types.ErrDecodingFailure)
				}
			}
			paths++
			err := viaRecord(t, tc)
			agree(t, "record", err, tc.want, func(msg string) bool {
				var ce *engine.ConfigError
				return errors.As(err, &ce) && (strings.Contains(msg, "attachments/"+tc.iface+".json: ") || strings.Contains(msg, "attachment record for "+strconv.Quote(tc.iface)))
			})
			if paths < 2 {
				t.Errorf("the case runs through %d entry point; it proves no agreement", paths)
			}
		})
	}
}

// agree checks one entry point's verdict on a case: err is nil when want
// is "", otherwise it says want and located(err.Error()) holds.
func agree(t *testing.T, path string, err error, want string, located func(msg string) bool) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s refuses: %v", path, err)
	case want == "":
	case err == nil:
		t.Errorf("%s takes it, want %q", path, want)
	case !strings.Contains(err.Error(), want):
		t.Errorf("%s: %v, want %q", path, err, want)
	case !located(err.Error()):
		t.Errorf("%s: %v does not say where", path, err)
	default:
		t.Logf("%s: %v", path, err)
	}
}

// groupFiles are the groups every case may name.
var groupFiles = map[string]string{
	"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n",
	"groups/db.toml":  "[[in]]\nproto = \"tcp\"\ndport = \"5432\"\nsource_group = \"web\"\n",
}

// viaVMFile loads a configuration whose VM file holds the case.
func viaVMFile(t *testing.T, tc ifaceCase) error {
	vmid, index, _ := config.ParseTapName(tc.iface)
	var b strings.Builder
	quoted := func(key string, v *string) {
		if v != nil {
			fmt.Fprintf(&b, "%s = %s\n", key, strconv.Quote(*v))
		}
	}
	quoted("name", tc.label)
	quoted("policy_in", tc.policyIn)
	quoted("policy_out", tc.policyOut)
	fmt.Fprintf(&b, "\n[net%d]\n", index)
	quoted("mac", tc.mac)
	list := func(key string, vs []string, always bool) {
		if vs == nil && !always {
			return
		}
		q := make([]string, len(vs))
		for i, v := range vs {
			q[i] = strconv.Quote(v)
		}
		fmt.Fprintf(&b, "%s = [%s]\n", key, strings.Join(q, ", "))
	}
	list("ips", tc.ips, false)
	list("groups", tc.groups, tc.groupsSet)
	files := map[string]string{fmt.Sprintf("vms/%d.toml", vmid): b.String()}
	for k, v := range groupFiles {
		files[k] = v
	}
	_, err := config.Load(configtest.Dir(t, files))
	return err
}

// viaCNI runs the plugin's ADD with the case in its configuration and
// prevResult, on a fake host.
func viaCNI(t *testing.T, tc ifaceCase) error {
	container := map[string]any{"name": "eth0", "sandbox": "/var/run/netns/c1"}
	if tc.mac != nil {
		container["mac"] = *tc.mac
	}
	ips := []any{}
	for _, ip := range tc.ips {
		bits := "/24"
		if strings.Contains(ip, ":") {
			bits = "/64"
		}
		ips = append(ips, map[string]any{"address": ip + bits, "interface": 1})
	}
	conf := map[string]any{
		"cniVersion": "1.0.0", "name": "net", "type": "vmfw",
		"configDir": configtest.Dir(t, groupFiles), "stateDir": t.TempDir(),
		"prevResult": map[string]any{
			"cniVersion": "1.0.0",
			"interfaces": []any{map[string]any{"name": tc.iface}, container},
			"ips":        ips,
		},
	}
	if tc.groups != nil || tc.groupsSet {
		conf["groups"] = append([]string{}, tc.groups...)
	}
	if tc.policyIn != nil {
		conf["policyIn"] = *tc.policyIn
	}
	if tc.policyOut != nil {
		conf["policyOut"] = *tc.policyOut
	}
	return cniAdd(t, conf)
}

// cniAdd runs the plugin's ADD with configuration conf on a fake host
// whose every interface is a bridge port.
func cniAdd(t *testing.T, conf map[string]any) error {
	t.Helper()
	data, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseConf(data)
	if err != nil {
		return err
	}
	pl := plugin{isPort: func(string) (bool, error) { return true, nil }}
	_, err = pl.add(context.Background(), &skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: data}, c, fakeEngine(c.ConfigDir, c.StateDir))
	return err
}

// viaRecord attaches a record holding the case.
func viaRecord(t *testing.T, tc ifaceCase) error {
	sp := &state.Spec{Groups: tc.groups, MAC: deref(tc.mac), IPs: tc.ips, Name: deref(tc.label),
		PolicyIn: deref(tc.policyIn), PolicyOut: deref(tc.policyOut), Antispoof: true}
	rec := &state.Attachment{Iface: tc.iface, Owner: state.CNI, Network: "net", ContainerID: "c1", IfName: "eth0", Spec: sp}
	return fakeEngine(configtest.Dir(t, groupFiles), t.TempDir()).AttachRecords(context.Background(), rec)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// fakeEngine is an engine on configDir and stateDir whose backend holds
// nothing of vmfw's and takes every change.
func fakeEngine(configDir, stateDir string) *engine.Engine {
	e := engine.New(engine.Kernel{Backend: &backend.Fake{}, Host: fakeHost{},
		Lock: func(context.Context) (func(), error) { return func() {}, nil },
	}, configDir)
	e.State = state.New(stateDir)
	return e
}

type fakeHost struct{}

func (fakeHost) Links() (map[string]bool, error) { return map[string]bool{}, nil }
func (fakeHost) Attach(string, string) error     { return nil }
func (fakeHost) EnableBridgeNetfilter() error    { return nil }

// TestCNIKeys checks that the plugin names a bad setting by the key it
// was written with: in the plugin configuration, in args or
// runtimeConfig, or in prevResult.
func TestCNIKeys(t *testing.T) {
	prev := func(mac string, ips ...string) map[string]any {
		var list []any
		for _, ip := range ips {
			list = append(list, map[string]any{"address": ip, "interface": 1})
		}
		return map[string]any{"cniVersion": "1.0.0", "ips": list, "interfaces": []any{
			map[string]any{"name": "veth1"}, map[string]any{"name": "eth0", "sandbox": "/x", "mac": mac}}}
	}
	for _, tc := range []struct {
		conf map[string]any
		want string
	}{
		{map[string]any{"policyIn": "deny"}, `policyIn "deny": must be drop`},
		{map[string]any{"args": map[string]any{"cni": map[string]any{"groups": []string{"web", "web"}}}}, `args.cni.groups[1] "web": listed twice`},
		{map[string]any{"groups": []string{"web"}, "runtimeConfig": map[string]any{"vmfw": map[string]any{"policyOut": "pass"}}}, `runtimeConfig.vmfw.policyOut "pass": must be accept`},
		{map[string]any{"prevResult": prev("01:00:5e:00:00:01")}, `prevResult.interfaces[1].mac "01:00:5e:00:00:01": a multicast MAC address`},
		{map[string]any{"prevResult": prev("02:00:00:00:00:01", "198.51.100.2/24", "127.0.0.1/8")}, `prevResult.ips[1].address "127.0.0.1": not a unicast address`},
		{map[string]any{"prevResult": map[string]any{"cniVersion": "1.0.0", "interfaces": []any{map[string]any{"name": "sg-web"}}}}, `prevResult.interfaces[0].name "sg-web": starts with "sg-"`},
		// Only the engine knows which groups exist; its refusal is
		// worded with the plugin's key too.
		{map[string]any{"groups": []string{"web"}, "args": map[string]any{"cni": map[string]any{"groups": []string{"web", "nosuch"}}}}, `args.cni.groups[1] "nosuch": unknown group, there is no groups/nosuch.toml`},
	} {
		conf := map[string]any{"cniVersion": "1.0.0", "name": "net", "type": "vmfw",
			"configDir": configtest.Dir(t, groupFiles), "stateDir": t.TempDir(), "prevResult": prev("02:00:00:00:00:01", "198.51.100.2/24")}
		for k, v := range tc.conf {
			conf[k] = v
		}
		err := cniAdd(t, conf)
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || te.Msg != "vmfw: "+tc.want && !strings.HasPrefix(te.Msg, "vmfw: "+tc.want) {
			t.Errorf("%v: %v, want code 7 %q", tc.conf, err, "vmfw: "+tc.want)
		}
	}
}
