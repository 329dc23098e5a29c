package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/vmfw/vmfw/pkg/agent"
	"github.com/vmfw/vmfw/pkg/agent/wire"
	"github.com/vmfw/vmfw/pkg/cni"
	"github.com/vmfw/vmfw/pkg/rundir"
	"github.com/vmfw/vmfw/pkg/state"
	"github.com/vmfw/vmfw/pkg/system"
)

// agentCmd runs vmfw agent in the foreground until SIGTERM or SIGINT.
func agentCmd(ctx context.Context, o system.Options, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	format := fs.String("log-format", "text", "log format: text or json")
	packets := fs.Bool("log-packets", false, "print the packets vmfw's rules log to NFLOG (log_group) as JSON lines on standard output")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if *format != "text" && *format != "json" {
		return &usageError{fmt.Sprintf("agent: unknown log format %q (want text or json)", *format)}
	}
	dir, err := filepath.Abs(o.ConfigDir)
	if err != nil {
		return err
	}
	o.ConfigDir = dir
	if o.StateDir == "" {
		o.StateDir = state.DirFromEnv()
	}
	if o.StateDir, err = filepath.Abs(o.StateDir); err != nil {
		return err
	}
	k, backend, err := system.NewKernel(ctx, o)
	if err != nil {
		return err
	}
	a := &agent.Agent{
		ConfigDir: dir,
		StateDir:  o.StateDir,
		RunDir:    rundir.FromEnv(),
		Kernel:    k,
		Backend:   backend,
		Jobs:      map[agent.Op]agent.Job{agent.Hook: hookJob, agent.CNI: cni.Job},
		Log:       agent.NewLogger(stderr, *format == "json"),
		Metrics:   agent.NewMetrics(),
	}
	if *packets {
		a.Packets = stdout
	}
	return a.Run(ctx)
}

// viaAgent hands ifup or ifdown of tap to a running agent. It reports
// handled false when no agent answered (or one would not serve this
// configuration directory, state directory or backend): the caller then
// does the work.
func viaAgent(ctx context.Context, req agent.Request) (handled bool, err error) {
	resp, handled := wire.Try(ctx, req)
	if !handled {
		return false, nil
	}
	return true, agent.ResponseErr(resp)
}
