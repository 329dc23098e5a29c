package agent

import (
	"context"
	"errors"

	"github.com/vmfw/vmfw/pkg/agent/wire"
	"github.com/vmfw/vmfw/pkg/engine"
)

// The protocol and its client side live in package wire, which callers
// that hand a request over (wire.Try) import without the agent and its
// dependencies; these names are the agent's view of it.
type (
	// Op is what a request asks for.
	Op = wire.Op
	// Request is one change an entry point hands to the agent.
	Request = wire.Request
	// Response is the agent's answer to one request.
	Response = wire.Response
)

// The operations the agent takes requests for (see wire).
const (
	Ifup   = wire.Ifup
	Ifdown = wire.Ifdown
	Hook   = wire.Hook
	CNI    = wire.CNI
)

// Job runs one request of an operation other than ifup and ifdown with
// the agent's engine, whose configuration is the agent's model. The
// agent runs jobs one at a time between its batches; the entry points
// that own these operations (the CLI's hooks, the CNI plugin) supply them,
// so the agent runs exactly the code they run without it.
type Job func(ctx context.Context, e *engine.Engine, req Request) (changed []string, err error)

// CodedError is an error that carries a numeric code to the caller (a CNI
// error code); the agent passes Code and Details back in the Response.
type CodedError interface {
	error
	ErrorCode() (code uint, details string)
}

// ResponseErr is the error a caller reports for the agent's answer: nil
// when the change is in the kernel, an *engine.ConfigError (exit status 2)
// when the configuration refused it.
func ResponseErr(r *Response) error {
	switch {
	case r.OK:
		return nil
	case r.Config:
		return &engine.ConfigError{Err: errors.New(r.Error)}
	}
	return errors.New(r.Error)
}
