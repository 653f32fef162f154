//go:build unix

package main

import (
	"bytes"
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mailproxy reload finds the running serve through its PID file and sends
// it SIGHUP (here: this test process, which runs serve in-process).
func TestReloadCommand(t *testing.T) {
	h := startServe(t)
	var out, errOut bytes.Buffer
	env := &cmdEnv{stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }}
	if code := run(context.Background(), env, []string{"reload", "-config", h.cfgFile}); code != exitOK {
		t.Fatalf("mailproxy reload = exit %d (%s), want 0", code, errOut.String())
	}
	if want := "pid " + strconv.Itoa(os.Getpid()); !strings.Contains(out.String(), want) {
		t.Errorf("mailproxy reload said %q, want it to name %s", out.String(), want)
	}
	select {
	case err := <-h.reloads:
		if err != nil {
			t.Errorf("reload = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not reload within 10s of mailproxy reload")
	}
	// After serve has stopped, reload says so and fails.
	h.cancel()
	<-h.done
	h.done <- nil // for the harness's cleanup
	out.Reset()
	errOut.Reset()
	if code := run(context.Background(), env, []string{"reload", "-config", h.cfgFile}); code != exitFailure || !strings.Contains(errOut.String(), "no mailproxy serve is running") {
		t.Errorf("mailproxy reload after serve stopped = exit %d, %q; want 1 and \"no mailproxy serve is running\"", code, errOut.String())
	}
}

// A PID file that nobody holds locked is left from a process that died: reload
// must not signal whatever process has that PID now.
func TestReloadStalePIDFile(t *testing.T) {
	dir := t.TempDir()
	if err := writeFile(filepath.Join(dir, pidFileName), strconv.Itoa(os.Getpid())+"\n"); err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	_, err := runningPID(dir)
	if err == nil || !strings.Contains(err.Error(), "left from a process that ended") {
		t.Fatalf("runningPID(stale) = %v, want an error saying the file is stale", err)
	}
	select {
	case <-hup:
		t.Error("a SIGHUP was sent for a stale PID file")
	default:
	}
}

func TestPIDFileHeldWhileServing(t *testing.T) {
	dir := t.TempDir()
	p, err := writePIDFile(dir)
	if err != nil {
		t.Fatalf("writePIDFile() = %v", err)
	}
	if pid, err := runningPID(dir); err != nil || pid != os.Getpid() {
		t.Errorf("runningPID() = %d, %v, want %d", pid, err, os.Getpid())
	}
	if _, err := writePIDFile(dir); err == nil || !strings.Contains(err.Error(), "another mailproxy serve") {
		t.Errorf("second writePIDFile() = %v, want an error naming the other serve", err)
	}
	p.remove()
	if _, err := os.Stat(filepath.Join(dir, pidFileName)); !os.IsNotExist(err) {
		t.Errorf("PID file after remove: %v, want it gone", err)
	}
}
