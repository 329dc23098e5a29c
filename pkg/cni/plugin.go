package cni

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/state"
	"github.com/vmfw/vmfw/pkg/system"
)

// Versions are the CNI spec versions the plugin speaks.
var Versions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// timeout bounds one plugin invocation, waiting for the lock included.
const timeout = 2 * time.Minute

// Main runs the plugin for the command in CNI_COMMAND and exits on error,
// printing the error as the spec says. ver is shown by VERSION's caller
// when CNI_COMMAND is missing.
func Main(ver string) {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    run("ADD"),
		Del:    run("DEL"),
		Check:  run("CHECK"),
		GC:     run("GC"),
		Status: status,
	}, Versions, "vmfw CNI plugin "+ver)
}

// Engine is the part of *engine.Engine the plugin's commands use.
type Engine interface {
	Records(ctx context.Context) ([]*state.Attachment, error)
	AttachRecords(ctx context.Context, recs ...*state.Attachment) error
	DetachWhere(ctx context.Context, sel engine.Selector) ([]string, error)
	ForgetWhere(ctx context.Context, sel func(a *state.Attachment) bool) ([]string, error)
	Check(ctx context.Context, iface string) (*state.Attachment, error)
}

var _ Engine = (*engine.Engine)(nil)

// plugin is what the commands need of the host besides an engine: whether
// an interface is a bridge port or a tap. Tests replace it.
type plugin struct {
	isPort func(ifname string) (bool, error)
}

// onHost is the plugin on the real host.
var onHost = plugin{isPort: isPort}

// command is one of the plugin's commands that change or check
// attachments. It returns the host interfaces it attached or detached,
// which the agent logs.
type command func(p plugin, ctx context.Context, args *skel.CmdArgs, c *NetConf, e Engine) (ifaces []string, err error)

// commands are those commands by CNI_COMMAND.
var commands = map[string]command{
	"ADD":   plugin.add,
	"DEL":   plugin.del,
	"CHECK": plugin.check,
	"GC":    plugin.gc,
}

// run adapts a command to skel: it hands the command to a running agent
// or else runs it here, and maps errors to CNI error codes. ADD prints
// prevResult back on success.
func run(name string) func(*skel.CmdArgs) error {
	return bounded(func(ctx context.Context, args *skel.CmdArgs, c *NetConf) error {
		if handled, err := viaAgent(ctx, name, args, c); handled {
			if err != nil {
				return err
			}
		} else {
			e, err := newEngine(ctx, c)
			if err != nil {
				return cniError(err)
			}
			if _, err := commands[name](onHost, ctx, args, c, e); err != nil {
				return cniError(err)
			}
		}
		if name == "ADD" {
			// The agent parsed its own copy of prevResult; ADD succeeded,
			// so this one parses too.
			if c.PrevResult == nil {
				if err := version.ParsePrevResult(&c.PluginConf); err != nil || c.PrevResult == nil {
					return types.NewError(types.ErrDecodingFailure, "vmfw: parsing prevResult", fmt.Sprint(err))
				}
			}
			return types.PrintResult(c.PrevResult, c.CNIVersion)
		}
		return nil
	})
}

// status runs STATUS, which reads and changes nothing, so it never goes
// through the agent.
var status = bounded(func(ctx context.Context, args *skel.CmdArgs, c *NetConf) error {
	return cniError(cmdStatus(ctx, args, c))
})

// bounded adapts f to skel: it parses the configuration and bounds the
// run in time (timeout).
func bounded(f func(ctx context.Context, args *skel.CmdArgs, c *NetConf) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		c, err := parseConf(args.StdinData)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return f(ctx, args, c)
	}
}

// cniError maps an error to a CNI error: 7 for configuration problems, 11
// when the lock could not be had in time, 101 for drift, 100 otherwise.
func cniError(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	var ce *engine.ConfigError
	var fe *config.Error
	var de *engine.DriftError
	switch {
	case errors.As(err, &te):
		return te
	case errors.As(err, &ce), errors.As(err, &fe):
		return types.NewError(types.ErrInvalidNetworkConfig, "vmfw: "+err.Error(), "")
	case errors.As(err, &de):
		return types.NewError(ErrDrift, "vmfw: "+err.Error(), "")
	case errors.Is(err, context.DeadlineExceeded):
		return types.NewError(types.ErrTryAgainLater, "vmfw: "+err.Error(), "another vmfw run holds the lock")
	}
	return types.NewError(ErrApply, "vmfw: "+err.Error(), "")
}

// newEngine returns the engine for the plugin configuration c.
func newEngine(ctx context.Context, c *NetConf) (*engine.Engine, error) {
	return system.NewEngine(ctx, system.Options{ConfigDir: c.ConfigDir, StateDir: c.StateDir, Backend: backend.Name(c.Backend), IPTables: c.IPTables})
}

// attachment is what ADD and CHECK learn from prevResult, not yet
// validated, with the key of each value for messages.
type attachment struct {
	result *types100.Result
	// host is the host-side interface: a bridge port or a tap.
	host, hostKey string
	// mac is the container interface's MAC, "" if prevResult has none.
	mac, macKey string
	// ips are the container's addresses.
	ips, ipKeys []string
}

// fromPrevResult interprets prevResult; it is required.
func (p plugin) fromPrevResult(args *skel.CmdArgs, c *NetConf) (*attachment, error) {
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "vmfw: parsing prevResult", err.Error())
	}
	if c.PrevResult == nil {
		return nil, invalid("prevResult is missing: vmfw is a chained plugin, list it after an interface plugin such as bridge")
	}
	res, err := types100.NewResultFromResult(c.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "vmfw: converting prevResult", err.Error())
	}
	a := &attachment{result: res}
	var hosts []int
	container := -1
	for i, ifc := range res.Interfaces {
		if ifc.Sandbox != "" {
			if ifc.Name == args.IfName || container < 0 {
				container = i
			}
			continue
		}
		if ok, err := p.isPort(ifc.Name); err != nil {
			return nil, err
		} else if ok {
			hosts = append(hosts, i)
		}
	}
	switch len(hosts) {
	case 0:
		return nil, invalid("prevResult lists no host-side interface that is a bridge port or a tap")
	case 1:
		a.host = res.Interfaces[hosts[0]].Name
		a.hostKey = fmt.Sprintf("prevResult.interfaces[%d].name", hosts[0])
	default:
		var names []string
		for _, i := range hosts {
			names = append(names, res.Interfaces[i].Name)
		}
		return nil, invalid("prevResult lists several host-side bridge ports or taps (%s); vmfw firewalls one", strings.Join(names, ", "))
	}
	if container >= 0 {
		a.mac = res.Interfaces[container].Mac
		a.macKey = fmt.Sprintf("prevResult.interfaces[%d].mac", container)
	}
	for i, ip := range res.IPs {
		// Addresses of the container's interface, or of no interface
		// (which a result without interfaces may list).
		if ip.Interface != nil && *ip.Interface != container {
			continue
		}
		a.ips = append(a.ips, ip.Address.IP.String())
		a.ipKeys = append(a.ipKeys, fmt.Sprintf("prevResult.ips[%d].address", i))
	}
	return a, nil
}

// isPort reports whether ifname is a bridge port or a tap in the current
// (host) network namespace. An interface that does not exist is neither.
func isPort(ifname string) (bool, error) {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("looking up %s: %w", ifname, err)
	}
	if l.Type() == "tuntap" {
		return true, nil
	}
	if master := l.Attrs().MasterIndex; master != 0 {
		m, err := netlink.LinkByIndex(master)
		if err != nil {
			return false, fmt.Errorf("looking up the master of %s: %w", ifname, err)
		}
		return m.Type() == "bridge", nil
	}
	return false, nil
}

// sameAttachment selects the records of one runtime attachment.
func sameAttachment(c *NetConf, args *skel.CmdArgs) func(*state.Attachment) bool {
	return func(a *state.Attachment) bool {
		return a.Owner == state.CNI && a.Network == c.Name && a.ContainerID == args.ContainerID && a.IfName == args.IfName
	}
}

// prepare gathers what ADD and CHECK work from: the effective settings
// and the attachment the previous plugins made, validated (groups for
// their form: the engine checks they are defined).
func (p plugin) prepare(args *skel.CmdArgs, c *NetConf) (*merged, *attachment, *config.NIC, error) {
	m := c.effective()
	a, err := p.fromPrevResult(args, c)
	if err != nil {
		return nil, nil, nil, err
	}
	nic, err := m.validate(label(c.Name, args.ContainerID), a, nil)
	if err != nil {
		return nil, nil, nil, err
	}
	return m, a, nic, nil
}

// add records and firewalls the attachment (ADD).
func (p plugin) add(ctx context.Context, args *skel.CmdArgs, c *NetConf, e Engine) ([]string, error) {
	m, a, nic, err := p.prepare(args, c)
	if err != nil {
		return nil, err
	}
	rec := &state.Attachment{
		Iface: a.host, Owner: state.CNI,
		Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName,
		Spec: spec(nic),
	}
	// A repeated ADD may have got a new host interface; the old one's
	// record and chains go first.
	recs, err := e.Records(ctx)
	if err != nil {
		return nil, err
	}
	same := sameAttachment(c, args)
	var ifaces []string
	if slices.ContainsFunc(recs, func(r *state.Attachment) bool { return same(r) && r.Iface != a.host }) {
		if ifaces, err = e.DetachWhere(ctx, engine.Selector{Record: func(r *state.Attachment) bool { return same(r) && r.Iface != a.host }}); err != nil {
			return nil, err
		}
	}
	err = e.AttachRecords(ctx, rec)
	// The engine checks what prepare could not, that the groups are
	// defined; its words name the record, these the configuration key.
	var fe *config.FieldError
	if errors.As(err, &fe) {
		return nil, m.invalid(a, fe)
	}
	if err != nil {
		return nil, err
	}
	return append(ifaces, a.host), nil
}

// del removes the attachment. With a configuration that does not load
// it still succeeds as far as it can (the runtime retries a failed DEL and
// keeps the container until one succeeds): the record goes and its
// addresses leave every group, and the next apply removes its chains.
func (p plugin) del(ctx context.Context, args *skel.CmdArgs, c *NetConf, e Engine) ([]string, error) {
	detached, err := e.DetachWhere(ctx, engine.Selector{Record: sameAttachment(c, args)})
	var ce *engine.ConfigError
	var conflict *engine.ConflictError
	if !errors.As(err, &ce) || errors.As(err, &conflict) {
		// The other backend's ruleset is installed: the record stays for
		// the DEL the runtime retries once the host is switched.
		return detached, err
	}
	forgotten, ferr := e.ForgetWhere(ctx, sameAttachment(c, args))
	if ferr != nil {
		return nil, errors.Join(err, ferr)
	}
	if len(forgotten) > 0 {
		fmt.Fprintf(os.Stderr, "vmfw: DEL %s: configuration does not load (%v); removed the attachment record and its group memberships, its chains go with the next successful apply\n",
			strings.Join(forgotten, ", "), err)
	}
	return forgotten, nil
}

// check reports a missing or drifted chain, jump, ipset member or record
// (CHECK).
func (p plugin) check(ctx context.Context, args *skel.CmdArgs, c *NetConf, e Engine) ([]string, error) {
	return nil, p.checkAttachment(ctx, args, c, e)
}

func (p plugin) checkAttachment(ctx context.Context, args *skel.CmdArgs, c *NetConf, e Engine) error {
	_, a, nic, err := p.prepare(args, c)
	if err != nil {
		return err
	}
	rec, err := e.Check(ctx, a.host)
	if err != nil {
		return err
	}
	drift := func(format string, v ...any) error {
		return types.NewError(ErrDrift, "vmfw: "+a.host+": "+fmt.Sprintf(format, v...), "")
	}
	switch {
	case rec == nil:
		return drift("no attachment record (was ADD run?)")
	case !sameAttachment(c, args)(rec):
		return drift("attached for network %q container %s interface %s, not this attachment", rec.Network, rec.ContainerID, rec.IfName)
	case rec.Spec == nil:
		return drift("the attachment record has no settings")
	}
	want := spec(nic)
	want.Name = rec.Spec.Name
	got := rec.Spec
	switch {
	case !slices.Equal(got.Groups, want.Groups):
		return drift("attached with groups [%s], configured [%s]", strings.Join(got.Groups, " "), strings.Join(want.Groups, " "))
	case got.PolicyIn != want.PolicyIn || got.PolicyOut != want.PolicyOut:
		return drift("attached with policies in %s out %s, configured in %s out %s", got.PolicyIn, got.PolicyOut, want.PolicyIn, want.PolicyOut)
	case got.Log != want.Log || got.Antispoof != want.Antispoof || got.AntispoofMACOnly != want.AntispoofMACOnly || got.DHCP != want.DHCP:
		return drift("attached with log=%t antispoof=%s dhcp=%t, configured log=%t antispoof=%s dhcp=%t",
			got.Log, got.AntispoofSetting(), got.DHCP, want.Log, want.AntispoofSetting(), want.DHCP)
	case got.MAC != want.MAC || !slices.Equal(got.IPs, want.IPs):
		return drift("attached for mac %s addresses [%s], prevResult has mac %s addresses [%s]",
			got.MAC, strings.Join(got.IPs, " "), want.MAC, strings.Join(want.IPs, " "))
	}
	return nil
}

// gc removes the network's attachments the runtime does not list as
// valid (GC).
func (p plugin) gc(ctx context.Context, _ *skel.CmdArgs, c *NetConf, e Engine) ([]string, error) {
	valid := map[types.GCAttachment]bool{}
	for _, v := range c.ValidAttachments {
		valid[v] = true
	}
	return e.DetachWhere(ctx, engine.Selector{Record: func(a *state.Attachment) bool {
		return a.Owner == state.CNI && a.Network == c.Name &&
			!valid[types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName}]
	}})
}

// cmdStatus reports, changing nothing, whether ADD could work: the
// configuration loads, iptables and ip6tables of the backend and ipset
// can be read, and bridge netfilter is available.
func cmdStatus(ctx context.Context, _ *skel.CmdArgs, c *NetConf) error {
	unavailable := func(what string, err error) error {
		return types.NewError(types.ErrPluginNotAvailable, "vmfw: "+what+" is unusable", err.Error())
	}
	e, err := newEngine(ctx, c)
	if err != nil {
		return unavailable("iptables", err)
	}
	var ue *engine.UnusableError
	if err := e.Usable(ctx); errors.As(err, &ue) {
		return unavailable(ue.What, ue.Err)
	} else if err != nil {
		return unavailable("vmfw", err)
	}
	if err := bridgeNetfilterAvailable(); err != nil {
		return unavailable("br_netfilter", err)
	}
	return nil
}

// bridgeNetfilterPath exists when br_netfilter serves the current network
// namespace.
const bridgeNetfilterPath = "/proc/sys/net/bridge/bridge-nf-call-iptables"

// bridgeNetfilterAvailable checks that bridged packets can be made to pass
// iptables, loading br_netfilter if it is not loaded (as ADD would).
func bridgeNetfilterAvailable() error {
	if _, err := os.Stat(bridgeNetfilterPath); err == nil {
		return nil
	}
	out, err := exec.Command("modprobe", "br_netfilter").CombinedOutput()
	if _, serr := os.Stat(bridgeNetfilterPath); serr == nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s is missing and modprobe br_netfilter failed: %w: %s", bridgeNetfilterPath, err, strings.TrimSpace(string(out)))
	}
	return fmt.Errorf("%s is missing after loading br_netfilter", bridgeNetfilterPath)
}
