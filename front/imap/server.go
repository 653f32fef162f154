// Package imap is the IMAP front of mailproxy. It answers the commands
// allowed before login itself (CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN,
// AUTHENTICATE PLAIN/LOGIN), checks the local password through a
// auth.Authenticator, logs in to the account's upstream server with
// XOAUTH2, and from then on relays bytes both ways without parsing them.
package imap

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

// Defaults for the Server fields left zero, and the fixed timeouts.
const (
	DefaultPreAuthTimeout  = 60 * time.Second // whole pre-auth phase, from accept to login
	DefaultMaxPreAuthConns = 200              // per listener, not logged in yet
	DefaultUpstreamTimeout = 30 * time.Second // token + dial + TLS + greeting + XOAUTH2, the retry included
	DefaultMaxLine         = 65536            // command text bytes per command: RFC 2971's largest ID fits
	DefaultMaxLiteral      = 64 << 10         // literal bytes per command
	DefaultIdleTimeout     = 30 * time.Minute // relayed session with no byte either way; RFC 2177 IDLE needs 29m

	maxBadCommands    = 10       // BAD replies (and failed logins) before BYE
	ioBufferSize      = 4 << 10  // pre-auth bufio reader/writer, upstream reader
	maxUpstreamLine   = 64 << 10 // one upstream response during login
	maxUpstreamBefore = 64 << 10 // untagged upstream data before the tagged reply

	traceMaxLine = 2000 // bytes of one line in the protocol trace
)

// shutdownBye is what a relayed session hears at shutdown.
const shutdownBye = "* BYE mailproxy is shutting down\r\n"

// Name is the front's name: its config block, its listeners ("imap", "imaps"),
// its metrics label and the key of its address in upstream.Upstream.Addr.
const Name = "imap"

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = fmt.Errorf("imap front: %w", front.ErrServerClosed)

// TooManyConnections is the line for a connection refused by a connection
// limit (front.ConnLimiter.Listener on a plain IMAP listener).
const TooManyConnections = "* BYE too many connections\r\n"

// Server is the IMAP front. Set the exported fields before calling Serve;
// one Server may serve several listeners (plain and implicit TLS).
//
// Shutdown stops accepting, tells pre-auth connections "* BYE server
// shutting down" and relayed sessions "* BYE mailproxy is shutting down",
// and waits for the sessions to end. A relayed session gets its BYE where
// the upstream's stream is between responses, never inside a literal the
// upstream is sending (relay.Goodbye); one that does not get there, or
// whose client does not read, is closed without a word when the Shutdown
// context is done. Clients reconnect.
type Server struct {
	refusals front.Refusals // rate-limits refusal log lines

	Auth           auth.Authenticator
	TLSConfig      *tls.Config     // nil: no STARTTLS
	Logger         *slog.Logger    // nil: slog.Default(); lines carry proto=imap already
	Dial           upstream.Dialer // nil: net.Dialer
	PreAuthTimeout time.Duration
	// UpstreamTimeout bounds the upstream login: getting the token, dial,
	// TLS, greeting and XOAUTH2 exchange, and the one retry after a forced
	// refresh.
	UpstreamTimeout time.Duration
	// MaxPreAuthConns caps the connections per listener that have not
	// logged in yet (0: DefaultMaxPreAuthConns). One more is told
	// TooManyWaiting and closed at once, so a flood of silent connections
	// cannot take the slots of logged-in sessions or of the other fronts.
	MaxPreAuthConns int
	MaxLine         int // bytes of command text per pre-auth command
	MaxLiteral      int // literal bytes per pre-auth command
	// IdleTimeout ends a relayed session when neither side has sent a
	// byte for this long; 0 means DefaultIdleTimeout, negative none. Keep
	// it above 29 minutes (RFC 2177): a client in IDLE may stay silent
	// that long.
	IdleTimeout time.Duration
	// MaxUpstreamPerMailbox caps the concurrent upstream connections of one
	// mailbox; 0 means upstream.DefaultMaxUpstreamPerMailbox (16; Exchange
	// Online allows about 20). Over the cap a login gets
	// "NO [UNAVAILABLE] too many sessions for this mailbox".
	MaxUpstreamPerMailbox int
	// PlaintextAllowed says whether a client at an address may send its
	// password over a connection without TLS; nil allows everyone. A
	// client that may not is offered LOGINDISABLED and no AUTH=
	// mechanisms, and LOGIN and AUTHENTICATE get
	// "NO [PRIVACYREQUIRED] use STARTTLS first".
	PlaintextAllowed func(netip.Addr) bool
	// Metrics receives connection, login and relay counts; nil: none.
	Metrics front.Metrics
	// Trace, when not nil, gets a protocol trace at debug level: each
	// pre-auth command and reply, and the upstream login conversation,
	// with every password, SASL payload and token replaced by
	// "<redacted>". The relayed session is not traced.
	Trace *slog.Logger

	core front.Core // listeners, sessions, accept loop, Close and Shutdown
	once sync.Once  // sets up core and the fields below

	// Set by init, read-only after (tests may set them before Serve).
	mailboxes *upstream.MailboxLimiter // upstream connections per mailbox
	backoff   *upstream.Backoff        // mailboxes the upstream throttled
	metrics   front.Metrics            // never nil
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

func (s *Server) maxLiteral() int { return front.Or(s.MaxLiteral, DefaultMaxLiteral) }

// init sets up the core and what the sessions share, once.
func (s *Server) init() *front.Core {
	s.once.Do(func() {
		if s.mailboxes == nil {
			s.mailboxes = upstream.NewMailboxLimiter(s.MaxUpstreamPerMailbox)
		}
		if s.backoff == nil {
			s.backoff = upstream.NewBackoff()
		}
		s.metrics = front.MetricsOrNop(s.Metrics)
		k := &s.core
		k.Proto = Name
		k.Logger = s.Logger
		k.Metrics = s.metrics
		k.PreAuthTimeout = s.preAuthTimeout()
		k.MaxWaiting = s.maxPreAuthConns()
		k.TooManyWaiting = TooManyWaiting
		k.Refusals = &s.refusals
		k.ErrClosed = ErrServerClosed
		k.NewSession = func(fc *front.Conn) front.Session { return &session{Conn: fc, s: s} }
	})
	return &s.core
}

// Serve accepts connections on ln until Close or Shutdown and serves each in
// its own goroutine. A connection that ln returns as a *tls.Conn is implicit
// TLS: STARTTLS is not offered on it. Serve always returns a non-nil error,
// ErrServerClosed after Close or Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.init().Serve(ln) }

// TooManyWaiting is said to a connection refused because its listener has
// MaxPreAuthConns connections that have not logged in.
const TooManyWaiting = "* BYE too many connections waiting to log in; try again later\r\n"

func (s *Server) maxPreAuthConns() int { return front.Or(s.MaxPreAuthConns, DefaultMaxPreAuthConns) }

// Close closes the listeners and every connection, client and upstream, at
// once.
func (s *Server) Close() error { return s.init().Close() }

// Shutdown stops accepting, ends pre-auth connections with
// "* BYE server shutting down" and relayed ones with "* BYE mailproxy is
// shutting down" (written where the upstream's stream is between responses;
// see Server), then waits until every session has ended or ctx is done;
// then it closes what is left without a word and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error { return s.init().Shutdown(ctx) }

// SetTrace implements front.Front.
func (s *Server) SetTrace(trace *slog.Logger) { s.Trace = trace }

var _ front.Front = (*Server)(nil)
