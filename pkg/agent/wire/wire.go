// Package wire is the protocol on the agent's socket and its client side:
// what ifup, ifdown, the hooks and the CNI plugin send to a running vmfw
// agent (package agent) and what it answers. It imports nothing of vmfw's
// engine, so a caller that only hands a request over (vmfw-ifup, which
// QEMU starts for every tap) starts in a few milliseconds
// (docs/agent.md, "vmfw-ifup").
package wire

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/rundir"
)

// The protocol on the agent's socket is one JSON request line from the
// caller and one JSON response line from the agent, then the connection
// closes. It is local and root-only: the socket file is mode 0600 in a
// 0700 directory, and both ends check the other's credentials and network
// namespace (an agent firewalls its own namespace only, and tests run many
// hypervisor namespaces on one machine).

// Op is what a request asks for.
type Op string

// The operations the agent takes requests for.
const (
	// Ifup firewalls a tap and attaches it to its bridge (vmfw ifup).
	Ifup Op = "ifup"
	// Ifdown removes a tap's chains and memberships (vmfw ifdown).
	Ifdown Op = "ifdown"
	// Hook runs a hypervisor hook (vmfw hook proxmox|libvirt ...) with
	// Args and, for libvirt, the domain XML in Stdin.
	Hook Op = "hook"
	// CNI runs the CNI plugin's command: Env holds the CNI_* variables,
	// Stdin the network configuration.
	CNI Op = "cni"
)

// Request is one change an entry point hands to the agent.
type Request struct {
	Op Op `json:"op"`
	// Tap is the tap of ifup and ifdown; jobs leave it empty.
	Tap string `json:"tap,omitempty"`
	// ConfigDir is the caller's configuration directory, absolute; an
	// agent watching another one refuses the request.
	ConfigDir string `json:"config_dir"`
	// Backend is the backend the caller chose (--backend,
	// $VMFW_BACKEND, vmfw.toml, iptables: "iptables" or "nftables"; ""
	// from a caller that predates the choice); an agent on the other
	// backend refuses the request.
	Backend string `json:"backend,omitempty"`
	// IPTables is the iptables flavour the caller was told to use ("" for
	// the host's); an iptables agent of the other flavour refuses the
	// request.
	IPTables string `json:"iptables,omitempty"`
	// StateDir is the caller's state directory (attachment records),
	// absolute; an agent keeping records elsewhere refuses the request.
	StateDir string `json:"state_dir,omitempty"`
	// Args are a hook's arguments.
	Args []string `json:"args,omitempty"`
	// Env holds the environment a job reads (the CNI_* variables).
	Env map[string]string `json:"env,omitempty"`
	// Stdin is what the caller read from its standard input.
	Stdin []byte `json:"stdin,omitempty"`
}

// Response is the agent's answer to one request.
type Response struct {
	// OK is true when the change is in the kernel.
	OK bool `json:"ok"`
	// Error says why not.
	Error string `json:"error,omitempty"`
	// Config is true when the error is in the configuration (exit
	// status 2: nothing changed).
	Config bool `json:"config,omitempty"`
	// Batch is how many requests were applied in the same transaction.
	Batch int `json:"batch,omitempty"`
	// Refused is true when the agent will not serve the request (another
	// configuration directory or backend): the caller does the work.
	Refused bool `json:"refused,omitempty"`
	// Code and Details are a CodedError's (a CNI error code), 0 and ""
	// for other errors.
	Code    uint   `json:"code,omitempty"`
	Details string `json:"details,omitempty"`
}

// SocketName is the agent's socket in the run directory.
const SocketName = "agent.sock"

// ErrNoAgent means no agent answered: the caller does the work itself.
var ErrNoAgent = errors.New("no agent answered")

// Timeouts of a call. The dial is local and answers at once when an agent
// listens; the reply waits for the batch the request joins, which at
// thousands of taps takes seconds, but a caller must never hang: past
// ReplyTimeout it does the work itself, which is safe because every
// operation is idempotent and serialised by the namespace lock.
var (
	DialTimeout  = time.Second
	ReplyTimeout = 2 * time.Minute
)

// Call hands req to the agent listening in runDir and returns its
// response. Any failure to get one (no socket, nobody listening, an agent
// of another network namespace, a timeout, a broken answer) is wrapped in
// ErrNoAgent.
func Call(ctx context.Context, runDir string, req Request) (*Response, error) {
	path := filepath.Join(runDir, SocketName)
	d := net.Dialer{Timeout: DialTimeout}
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoAgent, err)
	}
	defer conn.Close()
	uc := conn.(*net.UnixConn)
	if err := CheckPeer(uc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoAgent, err)
	}
	deadline := time.Now().Add(ReplyTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoAgent, err)
	}
	// The connection's I/O does not watch ctx: a caller stopped while it
	// waits for its batch (SIGTERM) must not wait out ReplyTimeout.
	defer context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })()
	line, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(append(line, '\n')); err != nil {
		return nil, fmt.Errorf("%w: sending the request: %v", ErrNoAgent, err)
	}
	reply, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("%w: waiting for the answer: %v", ErrNoAgent, err)
	}
	var resp Response
	if err := json.Unmarshal(reply, &resp); err != nil {
		return nil, fmt.Errorf("%w: malformed answer %q: %v", ErrNoAgent, reply, err)
	}
	if resp.Refused {
		return nil, fmt.Errorf("%w: %s", ErrNoAgent, resp.Error)
	}
	return &resp, nil
}

// CheckPeer refuses a peer that is not root or lives in another network
// namespace than this process.
func CheckPeer(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("reading peer credentials: %w", cerr)
	}
	if cred.Uid != 0 {
		return fmt.Errorf("peer runs as uid %d, not root", cred.Uid)
	}
	mine, err := netnsID("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	theirs, err := netnsID(fmt.Sprintf("/proc/%d/ns/net", cred.Pid))
	if err != nil {
		return fmt.Errorf("peer's network namespace: %w", err)
	}
	if mine != theirs {
		return errors.New("peer is in another network namespace")
	}
	return nil
}

// netnsID identifies a network namespace by the device and inode of its
// nsfs file.
func netnsID(path string) ([2]uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return [2]uint64{}, err
	}
	return [2]uint64{st.Dev, st.Ino}, nil
}

// Try hands req to the agent of this network namespace, filling in the
// absolute configuration and state directories. It reports handled false
// when the caller must do the work itself: VMFW_NO_AGENT is set, no agent
// answered, or the agent serves another configuration directory, state
// directory or backend (docs/agent.md, "Fallback"). When handled, resp is
// the agent's answer, which says whether the work succeeded.
func Try(ctx context.Context, req Request) (resp *Response, handled bool) {
	if os.Getenv("VMFW_NO_AGENT") != "" {
		return nil, false
	}
	var err error
	if req.ConfigDir, err = filepath.Abs(req.ConfigDir); err != nil {
		return nil, false
	}
	if req.StateDir != "" {
		if req.StateDir, err = filepath.Abs(req.StateDir); err != nil {
			return nil, false
		}
	}
	resp, err = Call(ctx, rundir.FromEnv(), req)
	if err != nil {
		return nil, false
	}
	return resp, true
}
