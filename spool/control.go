package spool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// `mailproxy queue` reaches a running daemon through a directory the daemon
// watches, <spool dir>/control: no network, no credential, the same file
// permissions that guard the queue itself. A command is a file
// <name>.cmd (JSON Command), written atomically; the daemon applies it and
// writes <name>.done (JSON Result). Whether a daemon runs is told by
// <spool dir>/lock, which the daemon holds locked while its spool is open.

// Command is one admin action.
type Command struct {
	Op  string `json:"op"`  // retry, delete, pause, resume
	Arg string `json:"arg"` // queue id or mailbox
}

// Result is a command's outcome.
type Result struct {
	Err string `json:"err,omitempty"`
}

const (
	controlDir   = "control"
	lockFile     = "lock"
	pollInterval = 200 * time.Millisecond
)

// Apply runs a command on the spool.
func (s *Spool) Apply(c Command) error {
	switch c.Op {
	case "retry":
		return s.Retry(c.Arg)
	case "delete":
		return s.Delete(c.Arg)
	case "pause":
		return s.Pause(c.Arg, "paused by an admin")
	case "resume":
		return s.Resume(c.Arg)
	}
	return fmt.Errorf("unknown queue command %q", c.Op)
}

// ServeControl applies the commands `mailproxy queue` leaves in the
// control directory of dir, looking every interval, until ctx ends.
func (s *Spool) ServeControl(ctx context.Context, dir string, interval time.Duration) error {
	cdir := filepath.Join(dir, controlDir)
	if err := os.MkdirAll(cdir, dirMode); err != nil {
		return fmt.Errorf("spool control: %w", err)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		s.controlOnce(cdir)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (s *Spool) controlOnce(cdir string) {
	ents, err := os.ReadDir(cdir)
	if err != nil {
		return
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".cmd")
		if !ok {
			continue
		}
		path := filepath.Join(cdir, e.Name())
		data, err := os.ReadFile(path)
		var c Command
		if err == nil {
			err = json.Unmarshal(data, &c)
		}
		if err == nil {
			err = s.Apply(c)
			s.log.Info("spool: queue command", "op", c.Op, "arg", c.Arg, "err", err)
		}
		var r Result
		if err != nil {
			r.Err = err.Error()
		}
		out, _ := json.Marshal(r)
		writeAtomic(filepath.Join(cdir, name+".done"), out)
		os.Remove(path)
	}
}

// Send hands a command to the daemon whose spool is dir and waits for its
// result, bounded by ctx.
func Send(ctx context.Context, dir string, c Command) error {
	cdir := filepath.Join(dir, controlDir)
	if err := os.MkdirAll(cdir, dirMode); err != nil {
		return fmt.Errorf("queue %s: %w", c.Op, err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	name := time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(rnd[:])
	data, _ := json.Marshal(c)
	// Written under another name first: the daemon must never read half.
	tmp := filepath.Join(cdir, name+".tmp")
	if err := os.WriteFile(tmp, data, fileMode); err != nil {
		return fmt.Errorf("queue %s: %w", c.Op, err)
	}
	if err := os.Rename(tmp, filepath.Join(cdir, name+".cmd")); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("queue %s: %w", c.Op, err)
	}
	done := filepath.Join(cdir, name+".done")
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		if data, err := os.ReadFile(done); err == nil {
			os.Remove(done)
			var r Result
			if err := json.Unmarshal(data, &r); err != nil {
				return fmt.Errorf("queue %s: the daemon's answer: %w", c.Op, err)
			}
			if r.Err != "" {
				return errors.New(r.Err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			os.Remove(filepath.Join(cdir, name+".cmd"))
			return fmt.Errorf("queue %s: the running daemon did not answer (is its spool stuck?): %w", c.Op, ctx.Err())
		case <-t.C:
		}
	}
}

// Running reports whether a process holds dir's spool open.
func Running(dir string) bool {
	release, err := lockDir(dir)
	if err != nil {
		return errors.Is(err, errLocked)
	}
	release()
	return false
}

var errLocked = errors.New("the spool is open in another process")

// Lock marks the spool as open by this process until release; it fails
// with a clear error when another process (a second daemon) holds it.
func (d *DirStore) Lock() (release func(), err error) {
	release, err = lockDir(d.dir)
	if errors.Is(err, errLocked) {
		return nil, fmt.Errorf("spool %s: %w (two daemons cannot share a spool directory)", d.dir, err)
	}
	return release, err
}

// ReadOnly opens an existing spool directory for reading its journal and
// queue, as `mailproxy queue list` does while the daemon runs: nothing is
// created, cleaned or written.
func ReadOnly(dir string) (*DirStore, error) {
	if _, err := os.Stat(filepath.Join(dir, "queue")); err != nil {
		return nil, fmt.Errorf("spool %s: %w", dir, err)
	}
	s := &DirStore{dir: dir, paused: map[string]Pause{}, create: func(string) (syncFile, error) {
		return nil, errors.New("spool opened read-only")
	}}
	if err := s.loadPaused(); err != nil {
		return nil, err
	}
	return s, nil
}

// ApplyDir applies a command to the spool in dir: through the running
// daemon when one holds the spool (bounded by ctx), else directly. This is
// `mailproxy queue`'s path, and the one a successful `check` of an account
// takes to resume its paused mailbox.
func ApplyDir(ctx context.Context, dir string, c Command) error {
	if _, err := os.Stat(filepath.Join(dir, "queue")); errors.Is(err, os.ErrNotExist) {
		switch c.Op {
		case "resume":
			return nil // nothing was ever spooled, so nothing is paused
		case "retry", "delete":
			return fmt.Errorf("%s %s: %w", c.Op, c.Arg, ErrNotFound)
		}
	}
	if Running(dir) {
		return Send(ctx, dir, c)
	}
	st, err := OpenDir(dir)
	if err != nil {
		return err
	}
	release, err := st.Lock()
	if err != nil {
		st.Close()
		if errors.Is(err, errLocked) { // a daemon started meanwhile
			return Send(ctx, dir, c)
		}
		return err
	}
	defer release()
	sp, err := New(st, Options{
		Open: func(context.Context, string) (Submitter, error) {
			return nil, errors.New("not delivering: only an admin command")
		},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		st.Close()
		return err
	}
	defer sp.Shutdown(context.Background())
	return sp.Apply(c)
}
