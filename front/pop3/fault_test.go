package pop3

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"mailproxy/auth"
	"mailproxy/internal/fake365"
	"mailproxy/upstream"
)

func TestWrongPassword(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	c.cmd("USER " + alice)
	if got := c.cmd("PASS wrong"); got != "-ERR [AUTH] invalid credentials" {
		t.Errorf("PASS wrong = %q, want -ERR [AUTH] invalid credentials", got)
	}
	// RFC 1939: back in AUTHORIZATION without a user name.
	if got := c.cmd("PASS " + alicePass); got != "-ERR send USER first" {
		t.Errorf("PASS after a failed PASS = %q, want -ERR send USER first", got)
	}
	if got := c.cmd("AUTH PLAIN " + b64("\x00nobody@example.com\x00x")); got != "-ERR [AUTH] invalid credentials" {
		t.Errorf("unknown user = %q, want -ERR [AUTH] invalid credentials", got)
	}
	c.login(bob, bobPass) // a password with spaces: the rest of the PASS line
	if !strings.Contains(e.logs.String(), `msg="auth failure" proto=pop3 remote=127.0.0.1 user=alice@example.com`) {
		t.Errorf("log lacks the auth failure line for alice:\n%s", e.logs.String())
	}
	if strings.Contains(e.logs.String(), alicePass) || strings.Contains(e.logs.String(), "wrong") && strings.Contains(e.logs.String(), "PASS wrong") {
		t.Errorf("log holds a password:\n%s", e.logs.String())
	}
	if e.dials.Load() != 1 {
		t.Errorf("upstream dials = %d, want 1 (only bob's login)", e.dials.Load())
	}
}

// authFunc is an Authenticator made of a function.
type authFunc func(ctx context.Context, username, password string, remote netip.Addr) (*auth.Grant, error)

func (f authFunc) Authenticate(ctx context.Context, username, password string, remote netip.Addr) (*auth.Grant, error) {
	return f(ctx, username, password, remote)
}

func TestRefusalCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  *auth.AuthError
		want string
	}{
		{"lockout", &auth.AuthError{Kind: auth.AuthFailed, Msg: "invalid credentials", Err: auth.ErrLockedOut},
			"-ERR [SYS/TEMP] too many failed logins; try again later"},
		{"unavailable", &auth.AuthError{Kind: auth.AuthUnavailable, Msg: "server busy; try again later"},
			"-ERR [SYS/TEMP] server busy; try again later"},
		{"needs sign-in", &auth.AuthError{Kind: auth.AuthNeedsSignIn, Msg: "account a needs a new sign-in by the admin (mailproxy login a)\r\nX"},
			"-ERR [SYS/PERM] account a needs a new sign-in by the admin (mailproxy login a) X"}, // CRLF becomes one space (auth.ClientText)
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withServer(func(s *Server) {
				s.Auth = authFunc(func(context.Context, string, string, netip.Addr) (*auth.Grant, error) { return nil, tc.err })
			}))
			c := greet(t, e.addr)
			c.cmd("USER " + alice)
			if got := c.cmd("PASS " + alicePass); got != tc.want {
				t.Errorf("PASS = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNotSignedIn(t *testing.T) {
	e := newEnv(t)
	e.addSpec(auth.AccountSpec{Username: "pending@example.com", PasswordHash: hashOf(t, "pw"), Upstream: e.upstream})
	c := greet(t, e.addr)
	c.cmd("USER pending@example.com")
	got := c.cmd("PASS pw")
	if !strings.HasPrefix(got, "-ERR [SYS/PERM] ") || !strings.Contains(got, "mailproxy login pending@example.com") {
		t.Errorf("PASS for an account never signed in = %q, want -ERR [SYS/PERM] with the sign-in hint", got)
	}
}

func TestRevokedSignIn(t *testing.T) {
	e := newEnv(t)
	e.idp.Revoke(alice)
	c := greet(t, e.addr)
	c.cmd("USER " + alice)
	got := c.cmd("PASS " + alicePass)
	if !strings.HasPrefix(got, "-ERR [SYS/PERM] account alice@example.com needs a new sign-in") {
		t.Errorf("PASS with a revoked refresh token = %q, want -ERR [SYS/PERM] ... needs a new sign-in", got)
	}
}

func TestIdPDown(t *testing.T) {
	e := newEnv(t)
	e.idp.SetFailure(&fake365.Failure{Status: 503})
	c := greet(t, e.addr)
	c.cmd("USER " + alice)
	if got := c.cmd("PASS " + alicePass); !strings.HasPrefix(got, "-ERR [SYS/TEMP] ") {
		t.Errorf("PASS with the IdP down = %q, want -ERR [SYS/TEMP] ...", got)
	}
}

func TestUpstreamDown(t *testing.T) {
	e := newEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	e.setPOPAddr(dead)
	c := greet(t, e.addr)
	c.cmd("USER " + alice)
	if got := c.cmd("PASS " + alicePass); got != "-ERR [SYS/TEMP] cannot reach the mail server" {
		t.Errorf("PASS with the upstream down = %q, want -ERR [SYS/TEMP] cannot reach the mail server", got)
	}
	// The session goes on: the client may retry when it is back.
	e.setPOPAddr(e.pop.Addr)
	c.login(alice, alicePass)
}

func TestUpstreamWrongCertificate(t *testing.T) {
	e := newEnv(t)
	other, err := fake365.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	e.changeUpstream(func(u *upstream.Upstream) { u.TLS = other.ClientTLS() }) // trusts another CA only
	c := greet(t, e.addr)
	c.cmd("USER " + alice)
	if got := c.cmd("PASS " + alicePass); got != "-ERR [SYS/TEMP] cannot reach the mail server" {
		t.Errorf("PASS with an untrusted upstream certificate = %q, want -ERR [SYS/TEMP] cannot reach the mail server", got)
	}
	if e.pop.Logins() != 0 {
		t.Errorf("upstream logins = %d, want 0: no token may go to an unverified server", e.pop.Logins())
	}
}

// TestTokenRefusedThenRefreshed: the upstream refuses a token the source
// still thinks valid; one forced refresh and a retry get the client in.
func TestTokenRefusedThenRefreshed(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	c.login(alice, alicePass)
	c.cmd("QUIT")
	e.idp.ExpireAccessTokens()
	c = greet(t, e.addr)
	c.login(alice, alicePass)
	if got, want := e.pop.AuthFailures(), 1; got != want {
		t.Errorf("upstream AuthFailures = %d, want %d", got, want)
	}
	if got, want := e.idp.Stats().Refreshes, 2; got != want {
		t.Errorf("IdP refreshes = %d, want %d (first token, forced refresh)", got, want)
	}
}

// TestTokenRefusedTwice: a token refused after the refresh too is the
// client's [AUTH] error with the hint, after exactly two upstream tries.
func TestTokenRefusedTwice(t *testing.T) {
	e := newEnv(t)
	// The upstream knows the mailbox, but alice's tokens may not open it:
	// it is not delegated to her.
	e.store.AddMailbox("carol@example.com")
	e.idp.AddUser("carol@example.com")
	e.addSpec(auth.AccountSpec{Username: "dave@example.com", Mailbox: "carol@example.com", PasswordHash: hashOf(t, "pw"),
		Tokens: e.tokens[alice], Upstream: e.upstream})
	c := greet(t, e.addr)
	c.cmd("USER dave@example.com")
	got := c.cmd("PASS pw")
	if !strings.HasPrefix(got, "-ERR [AUTH] upstream refused the access token for dave@example.com") {
		t.Errorf("PASS = %q, want -ERR [AUTH] upstream refused the access token ...", got)
	}
	if got := e.pop.AuthFailures(); got != 2 {
		t.Errorf("upstream AuthFailures = %d, want 2 (first try, retry after refresh)", got)
	}
}

func TestGmailErrorChallenge(t *testing.T) {
	e := newEnv(t)
	e.pop.SetGmailStyle(true)
	c := greet(t, e.addr)
	c.login(alice, alicePass)
	c.cmd("QUIT")
	e.idp.ExpireAccessTokens()
	c = greet(t, e.addr)
	c.login(alice, alicePass)
	if got := e.pop.AuthFailures(); got != 1 {
		t.Errorf("upstream AuthFailures = %d, want 1", got)
	}
}

func TestSharedMailbox(t *testing.T) {
	e := newEnv(t)
	e.addAccount("carol@example.com", "carolpw", shared)
	e.seed(shared, []byte("Subject: for the team\r\n\r\nhi\r\n"))
	c := greet(t, e.addr)
	c.login("carol@example.com", "carolpw")
	if got := c.cmd("RETR 1"); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("RETR 1 = %q", got)
	}
	if got := strings.Join(c.multi(), "\n"); got != "Subject: for the team\n\nhi" {
		t.Errorf("RETR 1 = %q, want the shared mailbox's message", got)
	}
}

func TestMailboxCap(t *testing.T) {
	e := newEnv(t, withServer(func(s *Server) { s.MaxUpstreamPerMailbox = 1 }))
	c1 := greet(t, e.addr)
	c1.login(alice, alicePass)
	c2 := greet(t, e.addr)
	c2.cmd("USER " + alice)
	if got := c2.cmd("PASS " + alicePass); got != "-ERR [SYS/TEMP] too many sessions for this mailbox" {
		t.Errorf("second session = %q, want -ERR [SYS/TEMP] too many sessions for this mailbox", got)
	}
	c1.cmd("QUIT")
	c1.readToEOF()
	c1.conn.Close()
	// The slot is free once the first session ended; the release happens
	// as the session goroutine returns, so wait for the upstream side.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := e.pop.WaitConns(ctx, 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		c3 := greet(t, e.addr)
		c3.cmd("USER " + alice)
		got := c3.cmd("PASS " + alicePass)
		if strings.HasPrefix(got, "+OK") {
			break
		}
		if i == 100 {
			t.Fatalf("third session = %q, want +OK once the first ended", got)
		}
	}
}

func TestShutdown(t *testing.T) {
	e := newEnv(t)
	pre := greet(t, e.addr)
	relayed := greet(t, e.addr)
	relayed.login(alice, alicePass)
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- e.srv.Shutdown(ctx) }()
	if got := pre.readToEOF(); got != "-ERR [SYS/TEMP] server shutting down\r\n" {
		t.Errorf("pre-login session at shutdown got %q", got)
	}
	// The relayed session goes on until it quits.
	if got := relayed.cmd("STAT"); !strings.HasPrefix(got, "+OK 0 0") {
		t.Errorf("STAT during shutdown = %q, want +OK 0 0", got)
	}
	relayed.cmd("QUIT")
	relayed.readToEOF()
	relayed.conn.Close()
	if err := <-done; err != nil {
		t.Errorf("Shutdown() = %v, want nil once the sessions ended", err)
	}
	cancel()
	if _, err := net.Dial("tcp", e.addr); err == nil {
		t.Errorf("Dial after Shutdown succeeded, want refused")
	}
}
