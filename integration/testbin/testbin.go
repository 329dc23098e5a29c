// Package testbin is the TestMain of every integration test package: it
// gives the tests the programs they run, the vmfw binary under test
// ($VMFW_BIN, or built from this source tree) and any other Go command
// they need (the CNI reference plugins), built once per test binary into
// one directory that is removed afterwards. Without root the tests are
// skipped, since every one of them builds network namespaces.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The import paths of vmfw and of vmfw-ifup, the program QEMU runs.
const (
	VMFWPackage     = "github.com/vmfw/vmfw/plugins/vmfw"
	VMFWIfupPackage = "github.com/vmfw/vmfw/plugins/vmfw-ifup"
)

// Set by Main before the tests run.
var (
	// VMFW is the vmfw binary under test: $VMFW_BIN or a fresh build.
	VMFW string
	// Dir holds every program, each under its name: "vmfw" (VMFW, or a
	// link to it), "vmfw-ifup" and "vmfw-ifdown" (which becomes the vmfw
	// beside it when no agent answers) and those Main was asked to build.
	// A CNI client takes it as its plugin directory.
	Dir string
)

// Main runs m's tests, which need root and programs, and exits with
// their status. what names the tests for the message printed when they
// are skipped for want of root. builds maps a program name to the import
// path of the Go command Main builds under that name into Dir.
func Main(m *testing.M, what string, builds map[string]string) {
	if os.Geteuid() != 0 {
		fmt.Println(what + " need root (network namespaces, iptables); skipping")
		os.Exit(0)
	}
	if os.Getenv(HelperEnv) != "" {
		// A test's helper process (see HelperEnv): its parent has the
		// programs already.
		os.Exit(m.Run())
	}
	os.Exit(run(m, builds))
}

// HelperEnv, set in a test binary's environment, makes Main run the tests
// without building or linking anything: a test runs its own binary as a
// helper process (with -test.run naming the helper) this way.
const HelperEnv = "VMFW_TEST_HELPER"

func run(m *testing.M, builds map[string]string) int {
	dir, err := os.MkdirTemp("", "vmfw-bin")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(dir)
	Dir = dir
	all := map[string]string{}
	for name, pkg := range builds {
		all[name] = pkg
	}
	if VMFW = os.Getenv("VMFW_BIN"); VMFW != "" {
		// The vmfw-ifup installed beside it, which execs the vmfw there.
		links := map[string]string{"vmfw": VMFW, "vmfw-ifup": filepath.Join(filepath.Dir(VMFW), "vmfw-ifup")}
		for name, target := range links {
			if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
				fmt.Println(err)
				return 1
			}
		}
	} else {
		all["vmfw"] = VMFWPackage
		all["vmfw-ifup"] = VMFWIfupPackage
		VMFW = filepath.Join(dir, "vmfw")
	}
	if err := os.Symlink("vmfw-ifup", filepath.Join(dir, "vmfw-ifdown")); err != nil {
		fmt.Println(err)
		return 1
	}
	for name, pkg := range all {
		if err := build(filepath.Join(dir, name), pkg); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	return m.Run()
}

// build builds the Go command pkg into path.
func build(path, pkg string) error {
	out, err := exec.Command("go", "build", "-o", path, pkg).CombinedOutput()
	if err != nil {
		return fmt.Errorf("building %s: %v\n%s", pkg, err, out)
	}
	return nil
}
