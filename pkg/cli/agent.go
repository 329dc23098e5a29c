package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/vmfw/vmfw/pkg/agent"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/iptables"
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
	e, err := system.NewEngine(ctx, o)
	if err != nil {
		return err
	}
	a := &agent.Agent{
		ConfigDir: dir,
		RunDir:    agent.RunDirFromEnv(),
		Engine:    e,
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
// configuration directory or backend): the caller then does the work.
func viaAgent(ctx context.Context, op agent.Op, tap, configDir string, backend iptables.Mode) (handled bool, err error) {
	if os.Getenv("VMFW_NO_AGENT") != "" {
		return false, nil
	}
	dir, err := filepath.Abs(configDir)
	if err != nil {
		return false, nil
	}
	resp, err := agent.Call(ctx, agent.RunDirFromEnv(), agent.Request{Op: op, Tap: tap, ConfigDir: dir, IPTables: string(backend)})
	if errors.Is(err, agent.ErrNoAgent) {
		return false, nil
	}
	if err != nil {
		return false, nil
	}
	switch {
	case resp.OK:
		return true, nil
	case resp.Config:
		return true, &engine.ConfigError{Err: errors.New(resp.Error)}
	}
	return true, errors.New(resp.Error)
}
