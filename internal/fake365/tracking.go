package fake365

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
)

// trackingListener counts connections and remembers the open ones, so
// Close can close connections the protocol server has not registered yet
// and tests can wait for connections to go away.
type trackingListener struct {
	net.Listener

	mu       sync.Mutex // protects everything below
	conns    map[*trackedConn]struct{}
	accepted int
	closed   bool
	changed  chan struct{} // closed and replaced when the set of conns changes
}

// listenTracking listens on 127.0.0.1 with a kernel-chosen port for the
// fake server named what ("IMAP").
func listenTracking(what string) (*trackingListener, error) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fake365: %s upstream listen: %w", what, err)
	}
	return newTrackingListener(raw), nil
}

func newTrackingListener(ln net.Listener) *trackingListener {
	return &trackingListener{
		Listener: ln,
		conns:    make(map[*trackedConn]struct{}),
		changed:  make(chan struct{}),
	}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	closed := l.closed
	if !closed {
		l.conns[tc] = struct{}{}
		l.accepted++
		l.notifyLocked()
	}
	l.mu.Unlock()
	if closed {
		c.Close()
		return nil, net.ErrClosed
	}
	return tc, nil
}

// locked runs f under the listener lock. Settings written in f are seen by
// the goroutines of every connection accepted later: Accept takes the same
// lock before the server starts a connection goroutine.
func (l *trackingListener) locked(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f()
}

func (l *trackingListener) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *trackingListener) remove(tc *trackedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.conns[tc]; ok {
		delete(l.conns, tc)
		l.notifyLocked()
	}
}

func (l *trackingListener) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *trackingListener) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.accepted
}

func (l *trackingListener) waitOpen(ctx context.Context, n int) error {
	for {
		l.mu.Lock()
		got, changed := len(l.conns), l.changed
		l.mu.Unlock()
		if got == n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("fake365: wait for %d open connections (have %d): %w", n, got, ctx.Err())
		}
	}
}

// closeAll stops accepting and closes every open connection.
func (l *trackingListener) closeAll() {
	l.mu.Lock()
	l.closed = true
	conns := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.remove(c) })
	return err
}

// shutdown is a fake server's Close: it closes the protocol server
// (closeServer, if not nil) and the listener, which Serve may not have
// registered with the protocol server yet, then every open connection,
// including one accepted a moment ago that the protocol server does not
// know of, and waits for serveDone. It returns the first error; a listener
// already closed is not one.
func (l *trackingListener) shutdown(closeServer func() error, serveDone <-chan struct{}) error {
	var err error
	if closeServer != nil {
		err = closeServer()
	}
	if e := l.Close(); e != nil && err == nil && !errors.Is(e, net.ErrClosed) {
		err = e
	}
	l.closeAll()
	<-serveDone
	return err
}
