package imap

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/relay"
	"mailproxy/upstream"
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
	outcomeTLSFailed    = front.OutcomeTLSFailed
	outcomeRelayed      = "relayed"
	outcomeServerClosed = "server closed"
)

// session is one client connection of the IMAP front.
type session struct {
	*front.Conn
	s *Server

	// Owned by the session goroutine.
	conn  net.Conn // NC, or the TLS conn over it
	r     *bufio.Reader
	w     *bufio.Writer
	p     parser
	trace *slog.Logger // protocol trace; nil: off
	errs  int          // BAD replies and failed logins

	goodbye relay.Goodbye // Shutdown asks a relayed session to say BYE
}

// SayGoodbye implements front.Goodbyer: Shutdown asks a relayed session to
// say BYE (only the first request counts).
func (c *session) SayGoodbye() { c.goodbye.Say(shutdownBye) }

// Serve implements front.Session: the greeting and the pre-auth commands.
func (c *session) Serve() {
	c.conn = c.NC
	if t := c.s.Trace; t != nil && t.Enabled(context.Background(), slog.LevelDebug) {
		c.trace = t.With("proto", Name, "conn", c.ID)
	}
	c.r = bufio.NewReaderSize(c.conn, ioBufferSize)
	c.w = bufio.NewWriterSize(c.traced(c.conn), ioBufferSize)
	c.p = parser{r: c.r, w: c.w, maxLine: c.s.maxLine(), maxLiteral: c.s.maxLiteral()}

	c.writef("* OK [CAPABILITY %s] mailproxy ready\r\n", c.caps())
	if c.flush() != nil {
		c.Outcome = outcomeClientGone
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

func (c *session) canStartTLS() bool { return !c.IsTLS && c.s.TLSConfig != nil }

// plaintextOK reports whether the client may log in on this connection:
// it has TLS, or its address may send passwords in clear text.
func (c *session) plaintextOK() bool { return c.PlaintextOK(c.s.PlaintextAllowed) }

// refusePlaintext answers a login attempt that needs TLS first.
func (c *session) refusePlaintext(tag []byte) bool {
	c.Log.Info("imap login refused: password without TLS from an address not in allow_plaintext_from")
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
	c.Outcome = outcome
	c.NC.SetWriteDeadline(time.Now().Add(front.ByeWriteTimeout))
	c.writef("* BYE %s\r\n", text)
	if c.flush() != nil || !linger {
		return
	}
	c.Linger(c.conn)
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
	case c.Shutting():
		c.bye("server shutting down", outcomeShutdown, false)
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		c.bye("pre-auth timeout", outcomeTimeout, false)
	case errors.Is(err, net.ErrClosed):
		c.Outcome = outcomeServerClosed
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		c.Outcome = outcomeClientGone
	default:
		c.Outcome = outcomeClientGone
		c.Log.Debug("imap read failed", "err", err)
	}
}

// preAuth runs the command loop until the session ends or is relayed.
func (c *session) preAuth() {
	for {
		if c.Shutting() {
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
		c.Outcome = outcomeLogout
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
	if c.IsTLS || c.s.TLSConfig == nil {
		return c.bad(tag, "STARTTLS not available")
	}
	c.reply(tag, "OK", "Begin TLS negotiation now")
	if c.flush() != nil {
		c.Outcome = outcomeClientGone
		return false
	}
	// Whatever the client sent after the STARTTLS line arrived in clear
	// text and may have been injected: drop it (CVE-2011-0411).
	if n := c.r.Buffered(); n > 0 {
		c.Log.Info("imap discarding bytes pipelined after STARTTLS", "bytes", n)
	}
	// UnderTLS: the relay gathers the records of this session.
	tc := tls.Server(relay.UnderTLS(c.NC), c.s.TLSConfig)
	ctx, cancel := context.WithDeadline(c.Ctx, c.Deadline)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		c.Outcome = outcomeTLSFailed
		c.Log.Info("imap starttls handshake failed", "err", err)
		return false
	}
	c.conn = tc
	c.IsTLS = true
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
		if resp, err = front.DecodeSASL(p.bytes(args[1].span)); err != nil {
			return c.bad(tagb, "invalid base64 in initial response")
		}
	}

	var user, pass string
	srv := front.NewSASLServer(string(mech), func(u, pw string) { user, pass = u, pw })
	if srv == nil {
		c.reply(tagb, "NO", "unsupported authentication mechanism")
		return c.countError()
	}

	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			if front.IdentityRefused(err) {
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
			c.Outcome = outcomeClientGone
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
		if resp, err = front.DecodeSASL(line); err != nil {
			return c.bad(tagb, "invalid base64 in SASL response")
		}
	}
	return c.login(tag, user, pass)
}

// login checks the local password, logs in upstream and relays. It reports
// whether to read the next command (false once relayed or closed).
func (c *session) login(tag, user, pass string) bool {
	tagb := []byte(tag)
	c.Account = user
	log := c.Log.With("account", user)
	m := c.s.metrics

	ctx, cancel := context.WithDeadline(c.Ctx, c.Deadline)
	grant, err := c.s.Auth.Authenticate(ctx, user, pass, c.Remote())
	cancel()
	if err != nil {
		m.Login(Name, false)
		ae := front.AsAuthError(err)
		log.Info("imap login refused", "kind", front.KindName(ae.Kind), "err", ae)
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

	c.SetState(front.StateUpstream)
	dl := time.Now().Add(c.s.upstreamTimeout())
	// The client waits while we log in upstream; it must still get our
	// answer if the pre-auth deadline passes meanwhile.
	c.NC.SetDeadline(dl.Add(front.ByeWriteTimeout))
	res := c.openUpstream(dl, tag, grant, log)
	if res.err != nil {
		log.Warn("imap upstream login failed", "kind", front.KindName(res.err.Kind), "err", res.err)
		c.refuse(tagb, res.err)
		c.SetState(front.StatePreAuth)
		c.NC.SetDeadline(c.Deadline)
		return c.countError()
	}
	if c.Shutting() {
		res.up.Close()
		c.reply(tagb, "NO", "[UNAVAILABLE] server shutting down")
		c.bye("server shutting down", outcomeShutdown, false)
		return false
	}

	// Logged in: off the listener's pre-login count before the client
	// hears so.
	c.LeaveWaiting()

	// The upstream's untagged data and its tagged OK, which usually carries
	// [CAPABILITY ...], go to the client as they are.
	c.w.Write(res.reply)
	if err := c.flush(); err != nil {
		res.up.Close()
		c.Outcome = outcomeClientGone
		return false
	}
	c.NC.SetDeadline(time.Time{})
	res.up.SetDeadline(time.Time{})
	c.SetState(front.StateRelay)
	log.Info("imap login relayed", "upstream", grant.Upstream.AddrOf(Name), "mailbox", grant.Mailbox)

	// The parser and writer are done with; only the reader goes on, since
	// it may hold commands the client pipelined after its login.
	r, up, upr := c.r, res.up, res.upr
	c.p, c.r, c.w, res = parser{}, nil, nil, upstreamResult{}
	if c.trace != nil {
		c.trace.Debug("relaying; trace ends")
	}
	m.Session(grant.Username, 1)
	c.Up, c.Down, err = relay.Relay(c.conn, r, up, upr, relay.RelayOptions{Idle: c.s.idleTimeout(), Goodbye: &c.goodbye})
	m.Session(grant.Username, -1)
	m.Relayed(Name, c.Up, c.Down)
	c.Outcome = outcomeRelayed
	switch {
	case errors.Is(err, relay.ErrSaidGoodbye):
		c.Outcome = outcomeShutdown
	case errors.Is(err, relay.ErrIdleTimeout):
		c.Outcome = "idle timeout"
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
	attrs := []any{"proto", Name, "remote", c.Remote().String(), "user", user, "conn", c.ID}
	if errors.Is(ae, auth.ErrLockedOut) {
		attrs = append(attrs, "reason", "locked out")
	}
	if errors.Is(ae, auth.ErrLockedOut) {
		// fail2ban saw the failures that made the block; a client that
		// keeps trying while blocked is counted, not logged each time.
		c.s.refusals.Log(c.s.logger(), slog.LevelWarn, c.Remote().String()+" "+user, "auth failure", attrs...)
		return
	}
	c.s.logger().Warn("auth failure", attrs...)
}

// refuse answers a failed login.
func (c *session) refuse(tag []byte, ae *auth.AuthError) {
	switch ae.Kind {
	case auth.AuthNeedsSignIn:
		c.reply(tag, "NO", "[ALERT] "+front.Clean(ae.Msg))
	case auth.AuthUnavailable:
		c.reply(tag, "NO", "[UNAVAILABLE] "+front.Clean(ae.Msg))
	default:
		if errors.Is(ae.Err, errUpstreamRefused) {
			c.reply(tag, "NO", "[AUTHENTICATIONFAILED] "+front.Clean(ae.Msg))
			return
		}
		c.reply(tag, "NO", "[AUTHENTICATIONFAILED] Invalid credentials")
	}
}
