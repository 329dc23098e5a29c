// Package rundir owns vmfw's run directory: where every process takes the
// namespace lock (package lock) and where the agent listens (package
// agent/wire). Its default and its mode live here and nowhere else, so
// that whichever process creates it first (a vmfw ifup at boot, the
// agent) creates the same directory. It imports only the standard
// library: vmfw-ifup, which QEMU starts for every tap, uses it.
package rundir

import (
	"cmp"
	"fmt"
	"os"
)

// Default is the run directory when VMFW_RUN_DIR is not set.
const Default = "/run/vmfw"

// Mode is the mode the run directory is created with: root only, since
// the agent's socket is in it and only root may talk to the agent.
const Mode os.FileMode = 0o700

// FromEnv returns $VMFW_RUN_DIR, or Default when it is not set.
func FromEnv() string {
	return cmp.Or(os.Getenv("VMFW_RUN_DIR"), Default)
}

// Ensure creates dir, and any missing parent, with Mode. A directory that
// exists keeps its mode: VMFW_RUN_DIR may name one vmfw does not own, and
// systemd gives /run/vmfw the same mode itself (RuntimeDirectoryMode in
// vmfw-agent.service).
func Ensure(dir string) error {
	if err := os.MkdirAll(dir, Mode); err != nil {
		return fmt.Errorf("creating run directory %s: %w", dir, err)
	}
	return nil
}
