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
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"mailproxy/auth"
	"mailproxy/front"
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

	maxBadCommands  = 10       // -ERR replies (and failed logins) before closing
	ioBufferSize    = 4 << 10  // pre-login bufio reader/writer, upstream reader
	maxUpstreamLine = 64 << 10 // one upstream line during login
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

	core front.Core // listeners, sessions, accept loop, Close and Shutdown
	once sync.Once  // sets up core and the fields below

	// Set by init, read-only after.
	mailboxes *upstream.MailboxLimiter
	backoff   *upstream.Backoff
	metrics   front.Metrics // never nil
}

func (s *Server) logger() *slog.Logger { return front.LoggerOr(s.Logger) }

func (s *Server) preAuthTimeout() time.Duration {
	return front.Or(s.PreAuthTimeout, DefaultPreAuthTimeout)
}

func (s *Server) upstreamTimeout() time.Duration {
	return front.Or(s.UpstreamTimeout, DefaultUpstreamTimeout)
}

func (s *Server) idleTimeout() time.Duration { return front.IdleOr(s.IdleTimeout, DefaultIdleTimeout) }

func (s *Server) maxLine() int { return front.Or(s.MaxLine, DefaultMaxLine) }

// init sets up the core and what the sessions share, once.
func (s *Server) init() *front.Core {
	s.once.Do(func() {
		s.mailboxes = upstream.NewMailboxLimiter(s.MaxUpstreamPerMailbox)
		s.backoff = upstream.NewBackoff()
		s.metrics = front.MetricsOrNop(s.Metrics)
		k := &s.core
		k.Proto = Name
		k.Logger = s.Logger
		k.Metrics = s.metrics
		k.PreAuthTimeout = s.preAuthTimeout()
		k.ErrClosed = ErrServerClosed
		k.NewSession = func(fc *front.Conn) front.Session { return &session{Conn: fc, s: s} }
	})
	return &s.core
}

// Serve accepts connections on ln until Close or Shutdown and serves each in
// its own goroutine. A connection that ln returns as a *tls.Conn is implicit
// TLS (port 995): STLS is not offered on it. Serve always returns a non-nil
// error, ErrServerClosed after Close or Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.init().Serve(ln) }

// Close closes the listeners and every connection, client and upstream, at
// once.
func (s *Server) Close() error { return s.init().Close() }

// Shutdown stops accepting, ends pre-login connections with "-ERR
// [SYS/TEMP] server shutting down", then waits until every session has
// ended or ctx is done; then it closes what is left and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error { return s.init().Shutdown(ctx) }

// SetTrace implements front.Front. The POP3 front has no protocol trace
// yet: its pre-login conversation is the session log's start and end
// lines and the refusal lines.
func (s *Server) SetTrace(*slog.Logger) {}

var _ front.Front = (*Server)(nil)
