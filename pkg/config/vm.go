package config

import (
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// vmHead holds a VM file's scalar keys as written.
type vmHead struct {
	Name   string `toml:"name"`
	Enable *bool  `toml:"enable"`
	// DropInvalid is drop_invalid, for a VM with enable = false.
	DropInvalid *bool   `toml:"drop_invalid"`
	PolicyIn    *string `toml:"policy_in"`
	PolicyOut   *string `toml:"policy_out"`
	Log         any     `toml:"log"`
	LogIn       any     `toml:"log_in"`
	LogOut      any     `toml:"log_out"`
}

// nicFile is one [netN] table as written.
type nicFile struct {
	MAC       *string  `toml:"mac"`
	IPs       []string `toml:"ips"`
	Bridge    *string  `toml:"bridge"`
	Groups    []string `toml:"groups"`
	Antispoof any      `toml:"antispoof"`
	DHCP      *bool    `toml:"dhcp"`
	NDP       *bool    `toml:"ndp"`
	L2        []string `toml:"l2_protocols"`
}

var vmSchema = &schema{
	top: "VM keys are name, enable, drop_invalid, policy_in, policy_out, log, log_in, log_out and [netN] tables",
	sub: func(table string) string {
		if _, ok := netIndex(table); ok {
			return "interface keys are mac, ips, bridge, groups, antispoof, dhcp, ndp and l2_protocols"
		}
		return ""
	},
}

// loadedVM is one VM file decoded and validated on its own: the VM and
// the addresses its interfaces claim, in file order, which only the
// files before it can contradict (see loader.claim).
type loadedVM struct {
	vm     *VM
	file   *file
	claims []addrClaim
	err    *Error
}

// addrClaim is an address an interface claims: a MAC (mac set) or an IP.
type addrClaim struct {
	mac  net.HardwareAddr
	ip   netip.Addr
	tap  string
	line int
}

// loadVMFile reads, decodes and validates one VM file with parser p; it
// runs concurrently with the other VM files.
func (l *loader) loadVMFile(p *unstable.Parser, e entry, id int, known map[string]bool) loadedVM {
	f, err := l.open(p, e, vmSchema)
	if err != nil {
		return loadedVM{err: err}
	}
	lv := loadedVM{file: f}
	lv.vm, lv.err = l.loadVM(f, id, known, &lv.claims)
	return lv
}

// claim records the addresses of one VM file, files taken in VM id order,
// and reports the first that an earlier interface already claimed.
func (l *loader) claim(f *file, claims []addrClaim) *Error {
	for _, c := range claims {
		if c.mac != nil {
			if o, ok := l.macs[string(c.mac)]; ok {
				return f.errorf(c.line, "mac %s is already used by %s (%s:%d)", c.mac, o.tap, o.file, o.line)
			}
			l.macs[string(c.mac)] = claim{tap: c.tap, file: f.rel, line: c.line}
			continue
		}
		if o, ok := l.ips[c.ip]; ok {
			return f.errorf(c.line, "ip %s is already claimed by %s (%s:%d)", c.ip, o.tap, o.file, o.line)
		}
		l.ips[c.ip] = claim{tap: c.tap, file: f.rel, line: c.line}
	}
	return nil
}

// loadVM decodes and validates VM id, appending the addresses its
// interfaces claim to claims.
func (l *loader) loadVM(f *file, id int, known map[string]bool, claims *[]addrClaim) (*VM, *Error) {
	nets, err := netTables(f, id)
	if err != nil {
		return nil, err
	}
	// The [netN] tables are keys only known from the file itself, yet strict
	// decoding needs a struct naming every allowed key: build one per set of
	// tables, after vmHead's fields.
	t := l.vmType(nets)
	v := reflect.New(t)
	if err := f.decode(v.Interface()); err != nil {
		return nil, err
	}
	var head vmHead
	hv := reflect.ValueOf(&head).Elem()
	for i := 0; i < hv.NumField(); i++ {
		hv.Field(i).Set(v.Elem().Field(i))
	}

	vm, ferr := validateVMSettings(head.Name, deref(head.PolicyIn), deref(head.PolicyOut))
	if ferr != nil {
		return nil, f.errorAt(string(ferr.Field), "%s", ferr.Error())
	}
	vm.ID, vm.File = id, f.path
	if err := loadVMLog(f, vm, &head); err != nil {
		return nil, err
	}
	if head.Enable != nil {
		vm.Enable = *head.Enable
	}
	if head.DropInvalid != nil {
		// A filtered VM's chains drop INVALID packets whatever it says:
		// false there would be a promise vmfw does not keep.
		if !*head.DropInvalid && vm.Enable {
			return nil, f.errorAt("drop_invalid", "drop_invalid = false: a filtered VM always drops packets conntrack finds INVALID; the key is for a VM with enable = false")
		}
		vm.DropInvalid = *head.DropInvalid && !vm.Enable
	}

	// Interfaces are checked in file order, so that an address listed twice
	// is reported where it is listed the second time.
	for i, nt := range nets {
		nf := v.Elem().Field(hv.NumField() + i).Interface().(nicFile)
		nic, err := loadNIC(f, vm, nt, &nf, known, claims)
		if err != nil {
			return nil, err
		}
		vm.NICs = append(vm.NICs, nic)
	}
	slices.SortFunc(vm.NICs, func(a, b *NIC) int { return a.Index - b.Index })
	return vm, nil
}

// loadVMLog validates log, log_in and log_out: log sets both directions,
// log_in and log_out override it for one (Proxmox's log_level_in and
// log_level_out).
func loadVMLog(f *file, vm *VM, head *vmHead) *Error {
	level := func(key string, v any, def LogLevel) (LogLevel, *Error) {
		if v == nil {
			return def, nil
		}
		l, ok := ParseLogLevel(v)
		if !ok {
			return LogOff, f.errorAt(key, "%s %s: %s", key, show(v), logLevelHelp)
		}
		return l, nil
	}
	both, err := level("log", head.Log, LogOff)
	if err != nil {
		return err
	}
	if vm.LogIn, err = level("log_in", head.LogIn, both); err != nil {
		return err
	}
	if vm.LogOut, err = level("log_out", head.LogOut, both); err != nil {
		return err
	}
	vm.Log = vm.LogIn != LogOff || vm.LogOut != LogOff
	return nil
}

// netTable is a [netN] table found in a VM file.
type netTable struct {
	key   string
	index int
}

// netTables finds the file's [netN] tables and checks their tap names.
func netTables(f *file, id int) ([]netTable, *Error) {
	var nets []netTable
	for _, key := range f.lines.top {
		digits, ok := strings.CutPrefix(key, "net")
		if !ok || digits == "" || strings.Trim(digits, "0123456789") != "" {
			continue
		}
		if len(digits) > 1 && digits[0] == '0' {
			return nil, f.errorAt(key, "[%s]: interface numbers are written without leading zeros", key)
		}
		// Check the name before converting: the number may not fit an int.
		if tap := "tap" + strconv.Itoa(id) + "i" + digits; IfaceNameProblem(tap) != "" {
			return nil, f.errorAt(key, "[%s]: %s", key, fieldError(FieldIface, -1, tap, IfaceNameProblem(tap)).Render("tap name"))
		}
		n, _ := strconv.Atoi(digits)
		nets = append(nets, netTable{key: key, index: n})
	}
	return nets, nil
}

// vmType returns a struct type with vmHead's fields followed by one nicFile
// field per table in nets.
func (l *loader) vmType(nets []netTable) reflect.Type {
	keys := make([]string, len(nets))
	for i, n := range nets {
		keys[i] = n.key
	}
	cacheKey := strings.Join(keys, ",")
	l.vmTypesMu.Lock()
	defer l.vmTypesMu.Unlock()
	if t, ok := l.vmTypes[cacheKey]; ok {
		return t
	}
	head := reflect.TypeOf(vmHead{})
	fields := make([]reflect.StructField, 0, head.NumField()+len(nets))
	for i := 0; i < head.NumField(); i++ {
		fields = append(fields, head.Field(i))
	}
	for _, n := range nets {
		fields = append(fields, reflect.StructField{
			Name: "Net" + strconv.Itoa(n.index),
			Type: reflect.TypeOf(nicFile{}),
			Tag:  reflect.StructTag(`toml:"` + n.key + `"`),
		})
	}
	t := reflect.StructOf(fields)
	if l.vmTypes == nil {
		l.vmTypes = make(map[string]reflect.Type)
	}
	l.vmTypes[cacheKey] = t
	return t
}

// netIndex parses the N of a canonical "netN".
func netIndex(key string) (int, bool) {
	digits, ok := strings.CutPrefix(key, "net")
	if !ok || len(digits) > 1 && digits[0] == '0' {
		return 0, false
	}
	return parseDecimal(digits, maxVMID)
}

// loadNIC validates one interface of vm (ValidateIface's rules),
// appending the addresses it claims to claims.
func loadNIC(f *file, vm *VM, nt netTable, nf *nicFile, known map[string]bool, claims *[]addrClaim) (*NIC, *Error) {
	at := func(key string) string { return nt.key + "." + key }
	antispoof, macOnly := true, false
	if nf.Antispoof != nil {
		var ok bool
		if antispoof, macOnly, ok = ParseAntispoof(nf.Antispoof); !ok {
			return nil, f.errorAt(at("antispoof"), "antispoof %s: use true (MAC and addresses), false or %q (the MAC alone)", show(nf.Antispoof), AntispoofMAC)
		}
	}
	s := &IfaceSettings{
		Iface:            TapName(vm.ID, nt.index),
		MAC:              deref(nf.MAC),
		IPs:              nf.IPs,
		Bridge:           nf.Bridge,
		Groups:           nf.Groups,
		Antispoof:        antispoof,
		AntispoofMACOnly: macOnly,
		DHCP:             nf.DHCP == nil || *nf.DHCP,
		NoNDP:            nf.NDP != nil && !*nf.NDP,
		L2Protocols:      nf.L2,
	}
	nic, ferr := validateNIC(vm, s, func(g string) bool { return known[g] })
	if ferr != nil {
		path := at(string(ferr.Field))
		if ferr.Index >= 0 {
			path = index(path, ferr.Index)
		}
		return nil, f.errorAt(path, "%s", ferr.Error())
	}
	nic.Index, nic.Line = nt.index, f.lines.line(nt.key)
	if nic.MAC != nil {
		*claims = append(*claims, addrClaim{mac: nic.MAC, tap: nic.Tap, line: f.lines.line(at("mac"))})
	}
	for i, a := range nic.IPs {
		*claims = append(*claims, addrClaim{ip: a, tap: nic.Tap, line: f.lines.line(index(at("ips"), i))})
	}
	return nic, nil
}

// deref returns *s, "" for nil: an empty value and a missing key are the
// same for the settings every source shares (IfaceSettings).
func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
