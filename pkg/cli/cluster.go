package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/vmfw/vmfw/pkg/cluster"
	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/engine"
)

// clusterOf returns the [cluster] table of the local configuration
// directory's vmfw.toml, nil in file mode.
func clusterOf(configDir string) *config.Cluster {
	h, err := config.LoadHost(configDir)
	if err != nil {
		return nil
	}
	return h.Cluster
}

// effectiveConfigDir is where the commands that enforce the
// configuration (ifup without an agent, apply, status, ...) read it: in
// cluster mode the copy of the pushed configuration the agent caches, so
// that they work while etcd is unreachable.
func effectiveConfigDir(configDir string) string {
	if c := clusterOf(configDir); c != nil {
		return cluster.Cache{Dir: c.CacheDir}.ConfigDir()
	}
	return configDir
}

// clusterCmd runs vmfw cluster push DIR | pull DIR | status [-o json].
func clusterCmd(ctx context.Context, configDir string, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return &usageError{"cluster: want push DIR, pull DIR or status"}
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("cluster "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	format := fs.String("o", "text", "output format: text or json")
	if err := fs.Parse(rest); err != nil {
		return &usageError{"cluster " + sub + ": " + err.Error()}
	}
	switch sub {
	case "push", "pull":
		if fs.NArg() != 1 {
			return &usageError{"cluster " + sub + " takes exactly one argument, the directory"}
		}
	case "status":
		if fs.NArg() != 0 {
			return &usageError{fmt.Sprintf("cluster status: unexpected argument %q", fs.Arg(0))}
		}
		if *format != "text" && *format != "json" {
			return &usageError{fmt.Sprintf("cluster status: unknown output format %q (want text or json)", *format)}
		}
	default:
		return &usageError{fmt.Sprintf("cluster: unknown subcommand %q (want push, pull or status)", sub)}
	}
	dir := fs.Arg(0)
	if sub == "push" {
		// Validate before anything else, exactly as check does: a bad
		// configuration is exit 2 whether or not etcd is reachable.
		if _, err := config.Load(dir); err != nil {
			var fe *config.Error
			if errors.As(err, &fe) && !filepath.IsAbs(fe.File) {
				fe.File = filepath.Join(dir, fe.File)
				return &engine.ConfigError{Err: fe}
			}
			return &engine.ConfigError{Err: err}
		}
	}
	h, err := config.LoadHost(configDir)
	if err != nil {
		return err
	}
	c := h.Cluster
	if c == nil {
		return fmt.Errorf("%s: %w", filepath.Join(configDir, "vmfw.toml"), cluster.ErrNoCluster)
	}
	cli, err := cluster.Dial(c, true)
	if err != nil {
		return err
	}
	defer cli.Close()
	keys := cluster.Keys{Prefix: c.Prefix}
	switch sub {
	case "push":
		by, _ := os.Hostname()
		rev, err := cluster.Push(ctx, cli, keys, dir, by)
		if err != nil {
			var fe *config.Error
			if errors.As(err, &fe) {
				// Changed between the two reads: still a configuration error.
				return &engine.ConfigError{Err: err}
			}
			return err
		}
		fmt.Fprintf(stdout, "pushed %s: revision %d\n", dir, rev)
		return nil
	case "pull":
		rev, err := cluster.Pull(ctx, cli, keys, dir)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "pulled revision %d into %s\n", rev, dir)
		return nil
	}
	st, err := cluster.ReadStatus(ctx, cli, keys)
	if err != nil {
		return fmt.Errorf("reading the cluster's status: %w", err)
	}
	if *format == "json" {
		return writeJSON(stdout, st)
	}
	if st.Revision == 0 {
		fmt.Fprintln(stdout, "configuration: none pushed")
	} else {
		fmt.Fprintf(stdout, "configuration: revision %d, %d files, pushed %s by %s\n", st.Revision, st.Meta.Files, st.Meta.PushedAt.Format(time.RFC3339), st.Meta.PushedBy)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tLIVE\tREVISION\tMEMBERS\tIN SYNC")
	for _, h := range st.Hosts {
		live := "dead"
		if h.Alive {
			live = "alive"
		}
		sync := "no"
		if h.Revision == st.Revision {
			sync = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", h.Host, live, h.Revision, h.Members, sync)
	}
	return tw.Flush()
}

// printClusterRevision adds the cluster line to vmfw status: this host's
// name and the configuration revision it holds.
func printClusterRevision(w io.Writer, configDir string) {
	c := clusterOf(configDir)
	if c == nil {
		return
	}
	rev := cluster.Cache{Dir: c.CacheDir}.Revision()
	if rev == 0 {
		fmt.Fprintf(w, "cluster: host %s, no configuration received yet\n", c.Host)
		return
	}
	fmt.Fprintf(w, "cluster: host %s, configuration revision %d\n", c.Host, rev)
}
