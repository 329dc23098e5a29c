// Package trace prints where an operation's time goes, to stderr, when
// VMFW_TRACE is set in the environment: each command vmfw runs and each
// step of an operation, with its duration. It costs nothing otherwise.
package trace

import (
	"fmt"
	"os"
	"runtime"
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
// file VMFW_CPUPROFILE names, and a profile of its allocations to the
// file VMFW_MEMPROFILE names, when they are set, until the returned
// function is called; `go tool pprof` reads them. Tracing says which step
// of an operation is slow, the profiles which code inside it: a process
// that does not collect garbage (vmfw ifup) pays for what it allocates in
// page faults, which the CPU profile does not show.
func StartProfile() (stop func()) {
	stopCPU := startCPUProfile(os.Getenv("VMFW_CPUPROFILE"))
	memPath := os.Getenv("VMFW_MEMPROFILE")
	if memPath != "" {
		runtime.MemProfileRate = 4096
	}
	return func() {
		stopCPU()
		if memPath != "" {
			writeAllocs(memPath)
		}
	}
}

func startCPUProfile(path string) (stop func()) {
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

func writeAllocs(path string) {
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup("allocs").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmfw: trace: no allocation profile: %v\n", err)
	}
}
