package labnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns add` mounts named network namespaces.
const netnsDir = "/run/netns"

// NS is a named network namespace, as listed by `ip netns list`.
//
// An NS returned by a Lab belongs to it: servers, streams and captures
// started in it are stopped by Lab.Close. An NS built by hand (NS{Name: "x"})
// works with every function of this package but nothing tracks what runs in
// it.
type NS struct {
	// Name is the namespace name, the file name under /run/netns.
	Name string

	lab *Lab
}

// AddNS creates the network namespace name; its loopback is down, as in
// any new namespace. Delete removes it.
func AddNS(name string) (*NS, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := run(ctx, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return &NS{Name: name}, nil
}

// FreshNS creates a namespace named ID-suffix, ID being prefix followed
// by nbytes random bytes in hex such that no namespace yet starts with
// "ID-". It returns ID, which the caller's further namespaces start with,
// so that parallel labs and tests, and what killed ones left behind,
// never collide.
func FreshNS(prefix string, nbytes int, suffix string) (id string, ns *NS, err error) {
	for range 16 {
		id = prefix + randHex(nbytes)
		if idInUse(id) {
			continue // a live lab, or one a killed process left behind
		}
		name := id + "-" + suffix
		if ns, err = AddNS(name); err != nil {
			if _, serr := os.Stat(filepath.Join(netnsDir, name)); serr == nil {
				continue // lost a race for the id
			}
			return "", nil, err
		}
		return id, ns, nil
	}
	return "", nil, fmt.Errorf("no free id %s* after 16 tries", prefix)
}

// idInUse reports whether any namespace name starts with id and a dash.
func idInUse(id string) bool {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return false // no namespace yet: ip netns add creates the directory
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id+"-") {
			return true
		}
	}
	return false
}

// Delete deletes the namespace; one that is already gone is not an
// error.
func (n *NS) Delete() error { return delNS(n.Name) }

// delNS deletes a named namespace; one that is already gone is not an error.
func delNS(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := run(ctx, "ip", "netns", "delete", name); err != nil {
		if _, serr := os.Stat(filepath.Join(netnsDir, name)); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("deleting namespace %s: %w", name, err)
	}
	return nil
}

// Path returns the namespace's bind-mount path, /run/netns/NAME.
func (n *NS) Path() string { return filepath.Join(netnsDir, n.Name) }

// String returns the namespace name.
func (n *NS) String() string { return n.Name }

// Exec runs `ip netns exec NAME args...` and returns its combined output.
// The error names the command and carries its output.
func (n *NS) Exec(ctx context.Context, args ...string) ([]byte, error) {
	if n.Name == "" {
		return nil, errors.New("labnet: exec in a namespace without a name")
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("exec in %s: no command", n.Name)
	}
	full := append([]string{"netns", "exec", n.Name}, args...)
	return run(ctx, "ip", full...)
}

// SetHas reports whether the namespace's ipset set lists addr as a
// member (false too when the set cannot be listed).
func (n *NS) SetHas(ctx context.Context, set, addr string) bool {
	out, err := n.Exec(ctx, "ipset", "list", set)
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) == addr {
			return true
		}
	}
	return false
}

// Do runs fn on an OS thread that has entered the namespace, and returns
// fn's error. Sockets fn creates belong to the namespace for their whole
// life and may be used from any goroutine afterwards; goroutines fn starts
// do not run in the namespace.
//
// fn never runs in the caller's namespace: if entering the namespace fails,
// Do returns the error without calling fn. If the thread cannot return to
// its original namespace it is discarded rather than reused. A panic in fn is
// re-raised in the caller's goroutine.
func (n *NS) Do(fn func() error) error {
	if n.Name == "" {
		return errors.New("labnet: Do in a namespace without a name")
	}
	type outcome struct {
		err      error
		panicked bool
		panicVal any
	}
	done := make(chan outcome, 1)
	go func() {
		// The thread is unlocked only after it is back in its original
		// namespace; a goroutine that exits while locked takes its thread
		// with it, so a thread stuck in the lab namespace is never reused.
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- outcome{err: fmt.Errorf("opening current network namespace: %w", err)}
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- outcome{err: fmt.Errorf("opening network namespace %s: %w", n.Name, err)}
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err != nil {
			// setns failed, so the thread is still where it was.
			runtime.UnlockOSThread()
			done <- outcome{err: fmt.Errorf("entering network namespace %s: %w", n.Name, err)}
			return
		}
		var res outcome
		func() {
			defer func() {
				if r := recover(); r != nil {
					res = outcome{panicked: true, panicVal: r}
				}
			}()
			res.err = fn()
		}()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			if res.err == nil && !res.panicked {
				res.err = fmt.Errorf("leaving network namespace %s: %w", n.Name, err)
			}
			done <- res // thread stays locked and dies with the goroutine
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panicked {
		panic(res.panicVal)
	}
	return res.err
}

// doValue runs fn in ns (NS.Do) and returns what it returned.
func doValue[T any](ns *NS, fn func() (T, error)) (T, error) {
	var v T
	err := ns.Do(func() error {
		var err error
		v, err = fn()
		return err
	})
	return v, err
}

// HardwareAddr returns the MAC address of interface ifname in the namespace.
func (n *NS) HardwareAddr(ifname string) (net.HardwareAddr, error) {
	var mac net.HardwareAddr
	err := n.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		mac = ifi.HardwareAddr
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading MAC of %s in %s: %w", ifname, n.Name, err)
	}
	return mac, nil
}

// ifindex returns the index of ifname; it must be called inside Do.
func ifindex(ifname string) (int, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return 0, err
	}
	return ifi.Index, nil
}

// run executes a command and returns its combined output; the error carries
// the command line and the output.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "),
			err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}
