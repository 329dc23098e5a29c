package link

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestRetryDump checks the retry policy on its own: interrupted reads are
// repeated and their partial results never returned, other errors are
// returned at once, and a read that never settles ends in an error that
// still says it was interrupted.
func TestRetryDump(t *testing.T) {
	errOther := errors.New("permission denied")
	cases := []struct {
		name      string
		results   []error // what successive reads return
		wantCalls int
		wantErr   error // nil: success with the value of the last read
	}{
		{"clean", []error{nil}, 1, nil},
		{"interrupted twice", []error{netlink.ErrDumpInterrupted, netlink.ErrDumpInterrupted, nil}, 3, nil},
		{"other error", []error{errOther, nil}, 1, errOther},
		{"interrupted then other error", []error{netlink.ErrDumpInterrupted, errOther}, 2, errOther},
		{"never settles", nil, dumpAttempts, netlink.ErrDumpInterrupted},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			calls := 0
			got, err := retryDump(func() ([]string, error) {
				calls++
				var err error = netlink.ErrDumpInterrupted
				if c.results != nil {
					err = c.results[calls-1]
				}
				// Every read returns a result, as the library does with an
				// interrupted dump; only a clean one may come back.
				return []string{fmt.Sprintf("read %d", calls)}, err
			})
			if calls != c.wantCalls {
				t.Errorf("%d reads, want %d", calls, c.wantCalls)
			}
			switch {
			case c.wantErr == nil && err != nil:
				t.Fatalf("error %v, want success", err)
			case c.wantErr == nil:
				if want := fmt.Sprintf("read %d", calls); len(got) != 1 || got[0] != want {
					t.Errorf("result %q, want that of the last read, %q", got, want)
				}
			case !errors.Is(err, c.wantErr):
				t.Errorf("error %v, want one wrapping %v", err, c.wantErr)
			case got != nil && errors.Is(err, netlink.ErrDumpInterrupted):
				t.Errorf("result %q returned with an interrupted read", got)
			}
		})
	}
}

// TestNamesWhileTapsChange lists interfaces while taps are created and
// deleted as fast as the kernel allows, in a network namespace of its own.
// With enough interfaces a listing spans several netlink messages, and an
// interface change between two of them makes the kernel flag the dump as
// interrupted; Names must retry instead of failing or returning the
// partial result. Every listing must hold all the taps that exist
// throughout.
func TestNamesWhileTapsChange(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace and taps")
	}
	const (
		stable   = 200 // taps present during the whole test
		duration = 3 * time.Second
	)
	inNamespace(t, func(ns netns.NsHandle) {
		for i := range stable {
			addTap(t, fmt.Sprintf("stable%d", i))
		}

		// The churn runs on a thread of its own, moved into the test's
		// namespace: a tap is created in the namespace of the thread that
		// opens /dev/net/tun.
		stop := make(chan struct{})
		var churned atomic.Int64
		var wg sync.WaitGroup
		var churnErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			if err := netns.Set(ns); err != nil {
				churnErr = err
				return
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("churn%d", i%4)}, Mode: netlink.TUNTAP_MODE_TAP}
				if err := netlink.LinkAdd(tap); err != nil {
					churnErr = fmt.Errorf("creating %s: %w", tap.Name, err)
					return
				}
				if err := netlink.LinkDel(tap); err != nil {
					churnErr = fmt.Errorf("deleting %s: %w", tap.Name, err)
					return
				}
				churned.Add(1)
			}
		}()

		// Watch the reads behind each Names call: the last one, whose
		// result Names returns, must be one the kernel did not flag, and
		// some calls must have needed more than one read, or the churn did
		// not exercise the retry and the test proves nothing.
		var reads int
		var lastErr error
		linkList = func() ([]netlink.Link, error) {
			links, err := netlink.LinkList()
			reads++
			lastErr = err
			return links, err
		}
		defer func() { linkList = netlink.LinkList }()

		var listings, retried int
		deadline := time.Now().Add(duration)
		for time.Now().Before(deadline) {
			reads = 0
			names, err := Names()
			listings++
			if err != nil {
				t.Errorf("listing %d: %v", listings, err)
				break
			}
			if lastErr != nil {
				t.Errorf("listing %d returned the result of a read that failed: %v", listings, lastErr)
				break
			}
			if reads > 1 {
				retried++
			}
			for i := range stable {
				if n := fmt.Sprintf("stable%d", i); !names[n] {
					t.Errorf("listing %d lacks %s (%d names): a partial result", listings, n, len(names))
					break
				}
			}
		}
		close(stop)
		wg.Wait()
		if churnErr != nil {
			t.Fatalf("churn: %v", churnErr)
		}
		t.Logf("%d listings, %d of them retried; %d taps created and deleted meanwhile", listings, retried, churned.Load())
		if retried == 0 && !t.Failed() {
			t.Errorf("no listing was interrupted: the churn did not exercise the retry")
		}
	})
}

// inNamespace runs f on the calling goroutine's thread moved into a new,
// empty network namespace, and moves the thread back after. The namespace
// disappears with its last thread and handle.
func inNamespace(t *testing.T, f func(netns.NsHandle)) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("current network namespace: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("new network namespace: %v", err)
	}
	defer ns.Close()
	defer func() {
		// A thread left in the test namespace must not run other
		// goroutines: it stays locked and exits with this one.
		if err := netns.Set(orig); err != nil {
			t.Errorf("back to the original network namespace: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	f(ns)
}

// addTap creates a persistent tap in the calling thread's namespace.
func addTap(t *testing.T, name string) {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP}); err != nil {
		t.Fatalf("creating tap %s: %v", name, err)
	}
}
