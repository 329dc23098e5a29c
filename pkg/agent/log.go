package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
)

// NewLogger returns the logger of every vmfw command: text records by
// default, JSON with json set. Under systemd (JOURNAL_STREAM set, standard
// error connected to the journal) each line starts with its syslog
// priority, "<3>" for errors, so the journal files it at the right level.
func NewLogger(w io.Writer, json bool) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if os.Getenv("JOURNAL_STREAM") != "" {
		w = &priorityWriter{w: w}
	}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if json {
		h = slog.NewJSONHandler(w, opts)
	}
	if pw, ok := w.(*priorityWriter); ok {
		h = &priorityHandler{Handler: h, w: pw}
	}
	return slog.New(h)
}

// priorityWriter prefixes the next line written with a syslog priority.
type priorityWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
}

func (p *priorityWriter) Write(b []byte) (int, error) {
	if p.prefix != "" {
		if _, err := io.WriteString(p.w, p.prefix); err != nil {
			return 0, err
		}
	}
	return p.w.Write(b)
}

// priorityHandler sets the writer's prefix from each record's level.
type priorityHandler struct {
	slog.Handler
	w *priorityWriter
}

func (h *priorityHandler) Handle(ctx context.Context, r slog.Record) error {
	h.w.mu.Lock() // the prefix and the line it belongs to, together
	defer h.w.mu.Unlock()
	switch {
	case r.Level >= slog.LevelError:
		h.w.prefix = "<3>"
	case r.Level >= slog.LevelWarn:
		h.w.prefix = "<4>"
	case r.Level >= slog.LevelInfo:
		h.w.prefix = "<6>"
	default:
		h.w.prefix = "<7>"
	}
	return h.Handler.Handle(ctx, r)
}

func (h *priorityHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &priorityHandler{Handler: h.Handler.WithAttrs(attrs), w: h.w}
}

func (h *priorityHandler) WithGroup(name string) slog.Handler {
	return &priorityHandler{Handler: h.Handler.WithGroup(name), w: h.w}
}
