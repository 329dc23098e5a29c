package agent

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vmfw/vmfw/pkg/agent/wire"
)

// TestListenIsRootOnly: the socket is mode 0600 whatever the umask and
// the mode of a run directory that exists, the process's umask is left as
// it was, and nothing else is left in the directory. A live agent's
// socket is not taken over; a stale one is replaced.
func TestListenIsRootOnly(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := syscall.Umask(0); got != 0 {
		t.Errorf("listen left the umask %#o", got)
	}
	path := filepath.Join(dir, wire.SocketName)
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket of 0600", st.Mode())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("the run directory holds %v, want the socket alone", entries)
	}
	if _, err := listen(dir); err == nil || !strings.Contains(err.Error(), "another agent listens") {
		t.Errorf("a second listen beside a live agent: %v", err)
	}

	ln.Close() // the socket stays, as a killed agent leaves it
	ln, err = listen(dir)
	if err != nil {
		t.Fatalf("replacing a stale socket: %v", err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dialling the new socket: %v", err)
	}
	c.Close()
}
