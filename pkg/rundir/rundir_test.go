package rundir

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestFromEnv: $VMFW_RUN_DIR when set, the default otherwise.
func TestFromEnv(t *testing.T) {
	t.Setenv("VMFW_RUN_DIR", "")
	if got := FromEnv(); got != Default {
		t.Errorf("unset: %q, want %q", got, Default)
	}
	t.Setenv("VMFW_RUN_DIR", "/tmp/x")
	if got := FromEnv(); got != "/tmp/x" {
		t.Errorf("set: %q, want /tmp/x", got)
	}
}

// TestEnsureIsRootOnly: the directory and the parents Ensure creates are
// 0700 whatever the umask lets through; a directory that exists keeps
// its mode.
func TestEnsureIsRootOnly(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	base := t.TempDir()
	dir := filepath.Join(base, "a", "run")
	if err := Ensure(dir); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Join(base, "a"), dir} {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want 0700", d, st.Mode().Perm())
		}
	}
	shared := filepath.Join(base, "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(shared); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(shared)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o755 {
		t.Errorf("an existing directory: mode %v, want its 0755 kept", st.Mode().Perm())
	}
}
