// Package trace prints where an operation's time goes, to stderr, when
// VMFW_TRACE is set in the environment: each command vmfw runs and each
// step of an operation, with its duration. It costs nothing otherwise.
package trace

import (
	"fmt"
	"os"
	"runtime/pprof"
	"time"
)

// Enabled reports whether VMFW_TRACE is set.
var Enabled = os.Getenv("VMFW_TRACE") != ""

// Since prints how long the step described by format took since start.
func Since(start time.Time, format string, args ...any) {
	if !Enabled {
		return
	}
	fmt.Fprintf(os.Stderr, "vmfw: trace: %8.1f ms  %s\n", float64(time.Since(start).Microseconds())/1000, fmt.Sprintf(format, args...))
}

// Printf prints one line of explanation, such as why an operation took a
// slower path.
func Printf(format string, args ...any) {
	if !Enabled {
		return
	}
	fmt.Fprintf(os.Stderr, "vmfw: trace: %s\n", fmt.Sprintf(format, args...))
}

// StartProfile writes a CPU profile of the process (runtime/pprof) to the
// file VMFW_CPUPROFILE names, when it is set, until the returned function
// is called; `go tool pprof` reads it. Tracing says which step of an
// operation is slow, the profile which code inside it.
func StartProfile() (stop func()) {
	path := os.Getenv("VMFW_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmfw: trace: no CPU profile: %v\n", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintf(os.Stderr, "vmfw: trace: no CPU profile: %v\n", err)
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
