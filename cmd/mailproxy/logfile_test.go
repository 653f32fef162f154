package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"gopkg.in/natefinch/lumberjack.v2"

	"mailproxy/config"
)

func TestLogFile(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Config{Log: config.Log{Format: config.LogText, File: filepath.Join(dir, "logs", "mailproxy.log")}}
	var stderr bytes.Buffer
	logger, closeLog, err := daemonLogger(cfg, &stderr, false, nil)
	if err != nil {
		t.Fatalf("daemonLogger(log.file=%s) = %v", cfg.Log.File, err)
	}
	logger.Info("hello from the test", "account", "alice@contoso.com")
	if err := closeLog(); err != nil {
		t.Fatalf("close log: %v", err)
	}
	data, err := os.ReadFile(cfg.Log.File)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "hello from the test") || !strings.Contains(string(data), "account=alice@contoso.com") {
		t.Errorf("log file = %q, want the line logged", data)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr = %q, want nothing when log.file is set", stderr.String())
	}
	if fi, err := os.Stat(cfg.Log.File); err != nil {
		t.Fatal(err)
	} else if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
		t.Errorf("log file mode = %v, want 0600", fi.Mode().Perm())
	}
}

func TestLogFileRotates(t *testing.T) {
	cfg := &config.Config{Log: config.Log{File: filepath.Join(t.TempDir(), "m.log")}}
	w, closeLog, err := openLogOutput(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeLog()
	lj, ok := w.(*lumberjack.Logger)
	if !ok {
		t.Fatalf("openLogOutput(log.file) = %T, want a rotating *lumberjack.Logger", w)
	}
	if lj.MaxSize != logMaxSizeMB || lj.MaxBackups != logMaxBackups || lj.Filename != cfg.Log.File {
		t.Errorf("rotation = %d MB x %d in %s, want %d MB x %d in %s", lj.MaxSize, lj.MaxBackups, lj.Filename, logMaxSizeMB, logMaxBackups, cfg.Log.File)
	}
}

func TestLogFileUnwritable(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Log: config.Log{File: filepath.Join(blocker, "mailproxy.log")}}
	if _, _, err := openLogOutput(cfg, nil); err == nil || !strings.Contains(err.Error(), "log.file") {
		t.Errorf("openLogOutput(%s) = %v, want an error naming log.file", cfg.Log.File, err)
	}
}

type fakeSink struct {
	mu   sync.Mutex
	errs []string
}

func (s *fakeSink) Info(string) error    { return nil }
func (s *fakeSink) Warning(string) error { return nil }
func (s *fakeSink) Error(m string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, m)
	return nil
}

func TestErrorsReachSystemLog(t *testing.T) {
	var stderr bytes.Buffer
	sink := &fakeSink{}
	logger, _, err := daemonLogger(&config.Config{}, &stderr, false, sink)
	if err != nil {
		t.Fatal(err)
	}
	logger.Info("an ordinary line")
	logger.With("listener", "imap").Error("listen failed", "err", "address in use")
	if got := strings.Count(stderr.String(), "\n"); got != 2 {
		t.Errorf("stderr has %d lines, want 2: %q", got, stderr.String())
	}
	want := `msg="listen failed" listener=imap err="address in use"`
	if len(sink.errs) != 1 || sink.errs[0] != want {
		t.Errorf("system log errors = %q, want [%q]", sink.errs, want)
	}
}
