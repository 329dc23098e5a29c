package leaktest

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// recorder is a testing.TB that keeps what Check reports.
type recorder struct {
	testing.TB
	errors []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// park starts a goroutine that waits in parkedUntil until release is
// closed, and returns once it waits there.
func park(release chan struct{}) {
	started := make(chan struct{})
	go parkedUntil(started, release)
	<-started
}

//go:noinline
func parkedUntil(started, release chan struct{}) {
	close(started)
	<-release
}

// TestCheck: a goroutine running vmfw's code is reported at once, one
// running other code once Patience has passed; one that was running
// before the snapshot is not, nor one of other code that ends while Check
// waits.
func TestCheck(t *testing.T) {
	old := make(chan struct{})
	defer close(old)
	park(old)
	s := Take()

	release := make(chan struct{})
	park(release)
	defer func(p time.Duration) { Patience = p }(Patience)
	Patience = time.Hour // vmfw's own code is not waited for
	r := &recorder{}
	s.Check(r)
	if len(r.errors) != 1 || !strings.Contains(r.errors[0], "1 goroutines") || !strings.Contains(r.errors[0], "leaktest.parkedUntil") {
		t.Fatalf("vmfw's goroutine left running: reported %q", r.errors)
	}

	Patience = 100 * time.Millisecond
	r = &recorder{}
	s.check(r, "example.com/other/")
	if len(r.errors) != 1 || !strings.Contains(r.errors[0], "after 100ms") || !strings.Contains(r.errors[0], "leaktest.parkedUntil") {
		t.Fatalf("another goroutine left running: reported %q", r.errors)
	}

	Patience = 10 * time.Second
	go func() {
		time.Sleep(20 * time.Millisecond)
		close(release)
	}()
	r = &recorder{}
	s.check(r, "example.com/other/")
	if len(r.errors) != 0 {
		t.Fatalf("goroutines that end were reported: %q", r.errors)
	}
}

// TestExitingIsNotLeft: a goroutine dumped in the runtime's exit path has
// returned and is not counted; one still in vmfw's code is.
func TestExitingIsNotLeft(t *testing.T) {
	done := "goroutine 77 [runnable]:\nruntime.goexit1()\n\t/usr/local/go/src/runtime/proc.go:4475 +0x9b\nruntime.goexit({})\n\t/usr/local/go/src/runtime/asm_amd64.s:1772 +0x6\ncreated by github.com/vmfw/vmfw/pkg/agent.startAgentOn in goroutine 76"
	running := "goroutine 78 [chan receive]:\ngithub.com/vmfw/vmfw/pkg/agent.(*Agent).Run(0xc000)\n\t/work/pkg/agent/agent.go:100 +0x1\ncreated by github.com/vmfw/vmfw/pkg/agent.startAgentOn in goroutine 76"
	if !exiting([]byte(done)) {
		t.Error("a goroutine in runtime.goexit1 counted as running")
	}
	if exiting([]byte(running)) {
		t.Error("a goroutine in vmfw's code counted as exiting")
	}
}
