// Package pop3 is the POP3 front of mailproxy. It answers what RFC 1939,
// 2449, 2595 and 5034 allow before login itself (CAPA, USER/PASS, AUTH
// PLAIN and LOGIN, STLS, QUIT), checks the local password through the
// Authenticator, logs in to the account's upstream POP3 server with AUTH
// XOAUTH2 over implicit TLS, and from then on relays bytes both ways
// without parsing them: RETR, TOP, UIDL, LIST, DELE, RSET and QUIT are the
// upstream's business.
package pop3

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/internal/wait"
	"mailproxy/upstream"
)

// Defaults for the Server fields left zero, and the fixed limits.
const (
	DefaultPreAuthTimeout  = 60 * time.Second // whole pre-login phase, from accept to login
	DefaultUpstreamTimeout = 30 * time.Second // token + dial + TLS + greeting + XOAUTH2, the retry included
	DefaultMaxLine         = 8192             // bytes of one pre-login line (RFC 2449 asks clients for 255)
	// DefaultIdleTimeout ends a relayed session with no byte either way;
	// RFC 1939 wants an inactivity timer of at least 10 minutes.
	DefaultIdleTimeout = 10 * time.Minute

	byeWriteTimeout = 5 * time.Second       // writing a last reply when a deadline has passed
	lingerTimeout   = time.Second           // draining input after a protocol error
	lingerMaxBytes  = 32 << 20              // ... at most this much
	maxBadCommands  = 10                    // -ERR replies (and failed logins) before closing
	ioBufferSize    = 4 << 10               // pre-login bufio reader/writer, upstream reader
	maxUpstreamLine = 64 << 10              // one upstream line during login
	shutdownKick    = 50 * time.Millisecond // how often Shutdown re-checks live connections
	pastDeadline    = -1 * time.Millisecond // a read deadline in the past wakes a blocked read
	// maxCommandLine is RFC 2449's limit on a command line, CRLF included.
	// RFC 5034: an AUTH with an initial response that would not fit is
	// sent in the two-step form instead.
	maxCommandLine = 255
)

// Name is the front's name: its config block, listener and metrics label,
// and its server's key in upstream.Upstream.Addr.
const Name = "pop3"

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = fmt.Errorf("pop3 front: %w", front.ErrServerClosed)

// TooManyConnections is the line for a connection refused by a connection
// limit on a plain POP3 listener.
const TooManyConnections = "-ERR [SYS/TEMP] too many connections\r\n"

// Server is the POP3 front. Set the exported fields before calling Serve;
// one Server may serve several listeners (plain and implicit TLS).
//
// Shutdown stops accepting, answers pre-login connections "-ERR
// [SYS/TEMP] server shutting down" and waits for relayed sessions to end
// (POP3 sessions are short: a client fetches and quits); those still open
// when the Shutdown context is done are closed without a word. POP3 has no
// unsolicited reply that could tell a relayed client to go, and closing
// before the client's QUIT loses nothing: the upstream applies DELE only
// at QUIT.
type Server struct {
	Auth           auth.Authenticator
	TLSConfig      *tls.Config     // nil: no STLS
	Logger         *slog.Logger    // nil: slog.Default()
	Dial           upstream.Dialer // nil: net.Dialer
	PreAuthTimeout time.Duration
	// UpstreamTimeout bounds the upstream login: getting the token, dial,
	// TLS, greeting and XOAUTH2 exchange, and the one retry after a forced
	// refresh.
	UpstreamTimeout time.Duration
	MaxLine         int // bytes of one pre-login line; 0: DefaultMaxLine
	// IdleTimeout ends a relayed session when neither side has sent a byte
	// for this long; 0 means DefaultIdleTimeout, negative none.
	IdleTimeout time.Duration
	// MaxUpstreamPerMailbox caps the concurrent upstream connections of one
	// mailbox; 0 means upstream.DefaultMaxUpstreamPerMailbox.
	MaxUpstreamPerMailbox int
	// PlaintextAllowed says whether a client at an address may send its
	// password over a connection without TLS; nil allows everyone. A client
	// that may not is offered no USER and no SASL until it has TLS, and
	// USER, PASS and AUTH get "-ERR [SYS/PERM] TLS required".
	PlaintextAllowed func(netip.Addr) bool
	// Metrics receives connection, login and relay counts; nil: none.
	Metrics front.Metrics

	nextID   atomic.Uint64
	shutting atomic.Bool

	mu        sync.Mutex // protects the fields below
	closed    bool
	listeners map[*net.Listener]struct{}
	sessions  map[*session]struct{}
	ctx       context.Context // canceled by Close; parent of every session's context
	cancel    context.CancelFunc
	active    sync.WaitGroup // one per session; Add only under mu while !closed

	// Set by initLocked, read-only after.
	mailboxes *upstream.MailboxLimiter
	backoff   *upstream.Backoff
	metrics   front.Metrics // never nil
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) preAuthTimeout() time.Duration {
	if s.PreAuthTimeout > 0 {
		return s.PreAuthTimeout
	}
	return DefaultPreAuthTimeout
}

func (s *Server) upstreamTimeout() time.Duration {
	if s.UpstreamTimeout > 0 {
		return s.UpstreamTimeout
	}
	return DefaultUpstreamTimeout
}

func (s *Server) idleTimeout() time.Duration {
	switch {
	case s.IdleTimeout > 0:
		return s.IdleTimeout
	case s.IdleTimeout < 0:
		return 0
	}
	return DefaultIdleTimeout
}

func (s *Server) maxLine() int {
	if s.MaxLine > 0 {
		return s.MaxLine
	}
	return DefaultMaxLine
}

// initLocked sets up the maps and the base context. s.mu must be held.
func (s *Server) initLocked() {
	if s.listeners == nil {
		s.listeners = make(map[*net.Listener]struct{})
		s.sessions = make(map[*session]struct{})
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.mailboxes = upstream.NewMailboxLimiter(s.MaxUpstreamPerMailbox)
		s.backoff = upstream.NewBackoff()
		s.metrics = front.MetricsOrNop(s.Metrics)
	}
}

// Serve accepts connections on ln until Close or Shutdown and serves each in
// its own goroutine. A connection that ln returns as a *tls.Conn is implicit
// TLS (port 995): STLS is not offered on it. Serve always returns a non-nil
// error, ErrServerClosed after Close or Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	lnp := &ln
	s.mu.Lock()
	s.initLocked()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[lnp] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, lnp)
		s.mu.Unlock()
	}()

	var backoff wait.Backoff
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			d := backoff.Next()
			s.logger().Warn("pop3 accept failed", "err", err, "retry_in", d)
			wait.Sleep(s.ctx, d)
			continue
		}
		backoff.Reset()
		c := s.newSession(nc)
		if c == nil {
			nc.Close()
			continue
		}
		go c.serve()
	}
}

func (s *Server) newSession(nc net.Conn) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	c := &session{s: s, nc: nc, id: s.nextID.Add(1)}
	c.ctx, c.cancel = context.WithCancel(s.ctx)
	s.sessions[c] = struct{}{}
	s.active.Add(1)
	return c
}

func (s *Server) removeSession(c *session) {
	s.mu.Lock()
	delete(s.sessions, c)
	s.mu.Unlock()
	c.cancel()
	s.active.Done()
}

func (s *Server) closeListenersLocked() error {
	var err error
	for lnp := range s.listeners {
		if e := (*lnp).Close(); e != nil && err == nil && !errors.Is(e, net.ErrClosed) {
			err = e
		}
		delete(s.listeners, lnp)
	}
	return err
}

// Close closes the listeners and every connection, client and upstream, at
// once.
func (s *Server) Close() error {
	s.shutting.Store(true)
	s.mu.Lock()
	s.initLocked()
	s.closed = true
	err := s.closeListenersLocked()
	for c := range s.sessions {
		c.closeConns()
	}
	s.cancel()
	s.mu.Unlock()
	return err
}

// Shutdown stops accepting, ends pre-login connections with "-ERR
// [SYS/TEMP] server shutting down", then waits until every session has
// ended or ctx is done; then it closes what is left and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutting.Store(true)
	s.mu.Lock()
	s.initLocked()
	s.closed = true
	err := s.closeListenersLocked()
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.active.Wait()
		close(done)
	}()
	// A session busy checking a password when first kicked may be back to
	// reading commands later: kick pre-login sessions until all are gone.
	tick := time.NewTicker(shutdownKick)
	defer tick.Stop()
	for {
		s.kick()
		select {
		case <-done:
			return err
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// SetTrace implements front.Front. The POP3 front has no protocol trace
// yet: its pre-login conversation is the session log's start and end
// lines and the refusal lines.
func (s *Server) SetTrace(*slog.Logger) {}

var _ front.Front = (*Server)(nil)

// kick wakes the reads of pre-login sessions, which see s.shutting and
// close.
func (s *Server) kick() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.sessions {
		if c.state.Load() == statePreAuth {
			c.nc.SetReadDeadline(time.Now().Add(pastDeadline))
		}
	}
}
