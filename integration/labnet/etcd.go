package labnet

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Etcd is an etcd server (Debian's etcd-server, command etcd) running in
// a namespace and listening only there: the store of a cluster lab
// (at CoreAddr in a Cluster's Core). Stop kills it; Start starts it again
// on the same data directory, as a restarted etcd.
type Etcd struct {
	// NS is the namespace it runs in.
	NS *NS
	// URL is its client URL (http://ADDR:2379, or https:// with the
	// TLS files in Args).
	URL string
	// Data is its data directory; the caller removes it.
	Data string
	// Args are added to etcd's command line (TLS, limits).
	Args []string

	mu     sync.Mutex
	out    bytes.Buffer
	cmd    *exec.Cmd
	exited chan struct{}
}

// etcdStartTimeout bounds the wait for "ready to serve client requests".
const etcdStartTimeout = 30 * time.Second

// StartEtcd starts etcd in ns, listening for clients at url (on an
// address of ns, as EtcdURL returns) with its data in dataDir, and waits
// until it serves.
func StartEtcd(ns *NS, url, dataDir string, args ...string) (*Etcd, error) {
	e := &Etcd{NS: ns, URL: url, Data: dataDir, Args: args}
	return e, e.Start()
}

// EtcdURL returns the client URL of an etcd listening on addr, port 2379;
// scheme is http or https.
func EtcdURL(scheme, addr string) string { return scheme + "://" + net.JoinHostPort(addr, "2379") }

// etcdWriter collects etcd's output for Output.
type etcdWriter struct{ e *Etcd }

func (w etcdWriter) Write(p []byte) (int, error) {
	w.e.mu.Lock()
	defer w.e.mu.Unlock()
	return w.e.out.Write(p)
}

// Start starts etcd (again) and waits until it serves clients. etcd is
// killed when the process that started it dies, so that an interrupted
// program leaves no etcd behind.
func (e *Etcd) Start() error {
	// The peer URL is the namespace's loopback: a single-member cluster
	// nothing outside the namespace can reach.
	cmd := exec.Command("ip", append([]string{"netns", "exec", e.NS.Name, "etcd", "--name", "vmfw-lab", "--data-dir", e.Data,
		"--listen-client-urls", e.URL, "--advertise-client-urls", e.URL,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "vmfw-lab=http://127.0.0.1:2380"}, e.Args...)...)
	cmd.Stdout, cmd.Stderr = etcdWriter{e}, etcdWriter{e}
	// ip execs etcd in the same process, which keeps the signal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	exited := make(chan struct{})
	e.mu.Lock()
	e.out.Reset()
	e.cmd, e.exited = cmd, exited
	e.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting etcd in %s: %w", e.NS.Name, err)
	}
	go func() {
		cmd.Wait()
		close(exited)
	}()
	deadline := time.Now().Add(etcdStartTimeout)
	for !strings.Contains(e.Output(), "ready to serve client requests") {
		select {
		case <-exited:
			return fmt.Errorf("etcd in %s exited at start:\n%s", e.NS.Name, e.Output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.Stop()
			return fmt.Errorf("etcd in %s did not serve within %v:\n%s", e.NS.Name, etcdStartTimeout, e.Output())
		}
	}
	return nil
}

// Stop kills etcd and waits for it to exit; a stopped etcd is not an
// error.
func (e *Etcd) Stop() {
	e.mu.Lock()
	cmd, exited := e.cmd, e.exited
	e.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

// Pid returns etcd's process id (ip netns exec becomes etcd).
func (e *Etcd) Pid() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil || e.cmd.Process == nil {
		return 0
	}
	return e.cmd.Process.Pid
}

// Output returns what etcd has printed since it was last started.
func (e *Etcd) Output() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.out.String()
}

// Dial opens a TCP connection to addr from inside the namespace, for
// clients that run in another one (a gRPC dialer: grpc.WithContextDialer).
// The connection belongs to the namespace for its whole life.
func (n *NS) Dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := doValue(n, func() (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "tcp", addr) })
	if err != nil {
		return nil, fmt.Errorf("connecting to %s in %s: %w", addr, n.Name, err)
	}
	return c, nil
}
