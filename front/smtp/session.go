package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/upstream"
	"net"
	"net/netip"
	"strings"
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
	errNoUTF8 = &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
		Message: "Upstream mail server does not support SMTPUTF8"}
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

	// mu is held by each session method for its whole run, upstream I/O
	// included. Reset and Logout only TryLock it: go-smtp may call them from
	// another goroutine while Data runs (Server.Close; BDAT then RSET).
	mu    sync.Mutex
	log   *slog.Logger // gains the account at AUTH (under mu; no method runs then)
	grant *auth.Grant  // protected by mu; nil until AUTH succeeds
	up    *upClient    // protected by mu; opened at the first MAIL
	inTx  bool         // protected by mu: the upstream accepted MAIL, the message is not finished

	// abortMu lets Logout cut the upstream socket while a method holding
	// mu is blocked on it.
	abortMu sync.Mutex
	raw     net.Conn // protected by abortMu: the current upstream socket
	closed  bool     // protected by abortMu: no new upstream connection
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

// setRaw registers a freshly dialed upstream socket so that Logout can cut
// it; it fails when the session is already closed.
func (s *session) setRaw(raw net.Conn) error {
	s.abortMu.Lock()
	defer s.abortMu.Unlock()
	if s.closed {
		return errors.New("session closed")
	}
	s.raw = raw
	return nil
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
	return s.srv.PlaintextAllowed(remoteAddr(s.nc))
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if !s.plaintextOK() {
		s.log.Info("smtp login refused: password without TLS from an address not in allow_plaintext_from")
		s.srv.metrics.Login("smtp", false)
		s.c.setOutcome("auth without TLS")
		if s.srv.TLSConfig == nil {
			return nil, errEncryptionRequiredNoTLS
		}
		return nil, errEncryptionRequired
	}
	switch mech {
	case sasl.Plain:
		return safeSASL{sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && !strings.EqualFold(identity, username) {
				s.log.Info("smtp login refused: authorization identity differs", "user", username)
				s.srv.metrics.Login("smtp", false)
				s.c.setOutcome("auth failed")
				return errBadCredentials
			}
			return s.authenticate(username, password)
		})}, nil
	case sasl.Login:
		return safeSASL{front.NewLoginServer(s.authenticate)}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// safeSASL makes sure only *smtp.SMTPError reaches go-smtp from a SASL
// exchange.
type safeSASL struct{ sasl.Server }

func (m safeSASL) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := m.Server.Next(response)
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return nil, false, se
		}
		return nil, false, errAuthMalformed
	}
	return challenge, done, nil
}

// authenticate checks a local login and keeps the grant.
func (s *session) authenticate(username, password string) error {
	ctx, cancel := context.WithTimeout(s.srv.baseCtx, s.srv.upstreamTimeout())
	defer cancel()
	g, err := s.srv.Auth.Authenticate(ctx, username, password, remoteAddr(s.nc))
	if err == nil && g == nil {
		err = errors.New("authenticator returned no grant")
	}
	s.srv.metrics.Login("smtp", err == nil)
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
			s.log.Warn("smtp login: temporary failure", "user", username, "err", err)
			s.c.setOutcome("auth unavailable")
		}
		return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: oneLine(ae.Msg)}
	}
	if d := s.srv.backoff.Remaining(g.Identity); d > 0 {
		s.log.Warn("smtp login refused: the upstream throttled this mailbox", "user", username, "identity", g.Identity, "retry_in", d.Round(time.Second))
		s.c.setOutcome("throttled")
		return throttledReply(d)
	}
	upstreamAddr := ""
	if g.Upstream != nil {
		upstreamAddr = g.Upstream.SMTPAddr
	}
	s.mu.Lock()
	s.grant = g
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
	attrs := []any{"proto", "smtp", "remote", remoteAddr(s.nc).String(), "user", user, "conn", s.c.id}
	if errors.Is(ae, auth.ErrLockedOut) {
		attrs = append(attrs, "reason", "locked out")
	}
	s.srv.logger().Warn("auth failure", attrs...)
}

// throttledReply refuses a login while the upstream throttles the mailbox.
func throttledReply(d time.Duration) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: upstream.ThrottledText(d)}
}

func remoteAddr(nc net.Conn) netip.Addr {
	if ta, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	if ap, err := netip.ParseAddrPort(nc.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// Mail starts a transaction upstream, opening the upstream connection on
// the session's first MAIL and reusing it afterwards.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grant == nil {
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
			s.up = up
		}
		if opts != nil && opts.UTF8 && !s.up.has("SMTPUTF8") {
			return errNoUTF8
		}
		reused := s.up.used
		s.up.used = true
		err := s.up.mail(from, opts)
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

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grant == nil {
		return errAuthRequired
	}
	if s.up == nil || !s.inTx {
		return errNoTransaction
	}
	if err := s.up.rcpt(to, opts); err != nil {
		return s.upstreamReply("RCPT", err)
	}
	return nil
}

// Data streams the message to the upstream. The client hears 250 (with
// the upstream's text) only after the upstream said 250. If the client's
// data breaks off, the upstream connection is dropped before the final
// dot, so nothing truncated is delivered.
func (s *session) Data(r io.Reader) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var raw *rawData
	if s.bypass(r) {
		raw = newRawData(s.c, s.srv.maxMessageBytes())
		// Whatever happens, leave the connection just after the end line.
		defer raw.finish()
	}
	if s.grant == nil {
		return errAuthRequired
	}
	if s.up == nil || !s.inTx {
		return errNoTransaction
	}
	s.inTx = false // from here on the upstream transaction ends, one way or another
	up := s.up
	accepted := false
	defer func() { s.srv.metrics.Message(accepted) }()
	ds, err := up.startData()
	if err != nil {
		reply := s.upstreamReply("DATA", err)
		if s.up != nil {
			// MAIL and RCPT still stand upstream.
			s.inTx = true
			s.resetUpstream()
		}
		return reply
	}
	defer ds.release()
	var n int64
	var rerr, werr error
	if raw != nil {
		n, rerr, werr = raw.copyTo(ds)
	} else {
		n, rerr, werr = ds.copyFrom(r)
	}
	s.srv.metrics.Relayed("smtp", n, 0)
	if rerr != nil {
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
	if werr != nil {
		s.dropUpstream()
		s.log.Warn("upstream connection broke during DATA", "err", werr, "bytes", n)
		s.c.setOutcome("upstream lost in DATA")
		return errUpstreamLost
	}
	rep, err := ds.finish()
	if err == nil && rep.code/100 != 2 {
		err = rep.err()
	}
	if err != nil {
		return s.upstreamReply("end of DATA", err)
	}
	accepted = true
	s.c.messages.Add(1)
	s.c.bytes.Add(n)
	s.c.setOutcome("")
	s.log.Debug("message relayed", "bytes", n, "bypass", raw != nil, "reply", oneLine(rep.text()))
	ec, text := parseStatus(rep.text())
	if ec == smtp.EnhancedCodeNotSet {
		ec = smtp.EnhancedCode{2, 0, 0}
	}
	if text = oneLine(text); text == "" {
		text = "OK"
	}
	// go-smtp sends an *SMTPError's code as it is, 250 included: this is
	// how the upstream's own text (its queue id) reaches the client.
	return &smtp.SMTPError{Code: 250, EnhancedCode: ec, Message: text}
}

// bypass says whether Data may read the message itself (rawdata.go): r is
// go-smtp's DATA reader (BDAT hands over a pipe), our conn is the
// connection go-smtp reads (no STARTTLS), and go-smtp's buffer ended
// with the DATA line.
func (s *session) bypass(r io.Reader) bool {
	if _, ok := r.(*io.PipeReader); ok {
		return false
	}
	return s.nc == net.Conn(s.c) && s.c.lineMode && s.c.lineEnd
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
	if err := s.up.reset(); err != nil {
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
		if s.raw != nil {
			s.raw.Close()
		}
		s.abortMu.Unlock()
		return nil
	}
	defer s.mu.Unlock()
	s.markClosed()
	s.inTx = false
	if s.up != nil {
		if s.srv.hardClose.Load() {
			s.up.abort()
		} else {
			s.up.quit()
		}
		s.up = nil
	}
	s.c.clearSession(s)
	return nil
}

// dropUpstream closes the upstream without a word; the caller holds mu.
func (s *session) dropUpstream() {
	s.inTx = false
	if s.up != nil {
		s.up.abort()
		s.up = nil
	}
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
	s.log.Info("upstream refused", "cmd", cmd, "reply", replyText(se))
	s.c.setOutcome("upstream refused " + cmd)
	s.noteThrottle(se)
	if se.Code == 421 {
		// The upstream closes the connection after 421.
		s.dropUpstream()
	}
	return passReply(se)
}
