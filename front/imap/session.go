package imap

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/relay"
	"mailproxy/upstream"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
)

// Session states, for Shutdown.
const (
	statePreAuth int32 = iota
	stateUpstream
	stateRelay
)

// Outcomes, for the end-of-connection log line.
const (
	outcomeLogout       = "logout"
	outcomeClientGone   = "client closed"
	outcomeTimeout      = "pre-auth timeout"
	outcomeShutdown     = "shutdown"
	outcomeLineTooLong  = "line too long"
	outcomeLiteralBig   = "literal too big"
	outcomeTooManyErrs  = "too many errors"
	outcomeTLSFailed    = "tls handshake failed"
	outcomeRelayed      = "relayed"
	outcomeError        = "error"
	outcomeServerClosed = "server closed"
)

type session struct {
	s      *Server
	nc     net.Conn // as accepted; deadlines set here reach a TLS layer above
	id     uint64
	ctx    context.Context
	cancel context.CancelFunc
	state  atomic.Int32
	// waiting is the listener's count of connections not logged in yet;
	// the session leaves it once, when its relay starts or it ends.
	waiting *atomic.Int32
	left    atomic.Bool

	// Owned by the session goroutine.
	conn     net.Conn // nc, or the TLS conn over it
	isTLS    bool
	r        *bufio.Reader
	w        *bufio.Writer
	p        parser
	log      *slog.Logger
	trace    *slog.Logger // protocol trace; nil: off
	deadline time.Time    // end of the pre-auth phase
	errs     int          // BAD replies and failed logins
	account  string
	outcome  string
	up, down int64 // relayed bytes to the upstream, to the client

	plainChecked bool // plainOK is set
	plainOK      bool // PlaintextAllowed's answer for the client's address

	mu       sync.Mutex // protects upstream
	upstream net.Conn

	goodbye goodbye // Shutdown asks a relayed session to say BYE
}

// closeConns closes the client connection and the upstream one, if any.
func (c *session) closeConns() {
	c.nc.Close()
	c.mu.Lock()
	if c.upstream != nil {
		c.upstream.Close()
	}
	c.mu.Unlock()
}

func (c *session) setUpstream(up net.Conn) {
	c.mu.Lock()
	c.upstream = up
	c.mu.Unlock()
}

// leaveWaiting takes the session off its listener's pre-login count.
func (c *session) leaveWaiting() {
	if c.waiting != nil && c.left.CompareAndSwap(false, true) {
		c.waiting.Add(-1)
	}
}

func (c *session) serve() {
	start := time.Now()
	c.conn = c.nc
	c.log = c.s.logger().With("proto", Name, "conn", c.id, "remote", c.nc.RemoteAddr().String())
	if t := c.s.Trace; t != nil && t.Enabled(context.Background(), slog.LevelDebug) {
		c.trace = t.With("proto", Name, "conn", c.id)
	}
	tc, implicitTLS := c.nc.(*tls.Conn)
	c.log.Info("imap connection", "tls", implicitTLS)
	c.s.metrics.ConnOpened(Name)
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("imap session panic", "panic", v, "stack", string(debug.Stack()))
			c.outcome = outcomeError
		}
		c.leaveWaiting()
		c.closeConns()
		c.s.metrics.ConnClosed(Name)
		c.log.Info("imap connection closed",
			"account", c.account,
			"outcome", c.outcome,
			"duration", time.Since(start).Round(time.Millisecond),
			"bytes_up", c.up,
			"bytes_down", c.down)
		c.s.removeSession(c)
	}()

	c.deadline = start.Add(c.s.preAuthTimeout())
	c.nc.SetDeadline(c.deadline)
	if implicitTLS {
		ctx, cancel := context.WithDeadline(c.ctx, c.deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			c.outcome = outcomeTLSFailed
			c.log.Info("imap tls handshake failed", "err", err)
			return
		}
		c.isTLS = true
	}
	c.r = bufio.NewReaderSize(c.conn, ioBufferSize)
	c.w = bufio.NewWriterSize(c.traced(c.conn), ioBufferSize)
	c.p = parser{r: c.r, w: c.w, maxLine: c.s.maxLine(), maxLiteral: c.s.maxLiteral()}

	c.writef("* OK [CAPABILITY %s] mailproxy ready\r\n", c.caps())
	if c.flush() != nil {
		c.outcome = outcomeClientGone
		return
	}
	c.preAuth()
}

// caps is the pre-auth capability list. A client that may not send its
// password in clear text is told LOGINDISABLED and offered no mechanism
// until it has TLS.
func (c *session) caps() string {
	caps := "IMAP4rev1 SASL-IR ID LITERAL+"
	if c.plaintextOK() {
		caps += " AUTH=PLAIN AUTH=LOGIN"
	} else {
		caps += " LOGINDISABLED"
	}
	if c.canStartTLS() {
		caps += " STARTTLS"
	}
	return caps
}

func (c *session) canStartTLS() bool { return !c.isTLS && c.s.TLSConfig != nil }

// plaintextOK reports whether the client may log in on this connection:
// it has TLS, or its address may send passwords in clear text.
func (c *session) plaintextOK() bool {
	if c.isTLS || c.s.PlaintextAllowed == nil {
		return true
	}
	if !c.plainChecked {
		c.plainOK = c.s.PlaintextAllowed(c.remoteAddr())
		c.plainChecked = true
	}
	return c.plainOK
}

// refusePlaintext answers a login attempt that needs TLS first.
func (c *session) refusePlaintext(tag []byte) bool {
	c.log.Info("imap login refused: password without TLS from an address not in allow_plaintext_from")
	c.s.metrics.Login(Name, false)
	if c.canStartTLS() {
		c.reply(tag, "NO", "[PRIVACYREQUIRED] use STARTTLS first")
	} else {
		c.reply(tag, "NO", "[PRIVACYREQUIRED] TLS required; use the implicit TLS port")
	}
	return c.countError()
}

func (c *session) writef(format string, args ...any) {
	fmt.Fprintf(c.w, format, args...)
}

func (c *session) flush() error { return c.w.Flush() }

// reply writes "<tag> <status> <text>". tag may be nil for an untagged reply.
func (c *session) reply(tag []byte, status, text string) {
	if len(tag) == 0 {
		c.w.WriteString("*")
	} else {
		c.w.Write(tag)
	}
	c.w.WriteString(" ")
	c.w.WriteString(status)
	c.w.WriteString(" ")
	c.w.WriteString(text)
	c.w.WriteString("\r\n")
}

// bye says BYE and closes. After an error that may leave unread input
// (an overlong line or literal, pipelined garbage) it drains that input for
// a moment first: closing a socket with unread data makes the kernel send a
// reset, and the client may then never see the BYE.
func (c *session) bye(text, outcome string, linger bool) {
	c.outcome = outcome
	c.nc.SetWriteDeadline(time.Now().Add(byeWriteTimeout))
	c.writef("* BYE %s\r\n", text)
	if c.flush() != nil || !linger {
		return
	}
	raw := c.nc
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	if tc, ok := c.conn.(*tls.Conn); ok {
		tc.CloseWrite() // close_notify
	}
	if cw, ok := raw.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite() // FIN
	}
	raw.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.CopyN(io.Discard, raw, lingerMaxBytes)
}

// bad answers BAD and counts it; it reports false when the client has made
// too many errors and the connection is closed.
func (c *session) bad(tag []byte, text string) bool {
	c.reply(tag, "BAD", text)
	return c.countError()
}

func (c *session) countError() bool {
	c.errs++
	if c.errs >= maxBadCommands {
		c.bye("too many errors", outcomeTooManyErrs, true)
		return false
	}
	return c.flush() == nil
}

// readFailed ends the session after a failed read.
func (c *session) readFailed(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, errLineTooLong):
		c.bye("line too long", outcomeLineTooLong, true)
	case errors.Is(err, errLiteralTooBig):
		c.bye("literal too big", outcomeLiteralBig, true)
	case c.s.shutting.Load():
		c.bye("server shutting down", outcomeShutdown, false)
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		c.bye("pre-auth timeout", outcomeTimeout, false)
	case errors.Is(err, net.ErrClosed):
		c.outcome = outcomeServerClosed
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		c.outcome = outcomeClientGone
	default:
		c.outcome = outcomeClientGone
		c.log.Debug("imap read failed", "err", err)
	}
}

// preAuth runs the command loop until the session ends or is relayed.
func (c *session) preAuth() {
	for {
		if c.s.shutting.Load() {
			c.bye("server shutting down", outcomeShutdown, false)
			return
		}
		err := c.p.readCommand()
		var ce *commandError
		if c.trace != nil && (err == nil || errors.As(err, &ce)) {
			c.traceCommand(ce)
		}
		if errors.As(err, &ce) {
			if !c.bad(c.p.bytes(c.p.tag), ce.msg) {
				return
			}
			continue
		}
		if err != nil {
			c.readFailed(err)
			return
		}
		if !c.command() {
			return
		}
	}
}

// command handles the command in c.p. It reports whether to read the next
// one.
func (c *session) command() bool {
	p := &c.p
	tag := p.bytes(p.tag)
	args := p.args
	switch string(p.bytes(p.name)) {
	case "CAPABILITY":
		if len(args) != 0 {
			return c.bad(tag, "CAPABILITY takes no arguments")
		}
		c.writef("* CAPABILITY %s\r\n", c.caps())
		c.reply(tag, "OK", "CAPABILITY completed")
	case "NOOP":
		if len(args) != 0 {
			return c.bad(tag, "NOOP takes no arguments")
		}
		c.reply(tag, "OK", "NOOP completed")
	case "LOGOUT":
		if len(args) != 0 {
			return c.bad(tag, "LOGOUT takes no arguments")
		}
		c.writef("* BYE mailproxy logging out\r\n")
		c.reply(tag, "OK", "LOGOUT completed")
		c.flush()
		c.outcome = outcomeLogout
		return false
	case "ID":
		// ID NIL or ID ( "field" "value" ... ): the client's values are of
		// no use to us.
		if !validID(p) {
			return c.bad(tag, "invalid ID arguments")
		}
		c.writef("* ID (\"name\" \"mailproxy\")\r\n")
		c.reply(tag, "OK", "ID completed")
	case "STARTTLS":
		return c.startTLS(tag)
	case "LOGIN":
		if len(args) != 2 || !isString(args[0]) || !isString(args[1]) {
			return c.bad(tag, "LOGIN needs a user name and a password")
		}
		if !c.plaintextOK() {
			return c.refusePlaintext(tag)
		}
		return c.login(string(tag), string(p.bytes(args[0].span)), string(p.bytes(args[1].span)))
	case "AUTHENTICATE":
		return c.authenticate(tag)
	case "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
		"LIST", "LSUB", "STATUS", "APPEND", "CHECK", "CLOSE", "EXPUNGE", "SEARCH",
		"FETCH", "STORE", "COPY", "MOVE", "UID", "IDLE", "ENABLE", "NAMESPACE",
		"GETQUOTA", "GETQUOTAROOT", "UNSELECT", "COMPRESS", "UNAUTHENTICATE":
		return c.bad(tag, "command not allowed before login")
	default:
		return c.bad(tag, "unknown command")
	}
	return c.flush() == nil
}

func isString(a arg) bool { return a.kind == argAtom || a.kind == argString }

// validID accepts "NIL" or a parenthesized list of strings.
func validID(p *parser) bool {
	args := p.args
	if len(args) == 1 {
		return args[0].kind == argAtom && isNIL(p.bytes(args[0].span))
	}
	if len(args) < 2 || args[0].kind != argLParen || args[len(args)-1].kind != argRParen {
		return false
	}
	for _, a := range args[1 : len(args)-1] {
		if !isString(a) {
			return false
		}
	}
	return true
}

func isNIL(b []byte) bool {
	return len(b) == 3 && b[0]|0x20 == 'n' && b[1]|0x20 == 'i' && b[2]|0x20 == 'l'
}

func (c *session) startTLS(tag []byte) bool {
	if len(c.p.args) != 0 {
		return c.bad(tag, "STARTTLS takes no arguments")
	}
	if c.isTLS || c.s.TLSConfig == nil {
		return c.bad(tag, "STARTTLS not available")
	}
	c.reply(tag, "OK", "Begin TLS negotiation now")
	if c.flush() != nil {
		c.outcome = outcomeClientGone
		return false
	}
	// Whatever the client sent after the STARTTLS line arrived in clear
	// text and may have been injected: drop it (CVE-2011-0411).
	if n := c.r.Buffered(); n > 0 {
		c.log.Info("imap discarding bytes pipelined after STARTTLS", "bytes", n)
	}
	// UnderTLS: the relay gathers the records of this session.
	tc := tls.Server(relay.UnderTLS(c.nc), c.s.TLSConfig)
	ctx, cancel := context.WithDeadline(c.ctx, c.deadline)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		c.outcome = outcomeTLSFailed
		c.log.Info("imap starttls handshake failed", "err", err)
		return false
	}
	c.conn = tc
	c.isTLS = true
	c.r.Reset(tc)
	c.w.Reset(c.traced(tc))
	return true
}

// authenticate runs AUTHENTICATE PLAIN or LOGIN.
func (c *session) authenticate(tagb []byte) bool {
	p := &c.p
	args := p.args
	if len(args) < 1 || len(args) > 2 || args[0].kind != argAtom || (len(args) == 2 && args[1].kind != argAtom) {
		return c.bad(tagb, "AUTHENTICATE needs a mechanism and at most an initial response")
	}
	if !c.plaintextOK() {
		return c.refusePlaintext(tagb)
	}
	tag := string(tagb)
	mech := p.bytes(args[0].span)
	for i, b := range mech {
		if 'a' <= b && b <= 'z' {
			mech[i] = b - 'a' + 'A'
		}
	}
	var resp []byte // nil: no initial response
	if len(args) == 2 {
		var err error
		if resp, err = decodeSASL(p.bytes(args[1].span)); err != nil {
			return c.bad(tagb, "invalid base64 in initial response")
		}
	}

	var user, pass string
	var identityMismatch bool
	var srv sasl.Server
	switch string(mech) {
	case "PLAIN":
		srv = saslFunc(func(resp []byte) ([]byte, bool, error) {
			if resp == nil {
				return []byte{}, false, nil // empty challenge: "+ "
			}
			_, u, pw, err := front.ParsePlain(resp)
			if err != nil {
				identityMismatch = bytes.Count(resp, []byte{0}) == 2
				return nil, true, err
			}
			user, pass = u, pw
			return nil, true, nil
		})
	case "LOGIN":
		srv = front.NewLoginServer(func(username, password string) error {
			user, pass = username, password
			return nil
		})
	default:
		c.reply(tagb, "NO", "unsupported authentication mechanism")
		return c.countError()
	}

	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			if identityMismatch {
				c.reply(tagb, "NO", "[AUTHORIZATIONFAILED] authorization identity not supported")
				return c.countError()
			}
			return c.bad(tagb, "invalid SASL response")
		}
		if done {
			break
		}
		c.w.WriteString("+ ")
		c.w.WriteString(base64.StdEncoding.EncodeToString(challenge))
		c.w.WriteString("\r\n")
		if c.flush() != nil {
			c.outcome = outcomeClientGone
			return false
		}
		line, err := p.readContinuation()
		if err != nil {
			c.readFailed(err)
			return false
		}
		if len(line) == 1 && line[0] == '*' {
			c.traceLine(dirFromClient, "*")
			return c.bad(tagb, "AUTHENTICATE cancelled")
		}
		c.traceLine(dirFromClient, redacted)
		if resp, err = decodeSASL(line); err != nil {
			return c.bad(tagb, "invalid base64 in SASL response")
		}
	}
	return c.login(tag, user, pass)
}

// saslFunc is a sasl.Server made of its Next method.
type saslFunc func(response []byte) (challenge []byte, done bool, err error)

func (f saslFunc) Next(response []byte) ([]byte, bool, error) { return f(response) }

// decodeSASL decodes a base64 SASL response; "=" and "" are the empty
// response.
func decodeSASL(b []byte) ([]byte, error) {
	if len(b) == 0 || len(b) == 1 && b[0] == '=' {
		return []byte{}, nil
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(b)))
	n, err := base64.StdEncoding.Decode(out, b)
	if err != nil {
		return nil, err
	}
	return out[:n], nil
}

// remoteAddr is the client's address for the Authenticator (lockout,
// plaintext policy).
func (c *session) remoteAddr() netip.Addr {
	if ta, ok := c.nc.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(c.nc.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// login checks the local password, logs in upstream and relays. It reports
// whether to read the next command (false once relayed or closed).
func (c *session) login(tag, user, pass string) bool {
	tagb := []byte(tag)
	c.account = user
	log := c.log.With("account", user)
	m := c.s.metrics

	ctx, cancel := context.WithDeadline(c.ctx, c.deadline)
	grant, err := c.s.Auth.Authenticate(ctx, user, pass, c.remoteAddr())
	cancel()
	if err != nil {
		m.Login(Name, false)
		ae := asAuthError(err)
		log.Info("imap login refused", "kind", kindName(ae.Kind), "err", ae)
		if ae.Kind == auth.AuthFailed || errors.Is(ae, auth.ErrLockedOut) {
			c.logAuthFailure(user, ae)
		}
		c.refuse(tagb, ae)
		return c.countError()
	}
	m.Login(Name, true)

	mailbox := grant.Mailbox
	if mailbox == "" {
		mailbox = grant.Username
	}
	if d := c.s.backoff.Remaining(mailbox); d > 0 {
		c.s.refusals.Log(log, slog.LevelWarn, mailbox, "imap login refused: the upstream throttled this mailbox", "mailbox", mailbox, "retry_in", d.Round(time.Second))
		c.reply(tagb, "NO", "[UNAVAILABLE] "+upstream.ThrottledText(d))
		return c.countError()
	}
	release, ok := c.s.mailboxes.Acquire(mailbox)
	if !ok {
		c.s.refusals.Log(log, slog.LevelWarn, mailbox, "imap login refused: too many upstream sessions for this mailbox", "mailbox", mailbox)
		c.reply(tagb, "NO", "[UNAVAILABLE] too many sessions for this mailbox")
		return c.countError()
	}
	defer release()

	c.state.Store(stateUpstream)
	dl := time.Now().Add(c.s.upstreamTimeout())
	// The client waits while we log in upstream; it must still get our
	// answer if the pre-auth deadline passes meanwhile.
	c.nc.SetDeadline(dl.Add(byeWriteTimeout))
	res := c.openUpstream(dl, tag, grant, log)
	if res.err != nil {
		log.Warn("imap upstream login failed", "kind", kindName(res.err.Kind), "err", res.err)
		c.refuse(tagb, res.err)
		c.state.Store(statePreAuth)
		c.nc.SetDeadline(c.deadline)
		return c.countError()
	}
	if c.s.shutting.Load() {
		res.up.Close()
		c.reply(tagb, "NO", "[UNAVAILABLE] server shutting down")
		c.bye("server shutting down", outcomeShutdown, false)
		return false
	}

	// Logged in: off the listener's pre-login count before the client
	// hears so.
	c.leaveWaiting()

	// The upstream's untagged data and its tagged OK, which usually carries
	// [CAPABILITY ...], go to the client as they are.
	c.w.Write(res.reply)
	if err := c.flush(); err != nil {
		res.up.Close()
		c.outcome = outcomeClientGone
		return false
	}
	c.nc.SetDeadline(time.Time{})
	res.up.SetDeadline(time.Time{})
	c.state.Store(stateRelay)
	log.Info("imap login relayed", "upstream", grant.Upstream.AddrOf(Name), "mailbox", grant.Mailbox)

	// The parser and writer are done with; only the reader goes on, since
	// it may hold commands the client pipelined after its login.
	r, up, upr := c.r, res.up, res.upr
	c.p, c.r, c.w, res = parser{}, nil, nil, upstreamResult{}
	if c.trace != nil {
		c.trace.Debug("relaying; trace ends")
	}
	m.Session(grant.Username, 1)
	c.up, c.down, err = relay.Relay(c.conn, r, up, upr, relay.RelayOptions{Idle: c.s.idleTimeout(), Goodbye: &c.goodbye.Goodbye, SafePoint: &c.goodbye})
	m.Session(grant.Username, -1)
	m.Relayed(Name, c.up, c.down)
	c.outcome = outcomeRelayed
	switch {
	case errors.Is(err, relay.ErrSaidGoodbye):
		c.outcome = outcomeShutdown
	case errors.Is(err, relay.ErrIdleTimeout):
		c.outcome = "idle timeout"
		log.Info("imap session idle; closed", "idle_timeout", c.s.idleTimeout())
	case err != nil:
		log.Debug("imap relay ended", "err", err)
	}
	return false
}

// logAuthFailure writes the one line fail2ban and the like look for:
// level=WARN msg="auth failure" proto=imap remote=IP user=NAME. The
// username is the client's, quoted by the handler when it needs to be, so
// it cannot forge a line.
func (c *session) logAuthFailure(user string, ae *auth.AuthError) {
	attrs := []any{"proto", Name, "remote", c.remoteAddr().String(), "user", user, "conn", c.id}
	if errors.Is(ae, auth.ErrLockedOut) {
		attrs = append(attrs, "reason", "locked out")
	}
	if errors.Is(ae, auth.ErrLockedOut) {
		// fail2ban saw the failures that made the block; a client that
		// keeps trying while blocked is counted, not logged each time.
		c.s.refusals.Log(c.s.logger(), slog.LevelWarn, c.remoteAddr().String()+" "+user, "auth failure", attrs...)
		return
	}
	c.s.logger().Warn("auth failure", attrs...)
}

// refuse answers a failed login.
func (c *session) refuse(tag []byte, ae *auth.AuthError) {
	switch ae.Kind {
	case auth.AuthNeedsSignIn:
		c.reply(tag, "NO", "[ALERT] "+clean(ae.Msg))
	case auth.AuthUnavailable:
		c.reply(tag, "NO", "[UNAVAILABLE] "+clean(ae.Msg))
	default:
		if errors.Is(ae.Err, errUpstreamRefused) {
			c.reply(tag, "NO", "[AUTHENTICATIONFAILED] "+clean(ae.Msg))
			return
		}
		c.reply(tag, "NO", "[AUTHENTICATIONFAILED] Invalid credentials")
	}
}

func asAuthError(err error) *auth.AuthError {
	var ae *auth.AuthError
	if errors.As(err, &ae) {
		return ae
	}
	return &auth.AuthError{Kind: auth.AuthUnavailable, Msg: "temporary failure checking the login", Err: err}
}

func kindName(k auth.AuthKind) string {
	switch k {
	case auth.AuthFailed:
		return "failed"
	case auth.AuthNeedsSignIn:
		return "needs sign-in"
	case auth.AuthUnavailable:
		return "unavailable"
	}
	return fmt.Sprint(int(k))
}

// clean makes s safe as IMAP resp-text: one line of printable characters,
// not too long.
func clean(s string) string {
	const max = 400
	b := make([]byte, 0, min(len(s), max))
	for i := 0; i < len(s) && len(b) < max; i++ {
		ch := s[i]
		if ch < 0x20 || ch == 0x7f {
			ch = ' '
		}
		b = append(b, ch)
	}
	return string(b)
}
