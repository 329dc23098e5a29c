package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// The sets part (--parts sets): what an address set of 100,000 entries
// (a blocklist) costs, against the targets of docs/performance.md
// ("Address sets"):
//
//   - loading it: vmfw apply of a group edit that makes a rule refer to
//     it, so the set is created and filled (at most 1 s);
//   - one entry of it changed, from the file renamed into sets/ until the
//     kernel's set holds the change, through a running agent (at most
//     50 ms) and with vmfw apply after the edit;
//   - new UDP flows per second between two VMs through a rule on the
//     set, against the same rule on a set of one entry (at least 95%).
//
// It runs in a lab of its own with no scale taps: a set's costs do not
// depend on them (its rules are one group's chain, its edits write no
// chain). The set is IPv6, in 2001:db8::/32 like every address the bench
// uses, and the flows are IPv6 too, so that the rule looks each packet up
// in the 100,000-entry set.

const (
	bigSetSize = 100000
	// toggled is the entry the edits add and remove; no other entry of
	// the set contains it.
	toggled = "2001:db8:c000::1"
	// setEdits is how many one-entry edits the agent row makes.
	setEdits = 20
	// idleAfterEdit is how long the agent row waits after the agent logs
	// an edit's apply, for what may follow it: on nf_tables a read of the
	// sets (Mark) when the edit could not be planned from the set's
	// configuration.
	idleAfterEdit = 500 * time.Millisecond
)

// setRow is one line of the sets table.
type setRow struct {
	backend, what, result, target, met string
}

// setResults are the sets part's rows and notes.
type setResults struct {
	rows  []setRow
	notes []string
}

// bigSetFile renders the 100,000-entry set, with the toggled entry or
// without: single addresses and /64 networks in turn, with a /65 carved
// out of every hundredth network, as a generated blocklist looks.
func bigSetFile(withToggled bool) string {
	entries, except := configtest.Blocklist(bigSetSize)
	if withToggled {
		entries = append(entries, toggled)
	}
	return configtest.SetFile("bench: a blocklist", entries, except)
}

// setGroup renders the data VMs' group with a first rule dropping UDP
// from the addresses of set (none: no such rule). The data VMs' addresses
// are in neither set, so every probe is looked up in the set and passes.
func setGroup(set string) string {
	if set == "" {
		return benchGroup
	}
	return fmt.Sprintf("[[in]]\nproto = \"udp\"\nsource_set = %q\naction = \"drop\"\ncomment = \"blocklist\"\n", set) +
		strings.TrimPrefix(benchGroup, `description = "data-plane probes"`)
}

// setsPart measures the sets rows for every backend.
// A backend that refuses a rule on an address set (the nftables backend,
// so far) has no set rows; the table says so instead of the part failing
// for every backend.
func setsPart(ctx context.Context, o options, r *setResults) error {
	for _, backend := range o.backends {
		err := setsLab(ctx, o, backend, r)
		if err != nil && strings.Contains(err.Error(), "does not lay out address sets") {
			r.notes = append(r.notes, backend+": no rows, the backend does not lay out address sets")
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %w", backend, err)
		}
	}
	return nil
}

func setsLab(ctx context.Context, o options, backend string, r *setResults) error {
	progress("%s: address sets: setting up", backend)
	l, err := newLab(ctx, o, backend, 0, "vmfwbench-sets-")
	if err != nil {
		return err
	}
	defer l.close()
	if err := writeScenario(l.dir, 0, 0); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(l.dir, "sets"), 0o755); err != nil {
		return err
	}
	for rel, text := range map[string]string{
		"sets/big.toml": bigSetFile(false),
		"sets/one.toml": "entries = [\"2001:db8:a000::1\"]\n",
	} {
		if err := l.write(rel, text); err != nil {
			return err
		}
	}
	if err := l.start(); err != nil {
		return err
	}
	vms, removeVMs, err := addDataVMs(ctx, l.hv)
	if err != nil {
		return err
	}
	defer removeVMs()
	for i, v := range dataVMs {
		if _, err := vms[i].run(ctx, "ip", "addr", "add", dataV6(0, i)+"/64", "dev", "eth0", "nodad"); err != nil {
			return err
		}
		if _, _, err := l.vmfw("ifup", tapName(v.vmid)); err != nil {
			return err
		}
	}

	// Loading: a group edit makes a rule refer to the set.
	var loads []time.Duration
	for range o.runs {
		if err := l.write("groups/bench.toml", setGroup("big")); err != nil {
			return err
		}
		took, out, err := l.vmfw("apply")
		if err != nil {
			return fmt.Errorf("loading the set: %w: %s", err, out)
		}
		loads = append(loads, took)
		if n, err := setMembers(l, "as-big-v6"); err != nil || n < bigSetSize*9/10 {
			return fmt.Errorf("after the load the kernel set holds %d members (%v), want about %d", n, err, bigSetSize)
		}
		if err := l.write("groups/bench.toml", setGroup("")); err != nil {
			return err
		}
		if _, out, err := l.vmfw("apply"); err != nil {
			return fmt.Errorf("unloading the set: %w: %s", err, out)
		}
	}
	progress("%s: load %v", backend, rounded(loads))
	r.rows = append(r.rows, setRow{backend, fmt.Sprintf("load a %d-entry set (vmfw apply of the group edit that refers to it)", bigSetSize),
		"median " + ms(median(loads)), "<= 1 s", yesNo(median(loads) <= time.Second)})

	// One entry changed, through the agent and with vmfw apply.
	if err := l.write("groups/bench.toml", setGroup("big")); err != nil {
		return err
	}
	if _, out, err := l.vmfw("apply"); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	a := &agentLab{lab: l, logPath: filepath.Join(l.tmp, "agent.log")}
	p, _, err := a.startAgent(time.Minute)
	if err != nil {
		return err
	}
	var enforced []time.Duration
	with := false
	from := p.mark()
	for i := range setEdits {
		with = !with
		took, err := editSet(l, with)
		if err != nil {
			p.stop()
			return fmt.Errorf("%w:\n%s", err, p.tail(20))
		}
		enforced = append(enforced, took)
		// One edit at a time, each meeting an idle agent: after logging
		// the apply it may read the sets back (Mark), 100,000 members,
		// and an edit arriving meanwhile would wait for that read.
		logged := time.Now().Add(10 * time.Second)
		for p.count("sets=[big]", from) <= i && time.Now().Before(logged) {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(idleAfterEdit)
	}
	// Every edit was applied as a set edit: the kernel holds the last one
	// before the agent logs it, so wait for the log.
	deadline := time.Now().Add(10 * time.Second)
	for p.count("sets=[big]", from) < setEdits && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	applied := p.count("sets=[big]", from)
	reloads, applies := p.took(from, p.mark(), "configuration loaded"), p.took(from, p.mark(), "sets=[big]")
	p.stop()
	if applied != setEdits {
		return fmt.Errorf("the agent applied %d of %d set edits as set edits", applied, setEdits)
	}
	progress("%s: one entry -> enforced %v", backend, rounded(enforced))
	r.rows = append(r.rows, setRow{backend, "one entry of it changed -> enforced (agent)",
		fmt.Sprintf("p50 %s, p99 %s", ms(median(enforced)), ms(percentile(enforced, 99))), "<= 50 ms", yesNo(median(enforced) <= 50*time.Millisecond)})
	r.notes = append(r.notes, fmt.Sprintf("%s: one-entry edits through the agent, its own accounting (medians of %d): configuration reload %s, apply (engine.EditSets, members only) %s",
		backend, setEdits, ms(median(reloads)), ms(median(applies))))
	var byApply []time.Duration
	for range o.runs {
		with = !with
		if err := l.write("sets/big.toml", bigSetFile(with)); err != nil {
			return err
		}
		took, out, err := l.vmfw("apply", "-o", "json")
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		byApply = append(byApply, took)
		// What the edit wrote: one member (ipset) or one effective
		// prefix (nftables) and no chain.
		var rep struct {
			Chains map[string]struct {
				Created, Rewritten, Deleted []string
			} `json:"chains"`
			Sets struct {
				Added, Removed map[string][]string
			} `json:"sets"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			return fmt.Errorf("apply -o json: %w: %s", err, out)
		}
		members, chains := 0, 0
		for _, l := range rep.Sets.Added {
			members += len(l)
		}
		for _, l := range rep.Sets.Removed {
			members += len(l)
		}
		for _, c := range rep.Chains {
			chains += len(c.Created) + len(c.Rewritten) + len(c.Deleted)
		}
		if members != 1 || chains != 0 {
			return fmt.Errorf("a one-entry edit changed %d set members and %d chains, want 1 and none: %s", members, chains, out)
		}
	}
	r.rows = append(r.rows, setRow{backend, "one entry of it changed + vmfw apply (no agent): one member written, no chain", "median " + ms(median(byApply)), "-", "-"})

	// New flows through the rule, on the big set and on a set of one.
	rates := map[string]float64{}
	for _, set := range []string{"big", "one"} {
		if err := l.write("groups/bench.toml", setGroup(set)); err != nil {
			return err
		}
		if _, out, err := l.vmfw("apply"); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		dst := dataV6(0, 1)
		if _, err := vms[0].run(ctx, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", dst); err != nil {
			return fmt.Errorf("the two VMs cannot reach each other over IPv6: %w", err)
		}
		_, cpu, err := l.newFlows(vms[0], vms[1], dst)
		if err != nil {
			return err
		}
		rates[set] = median(cpu)
		progress("%s: new flows through a rule on set %s: %.0f k/s", backend, set, rates[set])
	}
	ratio := rates["big"] / rates["one"]
	r.rows = append(r.rows, setRow{backend, fmt.Sprintf("new UDP flows/s through a rule on the %d-entry set vs a 1-entry set (per CPU second)", bigSetSize),
		fmt.Sprintf("%.0f k vs %.0f k: %.0f%%", rates["big"], rates["one"], 100*ratio), ">= 95%", yesNo(ratio >= 0.95)})
	return nil
}

// editSet renames a new version of the big set into sets/, with the
// toggled entry or without, as an editor writes it, and waits until the
// kernel's set agrees. It returns the time from the rename.
func editSet(l *lab, with bool) (time.Duration, error) {
	path := filepath.Join(l.dir, "sets", "big.toml")
	tmp := filepath.Join(l.dir, "sets", ".big.toml.swp")
	if err := os.WriteFile(tmp, []byte(bigSetFile(with)), 0o644); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := os.Rename(tmp, path); err != nil {
		return 0, err
	}
	var has func() (bool, error)
	if l.backend == nftablesBackend {
		// The interval set holds the effective prefixes: the toggled
		// entry is the start of one of them or of none. nft's "get
		// element" reads the whole interval set first (about a second
		// at 100,000 prefixes), so the element is looked up by its key
		// over netlink.
		f, err := os.Open(filepath.Join("/run/netns", l.hv.Name))
		if err != nil {
			return 0, err
		}
		defer f.Close()
		// One socket for all the polls: the release of an nf_tables
		// socket waits while the kernel destroys what the agent's commit
		// replaced, which would add that wait to the time measured
		// (nlnft.Client).
		c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting())
		if err != nil {
			return 0, err
		}
		defer c.CloseLasting()
		set := &nftables.Set{Table: &nftables.Table{Name: "vmfw", Family: nftables.TableFamilyBridge}, Name: "as-big-v6", KeyType: nftables.TypeIP6Addr, Interval: true}
		key := netip.MustParseAddr(toggled).AsSlice()
		has = func() (bool, error) {
			els, err := c.FindSetElements(set, []nftables.SetElement{{Key: key}})
			switch {
			case errors.Is(err, unix.ENOENT):
				return false, nil
			case err != nil:
				return false, err
			}
			return len(els) > 0 && !els[0].IntervalEnd, nil
		}
	} else {
		has = func() (bool, error) {
			_, err := l.hv.run(l.ctx, "ipset", "test", "as-big-v6", toggled)
			return err == nil, nil
		}
	}
	for time.Since(start) < 10*time.Second {
		ok, err := has()
		if err != nil {
			return 0, err
		}
		if ok == with {
			return time.Since(start), nil
		}
	}
	return 0, fmt.Errorf("the kernel's set did not follow the edit (entry %s present: %v) within 10 s", toggled, with)
}

// setMembers counts the members of the kernel set name in the lab: an
// ipset's, or the elements of the nftables backend's interval set (its
// effective prefixes: an entry an except carves becomes several, so the
// count differs from the entries').
func setMembers(l *lab, name string) (int, error) {
	if l.backend == nftablesBackend {
		out, err := l.hv.run(l.ctx, "nft", "-j", "list", "set", "bridge", "vmfw", name)
		if err != nil {
			return 0, err
		}
		elems, err := labnet.NFTSetElements(out)
		if err != nil {
			return 0, fmt.Errorf("nft -j list set %s: %w", name, err)
		}
		return len(elems), nil
	}
	out, err := l.hv.run(l.ctx, "ipset", "list", "-t", name)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		if n, ok := strings.CutPrefix(line, "Number of entries: "); ok {
			var v int
			_, err := fmt.Sscan(n, &v)
			return v, err
		}
	}
	return 0, fmt.Errorf("ipset list -t %s: no number of entries", name)
}

// yesNo says whether a row met its target, as the tables print it.
func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

// print writes the sets table and its notes.
func (r *setResults) print(w io.Writer, took time.Duration) {
	fmt.Fprintf(w, "\naddress sets (no scale taps; the set's costs do not depend on them), %s:\n", took.Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "backend\toperation\tresult\ttarget\tmet")
	for _, x := range r.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", x.backend, x.what, x.result, x.target, x.met)
	}
	tw.Flush()
	for _, n := range r.notes {
		fmt.Fprintln(w, n)
	}
}
