// Package smtp owns the SMTP front of the proxy: a go-smtp server that takes
// local AUTH PLAIN / AUTH LOGIN logins, and for each client session one
// upstream session (a submit.Submitter, by default smtpclient's client to
// the provider's server, authenticated with XOAUTH2) opened at the first
// MAIL. Envelopes and their options are passed on command by command,
// message data streams through go-smtp's DATA reader, and the upstream's
// replies reach the client with their own codes. go-smtp serves every
// listener itself; listener wraps each for accept backoff and the
// connection's start and end lines. Server.Trace gives a protocol trace
// without credentials, written by the session methods (trace.go).
package smtp

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"mailproxy/auth"
	"mailproxy/config"
	"mailproxy/front"
	"mailproxy/submit"
	"mailproxy/upstream"
)

// Defaults for the zero values of Server's fields, and the fixed timeouts of
// the upstream side.
const (
	defaultReadTimeout     = 10 * time.Minute // one client command, or the whole DATA phase
	defaultWriteTimeout    = time.Minute      // one reply to the client
	defaultUpstreamTimeout = 30 * time.Second // token + dial + TLS + EHLO + AUTH, all together
	defaultDomain          = "localhost"

	shutdownNoticeTimeout = time.Second // writing "421 shutting down" to an idle client

	// maxLineLength bounds command lines and, because go-smtp applies the
	// same limit inside DATA, message lines too: generous enough for the
	// long unwrapped lines that real programs produce (RFC 5322's 998 is
	// often ignored), small enough to bound memory per connection.
	maxLineLength = 64 << 10
)

// Name is the front's name: its config block, its listeners ("smtp", "smtps"),
// its metrics label and the key of its address in upstream.Upstream.Addr.
const Name = "smtp"

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = fmt.Errorf("smtp front: %w", front.ErrServerClosed)

// TooManyConnections is the reply for a connection refused by a connection
// limit (front.ConnLimiter.Listener on a plain SMTP listener).
const TooManyConnections = "421 4.7.0 too many connections\r\n"

// Server is the SMTP front. Set the fields, then call Serve for each
// listener. Fields must not change after the first Serve.
type Server struct {
	Auth auth.Authenticator // required
	// TLSConfig enables STARTTLS on plain listeners. A listener whose
	// connections already are *tls.Conn (tls.NewListener) is implicit TLS
	// and offers no STARTTLS.
	TLSConfig *tls.Config
	Logger    *slog.Logger    // nil: slog.Default(); lines carry proto=smtp already
	Dial      upstream.Dialer // upstream dialer; nil: net.Dialer

	Domain          string        // greeting and upstream EHLO name; "" = "localhost"
	MaxMessageBytes int64         // advertised SIZE; 0 = 35 MiB
	MaxRecipients   int           // per message; 0 = no local limit (the upstream has its own)
	ReadTimeout     time.Duration // one client command, or a whole DATA; 0 = 10m
	WriteTimeout    time.Duration // one reply to the client; 0 = 1m
	UpstreamTimeout time.Duration // token, dial, TLS, EHLO and AUTH upstream together; 0 = 30s
	// Pre-login bounds (preauth.go): the time from connect to a login
	// (0 = 60s), commands before it (0 = 30), and connections per
	// listener that have not logged in (0 = 200).
	PreAuthTimeout     time.Duration
	MaxPreAuthCommands int
	MaxPreAuthConns    int
	// PlaintextAllowed says whether a client at an address may send its
	// password over a connection without TLS; nil allows everyone. To a
	// client that may not, AUTH is not advertised before STARTTLS and is
	// refused with "538 5.7.11 Encryption required".
	PlaintextAllowed func(netip.Addr) bool
	// Metrics receives connection, login and message counts; nil: none.
	Metrics front.Metrics
	// Trace, when set, gets a protocol trace at debug level (for -debug):
	// each command from the client and each reply to it, and each command
	// and reply upstream, one line each with the connection's id and a
	// direction (client->proxy, proxy->client, proxy->upstream,
	// upstream->proxy). Credentials are replaced by "<redacted>": AUTH
	// arguments, every line sent after a 334, the XOAUTH2 response; message
	// data shows as its size. nil: no trace.
	Trace *slog.Logger
	// Opener, when set, gives the upstream session opener of a login
	// (Graph, the spool, tests); nil (the field, or what it returns for a
	// login): smtpclient to g.Upstream.AddrOf(Name).
	Opener func(g *auth.Grant) submit.Opener
	// Intake, when set, sends device mail (and that of accounts with
	// spool = true) through the spool; nil: everything goes straight
	// upstream.
	Intake Intake

	metrics  front.Metrics     // never nil once started
	refusals front.Refusals    // rate-limits refusal log lines
	backoff  *upstream.Backoff // identities the upstream throttled; tests may set it before Serve
	// throttles counts the throttling replies noted in backoff (upstream.go).
	throttles atomic.Uint64

	mu      sync.Mutex // protects the fields below
	started bool
	closing bool                      // Close or Shutdown was called
	servers map[*smtp.Server]struct{} // one per served listener
	lns     map[net.Listener]struct{}
	conns   map[*conn]struct{}
	baseCtx context.Context
	cancel  context.CancelFunc

	hardClose atomic.Bool            // Close was called: cut upstreams instead of QUIT
	afterData atomic.Pointer[func()] // tests: called when Data returned, before go-smtp replies
}

func (s *Server) logger() *slog.Logger { return front.LoggerOr(s.Logger) }

func (s *Server) domain() string {
	if s.Domain != "" {
		return s.Domain
	}
	return defaultDomain
}

func (s *Server) upstreamTimeout() time.Duration {
	return front.Or(s.UpstreamTimeout, defaultUpstreamTimeout)
}

func (s *Server) maxMessageBytes() int64 {
	return front.Or(s.MaxMessageBytes, config.FallbackMaxMessageBytes)
}

func (s *Server) readTimeout() time.Duration { return front.Or(s.ReadTimeout, defaultReadTimeout) }

// newSMTP configures one go-smtp server; tlsConfig nil means no STARTTLS.
func (s *Server) newSMTP(tlsConfig *tls.Config) *smtp.Server {
	gs := smtp.NewServer(backend{s})
	gs.Domain = s.domain()
	gs.TLSConfig = tlsConfig
	// Whether a password may cross the network in plain text is decided
	// by the configuration (loopback or allow_plaintext_from), not here.
	gs.AllowInsecureAuth = true
	gs.EnableSMTPUTF8 = true
	gs.EnableDSN = true
	// The upstream client sends DATA, never BDAT, so BINARYMIME cannot
	// be relayed.
	gs.EnableBINARYMIME = false
	gs.MaxLineLength = maxLineLength
	gs.MaxMessageBytes = s.maxMessageBytes()
	gs.MaxRecipients = s.MaxRecipients
	gs.ReadTimeout = s.readTimeout()
	gs.WriteTimeout = front.Or(s.WriteTimeout, defaultWriteTimeout)
	gs.ErrorLog = errorLog{s.logger()}
	return gs
}

// start sets up what every listener shares, on first use.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return ErrServerClosed
	}
	if s.started {
		return nil
	}
	s.started = true
	s.metrics = front.MetricsOrNop(s.Metrics)
	if s.backoff == nil {
		s.backoff = upstream.NewBackoff()
	}
	s.baseCtx, s.cancel = context.WithCancel(context.Background())
	s.lns = make(map[net.Listener]struct{})
	s.conns = make(map[*conn]struct{})
	s.servers = make(map[*smtp.Server]struct{})
	return nil
}

// Serve serves ln with a go-smtp server of its own until Close or
// Shutdown, and returns ErrServerClosed then; like net/http it always
// closes ln. A listener serves one kind of connection: the first one
// accepted tells whether it is implicit TLS (a *tls.Conn, from
// tls.NewListener), and so whether STARTTLS is offered.
func (s *Server) Serve(ln net.Listener) error {
	defer ln.Close()
	if s.Auth == nil {
		return errors.New("smtp front: Server.Auth is nil")
	}
	if err := s.start(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	l := &listener{Listener: s.retryListener(ln), s: s}
	s.lns[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, l)
		s.mu.Unlock()
	}()

	first, err := l.Accept()
	if err != nil {
		if s.isClosing() {
			return ErrServerClosed
		}
		return err
	}
	tlsConfig := s.TLSConfig
	if first.(*conn).implicitTLS {
		tlsConfig = nil
	}
	gs := s.newSMTP(tlsConfig)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		first.Close()
		return ErrServerClosed
	}
	s.servers[gs] = struct{}{}
	s.mu.Unlock()
	l.first = first
	err = gs.Serve(l)
	if s.isClosing() {
		return ErrServerClosed
	}
	return err
}

// listener is what go-smtp accepts from: over retryListener, it wraps
// every connection for its id, log lines and counters, and refuses one
// over the pre-login cap.
type listener struct {
	net.Listener
	s     *Server
	first net.Conn // accepted by Serve before go-smtp started; handed out first
	// waiting counts this listener's connections that have not logged in.
	waiting atomic.Int32

	closeOnce sync.Once
	closeErr  error
}

// Close closes the listener once: Close and Shutdown close it, and so does
// go-smtp. One the owner closed already is not an error.
func (l *listener) Close() error {
	l.closeOnce.Do(func() {
		if err := l.Listener.Close(); !errors.Is(err, net.ErrClosed) {
			l.closeErr = err
		}
	})
	return l.closeErr
}

func (l *listener) Accept() (net.Conn, error) {
	if c := l.first; c != nil {
		l.first = nil
		return c, nil
	}
	for {
		nc, err := l.Listener.Accept()
		if err == nil {
			c := l.s.track(nc)
			if !c.admit(&l.waiting) {
				c.setOutcome("too many waiting to log in")
				l.s.refusals.Log(c.log, slog.LevelWarn, "", "smtp: too many connections on this listener waiting to log in; refused", "limit", l.s.maxPreAuthConns())
				c.Conn.SetWriteDeadline(time.Now().Add(shutdownNoticeTimeout))
				io.WriteString(c.Conn, TooManyWaiting)
				c.Close()
				continue
			}
			return c, nil
		}
		if l.s.isClosing() {
			return nil, net.ErrClosed
		}
		return nil, fmt.Errorf("smtp accept: %w", err)
	}
}

// retryListener is front's accept backoff under go-smtp (which would sleep
// uncancellably): it waits out temporary accept errors, and Close cuts a
// wait short.
func (s *Server) retryListener(ln net.Listener) net.Listener {
	return &front.RetryListener{
		Listener: ln,
		Ctx:      s.baseCtx,
		Stop:     s.isClosing,
		Retry: func(err error) bool {
			var te interface{ Temporary() bool }
			return errors.As(err, &te) && te.Temporary()
		},
		OnRetry: func(err error, d time.Duration) {
			s.logger().Warn("smtp accept failed; retrying", "err", err, "in", d)
		},
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// closeListeners marks the server closing and closes every listener; it
// returns the go-smtp servers to stop, nil if Close or Shutdown already ran
// or nothing was ever served.
func (s *Server) closeListeners() (servers []*smtp.Server, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, ErrServerClosed
	}
	s.closing = true
	for ln := range s.lns {
		if cerr := ln.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	if !s.started {
		return nil, err
	}
	servers = make([]*smtp.Server, 0, len(s.servers))
	for gs := range s.servers {
		servers = append(servers, gs)
	}
	return servers, err
}

// Close closes the listeners and every connection at once, cutting
// upstream connections (a message in flight is not acknowledged, so the
// client will send it again).
func (s *Server) Close() error {
	s.hardClose.Store(true)
	servers, err := s.closeListeners()
	if servers == nil {
		return err
	}
	s.cancel()
	for _, gs := range servers {
		gs.Close()
	}
	return err
}

// Shutdown stops accepting, closes idle connections (with a 421 reply)
// and lets open transactions finish, closing each connection as soon as it
// is idle. It returns when every connection is gone, or ctx's error when
// ctx ends first; call Close then.
func (s *Server) Shutdown(ctx context.Context) error {
	servers, err := s.closeListeners()
	if servers == nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		var err error
		for _, gs := range servers {
			if serr := gs.Shutdown(ctx); serr != nil && err == nil {
				err = serr
			}
		}
		done <- err
	}()
	// Like net/http: poll for idle connections with a growing interval.
	wait := time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case serr := <-done:
			if err == nil {
				err = serr
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			s.closeIdle()
			timer.Reset(wait)
			wait = min(2*wait, 500*time.Millisecond)
		}
	}
}

func (s *Server) closeIdle() {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeIfIdle()
	}
}

// backend creates a session per client connection (and a fresh one after
// STARTTLS, as go-smtp requires).
type backend struct{ s *Server }

func (b backend) NewSession(sc *smtp.Conn) (smtp.Session, error) {
	c := connOf(sc.Conn())
	if c == nil {
		// Cannot happen: every connection comes from our listener.
		return nil, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "internal error"}
	}
	if _, ok := sc.Conn().(*tls.Conn); ok && !c.implicitTLS {
		c.pre.tls.Store(true)
		c.note(dirClientIn, "STARTTLS")
		c.note(dirClientIn, "<TLS handshake done>")
	}
	c.note(dirClientIn, "EHLO "+sc.Hostname())
	sess := newSession(b.s, c, sc.Conn())
	c.setSession(sess)
	return sess, nil
}

// errorLog sends go-smtp's own messages (connection errors, recovered
// panics) to slog. They carry addresses and network errors, no secrets.
type errorLog struct{ l *slog.Logger }

func (e errorLog) Printf(format string, v ...any) { e.log(fmt.Sprintf(format, v...)) }
func (e errorLog) Println(v ...any)               { e.log(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (e errorLog) log(msg string) {
	if strings.Contains(msg, "panic") {
		e.l.Error("smtp server panic", "detail", msg)
		return
	}
	e.l.Debug("smtp server", "detail", msg)
}

// conn wraps every client connection: it owns the connection's id, its
// logger, the counters of the end line, and notices the close.
type conn struct {
	net.Conn
	srv         *Server
	id          string
	log         *slog.Logger
	trace       *slog.Logger // nil unless Server.Trace is set
	start       time.Time
	implicitTLS bool

	messages atomic.Int64
	bytes    atomic.Int64
	pre      preAuth
	// reading is set while go-smtp waits in Read for the client: only then
	// has the reply to the last command been written (see closeIfIdle).
	reading atomic.Bool
	ra      readAhead // readahead.go

	mu       sync.Mutex // protects the fields below
	sess     *session   // the current go-smtp session, nil before EHLO and right after STARTTLS
	counted  string     // the account counted in Metrics.Session, "" if none
	ended    bool       // Close ran: count no new session
	account  string
	upstream string
	outcome  string

	closeOnce sync.Once
	closeErr  error
}

func (s *Server) track(nc net.Conn) *conn {
	_, implicitTLS := nc.(*tls.Conn)
	c := &conn{
		Conn:        nc,
		srv:         s,
		id:          newID(),
		start:       time.Now(),
		implicitTLS: implicitTLS,
	}
	c.log = s.logger().With("proto", Name, "conn", c.id, "remote", nc.RemoteAddr().String())
	if s.Trace != nil {
		c.trace = s.Trace.With("proto", Name, "conn", c.id)
	}
	if implicitTLS {
		// go-smtp does not see the *tls.Conn (it is wrapped), so the
		// handshake runs on the first write; bound its reads here.
		nc.SetReadDeadline(time.Now().Add(s.readTimeout()))
	}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	s.metrics.ConnOpened(Name)
	c.log.Info("smtp connection start", "implicit_tls", implicitTLS)
	return c
}

// connOf finds our conn under what go-smtp holds (our conn, or a
// *tls.Conn around it after STARTTLS).
func connOf(nc net.Conn) *conn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*conn)
	return c
}

func (c *conn) setSession(s *session) {
	c.mu.Lock()
	c.sess = s
	c.mu.Unlock()
}

// clearSession forgets s when it ends (QUIT, STARTTLS).
func (c *conn) clearSession(s *session) {
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
	}
	c.mu.Unlock()
}

// setAccount records the account of a successful AUTH; from then on the
// connection counts as an open session of the account.
func (c *conn) setAccount(account, upstream string) {
	c.mu.Lock()
	c.account, c.upstream = account, upstream
	first := c.counted == "" && !c.ended
	if first {
		c.counted = account
	}
	c.mu.Unlock()
	if first {
		c.srv.metrics.Session(account, 1)
	}
	c.loggedIn()
}

// setOutcome records the last notable event for the end line.
func (c *conn) setOutcome(o string) {
	c.mu.Lock()
	c.outcome = o
	c.mu.Unlock()
}

func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.Conn.Close()
		c.loggedIn() // no longer waiting
		c.mu.Lock()
		account, upstream, outcome, counted := c.account, c.upstream, c.outcome, c.counted
		c.counted, c.ended = "", true
		c.mu.Unlock()
		c.srv.mu.Lock()
		delete(c.srv.conns, c)
		c.srv.mu.Unlock()
		if counted != "" {
			c.srv.metrics.Session(counted, -1)
		}
		c.srv.metrics.ConnClosed(Name)
		if outcome == "" {
			outcome = "ok"
		}
		c.log.Info("smtp connection end",
			"account", account,
			"upstream", upstream,
			"messages", c.messages.Load(),
			"bytes", c.bytes.Load(),
			"duration", time.Since(c.start).Round(time.Millisecond),
			"outcome", outcome)
	})
	return c.closeErr
}

// closeIfIdle closes the connection during Shutdown unless a session
// method runs or a mail transaction is open. A client in a session is told
// 421 first; before EHLO (maybe after STARTTLS) the connection just closes.
func (c *conn) closeIfIdle() {
	// Between a session method's return and go-smtp's reply (250 after
	// DATA: the message is upstream) the session holds no lock and no
	// transaction, but is not idle: a 421 then would make the client send
	// the delivered message again. Idle is go-smtp waiting for a command.
	if !c.reading.Load() {
		return
	}
	c.mu.Lock()
	sess := c.sess
	c.mu.Unlock()
	if sess != nil {
		if !sess.mu.TryLock() {
			return
		}
		defer sess.mu.Unlock()
		if sess.inTx {
			return
		}
		// Keep a command that go-smtp is about to dispatch from reaching
		// the upstream.
		sess.markClosed()
		sess.nc.SetWriteDeadline(time.Now().Add(shutdownNoticeTimeout))
		sess.nc.Write([]byte("421 4.3.2 Service shutting down\r\n"))
		c.note(dirClientOut, "421 4.3.2 Service shutting down")
	}
	c.setOutcome("closed by shutdown")
	c.Close()
}

func newID() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// SetTrace implements front.Front.
func (s *Server) SetTrace(trace *slog.Logger) { s.Trace = trace }

var _ front.Front = (*Server)(nil)
