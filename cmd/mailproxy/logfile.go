package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/natefinch/lumberjack.v2"

	"mailproxy/config"
)

// Rotation of log.file: documented in config.example.toml.
const (
	logMaxSizeMB  = 10
	logMaxBackups = 5
)

// openLogOutput returns where the daemon's log goes: log.file, rotated by size,
// when it is set, else w. The file is opened once here so that a path
// mailproxy cannot write is an error at start, not a silent loss later.
// close flushes and closes the file.
func openLogOutput(cfg *config.Config, w io.Writer) (out io.Writer, close func() error, err error) {
	if cfg.Log.File == "" {
		return w, func() error { return nil }, nil
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Log.File), 0o700); err != nil {
		return nil, nil, fmt.Errorf("log.file: %w", err)
	}
	f, err := os.OpenFile(cfg.Log.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("log.file: %w", err)
	}
	f.Close()
	lj := &lumberjack.Logger{
		Filename:   cfg.Log.File,
		MaxSize:    logMaxSizeMB,
		MaxBackups: logMaxBackups,
		Compress:   true,
		LocalTime:  false,
	}
	return lj, lj.Close, nil
}

// daemonLogger is the logger of serve: newLogger's, writing to log.file when
// set, with warnings and errors copied to sys (the Windows Event Log when
// running as a service; nil elsewhere).
func daemonLogger(cfg *config.Config, w io.Writer, debug bool, sys eventSink) (*slog.Logger, func() error, error) {
	out, closeLog, err := openLogOutput(cfg, w)
	if err != nil {
		return nil, nil, err
	}
	logger := newLogger(cfg, out, debug)
	if sys != nil {
		logger = slog.New(&teeHandler{Handler: logger.Handler(), sys: sys})
	}
	return logger, closeLog, nil
}

// eventSink is a system log that takes a few important lines: the Windows
// Event Log.
type eventSink interface {
	Info(msg string) error
	Warning(msg string) error
	Error(msg string) error
}

// teeHandler passes every record on and copies errors to a system log as
// one line of text, with the record's attributes.
type teeHandler struct {
	slog.Handler
	sys eventSink
	// attrs are those added with WithAttrs, for the copied line.
	attrs []slog.Attr
}

func (h *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelError {
		h.sys.Error(h.line(r))
	}
	return err
}

// line renders r as "message key=value ...", in slog's text syntax.
func (h *teeHandler) line(r slog.Record) string {
	var b bytes.Buffer
	th := slog.NewTextHandler(&b, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			return a
		},
	})
	th.WithAttrs(h.attrs).Handle(context.Background(), r)
	return strings.TrimSuffix(b.String(), "\n")
}

func (h *teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &teeHandler{Handler: h.Handler.WithAttrs(as), sys: h.sys, attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], as...)}
}

// WithGroup is rare in this code base; the copied line drops the group
// name rather than mis-nest attributes.
func (h *teeHandler) WithGroup(name string) slog.Handler {
	return &teeHandler{Handler: h.Handler.WithGroup(name), sys: h.sys, attrs: h.attrs}
}
