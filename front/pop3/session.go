package pop3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/relay"
	"mailproxy/upstream"
)

// Outcomes, for the end-of-connection log line.
const (
	outcomeQuit         = "quit"
	outcomeClientGone   = "client closed"
	outcomeTimeout      = "pre-login timeout"
	outcomeShutdown     = "shutdown"
	outcomeLineTooLong  = "line too long"
	outcomeTooManyErrs  = "too many errors"
	outcomeTLSFailed    = front.OutcomeTLSFailed
	outcomeServerClosed = "server closed"
)

// RFC 2449 / RFC 3206 response codes.
const (
	codeAuth    = "[AUTH] "
	codeSysTemp = "[SYS/TEMP] "
	codeSysPerm = "[SYS/PERM] "
)

var errLineTooLong = errors.New("pop3: line too long")

// session is one client connection of the POP3 front.
type session struct {
	*front.Conn
	s *Server

	// Owned by the session goroutine.
	conn    net.Conn // NC, or the TLS conn over it
	r       *bufio.Reader
	w       *bufio.Writer
	errs    int    // -ERR replies and failed logins
	user    string // from USER, waiting for PASS
	hasUser bool
}

// Serve implements front.Session: the greeting and the pre-login commands.
func (c *session) Serve() {
	c.conn = c.NC
	c.r = bufio.NewReaderSize(c.conn, ioBufferSize)
	c.w = bufio.NewWriterSize(c.conn, ioBufferSize)
	c.w.WriteString("+OK mailproxy POP3 ready\r\n")
	if c.w.Flush() != nil {
		c.Outcome = outcomeClientGone
		return
	}
	c.preAuth()
}

func (c *session) canSTLS() bool { return !c.IsTLS && c.s.TLSConfig != nil }

// plaintextOK reports whether the client may log in on this connection:
// it has TLS, or its address may send passwords in clear text.
func (c *session) plaintextOK() bool { return c.PlaintextOK(c.s.PlaintextAllowed) }

func (c *session) reply(line string) {
	c.w.WriteString(line)
	c.w.WriteString("\r\n")
}

// fail answers "-ERR text" and counts it; it reports false when the client
// has made too many errors and the connection is closed.
func (c *session) fail(text string) bool {
	c.reply("-ERR " + text)
	c.errs++
	if c.errs >= maxBadCommands {
		c.bye("-ERR too many errors", outcomeTooManyErrs, true)
		return false
	}
	return c.w.Flush() == nil
}

// bye writes a last line and ends the session. After an error that may
// leave unread input it drains that input for a moment first, so that the
// kernel does not answer it with a reset that destroys the line.
func (c *session) bye(line, outcome string, linger bool) {
	c.Outcome = outcome
	c.NC.SetWriteDeadline(time.Now().Add(front.ByeWriteTimeout))
	c.reply(line)
	if c.w.Flush() != nil || !linger {
		return
	}
	c.Linger(c.conn)
}

// readLine reads one line of at most maxLine bytes and returns it without
// its line ending. The slice is valid until the next read.
func (c *session) readLine() ([]byte, error) {
	max := c.s.maxLine()
	var long []byte // only for lines longer than the reader's buffer
	for {
		frag, err := c.r.ReadSlice('\n')
		if err == nil && long == nil {
			if len(frag) > max+2 {
				return nil, errLineTooLong
			}
			return bytes.TrimRight(frag, "\r\n"), nil
		}
		long = append(long, frag...)
		if len(long) > max+2 {
			return nil, errLineTooLong
		}
		if err == nil {
			return bytes.TrimRight(long, "\r\n"), nil
		}
		if err != bufio.ErrBufferFull {
			return nil, err
		}
	}
}

// readFailed ends the session after a failed read.
func (c *session) readFailed(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, errLineTooLong):
		c.bye("-ERR line too long", outcomeLineTooLong, true)
	case c.Shutting():
		c.bye("-ERR "+codeSysTemp+"server shutting down", outcomeShutdown, false)
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		c.bye("-ERR pre-login timeout", outcomeTimeout, false)
	case errors.Is(err, net.ErrClosed):
		c.Outcome = outcomeServerClosed
	default:
		c.Outcome = outcomeClientGone
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			c.Log.Debug("pop3 read failed", "err", err)
		}
	}
}

// preAuth runs the command loop until the session ends or is relayed.
func (c *session) preAuth() {
	for {
		if c.Shutting() {
			c.bye("-ERR "+codeSysTemp+"server shutting down", outcomeShutdown, false)
			return
		}
		line, err := c.readLine()
		if err != nil {
			c.readFailed(err)
			return
		}
		if !c.command(line) {
			return
		}
	}
}

// command handles one line. It reports whether to read the next one.
func (c *session) command(line []byte) bool {
	name, arg, _ := bytes.Cut(line, []byte(" "))
	switch strings.ToUpper(string(name)) {
	case "CAPA":
		if len(arg) != 0 {
			return c.fail("CAPA takes no arguments")
		}
		c.reply("+OK capability list follows")
		for _, cap := range c.caps() {
			c.reply(cap)
		}
		c.reply(".")
	case "QUIT":
		c.reply("+OK mailproxy signing off")
		c.w.Flush()
		c.Outcome = outcomeQuit
		return false
	case "STLS":
		return c.stls(arg)
	case "USER":
		if !c.plaintextOK() {
			return c.refusePlaintext()
		}
		if len(arg) == 0 {
			return c.fail("USER needs a name")
		}
		c.user, c.hasUser = string(arg), true
		c.reply("+OK send PASS")
	case "PASS":
		if !c.hasUser {
			return c.fail("send USER first")
		}
		if !c.plaintextOK() {
			return c.refusePlaintext()
		}
		// RFC 1939: the password is the rest of the line, spaces included.
		user := c.user
		c.user, c.hasUser = "", false
		return c.login(user, string(arg))
	case "AUTH":
		return c.auth(arg)
	case "APOP":
		return c.fail("APOP is not supported; use USER/PASS or AUTH")
	case "NOOP", "STAT", "LIST", "RETR", "DELE", "RSET", "TOP", "UIDL", "LAST":
		return c.fail("not logged in")
	default:
		return c.fail("unknown command")
	}
	return c.w.Flush() == nil
}

// caps is the pre-login capability list (RFC 2449). The upstream's own
// list answers CAPA after login. TOP and UIDL are listed before login too:
// Exchange Online and Gmail have both, and some clients decide what to use
// from the first CAPA.
func (c *session) caps() []string {
	caps := []string{"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"}
	if c.plaintextOK() {
		caps = append(caps, "USER", "SASL PLAIN LOGIN")
	}
	if c.canSTLS() {
		caps = append(caps, "STLS")
	}
	return append(caps, "IMPLEMENTATION mailproxy")
}

// refusePlaintext answers a login attempt that needs TLS first.
func (c *session) refusePlaintext() bool {
	c.Log.Info("pop3 login refused: password without TLS from an address not in allow_plaintext_from")
	if c.canSTLS() {
		return c.fail(codeSysPerm + "TLS required: use STLS first")
	}
	return c.fail(codeSysPerm + "TLS required: use the implicit TLS port")
}

func (c *session) stls(arg []byte) bool {
	if len(arg) != 0 {
		return c.fail("STLS takes no arguments")
	}
	if !c.canSTLS() {
		return c.fail("STLS not available")
	}
	c.reply("+OK begin TLS negotiation")
	if c.w.Flush() != nil {
		c.Outcome = outcomeClientGone
		return false
	}
	// What the client sent after the STLS line arrived in clear text and
	// may have been injected: drop it (CVE-2011-0411).
	if n := c.r.Buffered(); n > 0 {
		c.Log.Info("pop3 discarding bytes pipelined after STLS", "bytes", n)
	}
	tc := tls.Server(c.NC, c.s.TLSConfig)
	ctx, cancel := context.WithDeadline(c.Ctx, c.Deadline)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		c.Outcome = outcomeTLSFailed
		c.Log.Info("pop3 stls handshake failed", "err", err)
		return false
	}
	c.conn = tc
	c.IsTLS = true
	c.user, c.hasUser = "", false // RFC 2595: forget what was said in clear
	c.r.Reset(tc)
	c.w.Reset(tc)
	return true
}

// auth runs AUTH (RFC 5034): PLAIN or LOGIN, each with or without an
// initial response; a bare AUTH lists the mechanisms, as Outlook asks.
func (c *session) auth(arg []byte) bool {
	if len(arg) == 0 {
		if !c.plaintextOK() {
			return c.refusePlaintext()
		}
		c.reply("+OK")
		c.reply("PLAIN")
		c.reply("LOGIN")
		c.reply(".")
		return c.w.Flush() == nil
	}
	if !c.plaintextOK() {
		return c.refusePlaintext()
	}
	mechb, irb, hasIR := bytes.Cut(arg, []byte(" "))
	var resp []byte // nil: no initial response
	if hasIR {
		var err error
		if resp, err = front.DecodeSASL(irb); err != nil {
			return c.fail("invalid base64 in the initial response")
		}
	}
	var user, pass string
	srv := front.NewSASLServer(strings.ToUpper(string(mechb)), func(u, pw string) { user, pass = u, pw })
	if srv == nil {
		return c.fail("unsupported authentication mechanism")
	}
	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			if front.IdentityRefused(err) {
				return c.fail(codeAuth + "authorization identity not supported")
			}
			return c.fail("invalid SASL response")
		}
		if done {
			break
		}
		c.w.WriteString("+ ")
		c.w.WriteString(base64.StdEncoding.EncodeToString(challenge))
		c.w.WriteString("\r\n")
		if c.w.Flush() != nil {
			c.Outcome = outcomeClientGone
			return false
		}
		line, err := c.readLine()
		if err != nil {
			c.readFailed(err)
			return false
		}
		if len(line) == 1 && line[0] == '*' {
			return c.fail("authentication cancelled")
		}
		if resp, err = front.DecodeSASL(line); err != nil {
			return c.fail("invalid base64 in the SASL response")
		}
	}
	return c.login(user, pass)
}

// login checks the local password, logs in upstream and relays. It reports
// whether to read the next command (false once relayed or closed).
func (c *session) login(user, pass string) bool {
	grant, log, ae := c.Authenticate(c.s.Auth, user, pass)
	if ae != nil {
		if ae.Kind == auth.AuthFailed {
			c.logAuthFailure(user, ae)
		}
		return c.refuse(ae)
	}

	mailbox := grant.Mailbox // always set (auth.grantFor)
	if d := c.s.backoff.Remaining(mailbox); d > 0 {
		log.Warn("pop3 login refused: the upstream throttled this mailbox", "mailbox", mailbox, "retry_in", d.Round(time.Second))
		return c.fail(codeSysTemp + upstream.ThrottledText(d))
	}
	release, ok := c.s.mailboxes.Acquire(mailbox)
	if !ok {
		log.Warn("pop3 login refused: too many upstream sessions for this mailbox", "mailbox", mailbox)
		return c.fail(codeSysTemp + "too many sessions for this mailbox")
	}
	defer release()

	dl := c.BeginUpstream(c.s.upstreamTimeout())
	res := c.openUpstream(dl, grant, log)
	if res.err != nil {
		c.UpstreamFailed(log, res.err)
		return c.refuse(res.err)
	}
	if c.Shutting() {
		res.up.Close()
		c.bye("-ERR "+codeSysTemp+"server shutting down", outcomeShutdown, false)
		return false
	}
	// The upstream's +OK to the login goes to the client as it is.
	c.w.Write(res.reply)
	if err := c.w.Flush(); err != nil {
		res.up.Close()
		c.Outcome = outcomeClientGone
		return false
	}
	c.SetState(front.StateRelay)
	log.Info("pop3 login relayed", "upstream", res.addr, "mailbox", mailbox)

	// Only the reader goes on: it may hold commands the client pipelined
	// after its login.
	r, up, upr := c.r, res.up, res.upr
	c.r, c.w, res = nil, nil, upstreamResult{}
	if err := c.Relay(log, grant.Username, c.conn, r, up, upr, relay.RelayOptions{Idle: c.s.idleTimeout()}); err != nil && !errors.Is(err, relay.ErrIdleTimeout) {
		log.Debug("pop3 relay ended", "err", err)
	}
	return false
}

// logAuthFailure writes the one line fail2ban and the like look for:
// level=WARN msg="auth failure" proto=pop3 remote=IP user=NAME.
func (c *session) logAuthFailure(user string, ae *auth.AuthError) {
	attrs := []any{"proto", "pop3", "remote", c.Remote().String(), "user", user, "conn", c.ID}
	if errors.Is(ae, auth.ErrLockedOut) {
		attrs = append(attrs, "reason", "locked out")
	}
	c.s.logger().Warn("auth failure", attrs...)
}

// refuse answers a failed login with its RFC 3206 code and counts it.
func (c *session) refuse(ae *auth.AuthError) bool {
	switch {
	case ae.Kind == auth.AuthNeedsSignIn:
		return c.fail(codeSysPerm + auth.ClientText(ae.Msg))
	case ae.Kind == auth.AuthUnavailable:
		return c.fail(codeSysTemp + auth.ClientText(ae.Msg))
	case errors.Is(ae, auth.ErrLockedOut):
		return c.fail(codeSysTemp + "too many failed logins; try again later")
	case errors.Is(ae.Err, front.ErrUpstreamRefused):
		return c.fail(codeAuth + auth.ClientText(ae.Msg))
	default:
		return c.fail(codeAuth + "invalid credentials")
	}
}
