package imap

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/internal/testutil"
	"mailproxy/upstream"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cheapPHC hashes password with tiny Argon2id parameters (testutil.CheapPHC).
func cheapPHC(t *testing.T, password string) string { return testutil.CheapPHC(t, password) }

// dialFrom connects to addr from the local address from (127.0.0.x).
func dialFrom(t *testing.T, from, addr string) *rawClient {
	t.Helper()
	d := net.Dialer{Timeout: testTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("Dial(%s from %s) = %v", addr, from, err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(testTimeout))
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.expect("* OK [CAPABILITY IMAP4rev1 ")
	return c
}

func TestPlaintextPolicy(t *testing.T) {
	onlyLoopback := func(a netip.Addr) bool { return a == netip.MustParseAddr("127.0.0.2") }
	e := newEnv(t, withTLS, withServer(func(s *Server) { s.PlaintextAllowed = onlyLoopback }))

	c := dialRaw(t, e.addr)
	if got, want := c.line(), "* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ LOGINDISABLED STARTTLS] mailproxy ready"; got != want {
		t.Errorf("greeting to a client that must use TLS = %q, want %q", got, want)
	}
	c.send("a LOGIN " + alice + " " + alicePass + "\r\n")
	c.expect("a NO [PRIVACYREQUIRED] use STARTTLS first")
	c.send("b AUTHENTICATE PLAIN " + b64("\x00"+alice+"\x00"+alicePass) + "\r\n")
	c.expect("b NO [PRIVACYREQUIRED] use STARTTLS first")
	c.send("c AUTHENTICATE LOGIN\r\n") // refused before any challenge
	c.expect("c NO [PRIVACYREQUIRED] use STARTTLS first")
	if n := e.auth.calls.Load(); n != 0 {
		t.Errorf("password checks before STARTTLS = %d, want 0", n)
	}

	c.send("d STARTTLS\r\n")
	c.expect("d OK")
	cfg := e.ca.ClientTLS()
	cfg.ServerName = "127.0.0.1"
	tc := tls.Client(c.conn, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS Handshake() = %v", err)
	}
	c = &rawClient{t: t, conn: tc, r: bufio.NewReader(tc)}
	c.send("e CAPABILITY\r\n")
	if got, want := c.line(), "* CAPABILITY "+capsPlain; got != want {
		t.Errorf("CAPABILITY after STARTTLS = %q, want %q", got, want)
	}
	c.expect("e OK")
	c.login("f", alice, alicePass)

	// An address allowed to send passwords in clear text logs in without TLS.
	c = dialFrom(t, "127.0.0.2", e.addr)
	c.send("a CAPABILITY\r\n")
	if got, want := c.line(), "* CAPABILITY "+capsTLS; got != want {
		t.Errorf("CAPABILITY to an allowed address = %q, want %q", got, want)
	}
	c.expect("a OK")
	c.login("b", alice, alicePass)
}

// Without a certificate there is no STARTTLS: the client is told to use TLS.
func TestPlaintextPolicyNoTLS(t *testing.T) {
	e := newEnv(t, withServer(func(s *Server) { s.PlaintextAllowed = func(netip.Addr) bool { return false } }))
	c := dialRaw(t, e.addr)
	if got, want := c.line(), "* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ LOGINDISABLED] mailproxy ready"; got != want {
		t.Errorf("greeting = %q, want %q", got, want)
	}
	c.send("a LOGIN " + alice + " " + alicePass + "\r\n")
	c.expect("a NO [PRIVACYREQUIRED] TLS required")
}

func TestMailboxCap(t *testing.T) {
	e := newEnv(t, withServer(func(s *Server) { s.MaxUpstreamPerMailbox = 2 }))
	c1 := greet(t, e.addr)
	c1.login("a", alice, alicePass)
	c2 := greet(t, e.addr)
	c2.login("a", alice, alicePass)
	dials := e.dials.Load()

	c3 := greet(t, e.addr)
	c3.send("a LOGIN " + alice + " " + alicePass + "\r\n")
	c3.expect("a NO [UNAVAILABLE] too many sessions for this mailbox")
	if got := e.dials.Load() - dials; got != 0 {
		t.Errorf("upstream dials for a login over the cap = %d, want 0", got)
	}
	greet(t, e.addr).login("a", bob, bobPass) // other mailboxes are not affected

	c1.send("z LOGOUT\r\n")
	c1.untilTagged("z")
	c1.conn.Close()
	pollUntil(t, "alice's first session to end", func() bool { return e.srv.mailboxes.InUse(alice) == 1 })
	c3.login("b", alice, alicePass)
}

// pollUntil waits, bounded by testTimeout, until cond holds.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition nothing signals
	}
}

// After the upstream says "Request is throttled", new logins of the mailbox
// are refused for the suggested time without contacting it.
func TestThrottleBackoff(t *testing.T) {
	for _, tc := range []struct {
		name, reply string
		want        string // the first login's reply
		backoff     string // the second's
	}{
		{
			name:    "tagged",
			reply:   "a NO Request is throttled. Suggested Backoff Time: 30000 milliseconds",
			want:    "a NO [UNAVAILABLE] Request is throttled. Suggested Backoff Time: 30000 milliseconds",
			backoff: "a NO [UNAVAILABLE] throttled by Microsoft 365; retry in 30 s",
		},
		{
			name:    "untagged then closed",
			reply:   "* BAD Request is throttled. Suggested Backoff Time: 5000 milliseconds",
			want:    "a NO [UNAVAILABLE] Request is throttled. Suggested Backoff Time: 5000 milliseconds",
			backoff: "a NO [UNAVAILABLE] throttled by Microsoft 365; retry in 5 s",
		},
		{
			name:    "no time given",
			reply:   "a NO Request is throttled.",
			want:    "a NO [UNAVAILABLE] Request is throttled.",
			backoff: "a NO [UNAVAILABLE] throttled by Microsoft 365; retry in 60 s",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Date(2025, 6, 1, 9, 0, 0, 0, time.UTC)
			var mu sync.Mutex
			clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			e := newEnv(t, withServer(func(s *Server) {
				s.backoff = upstream.NewBackoff()
				s.backoff.Now = clock
			}))
			var conns atomic.Int64
			addr := e.scriptedUpstream(func(n int, conn net.Conn, r *bufio.Reader) {
				conns.Add(1)
				fmt.Fprintf(conn, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n")
				readLine(r)
				if n == 1 {
					fmt.Fprintf(conn, "%s\r\n", tc.reply)
					return
				}
				fmt.Fprintf(conn, "a OK AUTHENTICATE completed\r\n")
				readLine(r)
			})
			e.addScripted("carol@example.com", "pw", addr, &staticTokens{tok: "t"})

			c := greet(t, e.addr)
			c.send("a LOGIN carol@example.com pw\r\n")
			if got := c.line(); got != tc.want {
				t.Errorf("throttled LOGIN = %q, want %q", got, tc.want)
			}
			c = greet(t, e.addr)
			c.send("a LOGIN carol@example.com pw\r\n")
			if got := c.line(); got != tc.backoff {
				t.Errorf("LOGIN during the backoff = %q, want %q", got, tc.backoff)
			}
			if got := conns.Load(); got != 1 {
				t.Errorf("upstream connections = %d, want 1 (none during the backoff)", got)
			}
			mu.Lock()
			now = now.Add(time.Minute)
			mu.Unlock()
			c = greet(t, e.addr)
			c.send("a LOGIN carol@example.com pw\r\n")
			if got := c.line(); got != "a OK AUTHENTICATE completed" {
				t.Errorf("LOGIN after the backoff = %q, want the upstream's OK", got)
			}
		})
	}
}

// metricsRecorder is a front.Metrics that counts.
type metricsRecorder struct {
	mu                   sync.Mutex // protects the fields below
	opened, closed       map[string]int
	logins               map[string]int // "proto ok"
	upstreamFailed       map[string]int
	toUpstream, toClient int64
	messages             map[bool]int
	sessions             map[string]int // account -> open now
	sessionPeak          map[string]int
}

func newMetricsRecorder() *metricsRecorder {
	return &metricsRecorder{
		opened: map[string]int{}, closed: map[string]int{}, logins: map[string]int{},
		upstreamFailed: map[string]int{}, messages: map[bool]int{},
		sessions: map[string]int{}, sessionPeak: map[string]int{},
	}
}

func (m *metricsRecorder) lock() func() { m.mu.Lock(); return m.mu.Unlock }

func (m *metricsRecorder) ConnOpened(p string) { defer m.lock()(); m.opened[p]++ }
func (m *metricsRecorder) ConnClosed(p string) { defer m.lock()(); m.closed[p]++ }
func (m *metricsRecorder) Login(p string, ok bool) {
	defer m.lock()()
	m.logins[fmt.Sprint(p, " ", ok)]++
}
func (m *metricsRecorder) UpstreamAuthFailed(p string) { defer m.lock()(); m.upstreamFailed[p]++ }
func (m *metricsRecorder) Message(ok bool)             { defer m.lock()(); m.messages[ok]++ }
func (m *metricsRecorder) Relayed(p string, up, down int64) {
	defer m.lock()()
	m.toUpstream += up
	m.toClient += down
}
func (m *metricsRecorder) Session(account string, d int) {
	defer m.lock()()
	m.sessions[account] += d
	m.sessionPeak[account] = max(m.sessionPeak[account], m.sessions[account])
}

func TestMetrics(t *testing.T) {
	m := newMetricsRecorder()
	e := newEnv(t, withServer(func(s *Server) { s.Metrics = m }))
	c := greet(t, e.addr)
	c.send("a LOGIN " + alice + " wrong\r\n")
	c.expect("a NO")
	c.login("b", alice, alicePass)
	c.send("c SELECT INBOX\r\nd LOGOUT\r\n")
	c.untilTagged("d")
	c.readToEOF()
	c.conn.Close()

	// An upstream that refuses every token.
	addr := e.scriptedUpstream(func(n int, conn net.Conn, r *bufio.Reader) {
		fmt.Fprintf(conn, "* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n")
		readLine(r)
		fmt.Fprintf(conn, "a NO AUTHENTICATE failed.\r\n")
	})
	e.addScripted("carol@example.com", "pw", addr, &staticTokens{tok: "t"})
	c2 := greet(t, e.addr)
	c2.send("a LOGIN carol@example.com pw\r\n")
	c2.expect("a NO [AUTHENTICATIONFAILED]")
	c2.conn.Close()

	pollUntil(t, "both connections to close", func() bool { defer m.lock()(); return m.closed["imap"] == 2 })
	defer m.lock()()
	if m.opened["imap"] != 2 {
		t.Errorf("ConnOpened(imap) = %d, want 2", m.opened["imap"])
	}
	if got := m.logins; got["imap true"] != 2 || got["imap false"] != 1 {
		t.Errorf("Login counts = %v, want 2 ok (alice, carol) and 1 refused", got)
	}
	if m.upstreamFailed["imap"] != 1 {
		t.Errorf("UpstreamAuthFailed(imap) = %d, want 1", m.upstreamFailed["imap"])
	}
	if m.sessionPeak[alice] != 1 || m.sessions[alice] != 0 {
		t.Errorf("Session(%s) peak %d, now %d, want 1 then 0", alice, m.sessionPeak[alice], m.sessions[alice])
	}
	if m.toUpstream == 0 || m.toClient == 0 {
		t.Errorf("Relayed = %d up, %d down, want both > 0", m.toUpstream, m.toClient)
	}
}

// The lockout through auth.Accounts: after N failures of one username from
// one address, that pair's next attempt is refused as a temporary failure
// that says why and until when; other usernames from the address and the
// username from another address still get a real check. Each failure is
// one fail2ban-friendly line.
func TestLockout(t *testing.T) {
	var (
		mu    sync.Mutex
		slept []time.Duration
	)
	lo := auth.NewLockout(3, time.Hour, time.Hour)
	lo.Sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		slept = append(slept, d)
		mu.Unlock()
		return ctx.Err()
	}
	var accounts *auth.Accounts
	e := newEnv(t, withServer(func(s *Server) {
		accounts = auth.NewAccounts(nil, nil)
		accounts.SetLockout(lo)
		s.Auth = accounts
	}))
	accounts.Replace([]auth.AccountSpec{{
		Username:     alice,
		PasswordHash: cheapPHC(t, alicePass),
		Tokens:       e.tokens[alice],
		Upstream:     e.upstream,
	}})

	c := greet(t, e.addr)
	for i, user := range []string{alice, "nobody@example.com", alice, alice} {
		tag := fmt.Sprintf("a%d", i)
		c.send(tag + " LOGIN " + user + " wrong-password\r\n")
		c.expect(tag + " NO [AUTHENTICATIONFAILED] Invalid credentials")
	}
	c.send("b LOGIN " + alice + " " + alicePass + "\r\n")
	c.expect("b NO [UNAVAILABLE] too many failed logins for alice@example.com from 127.0.0.1; try again after ")
	c.send("c LOGIN nobody@example.com wrong-password\r\n")
	c.expect("c NO [AUTHENTICATIONFAILED] Invalid credentials")
	mu.Lock()
	if len(slept) != 3 || slept[0] != 250*time.Millisecond || slept[1] != 500*time.Millisecond || slept[2] != 250*time.Millisecond {
		t.Errorf("delays = %v, want 250ms, 500ms (alice's attempts 2 and 3) and 250ms (nobody's second)", slept)
	}
	mu.Unlock()

	// Another address is not blocked.
	c2 := dialFrom(t, "127.0.0.2", e.addr)
	c2.login("a", alice, alicePass)

	logs := e.logs.String()
	want := `level=WARN msg="auth failure" proto=imap remote=127.0.0.1 user=alice@example.com`
	if n := strings.Count(logs, want); n != 4 {
		t.Errorf("log has %d lines %q, want 4 (three wrong passwords, one blocked); log:\n%s", n, want, logs)
	}
	if !strings.Contains(logs, `msg="auth failure" proto=imap remote=127.0.0.1 user=nobody@example.com`) {
		t.Errorf("log has no auth failure line for the unknown user")
	}
	if !strings.Contains(logs, "reason=\"locked out\"") {
		t.Errorf("log does not say the last attempt was locked out")
	}
}

// A relayed session in which nothing moves either way for IdleTimeout is
// closed.
func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withServer(func(s *Server) { s.IdleTimeout = 300 * time.Millisecond }))
	c := greet(t, e.addr)
	start := time.Now() // the idle clock starts after this, when the relay does
	c.login("a", alice, alicePass)
	c.readToEOF()
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("session closed after %v, want at least the idle timeout", d)
	}
	pollUntil(t, "the end line", func() bool { return strings.Contains(e.logs.String(), "outcome=\"idle timeout\"") })
}

// The connection limiter goes under the TLS listener of an implicit TLS
// port: the front still sees *tls.Conn, and a connection over the limit is
// closed before the handshake.
func TestConnectionLimitImplicitTLS(t *testing.T) {
	e := newEnv(t, withTLS)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen() = %v", err)
	}
	lim := front.NewConnLimiter(1, 1)
	tln := tls.NewListener(lim.Listener(ln, "", nil), e.srv.TLSConfig)
	go e.srv.Serve(tln)
	addr := ln.Addr().String()

	conn, err := tls.Dial("tcp", addr, e.ca.ClientTLS())
	if err != nil {
		t.Fatalf("tls.Dial() = %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	if got, want := c.line(), "* OK [CAPABILITY "+capsPlain+"] mailproxy ready"; got != want {
		t.Errorf("greeting on implicit TLS behind the limiter = %q, want %q (no STARTTLS)", got, want)
	}
	c.login("a", alice, alicePass)

	d := net.Dialer{Timeout: testTimeout}
	cfg := e.ca.ClientTLS()
	cfg.ServerName = "127.0.0.1"
	if over, err := tls.DialWithDialer(&d, "tcp", addr, cfg); err == nil {
		over.SetDeadline(time.Now().Add(testTimeout))
		if n, err := over.Read(make([]byte, 1)); err == nil {
			t.Errorf("connection over the limit read %d bytes, want it closed", n)
		}
		over.Close()
	}
	if got := lim.Refused(); got != 1 {
		t.Errorf("Refused() = %d, want 1", got)
	}
}

// A client retrying against a full mailbox cap: 200 refusals write one log
// line, not 200.
func TestMailboxCapRefusalStormLogged(t *testing.T) {
	e := newEnv(t, withServer(func(s *Server) { s.MaxUpstreamPerMailbox = 1 }))
	c1 := greet(t, e.addr)
	c1.login("a", alice, alicePass)
	c := greet(t, e.addr)
	for i := range 200 {
		tag := fmt.Sprintf("r%d", i)
		c.send(tag + " LOGIN " + alice + " " + alicePass + "\r\n")
		c.expect(tag + " NO [UNAVAILABLE] too many sessions for this mailbox")
		if i%maxBadCommands == maxBadCommands-1 { // the session ends after repeated errors: reconnect
			c.expect("* BYE too many errors")
			c = greet(t, e.addr)
		}
	}
	if n := strings.Count(e.logs.String(), "too many upstream sessions for this mailbox"); n != 1 {
		t.Errorf("log lines for 200 refusals = %d, want 1", n)
	}
}
