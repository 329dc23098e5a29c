// Command vmfw-demo runs the reference scenario (conf/examples/reference)
// on a throwaway hypervisor built from network namespaces: it creates the
// bridge and five VMs, firewalls each tap with "vmfw ifup" as QEMU would,
// probes every VM-to-VM and external connection with real TCP, prints which
// are allowed and which are blocked, shows "vmfw status", and removes
// everything it created. It never touches the calling namespace.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
)

type vm struct {
	name, tap, mac, v4 string
}

var vms = []vm{
	{"vm1", "tap101i0", "02:00:00:00:01:01", "192.0.2.101"},
	{"vm2", "tap102i0", "02:00:00:00:01:02", "192.0.2.102"},
	{"vm3", "tap103i0", "02:00:00:00:01:03", "192.0.2.103"},
	{"vm4", "tap104i0", "02:00:00:00:01:04", "192.0.2.104"},
	{"vm110", "tap110i0", "02:00:00:00:01:10", "192.0.2.110"},
}

var ports = []int{22, 80}

func main() {
	bin := flag.String("vmfw", "vmfw", "path of the vmfw binary")
	config := flag.String("config", "conf/examples/reference", "configuration directory of the scenario")
	flavour := flag.String("iptables", "", "iptables backend's flavour: nft or legacy (default: the host's)")
	backend := flag.String("backend", "", "backend: iptables or nftables (default: vmfw's)")
	flag.Parse()
	if err := run(*bin, *config, *backend, *flavour); err != nil {
		fmt.Fprintln(os.Stderr, "vmfw-demo:", err)
		os.Exit(1)
	}
}

func run(bin, config, backend, flavour string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the demo builds network namespaces and needs root")
	}
	lab, err := labnet.New(labnet.Options{})
	if err != nil {
		return err
	}
	defer func() {
		if err := lab.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "vmfw-demo: cleaning up:", err)
		}
	}()
	hv := lab.Hypervisor()
	vmfw := func(args ...string) (string, error) {
		full := []string{"netns", "exec", hv.Name, bin, "--config-dir", config}
		if backend != "" {
			full = append(full, "--backend", backend)
		}
		if flavour != "" {
			full = append(full, "--iptables", flavour)
		}
		out, err := exec.Command("ip", append(full, args...)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("vmfw %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}

	fmt.Printf("hypervisor namespace %s, bridge %s (192.0.2.1/24)\n", hv.Name, lab.Bridge())
	guests := map[string]*labnet.NS{}
	for _, v := range vms {
		ns, err := lab.AddVM(v.tap, v.mac, v.v4+"/24")
		if err != nil {
			return err
		}
		guests[v.name] = ns
		if _, err := vmfw("ifup", v.tap); err != nil {
			return err
		}
		for _, p := range ports {
			stop, err := labnet.ServeTCP(ns, fmt.Sprintf("%s:%d", v.v4, p))
			if err != nil {
				return err
			}
			defer stop()
		}
		fmt.Printf("  vmfw ifup %s  (%s, %s)\n", v.tap, v.name, v.v4)
	}
	ext, err := lab.AddExternal("uplink0", "02:00:00:00:02:00", "192.0.2.200/24")
	if err != nil {
		return err
	}
	guests["ext"] = ext
	fmt.Println("  external host 192.0.2.200 behind uplink0")
	// The hypervisor's own processes meet the VMs' in rules too
	// (docs/routing.md): the row "hv" connects from 192.0.2.1.
	guests["hv"] = hv
	fmt.Println()

	sources := []string{"vm1", "vm2", "vm3", "vm4", "vm110", "ext", "hv"}
	type key struct {
		src, dst string
		port     int
	}
	results := map[key]labnet.Result{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, src := range sources {
		for _, dst := range vms {
			if src == dst.name {
				continue
			}
			for _, p := range ports {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, err := labnet.TCPConnect(context.Background(), guests[src], fmt.Sprintf("%s:%d", dst.v4, p), time.Second)
					if err != nil {
						r = labnet.Failed
					}
					mu.Lock()
					results[key{src, dst.name, p}] = r
					mu.Unlock()
				}()
			}
		}
	}
	wg.Wait()

	fmt.Println("TCP connections (rows: from, columns: to:port) — OPEN connected, ---- blocked")
	fmt.Printf("%-7s", "")
	for _, d := range vms {
		for _, p := range ports {
			fmt.Printf(" %10s", fmt.Sprintf("%s:%d", d.name, p))
		}
	}
	fmt.Println()
	for _, src := range sources {
		fmt.Printf("%-7s", src)
		for _, d := range vms {
			for _, p := range ports {
				cell := "."
				if src != d.name {
					cell = "----"
					if results[key{src, d.name, p}] == labnet.Connected {
						cell = "OPEN"
					}
				}
				fmt.Printf(" %10s", cell)
			}
		}
		fmt.Println()
	}
	fmt.Println()
	status, err := vmfw("status")
	if err != nil {
		return err
	}
	fmt.Println("vmfw status:")
	fmt.Print(status)
	if _, err := vmfw("flush"); err != nil {
		return err
	}
	fmt.Println("\nvmfw flush done; removing the namespaces.")
	return nil
}
