package pop3

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
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"

	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/relay"
	"mailproxy/upstream"
)

// Session states, for Shutdown.
const (
	statePreAuth int32 = iota
	stateUpstream
	stateRelay
)

// Outcomes, for the end-of-connection log line.
const (
	outcomeQuit         = "quit"
	outcomeClientGone   = "client closed"
	outcomeTimeout      = "pre-login timeout"
	outcomeShutdown     = "shutdown"
	outcomeLineTooLong  = "line too long"
	outcomeTooManyErrs  = "too many errors"
	outcomeTLSFailed    = "tls handshake failed"
	outcomeRelayed      = "relayed"
	outcomeIdle         = "idle timeout"
	outcomeError        = "error"
	outcomeServerClosed = "server closed"
)

// RFC 2449 / RFC 3206 response codes.
const (
	codeAuth    = "[AUTH] "
	codeSysTemp = "[SYS/TEMP] "
	codeSysPerm = "[SYS/PERM] "
)

var errLineTooLong = errors.New("pop3: line too long")

type session struct {
	s      *Server
	nc     net.Conn // as accepted; deadlines set here reach a TLS layer above
	id     uint64
	ctx    context.Context
	cancel context.CancelFunc
	state  atomic.Int32

	// Owned by the session goroutine.
	conn     net.Conn // nc, or the TLS conn over it
	isTLS    bool
	r        *bufio.Reader
	w        *bufio.Writer
	log      *slog.Logger
	deadline time.Time // end of the pre-login phase
	errs     int       // -ERR replies and failed logins
	user     string    // from USER, waiting for PASS
	hasUser  bool
	account  string
	outcome  string
	up, down int64 // relayed bytes to the upstream, to the client

	plainChecked bool
	plainOK      bool

	mu       sync.Mutex // protects upstream
	upstream net.Conn
}

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

func (c *session) serve() {
	start := time.Now()
	c.conn = c.nc
	c.log = c.s.logger().With("proto", "pop3", "conn", c.id, "remote", c.nc.RemoteAddr().String())
	tc, implicitTLS := c.nc.(*tls.Conn)
	c.log.Info("pop3 connection", "tls", implicitTLS)
	c.s.metrics.ConnOpened(Name)
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("pop3 session panic", "panic", v, "stack", string(debug.Stack()))
			c.outcome = outcomeError
		}
		c.closeConns()
		c.s.metrics.ConnClosed(Name)
		c.log.Info("pop3 connection closed",
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
			c.log.Info("pop3 tls handshake failed", "err", err)
			return
		}
		c.isTLS = true
	}
	c.r = bufio.NewReaderSize(c.conn, ioBufferSize)
	c.w = bufio.NewWriterSize(c.conn, ioBufferSize)
	c.w.WriteString("+OK mailproxy POP3 ready\r\n")
	if c.w.Flush() != nil {
		c.outcome = outcomeClientGone
		return
	}
	c.preAuth()
}

func (c *session) canSTLS() bool { return !c.isTLS && c.s.TLSConfig != nil }

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
	c.outcome = outcome
	c.nc.SetWriteDeadline(time.Now().Add(byeWriteTimeout))
	c.reply(line)
	if c.w.Flush() != nil || !linger {
		return
	}
	raw := c.nc
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	if tc, ok := c.conn.(*tls.Conn); ok {
		tc.CloseWrite()
	}
	if cw, ok := raw.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	raw.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.CopyN(io.Discard, raw, lingerMaxBytes)
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
	case c.s.shutting.Load():
		c.bye("-ERR "+codeSysTemp+"server shutting down", outcomeShutdown, false)
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		c.bye("-ERR pre-login timeout", outcomeTimeout, false)
	case errors.Is(err, net.ErrClosed):
		c.outcome = outcomeServerClosed
	default:
		c.outcome = outcomeClientGone
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			c.log.Debug("pop3 read failed", "err", err)
		}
	}
}

// preAuth runs the command loop until the session ends or is relayed.
func (c *session) preAuth() {
	for {
		if c.s.shutting.Load() {
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
		c.outcome = outcomeQuit
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
	c.log.Info("pop3 login refused: password without TLS from an address not in allow_plaintext_from")
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
		c.outcome = outcomeClientGone
		return false
	}
	// What the client sent after the STLS line arrived in clear text and
	// may have been injected: drop it (CVE-2011-0411).
	if n := c.r.Buffered(); n > 0 {
		c.log.Info("pop3 discarding bytes pipelined after STLS", "bytes", n)
	}
	tc := tls.Server(c.nc, c.s.TLSConfig)
	ctx, cancel := context.WithDeadline(c.ctx, c.deadline)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		c.outcome = outcomeTLSFailed
		c.log.Info("pop3 stls handshake failed", "err", err)
		return false
	}
	c.conn = tc
	c.isTLS = true
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
		if resp, err = decodeSASL(irb); err != nil {
			return c.fail("invalid base64 in the initial response")
		}
	}
	var user, pass string
	var identityMismatch bool
	var srv sasl.Server
	switch strings.ToUpper(string(mechb)) {
	case "PLAIN":
		srv = saslFunc(func(resp []byte) ([]byte, bool, error) {
			if resp == nil {
				return []byte{}, false, nil // "+ "
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
		return c.fail("unsupported authentication mechanism")
	}
	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			if identityMismatch {
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
			c.outcome = outcomeClientGone
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
		if resp, err = decodeSASL(line); err != nil {
			return c.fail("invalid base64 in the SASL response")
		}
	}
	return c.login(user, pass)
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

// login checks the local password, logs in upstream and relays. It reports
// whether to read the next command (false once relayed or closed).
func (c *session) login(user, pass string) bool {
	c.account = user
	log := c.log.With("account", user)
	m := c.s.metrics

	ctx, cancel := context.WithDeadline(c.ctx, c.deadline)
	grant, err := c.s.Auth.Authenticate(ctx, user, pass, c.remoteAddr())
	cancel()
	if err != nil {
		m.Login(Name, false)
		ae := asAuthError(err)
		log.Info("pop3 login refused", "kind", kindName(ae.Kind), "err", ae)
		if ae.Kind == auth.AuthFailed {
			c.logAuthFailure(user, ae)
		}
		return c.refuse(ae)
	}
	m.Login(Name, true)

	mailbox := grant.Mailbox
	if mailbox == "" {
		mailbox = grant.Username
	}
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

	c.state.Store(stateUpstream)
	dl := time.Now().Add(c.s.upstreamTimeout())
	c.nc.SetDeadline(dl.Add(byeWriteTimeout))
	res := c.openUpstream(dl, grant, log)
	if res.err != nil {
		log.Warn("pop3 upstream login failed", "kind", kindName(res.err.Kind), "err", res.err)
		c.state.Store(statePreAuth)
		c.nc.SetDeadline(c.deadline)
		return c.refuse(res.err)
	}
	if c.s.shutting.Load() {
		res.up.Close()
		c.bye("-ERR "+codeSysTemp+"server shutting down", outcomeShutdown, false)
		return false
	}
	// The upstream's +OK to the login goes to the client as it is.
	c.w.Write(res.reply)
	if err := c.w.Flush(); err != nil {
		res.up.Close()
		c.outcome = outcomeClientGone
		return false
	}
	c.state.Store(stateRelay)
	log.Info("pop3 login relayed", "upstream", res.addr, "mailbox", mailbox)

	// Only the reader goes on: it may hold commands the client pipelined
	// after its login.
	r, up, upr := c.r, res.up, res.upr
	c.r, c.w, res = nil, nil, upstreamResult{}
	m.Session(grant.Username, 1)
	c.up, c.down, err = relay.Relay(c.conn, r, up, upr, relay.RelayOptions{Idle: c.s.idleTimeout()})
	m.Session(grant.Username, -1)
	m.Relayed(Name, c.up, c.down)
	c.outcome = outcomeRelayed
	switch {
	case errors.Is(err, relay.ErrIdleTimeout):
		c.outcome = outcomeIdle
		log.Info("pop3 session idle; closed", "idle_timeout", c.s.idleTimeout())
	case err != nil:
		log.Debug("pop3 relay ended", "err", err)
	}
	return false
}

// logAuthFailure writes the one line fail2ban and the like look for:
// level=WARN msg="auth failure" proto=pop3 remote=IP user=NAME.
func (c *session) logAuthFailure(user string, ae *auth.AuthError) {
	attrs := []any{"proto", "pop3", "remote", c.remoteAddr().String(), "user", user, "conn", c.id}
	if errors.Is(ae, auth.ErrLockedOut) {
		attrs = append(attrs, "reason", "locked out")
	}
	c.s.logger().Warn("auth failure", attrs...)
}

// refuse answers a failed login with its RFC 3206 code and counts it.
func (c *session) refuse(ae *auth.AuthError) bool {
	switch {
	case ae.Kind == auth.AuthNeedsSignIn:
		return c.fail(codeSysPerm + clean(ae.Msg))
	case ae.Kind == auth.AuthUnavailable:
		return c.fail(codeSysTemp + clean(ae.Msg))
	case errors.Is(ae, auth.ErrLockedOut):
		return c.fail(codeSysTemp + "too many failed logins; try again later")
	case errors.Is(ae.Err, errUpstreamRefused):
		return c.fail(codeAuth + clean(ae.Msg))
	default:
		return c.fail(codeAuth + "invalid credentials")
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

// clean makes s safe as a reply text: one line of printable characters,
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
