package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"

	"github.com/vmfw/vmfw/pkg/explain"
)

// traceCmd runs vmfw trace: the path of one flow through vmfw's rules,
// from the configuration and from the kernel (package explain).
func traceCmd(ctx context.Context, newEngine func() (Engine, error), args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("trace", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	q := explain.Query{}
	fs.StringVar(&q.From, "from", "", "sender: VM id, VM id:N, tap, VM name, address or hypervisor")
	fs.StringVar(&q.To, "to", "", "receiver: VM id, VM id:N, tap, VM name, address or hypervisor")
	fs.StringVar(&q.Proto, "proto", "", "tcp, udp, sctp, icmp, icmpv6 or a protocol number")
	fs.StringVar(&q.Proto, "p", "", "short for --proto")
	fs.IntVar(&q.DPort, "dport", -1, "destination port")
	fs.IntVar(&q.SPort, "sport", -1, "source port")
	fs.StringVar(&q.ICMPType, "icmp-type", "", "ICMP type name, number or TYPE/CODE (default echo-request)")
	fs.StringVar(&q.Path, "path", "", "bridged or routed (default: from the hypervisor's subnets)")
	fs.StringVar(&q.MAC, "mac", "", "the sender's MAC, when it is not a VM with a configured mac")
	v4 := fs.Bool("4", false, "IPv4")
	v6 := fs.Bool("6", false, "IPv6")
	format := fs.String("o", "text", "output format: text or json")
	batch := fs.String("batch", "", "read queries as JSON lines from this file (- for standard input) and print one JSON report per line")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if *batch != "" {
		return traceBatch(ctx, newEngine, *batch, stdout)
	}
	switch {
	case *v4 && *v6:
		return &usageError{"trace: -4 and -6 exclude each other"}
	case *v4:
		q.Family = 4
	case *v6:
		q.Family = 6
	}
	if *format != "text" && *format != "json" {
		return &usageError{fmt.Sprintf("trace: unknown output format %q (want text or json)", *format)}
	}
	if q.From == "" || q.To == "" || q.Proto == "" {
		return &usageError{"trace needs --from, --to and --proto"}
	}
	in, err := traceInput(ctx, newEngine)
	if err != nil {
		return err
	}
	r, err := explain.Trace(in, q)
	if err != nil {
		return err
	}
	if *format == "json" {
		return writeJSON(stdout, r)
	}
	return r.WriteText(stdout)
}

// traceInput reads, through the engine, what a trace evaluates, and adds
// the hypervisor's addresses.
func traceInput(ctx context.Context, newEngine func() (Engine, error)) (*explain.Input, error) {
	e, err := newEngine()
	if err != nil {
		return nil, err
	}
	x, err := e.Inspect(ctx)
	if err != nil {
		return nil, err
	}
	addrs, err := hostAddrs()
	if err != nil {
		return nil, err
	}
	return &explain.Input{Model: x.Model, Resolve: x.Resolve, Attached: x.Attached, Kernel: x.Kernel, HostAddrs: addrs}, nil
}

// hostAddrs returns the addresses of this network namespace's interfaces
// with their subnets: what tells the hypervisor from other hosts, and a
// bridged path from a routed one.
func hostAddrs() ([]netip.Prefix, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	var out []netip.Prefix
	for _, ifi := range ifs {
		addrs, err := ifi.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", ifi.Name, err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				ip, ok := netip.AddrFromSlice(n.IP)
				ones, _ := n.Mask.Size()
				if ok {
					out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
				}
			}
		}
	}
	return out, nil
}

// traceBatch traces every query of a JSON-lines file against one read of
// the kernel: scripts that check many flows (and the differential test)
// pay for reading the firewall once. A query that fails prints an object
// with "error" instead of a report, and the batch goes on.
func traceBatch(ctx context.Context, newEngine func() (Engine, error), file string, stdout io.Writer) error {
	var r io.Reader = os.Stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	in, err := traceInput(ctx, newEngine)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(r)
	enc := json.NewEncoder(stdout)
	for {
		q := explain.Query{SPort: -1, DPort: -1}
		if err := dec.Decode(&q); err == io.EOF {
			return nil
		} else if err != nil {
			return &usageError{"trace --batch: " + err.Error()}
		}
		rep, err := explain.Trace(in, q)
		if err != nil {
			if err := enc.Encode(map[string]string{"error": err.Error()}); err != nil {
				return err
			}
			continue
		}
		if err := enc.Encode(rep); err != nil {
			return err
		}
	}
}
