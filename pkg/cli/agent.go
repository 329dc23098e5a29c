package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/vmfw/vmfw/pkg/agent"
	"github.com/vmfw/vmfw/pkg/agent/wire"
	"github.com/vmfw/vmfw/pkg/cni"
	"github.com/vmfw/vmfw/pkg/rundir"
	"github.com/vmfw/vmfw/pkg/state"
	"github.com/vmfw/vmfw/pkg/system"
)

// agentCmd runs vmfw agent in the foreground until ctx is done (SIGTERM or
// SIGINT, plugins/vmfw). What belongs to the process rather than to the
// agent is done here: SIGHUP asks the agent to reload, and systemd hears
// the agent's stages (Type=notify).
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
	o.LongLived = true
	k, err := system.NewKernel(ctx, o)
	if err != nil {
		return err
	}
	log := agent.NewLogger(stderr, *format == "json")
	a := &agent.Agent{
		ConfigDir: dir,
		StateDir:  o.StateDir,
		RunDir:    rundir.FromEnv(),
		Kernel:    k,
		Jobs:      map[agent.Op]agent.Job{agent.Hook: hookJob, agent.CNI: cni.Job},
		Log:       log,
		Metrics:   agent.NewMetrics(),
		Lifecycle: notifySystemd(log),
	}
	if *packets {
		a.Packets = stdout
	}
	defer reloadOnSIGHUP(a, log)()
	return a.Run(ctx)
}

// reloadOnSIGHUP makes SIGHUP reload a (systemctl reload vmfw-agent) until
// the function it returns is called, which returns once SIGHUP no longer
// reaches a. Catching SIGHUP from before Run also keeps one sent during
// the start from killing the process: it is a reload once a is ready.
func reloadOnSIGHUP(a *agent.Agent, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	var forwarding sync.WaitGroup
	forwarding.Go(func() {
		for {
			select {
			case <-hup:
				log.Info("SIGHUP: reloading the configuration")
				a.Reload()
			case <-done:
				return
			}
		}
	})
	return func() {
		signal.Stop(hup)
		close(done)
		forwarding.Wait()
	}
}

// sdStates are the systemd notifications of the agent's stages.
var sdStates = map[agent.Stage]string{agent.Ready: "READY=1", agent.Reloading: "RELOADING=1", agent.Stopping: "STOPPING=1"}

// notifySystemd returns the agent's Lifecycle when systemd started it as
// a Type=notify service (NOTIFY_SOCKET set): each stage is sent as its
// state (sdStates). Without NOTIFY_SOCKET it returns nil.
func notifySystemd(log *slog.Logger) func(agent.Stage) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	return func(s agent.Stage) {
		if err := sdNotify(path, sdStates[s]); err != nil {
			log.Warn("telling systemd", "state", sdStates[s], "error", err.Error())
		}
	}
}

// sdNotify sends state to systemd's notification socket path ("@" starts
// an abstract socket's name).
func sdNotify(path, state string) error {
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
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
