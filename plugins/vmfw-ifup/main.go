// Command vmfw-ifup is what QEMU starts for every tap: script= runs it as
// vmfw-ifup TAP when the tap comes up, downscript= (as vmfw-ifdown, a link
// to it) when it goes. It hands the request to the running vmfw agent and
// exits with its answer; when no agent answers, or the command line is any
// other than the one QEMU uses, it becomes vmfw itself (exec), which does
// the work as vmfw ifup / vmfw ifdown always does.
//
// It is a program of its own because a host starting hundreds of VMs at
// once starts hundreds of these: vmfw links the cluster client (etcd,
// gRPC, protobuf), whose package initialisation costs tens of
// milliseconds of CPU per process, and this imports only the protocol
// (docs/agent.md, "vmfw-ifup").
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vmfw/vmfw/pkg/agent/wire"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/state"
)

func main() {
	op := wire.Ifup
	if filepath.Base(os.Args[0]) == "vmfw-ifdown" {
		op = wire.Ifdown
	}
	env := os.Environ()
	if len(os.Args) == 2 && !strings.HasPrefix(os.Args[1], "-") && os.Getenv("VMFW_NO_AGENT") == "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		dir := config.DirFromEnv()
		resp, handled := wire.Try(ctx, wire.Request{
			Op:        op,
			Tap:       os.Args[1],
			ConfigDir: dir,
			StateDir:  state.DirFromEnv(),
			// An agent on the other backend refuses the request; vmfw
			// then does the work, or refuses it, itself.
			Backend:  config.ChosenBackend("", dir),
			IPTables: os.Getenv("VMFW_IPTABLES"),
		})
		interrupted := ctx.Err() != nil
		stop()
		if handled {
			os.Exit(report(resp))
		}
		if interrupted {
			// Told to stop while it waited: vmfw would give up too.
			fmt.Fprintf(os.Stderr, "vmfw: %s %s: interrupted\n", op, os.Args[1])
			os.Exit(1)
		}
		// vmfw would ask the agent again and wait as long again.
		env = append(env, "VMFW_NO_AGENT=1")
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmfw: finding vmfw:", err)
		os.Exit(1)
	}
	vmfw := filepath.Join(filepath.Dir(self), "vmfw")
	// argv[0] keeps the name it was started as: vmfw reads it to know it
	// runs as vmfw-ifup or vmfw-ifdown.
	err = syscall.Exec(vmfw, os.Args, env)
	fmt.Fprintf(os.Stderr, "vmfw: running %s: %v\n", vmfw, err)
	os.Exit(1)
}

// report prints the agent's answer as vmfw would print the error and
// returns vmfw's exit status for it: 2 for a configuration error (nothing
// changed), 1 for any other failure.
func report(resp *wire.Response) int {
	if resp.OK {
		return 0
	}
	fmt.Fprintln(os.Stderr, "vmfw: "+resp.Error)
	if resp.Config {
		return 2
	}
	return 1
}
