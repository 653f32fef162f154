package front

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Fixed timings of the core.
const (
	// ByeWriteTimeout bounds writing a last line to a client whose
	// deadline has passed (a refusal, a BYE at shutdown or timeout).
	ByeWriteTimeout = 5 * time.Second
	lingerTimeout   = time.Second           // draining input after a protocol error
	lingerMaxBytes  = 32 << 20              // ... at most this much
	shutdownKick    = 50 * time.Millisecond // how often Shutdown re-checks live connections
	pastDeadline    = -1 * time.Millisecond // a read deadline in the past wakes a blocked read
	// upstreamBufferSize is the upstream reader's buffer during login.
	upstreamBufferSize = 4 << 10
)

// Session states, for Shutdown: it wakes the reads of pre-login sessions
// and asks relayed ones to say goodbye.
const (
	StatePreAuth int32 = iota
	StateUpstream
	StateRelay
)

// Outcomes the core sets for the end line.
const (
	OutcomeError     = "error"
	OutcomeTLSFailed = "tls handshake failed"
	OutcomeRelayed   = "relayed"
	OutcomeIdle      = "idle timeout"
)

// Session is a front's conversation with one client. The core calls Serve
// in the connection's goroutine, after the start line and, on an implicit
// TLS listener, the handshake; the connection ends when Serve returns.
type Session interface {
	Serve()
}

// Goodbyer is what a Session may also implement: at each round of
// Shutdown the core calls SayGoodbye of every session in StateRelay.
type Goodbyer interface {
	SayGoodbye()
}

// Core is what a connection-per-goroutine front (IMAP, POP3) embeds: the
// listeners and sessions it serves, the accept loop with its backoff and
// pre-login cap, the connection's id, start and end lines and recover, and
// Close and Shutdown. Set the exported fields before the first Serve,
// Close or Shutdown; they must not change after.
type Core struct {
	// Proto names the front: the proto attribute of its log lines and
	// their first word ("imap connection"), and its metrics label.
	Proto   string
	Logger  *slog.Logger // nil: slog.Default()
	Metrics Metrics      // nil: none
	// PreAuthTimeout bounds the time from accept to login: the
	// connection's Deadline.
	PreAuthTimeout time.Duration
	// MaxWaiting caps the connections per listener that have not logged
	// in (Conn.LeaveWaiting); 0 is no cap. One more is told TooManyWaiting
	// and closed at once, off the accept loop (on an implicit TLS listener
	// the write runs the handshake), and the refusal is logged through
	// Refusals.
	MaxWaiting     int
	TooManyWaiting string
	Refusals       *Refusals // nil: a Refusals of the core's own
	// NewSession makes the session of a connection.
	NewSession func(c *Conn) Session
	// ErrClosed is what Serve returns after Close or Shutdown.
	ErrClosed error
	// AfterKick (tests) is called after each round of Shutdown's kicks.
	AfterKick func()

	nextID   atomic.Uint64
	shutting atomic.Bool
	refusals Refusals

	mu        sync.Mutex // protects the fields below
	inited    bool
	closed    bool
	listeners map[*net.Listener]struct{}
	conns     map[*Conn]struct{}
	ctx       context.Context // canceled by Close; parent of every session's context
	cancel    context.CancelFunc
	active    sync.WaitGroup // one per session; Add only under mu while !closed
	metrics   Metrics        // never nil once inited
}

func (k *Core) logger() *slog.Logger {
	if k.Logger != nil {
		return k.Logger
	}
	return slog.Default()
}

// initLocked sets up the maps and the base context. k.mu must be held.
func (k *Core) initLocked() {
	if k.inited {
		return
	}
	k.inited = true
	k.listeners = make(map[*net.Listener]struct{})
	k.conns = make(map[*Conn]struct{})
	k.ctx, k.cancel = context.WithCancel(context.Background())
	k.metrics = MetricsOrNop(k.Metrics)
	if k.Refusals == nil {
		k.Refusals = &k.refusals
	}
}

// Shutting reports whether Close or Shutdown was called.
func (k *Core) Shutting() bool { return k.shutting.Load() }

func (k *Core) errClosed() error {
	if k.ErrClosed != nil {
		return k.ErrClosed
	}
	return ErrServerClosed
}

// Serve accepts connections on ln until Close or Shutdown and serves each
// in its own goroutine. Temporary accept failures (out of file
// descriptors) are retried with a backoff (RetryListener). Serve always
// returns a non-nil error, ErrClosed after Close or Shutdown.
func (k *Core) Serve(ln net.Listener) error {
	lnp := &ln
	k.mu.Lock()
	k.initLocked()
	if k.closed {
		k.mu.Unlock()
		ln.Close()
		return k.errClosed()
	}
	k.listeners[lnp] = struct{}{}
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		delete(k.listeners, lnp)
		k.mu.Unlock()
	}()

	rl := &RetryListener{Listener: ln, Ctx: k.ctx, Stop: k.isClosed,
		OnRetry: func(err error, d time.Duration) {
			k.logger().Warn(k.Proto+" accept failed", "err", err, "retry_in", d)
		}}
	var waiting *atomic.Int32 // this listener's connections not logged in yet
	if k.MaxWaiting > 0 {
		waiting = new(atomic.Int32)
	}
	for {
		nc, err := rl.Accept()
		if err != nil {
			if k.isClosed() {
				return k.errClosed()
			}
			return err
		}
		if waiting != nil && waiting.Add(1) > k.maxWaiting() {
			waiting.Add(-1)
			k.refuseWaiting(nc)
			continue
		}
		c := k.newConn(nc, waiting)
		if c == nil {
			if waiting != nil {
				waiting.Add(-1)
			}
			nc.Close()
			continue
		}
		go c.serve()
	}
}

// ServeConn serves nc in the calling goroutine as Serve would serve a
// connection it accepted, outside any listener's pre-login count, and
// returns the outcome of its end line (fuzzers drive whole sessions
// through it). After Close it only closes nc.
func (k *Core) ServeConn(nc net.Conn) (outcome string) {
	k.mu.Lock()
	k.initLocked()
	k.mu.Unlock()
	c := k.newConn(nc, nil)
	if c == nil {
		nc.Close()
		return ""
	}
	c.serve()
	return c.Outcome
}

func (k *Core) isClosed() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.closed
}

func (k *Core) maxWaiting() int32 { return int32(min(k.MaxWaiting, 1<<30)) }

// refuseWaiting tells nc TooManyWaiting and closes it, off the accept loop:
// on an implicit TLS listener the write runs the handshake.
func (k *Core) refuseWaiting(nc net.Conn) {
	k.Refusals.Log(k.logger(), slog.LevelWarn, "", k.Proto+": too many connections on this listener waiting to log in; refused",
		"remote", nc.RemoteAddr().String(), "limit", k.maxWaiting())
	go func() {
		nc.SetDeadline(time.Now().Add(ByeWriteTimeout))
		io.WriteString(nc, k.TooManyWaiting)
		nc.Close()
	}()
}

// newConn registers a connection for nc, or returns nil when the core is
// closed.
func (k *Core) newConn(nc net.Conn, waiting *atomic.Int32) *Conn {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	c := &Conn{NC: nc, ID: k.nextID.Add(1), core: k, waiting: waiting}
	c.Ctx, c.cancel = context.WithCancel(k.ctx)
	c.Log = k.logger().With("proto", k.Proto, "conn", c.ID, "remote", nc.RemoteAddr().String())
	c.sess = k.NewSession(c)
	k.conns[c] = struct{}{}
	k.active.Add(1)
	return c
}

func (k *Core) remove(c *Conn) {
	k.mu.Lock()
	delete(k.conns, c)
	k.mu.Unlock()
	c.cancel()
	k.active.Done()
}

// closeListenersLocked stops accepting. k.mu must be held.
func (k *Core) closeListenersLocked() error {
	var err error
	for lnp := range k.listeners {
		if e := (*lnp).Close(); e != nil && err == nil && !errors.Is(e, net.ErrClosed) {
			err = e
		}
		delete(k.listeners, lnp)
	}
	return err
}

// Close closes the listeners and every connection, client and upstream, at
// once.
func (k *Core) Close() error {
	k.shutting.Store(true)
	k.mu.Lock()
	k.initLocked()
	k.closed = true
	err := k.closeListenersLocked()
	for c := range k.conns {
		c.closeConns()
	}
	k.cancel()
	k.mu.Unlock()
	return err
}

// Shutdown stops accepting, then kicks the sessions every 50 ms until
// every one has ended or ctx is done: a pre-login session's read is woken
// (the session sees Shutting and says its last line), a relayed one that
// is a Goodbyer is asked to say goodbye. When ctx is done first it closes
// what is left without a word and returns ctx.Err().
func (k *Core) Shutdown(ctx context.Context) error {
	k.shutting.Store(true)
	k.mu.Lock()
	k.initLocked()
	k.closed = true
	err := k.closeListenersLocked()
	k.mu.Unlock()

	done := make(chan struct{})
	go func() {
		k.active.Wait()
		close(done)
	}()
	// A session that was busy (checking a password, logging in upstream)
	// when it was first kicked may be back to reading commands later: kick
	// pre-login sessions again until all are gone.
	tick := time.NewTicker(shutdownKick)
	defer tick.Stop()
	for {
		k.kick()
		if k.AfterKick != nil {
			k.AfterKick()
		}
		select {
		case <-done:
			return err
		case <-ctx.Done():
			k.Close()
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// kick wakes the reads of pre-login sessions and asks relayed sessions to
// say goodbye.
func (k *Core) kick() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for c := range k.conns {
		switch c.state.Load() {
		case StatePreAuth:
			c.NC.SetReadDeadline(time.Now().Add(pastDeadline))
		case StateRelay:
			if g, ok := c.sess.(Goodbyer); ok {
				g.SayGoodbye()
			}
		}
	}
}

// serve runs the connection: the start line, the pre-login deadline, the
// implicit TLS handshake, the session, and whatever happens, the end line.
func (c *Conn) serve() {
	k := c.core
	c.Start = time.Now()
	tc, implicitTLS := c.NC.(*tls.Conn)
	c.Log.Info(k.Proto+" connection", "tls", implicitTLS)
	k.metrics.ConnOpened(k.Proto)
	defer func() {
		if v := recover(); v != nil {
			c.Log.Error(k.Proto+" session panic", "panic", v, "stack", string(debug.Stack()))
			c.Outcome = OutcomeError
		}
		c.LeaveWaiting()
		c.closeConns()
		k.metrics.ConnClosed(k.Proto)
		c.Log.Info(k.Proto+" connection closed",
			"account", c.Account,
			"outcome", c.Outcome,
			"duration", time.Since(c.Start).Round(time.Millisecond),
			"bytes_up", c.Up,
			"bytes_down", c.Down)
		k.remove(c)
	}()

	c.Deadline = c.Start.Add(k.PreAuthTimeout)
	c.NC.SetDeadline(c.Deadline)
	if implicitTLS {
		ctx, cancel := context.WithDeadline(c.Ctx, c.Deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			c.Outcome = OutcomeTLSFailed
			c.Log.Info(k.Proto+" tls handshake failed", "err", err)
			return
		}
		c.IsTLS = true
	}
	c.sess.Serve()
}
