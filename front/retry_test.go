package front

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// failingListener fails Accept with each of errs in turn, then accepts c.
type failingListener struct {
	net.Listener
	errs []error
	c    net.Conn
}

func (l *failingListener) Accept() (net.Conn, error) {
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, err
	}
	return l.c, nil
}

func TestRetryListenerWaitsOutFailures(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	fl := &failingListener{errs: []error{syscall.EMFILE, syscall.ENFILE}, c: c1}
	var waits []time.Duration
	rl := &RetryListener{Listener: fl, OnRetry: func(err error, d time.Duration) { waits = append(waits, d) }}
	got, err := rl.Accept()
	if err != nil || got != c1 {
		t.Fatalf("Accept = %v, %v; want the connection after two retries", got, err)
	}
	if len(waits) != 2 || waits[0] != 5*time.Millisecond || waits[1] != 10*time.Millisecond {
		t.Errorf("waits %v, want [5ms 10ms]", waits)
	}
	// A success starts the delays over.
	fl.errs = []error{syscall.EMFILE}
	waits = nil
	if _, err := rl.Accept(); err != nil {
		t.Fatal(err)
	}
	if len(waits) != 1 || waits[0] != 5*time.Millisecond {
		t.Errorf("waits after a success %v, want [5ms]", waits)
	}
}

func TestRetryListenerReturns(t *testing.T) {
	other := errors.New("not temporary")
	for _, tc := range []struct {
		name string
		err  error
		rl   RetryListener
	}{
		{name: "closed", err: net.ErrClosed},
		{name: "stop", err: syscall.EMFILE, rl: RetryListener{Stop: func() bool { return true }}},
		{name: "not retried", err: other, rl: RetryListener{Retry: func(err error) bool { return err != other }}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rl := tc.rl
			rl.Listener = &failingListener{errs: []error{tc.err}}
			rl.OnRetry = func(err error, d time.Duration) { t.Errorf("retried %v", err) }
			if _, err := rl.Accept(); err != tc.err {
				t.Errorf("Accept error %v, want %v", err, tc.err)
			}
		})
	}
}
