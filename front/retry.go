package front

import (
	"context"
	"errors"
	"net"
	"time"

	"mailproxy/internal/wait"
)

// RetryListener is the accept backoff every front shares, as a listener
// wrapper (go-smtp's own Serve accepts through it too): Accept waits out a
// failure that may pass (out of file descriptors and the like) with a
// delay growing from 5 ms to 1 s, and tries again; a success starts the
// delays over. Accept is called from one goroutine at a time.
type RetryListener struct {
	net.Listener
	// Ctx cuts a wait short (the front's Close); nil: context.Background().
	Ctx context.Context
	// Stop, when set and true, makes Accept return the error at once: the
	// front is closing.
	Stop func() bool
	// Retry says which errors to wait out; nil: every error but
	// net.ErrClosed.
	Retry func(error) bool
	// OnRetry logs a failure about to be retried in d.
	OnRetry func(err error, d time.Duration)

	backoff wait.Backoff
}

func (l *RetryListener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err == nil {
			l.backoff.Reset()
			return nc, nil
		}
		if l.Stop != nil && l.Stop() {
			return nil, err
		}
		if l.Retry != nil && !l.Retry(err) || l.Retry == nil && errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		d := l.backoff.Next()
		if l.OnRetry != nil {
			l.OnRetry(err, d)
		}
		ctx := l.Ctx
		if ctx == nil {
			ctx = context.Background()
		}
		wait.Sleep(ctx, d)
	}
}
