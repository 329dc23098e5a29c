package labnet

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// VMFWPackage is the import path of the vmfw binary.
const VMFWPackage = "github.com/vmfw/vmfw/plugins/vmfw"

// IsRoot reports whether the process can build labs. When it cannot, it
// prints that the tests described by what are skipped.
func IsRoot(what string) bool {
	if os.Geteuid() == 0 {
		return true
	}
	fmt.Println(what + " need root (network namespaces, iptables); skipping")
	return false
}

// GoBuild builds the Go package pkg into dir/name and returns that path.
func GoBuild(dir, name, pkg string) (string, error) {
	path := filepath.Join(dir, name)
	out, err := exec.Command("go", "build", "-o", path, pkg).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building %s: %v\n%s", pkg, err, out)
	}
	return path, nil
}

// RunWithVMFW runs a test binary's tests that need root and the vmfw
// binary, for TestMain: without root it skips them (returns 0); otherwise
// it sets *bin to $VMFW_BIN, or to a fresh build removed afterwards, and
// returns m's exit code.
func RunWithVMFW(what string, m interface{ Run() int }, bin *string) int {
	if !IsRoot(what) {
		return 0
	}
	if *bin = os.Getenv("VMFW_BIN"); *bin != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "vmfw-bin")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(dir)
	if *bin, err = GoBuild(dir, "vmfw", VMFWPackage); err != nil {
		fmt.Println(err)
		return 1
	}
	return m.Run()
}
