//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// pidFileName is serve's PID file in state_dir. serve holds an flock on it
// while it runs, so `mailproxy reload` can tell a live daemon from a file a
// kill -9 left behind.
const pidFileName = "mailproxy.pid"

// pidFile is serve's PID file, locked while serve runs.
type pidFile struct {
	f    *os.File
	path string
}

// writePIDFile writes our PID to state_dir/mailproxy.pid and keeps it
// locked until remove. A second serve on the same state_dir gets an error:
// two daemons sharing one token store would each refresh the same tokens.
func writePIDFile(stateDir string) (*pidFile, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("pid file: %w", err)
	}
	path := filepath.Join(stateDir, pidFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pid file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid, _ := readPID(path)
			return nil, fmt.Errorf("another mailproxy serve (pid %d) is running with state_dir %s", pid, stateDir)
		}
		return nil, fmt.Errorf("pid file %s: %w", path, err)
	}
	werr := f.Truncate(0)
	if werr == nil {
		_, werr = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err := werr; err != nil {
		f.Close()
		return nil, fmt.Errorf("pid file %s: %w", path, err)
	}
	return &pidFile{f: f, path: path}, nil
}

// remove deletes the file, then lets go of the lock.
func (p *pidFile) remove() {
	if p == nil {
		return
	}
	os.Remove(p.path)
	p.f.Close()
}

func readPID(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s does not hold a process id", path)
	}
	return pid, nil
}

// runningPID returns the PID of the serve that holds state_dir's PID file.
func runningPID(stateDir string) (int, error) {
	path := filepath.Join(stateDir, pidFileName)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("no mailproxy serve is running with state_dir %s (no %s)", stateDir, pidFileName)
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	if err == nil {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return 0, fmt.Errorf("no mailproxy serve is running with state_dir %s (%s is left from a process that ended)", stateDir, path)
	}
	if !errors.Is(err, syscall.EWOULDBLOCK) {
		return 0, err
	}
	return readPID(path)
}

// runReload sends SIGHUP to the serve using this config's state_dir. Under
// systemd, `systemctl reload mailproxy` does the same and waits for it.
func runReload(_ context.Context, env *cmdEnv, args []string) error {
	cfgPath, err := parseReloadFlags(env, args)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(env, cfgPath)
	if err != nil {
		return err
	}
	pid, err := runningPID(cfg.StateDir)
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w: run reload as the service's user or root, or use systemctl reload mailproxy", err)
	}
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("send SIGHUP to pid %d: %w (under systemd: systemctl reload mailproxy)", pid, err)
	}
	fmt.Fprintf(env.stdout, "sent SIGHUP to mailproxy serve (pid %d): its log says whether the new config was taken\n", pid)
	return nil
}
