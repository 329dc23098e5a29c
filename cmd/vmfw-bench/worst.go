package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// worstCase measures the nftables backend where its layout costs most: a
// host where every tap lists a group of its own, so that attaching one
// more (with its own group) adds that group's chains and its list's
// chains, and the kernel validates the table, whose size grows with the
// taps (docs/nftables.md, "Ordered groups").
// It records vmfw apply of all n taps and one more tap's ifup and ifdown,
// without the agent.
func worstCase(ctx context.Context, o options, n int, r *agentResults) error {
	progress("worst case, nftables, %d taps: setting up (every tap its own group)", n)
	l, err := newLab(ctx, o, nftablesBackend, n, "vmfwbench-worst-")
	if err != nil {
		return err
	}
	defer l.close()
	for _, sub := range []string{"groups", "vms"} {
		if err := os.MkdirAll(filepath.Join(l.dir, sub), 0o755); err != nil {
			return err
		}
	}
	own := func(id int) string { return fmt.Sprintf("own%d", id) }
	write := func(id, k int) error {
		g := fmt.Sprintf("[[in]]\nproto = \"tcp\"\ndport = \"%d\"\n", 1000+id%50000)
		if err := l.write(filepath.Join("groups", own(id)+".toml"), g); err != nil {
			return err
		}
		return l.write(fmt.Sprintf("vms/%d.toml", id), vmFile(id, k, []string{own(id)}))
	}
	if l.hv, err = newNetns(ctx, "hv"); err != nil {
		return err
	}
	if err := l.probeLinkKind(); err != nil {
		return err
	}
	var batch bytes.Buffer
	for k := range n {
		if err := write(scaleVMID(k), k); err != nil {
			return err
		}
		fmt.Fprintf(&batch, "link add %s type %s\n", tapName(scaleVMID(k)), l.linkKind)
	}
	extra := make([]int, o.runs)
	for i := range extra {
		extra[i] = extraVMID(n, i)
		if err := write(extra[i], -1); err != nil {
			return err
		}
	}
	if batch.Len() > 0 {
		if _, err := l.hv.runIn(ctx, batch.Bytes(), "ip", "-batch", "-"); err != nil {
			return err
		}
	}
	full, _, err := l.vmfw("apply")
	if err != nil {
		return err
	}
	var up, down []time.Duration
	for _, id := range extra {
		if err := l.upDown(tapName(id), &up, &down); err != nil {
			return err
		}
	}
	if err := l.expectNoChanges("after the worst case's rows"); err != nil {
		return err
	}
	add := func(what string, none []time.Duration) {
		r.rows = append(r.rows, agentRow{backend: nftablesBackend, taps: n, what: what, none: none, note: "every tap its own group"})
		progress("worst case, nftables, %d taps: %s: %v", n, what, rounded(none))
	}
	add("worst case: full apply", []time.Duration{full})
	add("worst case: one ifup (new group)", up)
	add("worst case: one ifdown (group goes)", down)
	return nil
}
