package testutil

import (
	"context"
	"log/slog"
	"testing"
)

// LogSink is the one test log: a slog.Handler writing text lines (debug
// level and up) to a Buffer, optionally also to t.Log, and telling a
// channel about every record with a given message.
type LogSink struct {
	Buffer
	h      slog.Handler
	notify string      // the message that is signalled
	seen   chan string // receives notify each time it is logged
}

// NewLogSink returns a sink. When t is not nil every line also goes to
// t.Log. When notify is not "", Seen receives it each time a record with
// that message is handled (up to 1000 unread).
func NewLogSink(t testing.TB, notify string) *LogSink {
	s := &LogSink{notify: notify, seen: make(chan string, 1000)}
	var w interface{ Write([]byte) (int, error) } = &s.Buffer
	if t != nil {
		w = tee{t, &s.Buffer}
	}
	s.h = slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})
	return s
}

// Logger returns a logger writing to the sink.
func (s *LogSink) Logger() *slog.Logger { return slog.New(s) }

// Seen receives the notify message each time it is logged.
func (s *LogSink) Seen() <-chan string { return s.seen }

// Enabled implements slog.Handler.
func (s *LogSink) Enabled(context.Context, slog.Level) bool { return true }

// Handle implements slog.Handler.
func (s *LogSink) Handle(ctx context.Context, r slog.Record) error {
	return handle(ctx, s, s.h, r)
}

// WithAttrs implements slog.Handler.
func (s *LogSink) WithAttrs(as []slog.Attr) slog.Handler { return &subHandler{s, s.h.WithAttrs(as)} }

// WithGroup implements slog.Handler.
func (s *LogSink) WithGroup(name string) slog.Handler { return &subHandler{s, s.h.WithGroup(name)} }

func handle(ctx context.Context, s *LogSink, h slog.Handler, r slog.Record) error {
	err := h.Handle(ctx, r)
	if s.notify != "" && r.Message == s.notify {
		s.seen <- r.Message
	}
	return err
}

type subHandler struct {
	s *LogSink
	h slog.Handler
}

func (h *subHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *subHandler) Handle(ctx context.Context, r slog.Record) error {
	return handle(ctx, h.s, h.h, r)
}
func (h *subHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &subHandler{h.s, h.h.WithAttrs(as)}
}
func (h *subHandler) WithGroup(name string) slog.Handler {
	return &subHandler{h.s, h.h.WithGroup(name)}
}

// tee writes to t.Log and to a buffer.
type tee struct {
	t testing.TB
	b *Buffer
}

func (w tee) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(trimNL(p)))
	return w.b.Write(p)
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && p[len(p)-1] == '\n' {
		p = p[:len(p)-1]
	}
	return p
}
