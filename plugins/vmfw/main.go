// Command vmfw applies security groups to virtual machine taps on Linux
// bridges. See README.md; everything but process setup lives in pkg/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/vmfw/vmfw/pkg/cli"
	"github.com/vmfw/vmfw/pkg/cni"
	"github.com/vmfw/vmfw/pkg/trace"
)

func main() {
	if os.Getenv("CNI_COMMAND") != "" {
		cni.Main(cli.Version)
		return
	}
	if cli.OneChange(os.Args) {
		withoutGC()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := trace.StartProfile()
	code := cli.Main(ctx, os.Args, os.Stdout, os.Stderr)
	stopProfile()
	stop()
	os.Exit(code)
}

// oneChangeHeap is the heap at which an ifup or ifdown collects garbage
// after all. One at 5000 taps allocates about 15 MiB in all and ends
// with the same resident size, 32 MB, with or without collections
// (docs/performance.md, "An ifup without the agent: what 2x takes").
const oneChangeHeap = 64 << 20

// withoutGC leaves the garbage collector off for a process that makes
// one change and exits, up to oneChangeHeap: its cycles cost an ifup at
// 5000 taps 3 to 5 ms, and what they free the process never reuses. A
// GOGC or GOMEMLIMIT in the environment is the operator's choice and
// wins.
func withoutGC() {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(oneChangeHeap)
}
