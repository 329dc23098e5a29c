package cni

import (
	"context"
	"errors"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmfw/vmfw/pkg/agent"
	"github.com/vmfw/vmfw/pkg/agent/wire"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/engine"
	"github.com/vmfw/vmfw/pkg/state"
)

// The CNI variables a command reads, carried to the agent as they were
// set for the plugin.
const (
	envCommand     = "CNI_COMMAND"
	envContainerID = "CNI_CONTAINERID"
	envNetns       = "CNI_NETNS"
	envIfName      = "CNI_IFNAME"
	envArgs        = "CNI_ARGS"
	envPath        = "CNI_PATH"
)

// viaAgent hands the command to a running agent serving the same
// configuration directory, state directory and backend (docs/agent.md).
// It reports handled false when none answered: the plugin then runs the
// command itself. The error is the agent's CNI error.
func viaAgent(ctx context.Context, command string, args *skel.CmdArgs, c *NetConf) (handled bool, err error) {
	req := agent.Request{
		Op:        agent.CNI,
		ConfigDir: c.ConfigDir,
		StateDir:  c.StateDir,
		IPTables:  c.IPTables,
		Env: map[string]string{
			envCommand:     command,
			envContainerID: args.ContainerID,
			envNetns:       args.Netns,
			envIfName:      args.IfName,
			envArgs:        args.Args,
			envPath:        args.Path,
		},
		Stdin: args.StdinData,
	}
	if req.ConfigDir == "" {
		req.ConfigDir = config.DirFromEnv()
	}
	if req.StateDir == "" {
		req.StateDir = state.DirFromEnv()
	}
	req.Backend = config.ChosenBackend(c.Backend, req.ConfigDir)
	resp, handled := wire.Try(ctx, req)
	if !handled {
		return false, nil
	}
	if resp.OK {
		return true, nil
	}
	code := resp.Code
	if code == 0 {
		code = ErrApply
	}
	return true, types.NewError(code, resp.Error, resp.Details)
}

// Job runs a CNI request in the agent with the agent's engine, exactly as
// the plugin would run it itself. It returns the host interfaces the
// command attached or detached; the error carries the CNI error code.
func Job(ctx context.Context, e *engine.Engine, req agent.Request) ([]string, error) {
	command := req.Env[envCommand]
	fn := commands[command]
	if fn == nil {
		return nil, codedError{invalid("CNI_COMMAND %q is not one the agent runs", command)}
	}
	c, err := parseConf(req.Stdin)
	if err != nil {
		return nil, asCoded(err)
	}
	args := &skel.CmdArgs{
		ContainerID: req.Env[envContainerID],
		Netns:       req.Env[envNetns],
		IfName:      req.Env[envIfName],
		Args:        req.Env[envArgs],
		Path:        req.Env[envPath],
		StdinData:   req.Stdin,
	}
	ifaces, err := fn(onHost, ctx, args, c, e)
	if err != nil {
		return nil, asCoded(cniError(err))
	}
	return ifaces, nil
}

// codedError carries a CNI error through the agent: its message and
// details travel apart, as the plugin prints them.
type codedError struct{ err *types.Error }

func (e codedError) Error() string                      { return e.err.Msg }
func (e codedError) ErrorCode() (code uint, det string) { return e.err.Code, e.err.Details }
func (e codedError) Unwrap() error                      { return e.err }

var _ agent.CodedError = codedError{}

// asCoded wraps a CNI error for the agent; others pass unchanged.
func asCoded(err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return codedError{te}
	}
	return err
}
