package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"mailproxy/auth"
	"mailproxy/upstream"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// ehlo sends EHLO and returns every line of the reply.
func (r *raw) ehlo() []string {
	r.t.Helper()
	if _, err := fmt.Fprintf(r.c, "EHLO client\r\n"); err != nil {
		r.t.Fatalf("write EHLO: %v", err)
	}
	var lines []string
	for {
		l, err := r.r.ReadString('\n')
		if err != nil {
			r.t.Fatalf("read EHLO reply: %v", err)
		}
		l = strings.TrimRight(l, "\r\n")
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			return lines
		}
	}
}

func hasAuth(lines []string) bool {
	for _, l := range lines {
		if len(l) > 4 && strings.HasPrefix(l[4:], "AUTH") {
			return true
		}
	}
	return false
}

// rawFrom connects from the local address from (127.0.0.x).
func (e *env) rawFrom(from string) *raw {
	e.t.Helper()
	d := net.Dialer{Timeout: testWait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", e.addr)
	if err != nil {
		e.t.Fatalf("Dial(%s from %s) = %v", e.addr, from, err)
	}
	c.SetDeadline(time.Now().Add(testWait))
	e.t.Cleanup(func() { c.Close() })
	r := &raw{t: e.t, c: c, r: bufio.NewReader(c)}
	r.expect("220 ")
	return r
}

func TestPlaintextPolicy(t *testing.T) {
	t.Parallel()
	allowed := netip.MustParseAddr("127.0.0.2")
	e := newEnv(t, envOpts{frontTLS: true, server: func(s *Server) {
		s.PlaintextAllowed = func(a netip.Addr) bool { return a == allowed }
	}})

	r := e.raw()
	if lines := r.ehlo(); hasAuth(lines) {
		t.Errorf("EHLO before STARTTLS advertises AUTH to a client that must use TLS: %q", lines)
	}
	r.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "538 5.7.11 ")
	r.mustCmd("AUTH LOGIN", "538 5.7.11 ")
	r.mustCmd("MAIL FROM:<alice@contoso.com>", "530 ")

	// After STARTTLS the same client logs in.
	r.mustCmd("STARTTLS", "220 ")
	cfg := e.ca.ClientTLS()
	cfg.ServerName = "127.0.0.1"
	tc := tls.Client(r.c, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS Handshake() = %v", err)
	}
	r = &raw{t: t, c: tc, r: bufio.NewReader(tc)}
	if lines := r.ehlo(); !hasAuth(lines) {
		t.Errorf("EHLO after STARTTLS = %q, want AUTH", lines)
	}
	r.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "235 ")

	// An address allowed to send passwords in clear text needs no TLS.
	r = e.rawFrom("127.0.0.2")
	if lines := r.ehlo(); !hasAuth(lines) {
		t.Errorf("EHLO to an allowed address = %q, want AUTH", lines)
	}
	r.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "235 ")
}

// An upstream throttling reply reaches the client, and new logins of the
// mailbox are refused until the backoff has passed, without contacting the
// upstream.
func TestThrottleBackoff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		stage string
		err   *smtp.SMTPError
		retry string
	}{
		{"sender thread limit", "MAIL", &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
			Message: "STOREDRV.ClientSubmit; sender thread limit exceeded"}, "retry in 60 s"},
		{"suggested backoff", "RCPT", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
			Message: "Request is throttled. Suggested Backoff Time: 5000 milliseconds"}, "retry in 5 s"},
		{"server busy", "MAIL", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 500},
			Message: "Server busy. Please try again later from [192.0.2.1]. (S77719)"}, "retry in 60 s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			now := time.Date(2025, 6, 1, 9, 0, 0, 0, time.UTC)
			e := newEnv(t, envOpts{server: func(s *Server) {
				s.backoff = upstream.NewBackoff()
				s.backoff.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			}})
			before := e.login() // logged in before the throttling, no upstream yet
			e.up.FailAt(tc.stage, tc.err)
			c := e.login()
			err := c.Mail("alice@contoso.com", nil)
			if err == nil {
				err = c.Rcpt("bob@example.com", nil)
			}
			wantSMTPError(t, tc.stage+" when throttled", err, tc.err.Code, tc.err.EnhancedCode, tc.err.Message)
			e.up.FailAt(tc.stage, nil)
			conns := e.up.Connections()

			want := "throttled by Microsoft 365; " + tc.retry
			err = e.dial().Auth(sasl.NewPlainClient("", testUser, testPassword))
			wantSMTPError(t, "Auth() during the backoff", err, 454, smtp.EnhancedCode{4, 7, 0}, want)
			err = before.Mail("alice@contoso.com", nil)
			wantSMTPError(t, "Mail() needing a new upstream login during the backoff", err, 454, smtp.EnhancedCode{4, 7, 0}, want)
			if got := e.up.Connections(); got != conns {
				t.Errorf("upstream connections during the backoff = %d, want %d", got, conns)
			}
			mu.Lock()
			now = now.Add(61 * time.Second)
			mu.Unlock()
			if err := e.login().Mail("alice@contoso.com", nil); err != nil {
				t.Errorf("Mail() after the backoff = %v, want nil", err)
			}
		})
	}
}

// metricsRecorder is a front.Metrics that counts.
type metricsRecorder struct {
	mu                   sync.Mutex // protects the fields below
	counts               map[string]int
	toUpstream, toClient int64
	sessions             map[string]int // account -> open now
	sessionPeak          map[string]int
}

func newMetricsRecorder() *metricsRecorder {
	return &metricsRecorder{counts: map[string]int{}, sessions: map[string]int{}, sessionPeak: map[string]int{}}
}

func (m *metricsRecorder) add(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.counts[key]++
}

func (m *metricsRecorder) get(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[key]
}

func (m *metricsRecorder) ConnOpened(p string)         { m.add("opened " + p) }
func (m *metricsRecorder) ConnClosed(p string)         { m.add("closed " + p) }
func (m *metricsRecorder) Login(p string, ok bool)     { m.add(fmt.Sprint("login ", p, " ", ok)) }
func (m *metricsRecorder) UpstreamAuthFailed(p string) { m.add("upstream auth failed " + p) }
func (m *metricsRecorder) Message(ok bool)             { m.add(fmt.Sprint("message ", ok)) }

func (m *metricsRecorder) Relayed(p string, up, down int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.toUpstream += up
	m.toClient += down
}

func (m *metricsRecorder) Session(account string, d int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sessions[account] += d
	m.sessionPeak[account] = max(m.sessionPeak[account], m.sessions[account])
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	m := newMetricsRecorder()
	e := newEnv(t, envOpts{server: func(s *Server) { s.Metrics = m }})
	bad := e.dial()
	if err := bad.Auth(sasl.NewPlainClient("", testUser, "wrong")); err == nil {
		t.Fatalf("Auth(wrong) = nil")
	}
	bad.Close()
	c := e.login()
	if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, testMessage("counted")); err != nil {
		t.Fatalf("send() = %v", err)
	}
	e.up.FailAt("DATA", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "rejected"})
	if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, testMessage("rejected")); err == nil {
		t.Fatalf("send() with the upstream refusing = nil error")
	}
	c.Quit()
	e.waitEnd()
	e.waitEnd()

	e.up.FailAt("AUTH", &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"})
	c = e.login()
	if err := c.Mail("alice@contoso.com", nil); err == nil {
		t.Fatalf("Mail() with the upstream refusing tokens = nil")
	}
	c.Close()
	e.waitEnd()

	for key, want := range map[string]int{
		"opened smtp": 3, "closed smtp": 3,
		"login smtp true": 2, "login smtp false": 1,
		"message true": 1, "message false": 1,
		"upstream auth failed smtp": 1,
	} {
		if got := m.get(key); got != want {
			t.Errorf("metrics %q = %d, want %d", key, got, want)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sessionPeak[testUser] != 1 || m.sessions[testUser] != 0 {
		t.Errorf("Session(%s) peak %d, now %d, want 1 then 0", testUser, m.sessionPeak[testUser], m.sessions[testUser])
	}
	if m.toUpstream == 0 {
		t.Errorf("Relayed() bytes to upstream = 0, want the message sizes")
	}
}

// The lockout through auth.Accounts, with the fail2ban line.
func TestLockout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	lo := auth.NewLockout(3, time.Hour, time.Hour)
	lo.Sleep = func(ctx context.Context, d time.Duration) error { return ctx.Err() }
	e.accounts.SetLockout(lo)

	r := e.raw()
	r.mustCmd("EHLO client", "250 ")
	for _, user := range []string{testUser, "nobody@contoso.com", testUser, testUser} {
		r.mustCmd("AUTH PLAIN "+b64("\x00"+user+"\x00wrong"), "535 5.7.8 ")
	}
	// The blocked pair gets a temporary reply that says why; another
	// username from the address still gets a real check.
	r.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "454 4.7.0 too many failed logins for alice@contoso.com from 127.0.0.1; try again after ")
	r.mustCmd("AUTH PLAIN "+b64("\x00nobody@contoso.com\x00wrong"), "535 5.7.8 ")

	r2 := e.rawFrom("127.0.0.2")
	r2.mustCmd("EHLO client", "250 ")
	r2.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "235 ")

	logs := e.logs.String()
	want := `level=WARN msg="auth failure" proto=smtp remote=127.0.0.1 user=alice@contoso.com`
	if n := strings.Count(logs, want); n != 4 {
		t.Errorf("log has %d lines %q, want 4; log:\n%s", n, want, logs)
	}
	if !strings.Contains(logs, `reason="locked out"`) {
		t.Errorf("log does not say the last attempt was locked out")
	}
}
