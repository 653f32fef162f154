package imap

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"mailproxy/front"
	"mailproxy/relay"
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

	goodbye goodbye // Shutdown asks a relayed session to say BYE
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
