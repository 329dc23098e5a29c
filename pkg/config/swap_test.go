package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// swapLoads is how many times each test loads while files change.
const swapLoads = 300

// loadBounded loads dir, failing the test if Load does not return: a
// loader that blocks on a file swapped in under it (a FIFO) would stall
// every ifup.
func loadBounded(t *testing.T, dir string) (*Model, error) {
	t.Helper()
	type result struct {
		m   *Model
		err error
	}
	done := make(chan result, 1)
	go func() {
		m, err := Load(dir)
		done <- result{m, err}
	}()
	select {
	case r := <-done:
		return r.m, r.err
	case <-time.After(30 * time.Second):
		t.Fatal("Load did not return: it blocked on a file replaced during the read")
		return nil, nil
	}
}

// swapper replaces files of a configuration directory in a loop until
// stopped.
type swapper struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

func startSwapping(t *testing.T, fn func(i int)) *swapper {
	s := &swapper{stop: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				return
			default:
			}
			fn(i)
		}
	}()
	t.Cleanup(s.halt)
	return s
}

func (s *swapper) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.wg.Wait()
}

const (
	swapA = "description = \"a\"\n\n[[in]]\nproto = \"tcp\"\ndport = \"22\"\n"
	swapB = "description = \"b\"\n\n[[in]]\nproto = \"udp\"\ndport = \"53\"\n\n[[out]]\naction = \"drop\"\n"
)

// TestLoadWhileFilesAreRenamedOver: editors and configuration management
// replace files by renaming a new version over the old one; a Load at any
// moment then sees one version or the other of each file, whole.
func TestLoadWhileFilesAreRenamedOver(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{
		"groups/web.toml": swapA,
		"vms/110.toml":    vmWith("ips = [\"192.0.2.10\"]\ngroups = [\"web\"]\n"),
	})
	web := filepath.Join(dir, "groups", "web.toml")
	tmp := filepath.Join(dir, "groups", ".web.toml.tmp")
	s := startSwapping(t, func(i int) {
		content := swapA
		if i%2 == 1 {
			content = swapB
		}
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			panic(err)
		}
		if err := os.Rename(tmp, web); err != nil {
			panic(err)
		}
	})
	seen := map[string]int{}
	for range swapLoads {
		m, err := loadBounded(t, dir)
		if err != nil {
			t.Fatalf("Load while renaming whole files: %v", err)
		}
		g := m.Groups["web"]
		switch {
		case g.Description == "a" && len(g.In) == 1 && g.In[0].Proto == "tcp" && len(g.Out) == 0:
		case g.Description == "b" && len(g.In) == 1 && g.In[0].Proto == "udp" && len(g.Out) == 1:
		default:
			t.Fatalf("Load returned a mix of two versions: %+v", g)
		}
		seen[g.Description]++
	}
	s.halt()
	t.Logf("versions seen: %v", seen)
}

// TestLoadWhileFilesAreReplaced: files rewritten in place, deleted,
// replaced by a directory, a FIFO, a symlink out of the directory or an
// oversized file while Load reads them: Load returns, without panicking,
// either a model or a *Error naming a configuration file.
func TestLoadWhileFilesAreReplaced(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "outside.toml")
	if err := os.WriteFile(outside, []byte(swapA), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := configtest.Dir(t, map[string]string{
		"groups/web.toml": swapA,
		"vms/110.toml":    vmWith("ips = [\"192.0.2.10\"]\ngroups = [\"web\"]\n"),
	})
	web := filepath.Join(dir, "groups", "web.toml")
	vmFile := filepath.Join(dir, "vms", "110.toml")
	huge := "#" + strings.Repeat("x", maxFileSize) + "\n"
	replace := func(path string, create func(string) error) {
		tmp := path + ".new"
		os.RemoveAll(tmp)
		if err := create(tmp); err != nil {
			panic(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			// A directory cannot be renamed over a file, nor a file
			// over a directory: remove first.
			os.RemoveAll(path)
			os.Rename(tmp, path)
		}
	}
	writeWith := func(content string) func(string) error {
		return func(p string) error { return os.WriteFile(p, []byte(content), 0o644) }
	}
	steps := []func(){
		func() { // rewritten in place: truncated, then written
			f, err := os.OpenFile(web, os.O_WRONLY|os.O_TRUNC|os.O_CREATE, 0o644)
			if err == nil {
				f.WriteString(swapB[:len(swapB)/2])
				f.WriteString(swapB[len(swapB)/2:])
				f.Close()
			}
		},
		func() { os.Remove(web) },
		func() { replace(web, writeWith(swapA)) },
		func() { replace(web, func(p string) error { return os.Mkdir(p, 0o755) }) },
		func() { replace(web, writeWith(swapB)) },
		func() { replace(web, func(p string) error { return syscall.Mkfifo(p, 0o644) }) },
		func() { replace(web, writeWith(swapA)) },
		func() { replace(web, func(p string) error { return os.Symlink(outside, p) }) },
		func() { replace(web, writeWith(swapB)) },
		func() { replace(vmFile, writeWith(huge)) },
		func() { replace(vmFile, func(p string) error { return syscall.Mkfifo(p, 0o644) }) },
		func() { replace(vmFile, writeWith(vmWith("ips = [\"192.0.2.10\"]\ngroups = [\"web\"]\n"))) },
	}
	s := startSwapping(t, func(i int) { steps[i%len(steps)]() })
	ok, failed := 0, 0
	for range swapLoads {
		m, err := loadBounded(t, dir)
		if err == nil {
			if m.Groups["web"] == nil && m.VMs[110] != nil {
				t.Fatal("Load returned VM 110 without its group web")
			}
			ok++
			continue
		}
		failed++
		var ce *Error
		if !errors.As(err, &ce) {
			t.Fatalf("Load error %v is a %T, want *Error", err, err)
		}
		if !strings.HasPrefix(ce.File, "groups") && !strings.HasPrefix(ce.File, "vms") {
			t.Fatalf("Load error %q does not name a configuration file", err)
		}
	}
	s.halt()
	t.Logf("%d loads succeeded, %d failed cleanly", ok, failed)
}
