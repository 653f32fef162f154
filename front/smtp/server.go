// Package smtp owns the SMTP front of the proxy: a go-smtp server that takes
// local AUTH PLAIN / AUTH LOGIN logins, and for each client session one
// connection to the provider's SMTP server (our own small client,
// upstream_client.go), authenticated with XOAUTH2 and opened at the first
// MAIL. Envelopes and their options are passed on command by command,
// message data streams through (read past go-smtp where it can be,
// rawdata.go), and the upstream's replies reach the client with their own
// codes. Server.Trace gives a protocol trace without credentials
// (trace.go).
package smtp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/internal/wait"
	"mailproxy/upstream"
)

// Defaults for the zero values of Server's fields, and the fixed timeouts of
// the upstream side.
const (
	defaultReadTimeout     = 10 * time.Minute // one client command, or the whole DATA phase
	defaultWriteTimeout    = time.Minute      // one reply to the client
	defaultUpstreamTimeout = 30 * time.Second // token + dial + TLS + EHLO + AUTH, all together
	defaultMaxMessageBytes = 35 << 20         // what Exchange Online accepts
	defaultDomain          = "localhost"

	upstreamCommandTimeout = 2 * time.Minute  // reply to MAIL, RCPT, DATA, RSET on an open upstream
	upstreamSubmitTimeout  = 10 * time.Minute // reply after the final dot
	upstreamWriteTimeout   = time.Minute      // each write of message data
	upstreamQuitTimeout    = 5 * time.Second  // polite QUIT when the client leaves
	shutdownNoticeTimeout  = time.Second      // writing "421 shutting down" to an idle client

	// maxLineLength bounds command lines and, because go-smtp applies the
	// same limit inside DATA, message lines too: generous enough for the
	// long unwrapped lines that real programs produce (RFC 5322's 998 is
	// often ignored), small enough to bound memory per connection.
	maxLineLength = 64 << 10
)

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("smtp front: server closed")

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

	metrics front.Metrics     // never nil once started
	backoff *upstream.Backoff // identities the upstream throttled; tests may set it before Serve

	mu       sync.Mutex // protects the fields below
	started  bool
	closing  bool // Close or Shutdown was called
	plain    *smtp.Server
	implicit *smtp.Server
	plainL   *pipeListener
	implL    *pipeListener
	lns      map[net.Listener]struct{}
	conns    map[*conn]struct{}
	traced   map[*smtp.Server]struct{} // the go-smtp servers of traced connections
	baseCtx  context.Context
	cancel   context.CancelFunc

	hardClose atomic.Bool // Close was called: cut upstreams instead of QUIT
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) domain() string {
	if s.Domain != "" {
		return s.Domain
	}
	return defaultDomain
}

func (s *Server) upstreamTimeout() time.Duration {
	if s.UpstreamTimeout > 0 {
		return s.UpstreamTimeout
	}
	return defaultUpstreamTimeout
}

func (s *Server) maxMessageBytes() int64 {
	if s.MaxMessageBytes > 0 {
		return s.MaxMessageBytes
	}
	return defaultMaxMessageBytes
}

func (s *Server) readTimeout() time.Duration {
	if s.ReadTimeout > 0 {
		return s.ReadTimeout
	}
	return defaultReadTimeout
}

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
	gs.WriteTimeout = s.WriteTimeout
	if gs.WriteTimeout <= 0 {
		gs.WriteTimeout = defaultWriteTimeout
	}
	gs.ErrorLog = errorLog{s.logger()}
	return gs
}

// start creates the two go-smtp servers on first use: one for plain
// listeners (STARTTLS when TLSConfig is set) and one for implicit TLS. Our
// own accept loop hands each connection to one of them, so that every
// connection can be wrapped for its start and end log lines.
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
	s.traced = make(map[*smtp.Server]struct{})
	s.plain = s.newSMTP(s.TLSConfig)
	s.implicit = s.newSMTP(nil)
	s.plainL = newPipeListener()
	s.implL = newPipeListener()
	go s.plain.Serve(s.plainL)
	go s.implicit.Serve(s.implL)
	return nil
}

// Serve accepts connections on ln until Close or Shutdown, and returns
// ErrServerClosed then; like net/http it always closes ln. Connections that
// are *tls.Conn are implicit TLS.
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
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, ln)
		s.mu.Unlock()
	}()

	var backoff wait.Backoff
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				d := backoff.Next()
				s.logger().Warn("smtp accept failed; retrying", "err", err, "in", d)
				wait.Sleep(s.baseCtx, d) // Close cuts it short
				continue
			}
			return fmt.Errorf("smtp accept: %w", err)
		}
		backoff.Reset()
		c := s.track(nc)
		if s.Trace != nil {
			s.serveTraced(c)
			continue
		}
		pl := s.plainL
		if c.implicitTLS {
			pl = s.implL
		}
		if !pl.hand(c) {
			c.Close()
		}
	}
}

// serveTraced serves c with a go-smtp server of its own, whose Debug
// writer traces c: go-smtp has one Debug writer per server.
func (s *Server) serveTraced(c *conn) {
	tlsConfig := s.TLSConfig
	if c.implicitTLS {
		tlsConfig = nil
	}
	gs := s.newSMTP(tlsConfig)
	gs.Debug = newFrontTrace(c)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.traced[gs] = struct{}{}
	s.mu.Unlock()
	c.mu.Lock()
	c.gs = gs
	c.mu.Unlock()
	pl := newPipeListener()
	go gs.Serve(pl) // returns once pl is closed, leaving c to its handler
	handed := pl.hand(c)
	pl.Close()
	if !handed || s.isClosing() {
		// Close may have run before go-smtp took c.
		c.Close()
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// closeListeners marks the server closing and closes every listener; it
// returns the go-smtp servers to stop, nil if Close or Shutdown already ran.
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
	// go-smtp closes its listeners too, but only those its Serve has
	// registered already.
	s.plainL.Close()
	s.implL.Close()
	servers = []*smtp.Server{s.plain, s.implicit}
	for gs := range s.traced {
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
		// Cannot happen: every connection comes from our accept loop.
		return nil, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "internal error"}
	}
	if _, ok := sc.Conn().(*tls.Conn); ok {
		// After STARTTLS our conn is under go-smtp's TLS: no bypass, and
		// no use cutting ciphertext at line ends.
		c.lineMode = false
	}
	sess := &session{srv: b.s, c: c, nc: sc.Conn(), log: c.log}
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

// pipeListener feeds connections from our accept loop to a go-smtp server.
type pipeListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

// hand passes c to the go-smtp server; false if the listener is closed.
func (l *pipeListener) hand(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "smtp-front" }

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
	writes   atomic.Uint64 // successful writes, counted when tracing (see frontTrace)

	// The read side, used only by the connection's goroutine (go-smtp's
	// reads, and Session.Data that it calls); see rawdata.go.
	lineMode bool   // hand go-smtp at most one line per Read, for the DATA bypass
	lineEnd  bool   // the last Read handed go-smtp the end of a line
	pending  []byte // read from the socket, not yet handed to go-smtp
	laterErr error  // came with pending: returned once, when pending is read
	readErr  error  // set by readFail: returned by every read once pending is read

	mu       sync.Mutex // protects the fields below
	sess     *session   // the current go-smtp session, nil before EHLO and right after STARTTLS
	counted  string     // the account counted in Metrics.Session, "" if none
	ended    bool       // Close ran: count no new session
	account  string
	upstream string
	outcome  string
	gs       *smtp.Server // the go-smtp server of a traced connection

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
	c.log = s.logger().With("proto", "smtp", "conn", c.id, "remote", nc.RemoteAddr().String())
	if s.Trace != nil {
		c.trace = s.Trace.With("proto", "smtp", "conn", c.id)
	} else {
		// With a trace, go-smtp's Debug must see the message data, so
		// there is no bypass.
		c.lineMode = true
	}
	if implicitTLS {
		// go-smtp does not see the *tls.Conn (it is wrapped), so the
		// handshake runs on the first write; bound its reads here.
		nc.SetReadDeadline(time.Now().Add(s.readTimeout()))
	}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	s.metrics.ConnOpened("smtp")
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
}

// setOutcome records the last notable event for the end line.
func (c *conn) setOutcome(o string) {
	c.mu.Lock()
	c.outcome = o
	c.mu.Unlock()
}

// Read hands go-smtp what the client sent: first what the DATA bypass or
// an earlier Read put aside, then the socket. In line mode a Read returns
// no more than one line, so that go-smtp never holds the start of a
// message in its buffer when it calls Session.Data.
func (c *conn) Read(p []byte) (int, error) {
	var n int
	var err error
	if len(c.pending) > 0 {
		n = copy(p, c.pending)
		if c.lineMode {
			if i := bytes.IndexByte(p[:n], '\n'); i >= 0 {
				n = i + 1
			}
		}
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
	} else if err = c.stashedErr(); err != nil {
		return 0, err
	} else {
		n, err = c.Conn.Read(p)
		if c.lineMode && n > 0 {
			if i := bytes.IndexByte(p[:n], '\n'); i >= 0 && i+1 < n {
				c.pending = append([]byte(nil), p[i+1:n]...)
				n = i + 1
				c.laterErr, err = err, nil
			}
		}
	}
	c.lineEnd = n > 0 && p[n-1] == '\n'
	return n, err
}

// readRaw reads for the DATA bypass what go-smtp has not read.
func (c *conn) readRaw(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	if err := c.stashedErr(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *conn) stashedErr() error {
	if err := c.laterErr; err != nil {
		c.laterErr = nil
		return err
	}
	return c.readErr
}

// unread puts b back in front of what go-smtp reads next.
func (c *conn) unread(b []byte) {
	c.pending = append(b, c.pending...)
}

// readFail makes every read of go-smtp fail with err once what is put
// aside has been read.
func (c *conn) readFail(err error) { c.readErr = err }

func (c *conn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.trace != nil && err == nil {
		c.writes.Add(1)
	}
	return n, err
}

func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.Conn.Close()
		c.mu.Lock()
		account, upstream, outcome, counted, gs := c.account, c.upstream, c.outcome, c.counted, c.gs
		c.counted, c.ended = "", true
		c.mu.Unlock()
		c.srv.mu.Lock()
		delete(c.srv.conns, c)
		if gs != nil {
			delete(c.srv.traced, gs)
		}
		c.srv.mu.Unlock()
		if counted != "" {
			c.srv.metrics.Session(counted, -1)
		}
		c.srv.metrics.ConnClosed("smtp")
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
