//go:build windows

package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/windows/svc"
)

type recordSink struct {
	mu    sync.Mutex // protects lines
	lines []string
}

func (s *recordSink) add(kind, m string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, kind+": "+m)
	return nil
}
func (s *recordSink) Info(m string) error    { return s.add("info", m) }
func (s *recordSink) Warning(m string) error { return s.add("warning", m) }
func (s *recordSink) Error(m string) error   { return s.add("error", m) }
func (s *recordSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// nextStatus reads the next status the handler reports.
func nextStatus(t *testing.T, s <-chan svc.Status) svc.Status {
	t.Helper()
	select {
	case st := <-s:
		return st
	case <-time.After(10 * time.Second):
		t.Fatal("no service status within 10s")
		return svc.Status{}
	}
}

// The control handler, driven as the service manager drives it: Running
// accepts stop, shutdown and paramchange; paramchange reaches serve as a
// reload request; stop cancels serve's context (its drain) and the service
// ends with serve's status.
func TestServiceHandlerStopAndReload(t *testing.T) {
	reloads := make(chan struct{}, 4)
	drained := make(chan struct{})
	sink := &recordSink{}
	h := &serviceHandler{log: sink, run: func(ctx context.Context, reload <-chan struct{}) int {
		for {
			select {
			case <-reload:
				reloads <- struct{}{}
			case <-ctx.Done():
				close(drained)
				return exitOK
			}
		}
	}}
	r := make(chan svc.ChangeRequest)
	s := make(chan svc.Status, 8)
	type result struct {
		specific bool
		code     uint32
	}
	done := make(chan result, 1)
	go func() {
		sp, c := h.Execute(nil, r, s)
		done <- result{sp, c}
	}()
	if st := nextStatus(t, s); st.State != svc.StartPending {
		t.Fatalf("first status = %v, want StartPending", st.State)
	}
	running := nextStatus(t, s)
	if running.State != svc.Running || running.Accepts != svc.AcceptStop|svc.AcceptShutdown|svc.AcceptParamChange {
		t.Fatalf("status = %+v, want Running accepting stop, shutdown and paramchange", running)
	}
	r <- svc.ChangeRequest{Cmd: svc.ParamChange, CurrentStatus: running}
	select {
	case <-reloads:
	case <-time.After(10 * time.Second):
		t.Fatal("paramchange did not reach serve as a reload")
	}
	if st := nextStatus(t, s); st.State != svc.Running {
		t.Errorf("status after paramchange = %v, want Running", st.State)
	}
	r <- svc.ChangeRequest{Cmd: svc.Interrogate, CurrentStatus: running}
	if st := nextStatus(t, s); st != running {
		t.Errorf("interrogate answered %+v, want %+v", st, running)
	}
	r <- svc.ChangeRequest{Cmd: svc.Stop, CurrentStatus: running}
	if st := nextStatus(t, s); st.State != svc.StopPending || st.WaitHint == 0 {
		t.Errorf("status after stop = %+v, want StopPending with a wait hint for the drain", st)
	}
	<-drained
	res := <-done
	if res.specific || res.code != 0 {
		t.Errorf("Execute() = %v, %d after a clean stop, want false, 0", res.specific, res.code)
	}
	if got := sink.String(); !strings.Contains(got, "info: mailproxy service started") || !strings.Contains(got, "info: mailproxy service stopped") {
		t.Errorf("event log = %q, want the start and the stop", got)
	}
}

// serve failing at start (a bad config: exit 2) ends the service with a
// service-specific exit code and an error in the Event Log.
func TestServiceHandlerServeFails(t *testing.T) {
	sink := &recordSink{}
	h := &serviceHandler{log: sink, run: func(context.Context, <-chan struct{}) int { return exitUsage }}
	s := make(chan svc.Status, 8)
	specific, code := h.Execute(nil, make(chan svc.ChangeRequest), s)
	if !specific || code != exitUsage || h.code != exitUsage {
		t.Errorf("Execute() = %v, %d, want true, %d", specific, code, exitUsage)
	}
	if got := sink.String(); !strings.Contains(got, "error: mailproxy service stopped with exit status 2") {
		t.Errorf("event log = %q, want the failure", got)
	}
}

// What serve prints to stderr under the service (why it could not start)
// goes to the Event Log.
func TestServiceEventWriter(t *testing.T) {
	sink := &recordSink{}
	w := eventWriter{sink}
	w.Write([]byte("mailproxy serve: line 3: imap.listen: bad address\n"))
	w.Write([]byte("\n"))
	if got := sink.String(); got != "error: mailproxy serve: line 3: imap.listen: bad address" {
		t.Errorf("event log = %q", got)
	}
}
