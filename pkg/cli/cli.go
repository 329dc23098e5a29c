// Package cli implements vmfw's command line: argument parsing, the
// subcommands, and the mapping of errors to exit statuses (0 done, 1 failed
// to apply, 2 bad usage or configuration). The binary's main only calls Main.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/vmfw/vmfw/pkg/agent"
	"github.com/vmfw/vmfw/pkg/backend"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/explain"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/state"
	"github.com/vmfw/vmfw/pkg/system"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// Exit statuses.
const (
	ExitOK     = 0
	ExitFailed = 1
	ExitUsage  = 2
)

const usage = `usage: vmfw [--config-dir DIR] [--state-dir DIR] [--backend iptables|nftables]
            [--iptables nft|legacy] COMMAND [ARGS]
       vmfw --help | --version

commands:
  ifup TAP                  firewall TAP, then attach it to its bridge and set it up
  ifdown TAP                remove TAP's chains and memberships (idempotent)
  apply [--dry-run] [-o json]
                            reconcile the host with the configuration; -o json says what changed
  check [-o json]           validate the configuration, change nothing; -o json also says
                            what an apply would change
  status [TAP] [-o json|prometheus]
                            show what is installed, in sync or drifted, with drop counters
  trace --from X --to Y --proto P [--dport N] [--sport N] [--icmp-type T] [-4|-6]
        [--path bridged|routed] [--mac MAC] [-o json]
                            the path of a flow through vmfw's rules, from the configuration
                            and from the kernel, and its verdict; X and Y are a VM id
                            (110, or 110:1 for net1), a tap, a VM name, an address or
                            "hypervisor"
  log [--group N] [--count N]
                            print the packets vmfw's rules log to NFLOG (log_group in
                            vmfw.toml) as JSON lines, naming tap, VM, group, rule and verdict
  agent [--log-format text|json] [--log-packets]
                            run the agent: enforce edits at once, repair drift, batch ifup/ifdown
  cluster push DIR | pull DIR | status [-o json]
                            cluster mode ([cluster] in vmfw.toml): validate DIR as check does
                            and write it to etcd in one transaction; write the pushed
                            configuration into DIR; list every host, its liveness and revision
  flush [--dry-run] [-o json]
                            remove everything vmfw installed and nothing else
  import proxmox [--node NAME] [--skip-untranslatable] [-o json] SRC DEST
                            translate a Proxmox VE firewall configuration (SRC laid out like
                            /etc/pve) into the new configuration directory DEST
  hook proxmox VMID PHASE   Proxmox VE hookscript: post-start firewalls, post-stop removes
  hook libvirt GUEST OP SUBOP [EXTRA]
                            libvirt qemu hook, domain XML on stdin
  version                   print the version (also --version)
  help                      print this help (also --help)

Invoked as vmfw-ifup / vmfw-ifdown (QEMU script= / downscript=) it runs ifup / ifdown.
The configuration directory defaults to $VMFW_CONFIG_DIR or /etc/vmfw; the
backend to $VMFW_BACKEND, then vmfw.toml's backend, then iptables; the
iptables flavour to $VMFW_IPTABLES or whatever the host's iptables uses; the
state directory (CNI and libvirt attachments) to $VMFW_STATE_DIR or /var/lib/vmfw.
apply switches a host from one backend to the other (the new ruleset is
installed before the old one is removed); ifup, ifdown, the hooks and CNI
refuse to write while the other backend's ruleset is installed; flush removes
both.
Exit status: 0 done, 1 failed to apply, 2 bad usage or configuration.
`

// usageError marks bad command-line usage (exit status 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// Main runs vmfw with args (args[0] is the program name) and returns the
// exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	switch wantsHelp(args) {
	case "help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	case "version":
		fmt.Fprintln(stdout, "vmfw", Version)
		return ExitOK
	}
	err := run(ctx, args, stdout, stderr)
	if err == nil {
		return ExitOK
	}
	var ue *usageError
	var ce *engine.ConfigError
	var fe *config.Error
	var ie *importError
	if errors.As(err, &fe) && !filepath.IsAbs(fe.File) {
		// Name the file as the operator can open it.
		fe.File = filepath.Join(configDirOf(args), fe.File)
	}
	fmt.Fprintln(stderr, "vmfw: "+err.Error())
	switch {
	case errors.As(err, &ue):
		fmt.Fprint(stderr, usage)
		return ExitUsage
	case errors.As(err, &ce), errors.As(err, &fe), errors.As(err, &ie), explain.IsQueryError(err):
		return ExitUsage
	}
	return ExitFailed
}

// wantsHelp reports whether args ask for the help ("help") or the version
// ("version"), which go to standard output with exit status 0 whatever
// else the command line says: "vmfw --help", "vmfw help", "vmfw trace -h",
// "vmfw --version". The hooks' arguments come from libvirt and Proxmox,
// not from a person, and are not looked at.
func wantsHelp(args []string) string {
	if p := filepath.Base(args[0]); p == "vmfw-ifup" || p == "vmfw-ifdown" {
		return ""
	}
	isHelp := func(a string) bool { return a == "-h" || a == "-help" || a == "--help" }
	rest := args[1:]
	i := 0
	for ; i < len(rest) && strings.HasPrefix(rest[i], "-"); i++ {
		switch a := rest[i]; {
		case a == "--":
			return ""
		case isHelp(a):
			return "help"
		case a == "--version" || a == "-version":
			return "version"
		case isValueFlag(a):
			i++
		}
	}
	if i >= len(rest) || rest[i] == "hook" {
		return ""
	}
	if rest[i] == "help" {
		return "help"
	}
	for _, a := range rest[i+1:] {
		if a == "--" {
			return ""
		}
		if isHelp(a) {
			return "help"
		}
	}
	return ""
}

// isValueFlag reports whether a global flag takes the next argument.
func isValueFlag(a string) bool {
	switch a {
	case "--config-dir", "--state-dir", "--iptables", "--backend", "-config-dir", "-state-dir", "-iptables", "-backend":
		return true
	}
	return false
}

// configDirOf returns the configuration directory args select.
func configDirOf(args []string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--config-dir="); ok {
			return v
		}
		if (a == "--config-dir" || a == "-config-dir") && i+1 < len(args) {
			return args[i+1]
		}
	}
	return config.DirFromEnv()
}

// globals are the options before the command.
type globals struct {
	configDir, flavour, chosen, stateDir string
}

// parseGlobals splits args into the options before the command, the
// command and its arguments; vmfw-ifup and vmfw-ifdown (QEMU's scripts,
// argv[0]) are ifup and ifdown.
func parseGlobals(args []string) (g globals, cmd string, rest []string, err error) {
	rest = args[1:]
	switch filepath.Base(args[0]) {
	case "vmfw-ifup":
		rest = append([]string{"ifup"}, rest...)
	case "vmfw-ifdown":
		rest = append([]string{"ifdown"}, rest...)
	}
	fs := flag.NewFlagSet("vmfw", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&g.configDir, "config-dir", config.DirFromEnv(), "configuration directory")
	fs.StringVar(&g.flavour, "iptables", os.Getenv("VMFW_IPTABLES"), "iptables flavour: nft or legacy")
	fs.StringVar(&g.chosen, "backend", "", "backend: iptables or nftables")
	fs.StringVar(&g.stateDir, "state-dir", state.DirFromEnv(), "state directory")
	if err := fs.Parse(rest); err != nil {
		return g, "", nil, &usageError{err.Error()}
	}
	if rest = fs.Args(); len(rest) == 0 {
		return g, "", nil, &usageError{"missing command"}
	}
	return g, rest[0], rest[1:], nil
}

// OneChange reports whether args run ifup or ifdown: a process that
// makes one change of one tap and exits, which its command may run
// without the garbage collector's cycles (plugins/vmfw).
func OneChange(args []string) bool {
	_, cmd, _, err := parseGlobals(args)
	return err == nil && (cmd == "ifup" || cmd == "ifdown")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	g, cmd, rest, err := parseGlobals(args)
	if err != nil {
		return err
	}
	if g.chosen != "" && g.chosen != config.BackendIPTables && g.chosen != config.BackendNFTables {
		return &usageError{fmt.Sprintf("--backend %q: must be iptables or nftables", g.chosen)}
	}
	opts := system.Options{ConfigDir: g.configDir, StateDir: g.stateDir, Backend: backend.Name(g.chosen), IPTables: g.flavour}
	// What a caller of the agent sends: an agent on the other backend
	// refuses it, and the command does the work (or refuses) itself.
	request := func(op agent.Op) agent.Request {
		return agent.Request{Op: op, ConfigDir: g.configDir, StateDir: g.stateDir, Backend: config.ChosenBackend(g.chosen, g.configDir), IPTables: g.flavour}
	}

	newEngine := func() (Engine, error) {
		o := opts
		o.ConfigDir = effectiveConfigDir(g.configDir)
		e, err := system.NewEngine(ctx, o)
		if err != nil {
			return nil, err // not a nil *engine.Engine in an interface
		}
		return e, nil
	}
	switch cmd {
	case "ifup", "ifdown":
		if len(rest) != 1 {
			return &usageError{cmd + " takes exactly one argument, the tap name"}
		}
		// A running agent applies it with the requests of other taps in
		// one transaction; without one, do it here (docs/agent.md).
		req := request(agent.Op(cmd))
		req.Tap = rest[0]
		if handled, err := viaAgent(ctx, req); handled {
			return err
		}
		e, err := newEngine()
		if err != nil {
			return err
		}
		if cmd == "ifup" {
			return e.Attach(ctx, rest[0])
		}
		return e.Detach(ctx, rest[0])
	case "apply", "flush":
		fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		dryRun := fs.Bool("dry-run", false, "print what would change, change nothing")
		format := fs.String("o", "text", "output format: text or json")
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		if *format != "text" && *format != "json" {
			return &usageError{fmt.Sprintf("%s: unknown output format %q (want text or json)", cmd, *format)}
		}
		e, err := newEngine()
		if err != nil {
			return err
		}
		var ch *engine.Change
		if cmd == "apply" {
			ch, err = e.Sync(ctx, *dryRun)
		} else {
			ch, err = e.Flush(ctx, *dryRun)
		}
		if err != nil {
			return err
		}
		switch {
		case *format == "json":
			err = writeJSON(stdout, ch.Report(*dryRun))
		case *dryRun:
			_, err = ch.WriteTo(stdout)
		}
		return err
	case "check":
		return checkCmd(ctx, newEngine, g.configDir, config.ChosenBackend(g.chosen, g.configDir), rest, stdout)
	case "trace":
		return traceCmd(ctx, newEngine, rest, stdout)
	case "log":
		return logCmd(ctx, g.configDir, rest, stdout)
	case "status":
		return status(ctx, newEngine, g.configDir, rest, stdout)
	case "cluster":
		return clusterCmd(ctx, g.configDir, rest, stdout)
	case "agent":
		return agentCmd(ctx, opts, rest, stdout, stderr)
	case "import":
		return importCmd(rest, stdout)
	case "hook":
		return hookCmd(ctx, newEngine, request(""), rest)
	case "version":
		fmt.Fprintln(stdout, "vmfw", Version)
		return nil
	}
	return &usageError{fmt.Sprintf("unknown command %q", cmd)}
}

func parseNoArgs(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return &usageError{fs.Name() + ": " + err.Error()}
	}
	if fs.NArg() != 0 {
		return &usageError{fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

// printUnattributed names every interface whose routed, NATed and
// hypervisor-sent traffic cannot be attributed to it by address, and says
// what is and is not filtered for it (docs/routing.md). These are notices:
// the configuration is valid.
func printUnattributed(w io.Writer, m *config.Model, byPort bool) {
	ids := slices.Sorted(maps.Keys(m.VMs))
	for _, id := range ids {
		for _, n := range m.VMs[id].NICs {
			if a := ruleset.AttributeFor(n, byPort); a != ruleset.Filtered {
				fmt.Fprintf(w, "notice: %s (%s:%d): routed traffic %s: %s\n", n.Tap, n.VM.File, n.Line, a, a.Explain())
			}
		}
	}
}

func status(ctx context.Context, newEngine func() (Engine, error), configDir string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	format := fs.String("o", "text", "output format: text, json or prometheus")
	// Accept the tap before or after -o.
	var tap string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		tap, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return &usageError{"status: " + err.Error()}
	}
	if fs.NArg() > 1 || (fs.NArg() == 1 && tap != "") {
		return &usageError{"status takes at most one tap"}
	}
	if fs.NArg() == 1 {
		tap = fs.Arg(0)
	}
	if *format != "text" && *format != "json" && *format != "prometheus" {
		return &usageError{fmt.Sprintf("status: unknown output format %q (want text, json or prometheus)", *format)}
	}
	e, err := newEngine()
	if err != nil {
		return err
	}
	st, err := e.Status(ctx, tap)
	if err != nil {
		return err
	}
	if tap != "" && len(st.Taps) == 0 {
		return fmt.Errorf("%s: not managed (no chains installed and no configured tap of that name exists)", tap)
	}
	if *format == "prometheus" {
		return agent.WriteStatus(stdout, st)
	}
	if *format == "json" {
		return writeJSON(stdout, st)
	}
	printClusterRevision(stdout, configDir)
	fmt.Fprintf(stdout, "backend: %s (%s)\n", st.Backend, st.Tools)
	for _, w := range st.Warnings {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "base chains: %s", st.Base)
	if len(st.BaseDrifted) > 0 {
		fmt.Fprintf(stdout, " (%s)", strings.Join(st.BaseDrifted, ", "))
	}
	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TAP\tVM\tGROUPS\tIN\tOUT\tROUTED\tSTATE\tDROPPED IN\tDROPPED OUT")
	for _, t := range st.Taps {
		vm := "-"
		if t.VMID != nil {
			vm = fmt.Sprint(*t.VMID)
		}
		if t.VMName != "" {
			vm += " (" + t.VMName + ")"
		}
		groups := strings.Join(t.Groups, ",")
		if groups == "" {
			groups = "-"
		}
		state := t.State
		if len(t.Drifted) > 0 {
			state += ": " + strings.Join(t.Drifted, ",")
		}
		pin, pout := t.PolicyIn, t.PolicyOut
		if !t.Enabled && t.State != engine.StateUnconfigured {
			pin, pout = "disabled", "disabled"
		}
		routed := t.Routed
		if routed == "" {
			routed = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", t.Tap, vm, groups, pin, pout, routed, state, t.DroppedIn, t.DroppedOut)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return printSets(stdout, st.Sets)
}

// printSets prints the address sets of a status: entries, excepts and
// the members of the kernel's sets per family.
func printSets(w io.Writer, sets []engine.SetStatus) error {
	if len(sets) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SET\tENTRIES\tEXCEPT\tKERNEL IPV4\tKERNEL IPV6\tSTATE")
	for _, s := range sets {
		v4, v6 := "-", "-"
		if n, ok := s.Kernel["ipv4"]; ok {
			v4 = fmt.Sprint(n)
		}
		if n, ok := s.Kernel["ipv6"]; ok {
			v6 = fmt.Sprint(n)
		}
		state := s.State
		if len(s.Drifted) > 0 {
			state += ": " + strings.Join(s.Drifted, ", ")
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", s.Name, s.Entries, s.Except, v4, v6, state)
	}
	return tw.Flush()
}
