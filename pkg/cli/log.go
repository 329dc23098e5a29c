package cli

import (
	"context"
	"flag"
	"io"
	"sync"
	"time"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/droplog"
)

// logCmd runs vmfw log: it prints every packet vmfw's rules log to NFLOG
// (log_group) as a JSON line (package droplog), until interrupted or
// --count packets.
func logCmd(ctx context.Context, configDir string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("log", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	group := fs.Int("group", 0, "NFLOG group (default: log_group of vmfw.toml)")
	count := fs.Int("count", 0, "exit after this many packets (default: run until interrupted)")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	m, err := config.Load(configDir)
	if err != nil {
		return err
	}
	if *group == 0 {
		*group = m.Host.LogGroup
	}
	if *group < 1 || *group > 65535 {
		return &usageError{"log: no NFLOG group: set log_group in vmfw.toml (logging goes to the kernel log with LOG until then), or give --group"}
	}
	l := &reloader{dir: configDir, model: m, loaded: time.Now()}
	return droplog.Follow(ctx, uint16(*group), l.config, stdout, *count)
}

// reloader reads the configuration again now and then, so that rules
// edited and applied while vmfw log runs are named by their new place;
// while a reload fails the last good configuration stays.
type reloader struct {
	dir    string
	mu     sync.Mutex
	model  *config.Model
	loaded time.Time
}

// reloadEvery is how old the configuration may get before a packet makes
// the reloader read it again.
const reloadEvery = 5 * time.Second

func (l *reloader) config() (*config.Model, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.loaded) > reloadEvery {
		if m, err := config.Load(l.dir); err == nil {
			l.model = m
		}
		l.loaded = time.Now()
	}
	return l.model, nil
}
