package nftables

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/google/nftables"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

// Watch signals when a transaction committed by another process touched
// vmfw's tables (a foreign "nft flush ruleset" deletes them). It listens
// to nf_tables' netlink notifications, which the kernel sends with the
// generation and the committing process: the agent repairs at once
// instead of at its next drift check (docs/nftables.md, "Repair").
func (b *Backend) Watch(ctx context.Context) (<-chan struct{}, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("opening nf_tables netlink: %w", err)
	}
	mon := nftables.NewMonitor(nftables.WithMonitorObject(nftables.MonitorObjectAny))
	events, err := c.AddGenerationalMonitor(mon)
	if err != nil {
		return nil, fmt.Errorf("watching nf_tables: %w", err)
	}
	out := make(chan struct{}, 1)
	self := uint32(os.Getpid())
	go func() {
		defer close(out)
		defer mon.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-events:
				if !ok {
					return
				}
				if ev.GeneratedBy != nil {
					if g, ok := ev.GeneratedBy.Data.(*nftables.Gen); ok && ownThread(g.ProcPID, self) {
						continue
					}
				}
				if !touchesVMFW(ev.Changes) {
					continue
				}

				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out, nil
}

// ownThread reports whether the committing task tid is a thread of
// process pid: the kernel names the thread (task_pid_nr), and a Go
// program commits from whichever thread runs the goroutine. A thread
// that has already ended cannot be told apart; its commit counts as
// foreign, which costs one repair that changes nothing.
func ownThread(tid, pid uint32) bool {
	if tid == pid {
		return true
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "Tgid:"); ok {
			return strings.TrimSpace(v) == strconv.FormatUint(uint64(pid), 10)
		}
	}
	return false
}

// touchesVMFW reports whether a change is to one of vmfw's tables.
func touchesVMFW(changes []*nftables.MonitorEvent) bool {
	for _, ch := range changes {
		var t *nftables.Table
		switch d := ch.Data.(type) {
		case *nftables.Table:
			t = d
		case *nftables.Chain:
			t = d.Table
		case *nftables.Rule:
			t = d.Table
		case *nftables.Set:
			t = d.Table
		default:
			// Element events do not name their table in the library's
			// decoding; a foreign change of vmfw's elements alone is
			// left to the agent's periodic drift check.
			continue
		}
		if t != nil && t.Name == layout.TableName && (t.Family == nftables.TableFamilyBridge || t.Family == nftables.TableFamilyINet) {
			return true
		}
	}
	return false
}
