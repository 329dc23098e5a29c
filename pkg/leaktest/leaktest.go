// Package leaktest finds goroutines that code under test started and left
// running. A test takes a Snapshot before it starts what it checks and
// calls Check once that has returned. A goroutine started since that
// still runs vmfw's code was not joined: the call returned before it
// ended, and Check reports it at once. Any other (a library's own, such
// as gRPC's, which end by themselves after a Close) gets a bounded time to
// end. Check fails the test with the stack of each one left.
package leaktest

import (
	"bytes"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// Patience bounds how long Check waits for goroutines to end. It is not a
// measure of speed: a goroutine that has not ended by then is not going
// to.
var Patience = 10 * time.Second

// poll is how often Check looks again while it waits.
const poll = 10 * time.Millisecond

// module starts the name of every function of vmfw's: a goroutine whose
// stack holds one runs vmfw's code, or was started by it.
const module = "github.com/vmfw/vmfw/"

// Snapshot holds the ids of the goroutines that ran when it was taken.
type Snapshot map[uint64]bool

// Take returns the goroutines running now.
func Take() Snapshot {
	s := Snapshot{}
	for _, g := range goroutines() {
		s[g.id] = true
	}
	return s
}

// Check fails t with the stack of every goroutine started after s (other
// than the caller's) that still runs vmfw's code now, or any other code
// after Patience. The test's own goroutines count: it joins them first.
func (s Snapshot) Check(t testing.TB) {
	t.Helper()
	s.check(t, module)
}

// check is Check with the prefix that names the code under test.
func (s Snapshot) check(t testing.TB, prefix string) {
	t.Helper()
	if ours := matching(s.since(), prefix); len(ours) > 0 {
		t.Errorf("%d goroutines still run %s code after it returned:\n\n%s", len(ours), prefix, stacks(ours))
		return
	}
	deadline := time.Now().Add(Patience)
	for {
		left := s.since()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d goroutines still running after %v:\n\n%s", len(left), Patience, stacks(left))
			return
		}
		time.Sleep(poll)
	}
}

// matching returns the goroutines whose stack mentions prefix.
func matching(gs []goroutine, prefix string) []goroutine {
	var out []goroutine
	for _, g := range gs {
		if bytes.Contains(g.stack, []byte(prefix)) {
			out = append(out, g)
		}
	}
	return out
}

// stacks joins the goroutines' stacks for a report.
func stacks(gs []goroutine) []byte {
	var b bytes.Buffer
	for _, g := range gs {
		b.Write(g.stack)
		b.WriteString("\n\n")
	}
	return b.Bytes()
}

// since returns the goroutines running now that s does not hold, leaving
// out the caller's own.
func (s Snapshot) since() []goroutine {
	var out []goroutine
	for i, g := range goroutines() {
		if i > 0 && !s[g.id] { // the first is the caller's
			out = append(out, g)
		}
	}
	return out
}

// goroutine is one entry of a goroutine dump.
type goroutine struct {
	id    uint64
	stack []byte
}

// goroutines returns every goroutine's stack, the caller's first (as
// runtime.Stack writes them).
func goroutines() []goroutine {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []goroutine
	for _, block := range bytes.Split(buf, []byte("\n\n")) {
		// Each block starts "goroutine 17 [chan receive]:".
		fields := bytes.Fields(block)
		if len(fields) < 2 || string(fields[0]) != "goroutine" {
			continue
		}
		id, err := strconv.ParseUint(string(fields[1]), 10, 64)
		if err != nil {
			continue
		}
		if exiting(block) {
			continue
		}
		out = append(out, goroutine{id: id, stack: block})
	}
	return out
}

// exiting reports whether a goroutine's stack shows it past its function,
// in the runtime's exit path: it has returned, and a dump taken a moment
// later would not hold it. Its "created by" line still names vmfw's code
// (a test's "go func() { done <- a.Run(ctx) }()" sends, then ends while
// the receiver already checks), so without this Check reported it as
// left running.
func exiting(stack []byte) bool {
	lines := bytes.SplitN(stack, []byte("\n"), 3)
	return len(lines) >= 2 && bytes.HasPrefix(lines[1], []byte("runtime.goexit"))
}
