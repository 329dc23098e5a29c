package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmfw/vmfw/pkg/agent/wire"
	"github.com/vmfw/vmfw/pkg/cluster"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/leaktest"
	"github.com/vmfw/vmfw/pkg/syncbuf"
)

// netnsParent, set in a copy of the test binary, is the network namespace
// of the test that started it (its inode); see inOwnNetns.
const netnsParent = "VMFW_TEST_NETNS_PARENT"

// wait bounds every wait of these tests for something the agent does on
// its own: far more than it needs, so that a failure means it never does.
const wait = 30 * time.Second

// inOwnNetns runs the calling test in a copy of the test binary started
// in a new network namespace and reports true in that copy, which then
// runs the test. In the test that started it, it reports false once the
// copy has passed, or fails with its output. A process of its own, since
// the agent's goroutines move between threads and one thread's namespace
// would not hold them: nothing the agent does can reach the namespace the
// tests were started in.
func inOwnNetns(t *testing.T) bool {
	t.Helper()
	mine, err := netnsInode()
	if err != nil {
		t.Fatal(err)
	}
	if parent := os.Getenv(netnsParent); parent != "" {
		if parent == mine {
			t.Fatal("the copy runs in its parent's network namespace")
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace of its own")
	}
	for _, tool := range []string{"iptables-nft", "ipset", "ebtables", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), netnsParent+"="+mine)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in a network namespace of its own: %v\n%s", err, out)
	}
	return false
}

// netnsInode identifies this process's network namespace.
func netnsInode() (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		return "", err
	}
	return fmt.Sprint(st.Ino), nil
}

// notifications listens where the agent sends systemd's notifications
// (NOTIFY_SOCKET) and returns a function that reads the next one.
func notifications(t *testing.T) (next func() string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return func() string {
		t.Helper()
		buf := make([]byte, 256)
		conn.SetReadDeadline(time.Now().Add(wait))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("waiting for a notification: %v", err)
		}
		return string(buf[:n])
	}
}

// agentRun is one vmfw agent the test runs in its own goroutine.
type agentRun struct {
	t      *testing.T
	cancel context.CancelFunc
	done   sync.WaitGroup
	code   int
	log    syncbuf.Buffer
}

// startAgent runs vmfw agent on configDir until stop.
func startAgent(t *testing.T, configDir string) *agentRun {
	ctx, cancel := context.WithCancel(context.Background())
	r := &agentRun{t: t, cancel: cancel}
	r.done.Go(func() {
		r.code = Main(ctx, []string{"vmfw", "--iptables", "nft", "--config-dir", configDir, "agent"}, io.Discard, &r.log)
	})
	return r
}

// stop ends the agent as SIGTERM does and returns once Main has.
func (r *agentRun) stop() {
	r.cancel()
	r.done.Wait()
	if r.code != ExitOK {
		r.t.Errorf("vmfw agent exited %d:\n%s", r.code, r.log.String())
	}
}

// waitLog waits until the agent's log holds s.
func (r *agentRun) waitLog(s string) {
	r.t.Helper()
	deadline := time.Now().Add(wait)
	for !strings.Contains(r.log.String(), s) {
		if time.Now().After(deadline) {
			r.t.Fatalf("the agent never logged %q:\n%s", s, r.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// beforeAgent prepares the process for an agent started by the test: its
// run and state directories, and the goroutine that forwards caught
// signals, which the runtime starts at the first signal.Notify and keeps
// for the life of the process. It returns the run directory.
func beforeAgent(t *testing.T) string {
	t.Helper()
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	runDir := filepath.Join(t.TempDir(), "run")
	t.Setenv("VMFW_RUN_DIR", runDir)
	t.Setenv("VMFW_STATE_DIR", t.TempDir())
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	signal.Stop(c)
	return runDir
}

// scrape fetches /metrics from the agent; the client keeps no
// connection, so nothing of it outlives the call.
func scrape(t *testing.T) string {
	t.Helper()
	client := &http.Client{Timeout: wait, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := client.Get("http://127.0.0.1:9469/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s, %v", res.Status, err)
	}
	return string(body)
}

// TestAgentCommand: vmfw agent tells systemd it is ready once its socket
// (0600, in a 0700 run directory it created) answers, serves /metrics,
// reloads on SIGHUP between RELOADING=1 and READY=1, and when its context
// ends (SIGTERM) says STOPPING=1, removes its socket and returns only
// after every goroutine it started has ended.
func TestAgentCommand(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	runDir := beforeAgent(t)
	dir := configDir(t, map[string]string{"vmfw.toml": "metrics_listen = \"127.0.0.1:9469\"\n"})
	next := notifications(t)
	before := leaktest.Take()

	r := startAgent(t, dir)
	if got := next(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	for path, want := range map[string]os.FileMode{runDir: os.ModeDir | 0o700, filepath.Join(runDir, wire.SocketName): os.ModeSocket | 0o600} {
		if st, err := os.Stat(path); err != nil || st.Mode() != want {
			t.Errorf("%s: %v, %v; want %v", path, st, err, want)
		}
	}
	resp, err := wire.Call(context.Background(), runDir, wire.Request{Op: wire.Ifup, Tap: "tap999i0", ConfigDir: dir})
	if err != nil || resp.Batch != 1 {
		t.Errorf("ifup through the socket: %+v, %v", resp, err)
	}
	if body := scrape(t); !strings.Contains(body, "vmfw_requests_total 1") {
		t.Errorf("/metrics does not count the request:\n%s", body)
	}

	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"RELOADING=1", "READY=1"} {
		if got := next(); got != want {
			t.Fatalf("after SIGHUP: %q, want %q", got, want)
		}
	}
	r.waitLog("SIGHUP: reloading the configuration")

	r.stop()
	if got := next(); got != "STOPPING=1" {
		t.Errorf("last notification %q, want STOPPING=1", got)
	}
	if _, err := os.Stat(filepath.Join(runDir, wire.SocketName)); !os.IsNotExist(err) {
		t.Errorf("the socket outlives the agent: %v", err)
	}
	before.Check(t)
}

// startEtcd runs etcd on the namespace's loopback until the test ends.
func startEtcd(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("etcd is not installed (Debian package etcd-server)")
	}
	url := "http://127.0.0.1:2379"
	out, err := os.Create(filepath.Join(t.TempDir(), "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	// Its output goes to a file, not a pipe: a pipe would need a
	// goroutine of the test's to copy it, which the leak check would see.
	cmd := exec.Command("etcd", "--name", "t", "--data-dir", t.TempDir(),
		"--listen-client-urls", url, "--advertise-client-urls", url,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "t=http://127.0.0.1:2380")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(wait)
	for {
		b, _ := os.ReadFile(out.Name())
		if bytes.Contains(b, []byte("ready to serve client requests")) {
			return url
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not serve:\n%s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAgentCommandCluster: in cluster mode too, the agent returns only
// after every goroutine it started has ended, its cluster node's and the
// etcd client's included, once it has enforced the pushed configuration
// and published under its lease.
func TestAgentCommandCluster(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	beforeAgent(t)
	url := startEtcd(t)
	local := &config.Cluster{Endpoints: []string{url}, Host: "hv1", Prefix: config.DefaultClusterPrefix, LeaseTTL: 2 * time.Second, CacheDir: t.TempDir()}
	dir := configDir(t, map[string]string{"vmfw.toml": fmt.Sprintf("[cluster]\nendpoints = [%q]\nhost = %q\nlease_ttl = \"2s\"\ncache_dir = %q\n", url, local.Host, local.CacheDir)})
	cli, err := cluster.Dial(local, true)
	if err != nil {
		t.Fatal(err)
	}
	pushed := configDir(t, map[string]string{"vmfw.toml": "repair_interval = \"5s\"\n", "groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n"})
	_, err = cluster.Push(context.Background(), cli, cluster.Keys{Prefix: local.Prefix}, pushed, "test")
	cli.Close()
	if err != nil {
		t.Fatal(err)
	}
	next := notifications(t)
	before := leaktest.Take()

	r := startAgent(t, dir)
	if got := next(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	r.waitLog("cluster lease granted")
	r.waitLog("groups=1")
	r.stop()
	before.Check(t)
}
