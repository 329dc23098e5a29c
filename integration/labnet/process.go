package labnet

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/vmfw/vmfw/pkg/syncbuf"
)

// Process is a long-running command in a namespace (a vmfw agent, a
// server) whose combined output can be read while it runs.
type Process struct {
	cmd  *exec.Cmd
	out  syncbuf.Buffer
	done chan struct{}
}

// Start runs argv in ns with env added to this process's environment.
// The caller must Stop or Kill it (a test does so in its cleanup).
func Start(ns *NS, env []string, argv ...string) (*Process, error) {
	p := &Process{done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", argv[0], ns.Name, err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Output returns what the process has written so far.
func (p *Process) Output() string { return p.out.String() }

// WaitOutput waits up to timeout until the output contains s n times,
// and reports whether it does.
func (p *Process) WaitOutput(s string, n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for strings.Count(p.Output(), s) < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// Stop sends SIGTERM and waits up to 30 s for the process to exit, then
// kills it; the error says it had to.
func (p *Process) Stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		p.Kill()
		return fmt.Errorf("%s did not exit on SIGTERM", p.cmd.Args[4])
	}
}

// Kill kills the process and waits for it; it is idempotent.
func (p *Process) Kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// Run runs cmd to its end and returns what it wrote to standard output and
// standard error and its exit status. err is set only when the command
// could not run to an exit of its own (not found, killed by its context),
// not for a non-zero status, which the tests compare.
func Run(cmd *exec.Cmd) (stdout, stderr string, code int, err error) {
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.Exited() {
		code, err = exit.ExitCode(), nil
	}
	return o.String(), e.String(), code, err
}
