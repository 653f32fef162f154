package front

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"mailproxy/auth"
	"mailproxy/relay"
	"mailproxy/upstream"
)

// Conn is one accepted client connection as the core tracks it; a front's
// session embeds it. The exported fields other than NC, ID and Ctx are
// owned by the session goroutine.
type Conn struct {
	NC  net.Conn        // as accepted; deadlines set here reach a TLS layer above
	ID  uint64          // the conn attribute of its log lines
	Ctx context.Context // canceled by Close and when the session ends
	Log *slog.Logger    // with proto, conn and remote

	Start    time.Time // accepted (the session goroutine started)
	Deadline time.Time // end of the pre-login phase
	IsTLS    bool      // implicit TLS, or after STARTTLS

	// For the end line.
	Account  string
	Outcome  string
	Up, Down int64 // relayed bytes to the upstream, to the client

	core    *Core
	sess    Session
	cancel  context.CancelFunc
	state   atomic.Int32
	waiting *atomic.Int32 // the listener's count of connections not logged in; nil: no cap
	left    atomic.Bool

	plainChecked bool // plainOK is set
	plainOK      bool // PlaintextAllowed's answer for the client's address

	mu       sync.Mutex // protects upstream
	upstream net.Conn
}

// Shutting reports whether the front is closing (Close or Shutdown).
func (c *Conn) Shutting() bool { return c.core.Shutting() }

// SetState tells Shutdown what the session is doing.
func (c *Conn) SetState(s int32) { c.state.Store(s) }

// LeaveWaiting takes the connection off its listener's pre-login count;
// the first call counts.
func (c *Conn) LeaveWaiting() {
	if c.waiting != nil && c.left.CompareAndSwap(false, true) {
		c.waiting.Add(-1)
	}
}

// SetUpstream records the session's upstream connection (nil: none), so
// that Close closes it too.
func (c *Conn) SetUpstream(up net.Conn) {
	c.mu.Lock()
	c.upstream = up
	c.mu.Unlock()
}

// closeConns closes the client connection and the upstream one, if any.
func (c *Conn) closeConns() {
	c.NC.Close()
	c.mu.Lock()
	if c.upstream != nil {
		c.upstream.Close()
	}
	c.mu.Unlock()
}

// Remote is the client's address for the Authenticator (lockout,
// plaintext policy).
func (c *Conn) Remote() netip.Addr { return RemoteAddr(c.NC) }

// PlaintextOK reports whether the client may log in on this connection:
// it has TLS, or allowed (nil: everyone) says its address may send
// passwords in clear text. The answer for the address is asked once.
func (c *Conn) PlaintextOK(allowed func(netip.Addr) bool) bool {
	if c.IsTLS || allowed == nil {
		return true
	}
	if !c.plainChecked {
		c.plainOK = allowed(c.Remote())
		c.plainChecked = true
	}
	return c.plainOK
}

// Linger is for the last line after an error that may leave unread input
// (an overlong line, pipelined garbage): conn being the connection the
// session speaks on (NC, or the TLS connection over it), it half-closes
// it and drains the input for a moment, since closing a socket with unread
// data makes the kernel send a reset, and the client may then never see
// the line.
func (c *Conn) Linger(conn net.Conn) {
	raw := c.NC
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	if tc, ok := conn.(*tls.Conn); ok {
		tc.CloseWrite() // close_notify
	}
	if cw, ok := raw.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite() // FIN
	}
	raw.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.CopyN(io.Discard, raw, lingerMaxBytes)
}

// RemoteAddr is c's remote address without port or IPv4-mapped prefix;
// the zero Addr when it has none.
func RemoteAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// Authenticate checks the local login of user: from now on the end line
// names the account, the check is bounded by the pre-login deadline and
// counted in Metrics.Login, and a refusal is logged as "<proto> login
// refused" with its kind. log is the session's logger with the account.
func (c *Conn) Authenticate(a auth.Authenticator, user, pass string) (g *auth.Grant, log *slog.Logger, ae *auth.AuthError) {
	c.Account = user
	log = c.Log.With("account", user)
	ctx, cancel := context.WithDeadline(c.Ctx, c.Deadline)
	g, err := a.Authenticate(ctx, user, pass, c.Remote())
	cancel()
	if err != nil {
		c.core.metrics.Login(c.core.Proto, false)
		ae = AsAuthError(err)
		log.Info(c.core.Proto+" login refused", "kind", KindName(ae.Kind), "err", ae)
		return nil, log, ae
	}
	c.core.metrics.Login(c.core.Proto, true)
	return g, log, nil
}

// BeginUpstream marks the session as logging in upstream, which may take
// timeout, and returns the deadline for it. The client waits meanwhile; it
// must still get the answer if the pre-login deadline passes.
func (c *Conn) BeginUpstream(timeout time.Duration) time.Time {
	c.SetState(StateUpstream)
	dl := time.Now().Add(timeout)
	c.NC.SetDeadline(dl.Add(ByeWriteTimeout))
	return dl
}

// UpstreamFailed logs a failed upstream login and takes the session back
// to the pre-login phase and its deadline.
func (c *Conn) UpstreamFailed(log *slog.Logger, ae *auth.AuthError) {
	log.Warn(c.core.Proto+" upstream login failed", "kind", KindName(ae.Kind), "err", ae)
	c.SetState(StatePreAuth)
	c.NC.SetDeadline(c.Deadline)
}

// DialUpstream dials addr with TLS on cfg for one upstream login attempt,
// bounded by ctx's deadline, and records the connection so that Close
// closes it too. Unless the login succeeds, call DropUpstream.
func (c *Conn) DialUpstream(ctx context.Context, dial upstream.Dialer, addr string, cfg *tls.Config) (net.Conn, *bufio.Reader, error) {
	up, err := upstream.DialTLS(ctx, dial, addr, cfg)
	if err != nil {
		return nil, nil, err
	}
	c.SetUpstream(up)
	if dl, has := ctx.Deadline(); has {
		up.SetDeadline(dl)
	}
	return up, bufio.NewReaderSize(up, upstreamBufferSize), nil
}

// DropUpstream closes up, the upstream connection of a failed attempt.
func (c *Conn) DropUpstream(up net.Conn) {
	up.Close()
	c.SetUpstream(nil)
}

// ErrUpstreamRefused marks the AuthError of a login whose access token the
// upstream refused, even after a refresh.
var ErrUpstreamRefused = errors.New("upstream refused the access token")

// LoginUpstream logs in to g's upstream, ctx bounding it to deadline: it
// gets the access token, waiting for the identity provider half of the
// time at most (when the provider hangs, the token source hands out the
// current token once we stop waiting, and the dial and XOAUTH2 exchange
// still need the rest), and calls attempt with it. When the upstream
// refuses the token (attempt returns its reply text as refusal) it forces
// one refresh and attempts once more, on a new connection. It returns the
// error of a token it could not get or that was refused twice (counted in
// Metrics.UpstreamAuthFailed; TokenRefused), else nil: then the last
// attempt's result is the login's. reached reports whether an upstream
// answered about the token (nil, or refused twice).
func (c *Conn) LoginUpstream(ctx context.Context, deadline time.Time, g *auth.Grant, log *slog.Logger,
	attempt func(ctx context.Context, tok string) (refusal string)) (ae *auth.AuthError, reached bool) {
	tctx, tcancel := context.WithDeadline(ctx, time.Now().Add(time.Until(deadline)/2))
	tok, err := g.Tokens.Token(tctx)
	tcancel()
	if err != nil {
		return auth.TokenAuthError(g.Username, err), false
	}
	for n := 1; ; n++ {
		refusal := attempt(ctx, tok)
		if refusal == "" {
			return nil, true
		}
		log.Warn(c.core.Proto+" upstream refused the access token", "attempt", n, "reply", refusal)
		if n == 2 {
			c.core.metrics.UpstreamAuthFailed(c.core.Proto)
			return TokenRefused(g, refusal), true
		}
		if tok, err = g.Tokens.Refresh(ctx, tok); err != nil {
			return auth.TokenAuthError(g.Username, err), false
		}
	}
}

// TokenRefused is the AuthError of a login whose token the upstream
// refused twice, the second time after a forced refresh; refusal is its
// reply text.
func TokenRefused(g *auth.Grant, refusal string) *auth.AuthError {
	return &auth.AuthError{
		Kind: auth.AuthFailed,
		Msg:  fmt.Sprintf("upstream refused the access token for %s; the account may need a new sign-in", g.Username),
		Err:  fmt.Errorf("%w: %s", ErrUpstreamRefused, refusal),
	}
}

// Relay splices the logged-in client (speaking on conn, r holding what it
// pipelined) and its upstream up (upr holding what it sent) until either
// ends, counting the session of account and the bytes relayed. The end line
// says "relayed", or "idle timeout" (logged) when o.Idle ended it. It
// returns relay.Relay's error.
func (c *Conn) Relay(log *slog.Logger, account string, conn net.Conn, r *bufio.Reader, up net.Conn, upr *bufio.Reader, o relay.RelayOptions) error {
	m := c.core.metrics
	m.Session(account, 1)
	var err error
	c.Up, c.Down, err = relay.Relay(conn, r, up, upr, o)
	m.Session(account, -1)
	m.Relayed(c.core.Proto, c.Up, c.Down)
	c.Outcome = OutcomeRelayed
	if errors.Is(err, relay.ErrIdleTimeout) {
		c.Outcome = OutcomeIdle
		log.Info(c.core.Proto+" session idle; closed", "idle_timeout", o.Idle)
	}
	return err
}
