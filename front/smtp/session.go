package smtp

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/smtpclient"
	"mailproxy/submit"
	"mailproxy/upstream"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

var (
	_ smtp.Backend     = backend{}
	_ smtp.AuthSession = (*session)(nil)
)

// Replies of our own. Only *smtp.SMTPError may leave a session method:
// go-smtp sends the text of any other error to the client verbatim.
var (
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "Authentication required"}
	errBadCredentials = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8},
		Message: "Authentication credentials invalid"}
	errAuthTemporary = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Temporary authentication failure; try again later"}
	errAuthMalformed = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message: "Malformed authentication exchange"}
	errShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: "Service shutting down"}
	errUpstreamLost = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Connection to the upstream mail server was lost; nothing was sent, try again"}
	errNoTransaction = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Connection to the upstream mail server was lost; start the message again"}
	errDataAborted = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Message data incomplete; nothing was sent"}
	errDataTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Timeout reading message data; nothing was sent"}
	errLineTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message: "Line too long; nothing was sent"}
	errEncryptionRequired = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11},
		Message: "Encryption required for requested authentication mechanism; use STARTTLS first"}
	errEncryptionRequiredNoTLS = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11},
		Message: "Encryption required for requested authentication mechanism; use the implicit TLS port"}
)

// session is one go-smtp session: from EHLO to QUIT, or to STARTTLS (go-smtp
// starts a new session after it).
type session struct {
	srv *Server
	c   *conn
	nc  net.Conn // what go-smtp reads and writes: c, or TLS over it
	// ctx bounds every upstream step of the session; Logout cancels it,
	// which cuts an upstream being opened.
	ctx    context.Context
	cancel context.CancelFunc

	// mu is held by each session method for its whole run, upstream I/O
	// included. Reset and Logout only TryLock it: go-smtp may call them from
	// another goroutine while Data runs (Server.Close; BDAT then RSET).
	mu     sync.Mutex
	log    *slog.Logger     // gains the account at AUTH (under mu; no method runs then)
	grant  *auth.Grant      // protected by mu; nil until AUTH succeeds
	up     submit.Submitter // protected by mu; opened at the first MAIL
	upUsed bool             // protected by mu: a transaction ran on up; it may have gone stale while idle
	inTx   bool             // protected by mu: the upstream accepted MAIL, the message is not finished
	anon   bool             // protected by mu: a [[device]] sending without AUTH; up is its spool session
	// throttleGen is srv.throttles when AUTH found the mailbox not
	// throttled (protected by mu): while it is unchanged, so is the verdict.
	throttleGen uint64

	// abortMu lets Logout cut the upstream while a method holding mu is
	// blocked on it.
	abortMu sync.Mutex
	cur     submit.Submitter // protected by abortMu: up, for Logout
	closed  bool             // protected by abortMu: no new upstream session
}

func newSession(srv *Server, c *conn, nc net.Conn) *session {
	s := &session{srv: srv, c: c, nc: nc, log: c.log}
	s.ctx, s.cancel = context.WithCancel(srv.baseCtx)
	return s
}

func (s *session) markClosed() {
	s.abortMu.Lock()
	s.closed = true
	s.abortMu.Unlock()
}

func (s *session) isClosed() bool {
	s.abortMu.Lock()
	defer s.abortMu.Unlock()
	return s.closed
}

// setUp makes up the session's upstream, so that Logout can cut it; it
// fails when the session is already closed.
func (s *session) setUp(up submit.Submitter) error {
	s.abortMu.Lock()
	defer s.abortMu.Unlock()
	if s.closed {
		return errors.New("session closed")
	}
	s.up, s.cur, s.upUsed = up, up, false
	return nil
}

// closeUp drops up without a word, when it has a way to.
func closeUp(up submit.Submitter) {
	if c, ok := up.(io.Closer); ok {
		c.Close()
	}
}

// AuthMechanisms is what EHLO advertises: nothing to a client that must
// start TLS before it may send a password.
func (s *session) AuthMechanisms() []string {
	if !s.plaintextOK() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// plaintextOK reports whether the client may send a password on this
// connection: it has TLS, or its address may send passwords in clear text.
func (s *session) plaintextOK() bool {
	if s.srv.PlaintextAllowed == nil || s.c.implicitTLS {
		return true
	}
	if _, ok := s.nc.(*tls.Conn); ok {
		return true
	}
	return s.srv.PlaintextAllowed(front.RemoteAddr(s.nc))
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	srv, err := s.auth(mech)
	if err != nil {
		if mech == sasl.Plain || mech == sasl.Login {
			s.traceIn("AUTH " + mech)
		} else {
			// A client that sent its password as the mechanism is not
			// unheard of.
			s.traceIn("AUTH " + redacted)
		}
		s.traceReply(err)
		return nil, err
	}
	return &safeSASL{Server: srv, s: s, mech: mech}, nil
}

func (s *session) auth(mech string) (sasl.Server, error) {
	if !s.plaintextOK() {
		s.log.Info("smtp login refused: password without TLS from an address not in allow_plaintext_from")
		s.srv.metrics.Login(Name, false)
		s.c.setOutcome("auth without TLS")
		if s.srv.TLSConfig == nil {
			return nil, errEncryptionRequiredNoTLS
		}
		return nil, errEncryptionRequired
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if !front.IdentityAllowed(identity, username) {
				s.log.Info("smtp login refused: authorization identity differs", "user", username)
				s.srv.metrics.Login(Name, false)
				s.c.setOutcome("auth failed")
				return errBadCredentials
			}
			return s.authenticate(username, password)
		}), nil
	case sasl.Login:
		return front.NewLoginServer(s.authenticate), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// safeSASL makes sure only *smtp.SMTPError reaches go-smtp from a SASL
// exchange, and traces it with every response redacted.
type safeSASL struct {
	sasl.Server
	s       *session
	mech    string
	started bool
}

func (m *safeSASL) Next(response []byte) ([]byte, bool, error) {
	switch {
	case m.started:
		m.s.traceIn(redacted)
	case response != nil:
		m.s.traceIn("AUTH " + m.mech + " " + redacted)
	default:
		m.s.traceIn("AUTH " + m.mech)
	}
	m.started = true
	challenge, done, err := m.Server.Next(response)
	if err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			se = errAuthMalformed
		}
		m.s.traceReply(se)
		return nil, false, se
	}
	switch {
	case done:
		// go-smtp's own text.
		m.s.traceOut("235 2.0.0 Authentication succeeded")
	default:
		m.s.traceOut("334 " + base64.StdEncoding.EncodeToString(challenge))
	}
	return challenge, done, nil
}

// authenticate checks a local login and keeps the grant.
func (s *session) authenticate(username, password string) error {
	ctx, cancel := context.WithTimeout(s.srv.baseCtx, s.srv.upstreamTimeout())
	defer cancel()
	g, err := s.srv.Auth.Authenticate(ctx, username, password, front.RemoteAddr(s.nc))
	if err == nil && g == nil {
		err = errors.New("authenticator returned no grant")
	}
	s.srv.metrics.Login(Name, err == nil)
	if err != nil {
		var ae *auth.AuthError
		if !errors.As(err, &ae) {
			s.log.Error("smtp login failed", "user", username, "err", err)
			s.c.setOutcome("auth error")
			return errAuthTemporary
		}
		switch ae.Kind {
		case auth.AuthFailed:
			s.log.Info("smtp login refused", "user", username, "err", err)
			s.logAuthFailure(username, ae)
			s.c.setOutcome("auth failed")
			return errBadCredentials
		case auth.AuthNeedsSignIn:
			s.log.Warn("smtp login: account needs sign-in", "user", username, "err", err)
			s.c.setOutcome("needs sign-in")
		default:
			if errors.Is(ae, auth.ErrLockedOut) {
				s.log.Info("smtp login refused", "user", username, "err", err)
				s.logAuthFailure(username, ae)
				s.c.setOutcome("locked out")
				break
			}
			s.log.Warn("smtp login: temporary failure", "user", username, "err", err)
			s.c.setOutcome("auth unavailable")
		}
		return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: submit.OneLine(ae.Msg)}
	}
	gen := s.srv.throttles.Load()
	if se := s.throttled(g.Identity, "smtp login refused: the upstream throttled this mailbox", "user", username); se != nil {
		return se
	}
	upstreamAddr := g.Upstream.AddrOf(Name)
	s.mu.Lock()
	s.grant = g
	s.throttleGen = gen
	s.log = s.log.With("account", g.Username)
	s.mu.Unlock()
	s.c.setAccount(g.Username, upstreamAddr)
	s.c.setOutcome("")
	s.log.Debug("smtp login", "identity", g.Identity, "upstream", upstreamAddr)
	return nil
}

// logAuthFailure writes the one line fail2ban and the like look for:
// level=WARN msg="auth failure" proto=smtp remote=IP user=NAME. The
// username is the client's, quoted by the handler when it needs to be, so
// it cannot forge a line.
func (s *session) logAuthFailure(user string, ae *auth.AuthError) {
	attrs := []any{"proto", Name, "remote", front.RemoteAddr(s.nc).String(), "user", user, "conn", s.c.id}
	if errors.Is(ae, auth.ErrLockedOut) {
		attrs = append(attrs, "reason", "locked out")
	}
	if errors.Is(ae, auth.ErrLockedOut) {
		// fail2ban saw the failures that made the block.
		s.srv.refusals.Log(s.srv.logger(), slog.LevelWarn, front.RemoteAddr(s.nc).String()+" "+user, "auth failure", attrs...)
		return
	}
	s.srv.logger().Warn("auth failure", attrs...)
}

// throttledReply refuses a login while the upstream throttles the mailbox.
func throttledReply(d time.Duration) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: upstream.ThrottledText(d)}
}

// Mail starts a transaction upstream, opening the upstream connection on
// the session's first MAIL and reusing it afterwards.
func (s *session) Mail(from string, opts *smtp.MailOptions) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.traceIn(mailLine(from, opts))
	defer func() { s.traceReply(err) }()
	if s.grant == nil && !s.anonymous() {
		return errAuthRequired
	}
	if s.isClosed() {
		return errShuttingDown
	}
	if s.inTx {
		// A second MAIL without RSET: start over upstream as well.
		s.resetUpstream()
	}
	for retried := false; ; retried = true {
		if s.up == nil {
			up, err := s.connect()
			if err != nil {
				return err
			}
			if err := s.setUp(up); err != nil {
				closeUp(up)
				return errShuttingDown
			}
		}
		reused := s.upUsed
		s.upUsed = true
		err := s.up.Mail(from, opts)
		if err == nil {
			s.inTx = true
			return nil
		}
		var se *smtp.SMTPError
		stale := !errors.As(err, &se) || se.Code == 421
		if reused && stale && !retried {
			// An idle connection the upstream closed meanwhile.
			s.log.Info("upstream connection went stale; reconnecting", "err", err)
			s.dropUpstream()
			continue
		}
		return s.upstreamReply("MAIL", err)
	}
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.traceIn(rcptLine(to, opts))
	defer func() { s.traceReply(err) }()
	if !s.authorized() {
		return errAuthRequired
	}
	if s.up == nil || !s.inTx {
		return errNoTransaction
	}
	if err := s.up.Rcpt(to, opts); err != nil {
		return s.upstreamReply("RCPT", err)
	}
	return nil
}

// Data streams the message to the upstream, the same way for DATA and
// BDAT, plain, STARTTLS and implicit TLS: go-smtp's reader gives the
// message undotted, the Submitter sends it on. The client hears 250 (with
// the upstream's text) only after the upstream said 250. If the client's
// data breaks off, the upstream connection is dropped before the final
// dot, so nothing truncated is delivered.
func (s *session) Data(r io.Reader) (err error) {
	if h := s.srv.afterData.Load(); h != nil {
		defer (*h)() // after the unlock below
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, bdat := r.(*io.PipeReader); bdat {
		s.traceIn("BDAT")
	} else {
		s.traceIn("DATA")
	}
	defer func() { s.traceReply(err) }()
	if !s.authorized() {
		return errAuthRequired
	}
	if s.up == nil || !s.inTx {
		return errNoTransaction
	}
	s.inTx = false // from here on the upstream transaction ends, one way or another
	accepted := false
	defer func() { s.srv.metrics.Message(accepted) }()
	s.c.streaming(true)
	defer s.c.streaming(false)
	cr := &countingReader{r: r}
	text, err := s.up.Data(newCRLFReader(cr))
	n := cr.n
	s.traceIn(fmt.Sprintf("DATA: %d bytes", n))
	s.srv.metrics.Relayed(Name, n, 0)
	if rerr := cr.err; rerr != nil {
		s.dropUpstream()
		s.log.Info("client's message data broke off; upstream transaction dropped", "err", rerr, "bytes", n)
		var ne net.Error
		switch {
		case errors.Is(rerr, smtp.ErrDataTooLarge):
			s.c.setOutcome("message too large")
			return smtp.ErrDataTooLarge
		case errors.Is(rerr, smtp.ErrTooLongLine):
			s.c.setOutcome("line too long")
			return errLineTooLong
		case errors.As(rerr, &ne) && ne.Timeout():
			s.c.setOutcome("client timeout in DATA")
			return errDataTimeout
		}
		s.c.setOutcome("client aborted DATA")
		return errDataAborted
	}
	if err != nil {
		return s.upstreamReply("DATA", err)
	}
	accepted = true
	s.c.messages.Add(1)
	s.c.bytes.Add(n)
	s.c.setOutcome("")
	s.log.Debug("message relayed", "bytes", n, "reply", submit.OneLine(text))
	ec, text := submit.ParseStatus(text)
	if ec == smtp.EnhancedCodeNotSet {
		ec = smtp.EnhancedCode{2, 0, 0}
	}
	if text = submit.OneLine(text); text == "" {
		text = "OK"
	}
	// go-smtp sends an *SMTPError's code as it is, 250 included: this is
	// how the upstream's own text (its queue id) reaches the client.
	return &smtp.SMTPError{Code: 250, EnhancedCode: ec, Message: text}
}

// countingReader counts what the client's message gave, and keeps its
// error apart from the upstream's.
type countingReader struct {
	r   io.Reader
	n   int64
	err error // the first error but io.EOF
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// Reset ends an open transaction upstream too. go-smtp also calls it after
// every DATA, when there is nothing left to do.
func (s *session) Reset() {
	if !s.mu.TryLock() {
		// Data runs in another goroutine (BDAT) and ends the upstream
		// transaction itself when its reader fails.
		return
	}
	defer s.mu.Unlock()
	if s.inTx {
		s.resetUpstream()
	}
}

// resetUpstream sends RSET; the caller holds mu.
func (s *session) resetUpstream() {
	s.inTx = false
	if s.up == nil {
		return
	}
	if err := s.up.Reset(); err != nil {
		s.log.Info("upstream RSET failed; dropping the connection", "err", err)
		s.dropUpstream()
	}
}

// Logout closes the upstream: with QUIT when the session is idle, by
// closing the socket when a method is still using it.
func (s *session) Logout() error {
	if !s.mu.TryLock() {
		s.abortMu.Lock()
		s.closed = true
		if s.cur != nil {
			closeUp(s.cur)
		}
		s.abortMu.Unlock()
		s.cancel()
		return nil
	}
	defer s.mu.Unlock()
	s.markClosed()
	s.inTx = false
	if s.up != nil {
		if s.srv.hardClose.Load() {
			closeUp(s.up)
		} else {
			s.up.Quit()
		}
		s.forgetUp()
	}
	s.cancel()
	s.c.clearSession(s)
	return nil
}

// dropUpstream closes the upstream without a word; the caller holds mu.
func (s *session) dropUpstream() {
	s.inTx = false
	if s.up != nil {
		closeUp(s.up)
		s.forgetUp()
	}
}

// forgetUp clears up and cur; the caller holds mu.
func (s *session) forgetUp() {
	s.abortMu.Lock()
	s.up, s.cur = nil, nil
	s.abortMu.Unlock()
}

// upstreamReply turns an upstream command's error into the client's reply:
// the upstream's own reply when it gave one, else a generic 451 after
// dropping the broken connection. The caller holds mu.
func (s *session) upstreamReply(cmd string, err error) error {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		s.log.Warn("upstream connection failed", "cmd", cmd, "err", err)
		s.c.setOutcome("upstream lost")
		s.dropUpstream()
		return errUpstreamLost
	}
	s.log.Info("upstream refused", "cmd", cmd, "reply", smtpclient.ReplyText(se))
	s.c.setOutcome("upstream refused " + cmd)
	s.noteThrottle(se)
	if se.Code == 421 {
		// The upstream closes the connection after 421.
		s.dropUpstream()
	}
	return passReply(se)
}
