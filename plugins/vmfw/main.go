// Command vmfw applies security groups to virtual machine taps on Linux
// bridges. See README.md; everything but process setup lives in pkg/cli.
package main

import (
	"context"
	"os"
	"os/signal"
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := trace.StartProfile()
	code := cli.Main(ctx, os.Args, os.Stdout, os.Stderr)
	stopProfile()
	stop()
	os.Exit(code)
}
