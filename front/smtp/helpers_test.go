package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/argon2"
	"golang.org/x/oauth2"

	"mailproxy/auth"
	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
	"mailproxy/upstream"
)

const (
	testUser     = "alice@contoso.com"
	testPassword = "correct horse battery staple"
	testClientID = "11111111-2222-3333-4444-555555555555"
	testWait     = 20 * time.Second // bound on any single wait in a test
)

// The real Argon2id cost is slow on purpose (64 MiB, three passes) and
// every env has its own Accounts, whose first login pays it: the tests use
// a hash with tiny parameters, which VerifyPassword reads from the string.
var hashPHC = func() string {
	salt := []byte("0123456789abcdef")
	key := argon2.IDKey([]byte(testPassword), salt, 1, 64, 1, 32)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=19$m=64,t=1,p=1$%s$%s", enc.EncodeToString(salt), enc.EncodeToString(key))
}()

func testHash(t *testing.T) string {
	t.Helper()
	if ok, err := auth.VerifyPassword(hashPHC, testPassword); !ok || err != nil {
		t.Fatalf("VerifyPassword(test hash) = %v, %v, want true, nil", ok, err)
	}
	return hashPHC
}

// env is one proxy in front of one fake upstream, with a fake IdP.
type env struct {
	t        *testing.T
	ca       *fake365.CA
	idp      *fake365.IdP
	up       *fake365.SMTPUpstream
	tokens   *testTokens
	srv      *Server
	accounts *auth.Accounts
	addr     string // the proxy's plain listener
	logs     *testutil.LogSink
}

type envOpts struct {
	upstreamImplicitTLS bool // fake upstream speaks implicit TLS; the proxy dials "host:465"
	frontTLS            bool // the proxy offers STARTTLS
	frontImplicitTLS    bool // the proxy listens with implicit TLS
	maxMessageBytes     int64
	mailbox             string // the account's mailbox; default testUser

	server       func(*Server)    // changes the Server before it starts
	tokens       auth.TokenSource // the account's tokens instead of e.tokens
	upstreamAddr string           // the account's upstream instead of the fake's
	// upstreamScript serves the account's upstream instead of the fake:
	// a scripted server with implicit TLS (certificate from e.ca).
	upstreamScript func(conn net.Conn, r *bufio.Reader)
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	e := &env{t: t, logs: testutil.NewLogSink(nil, "smtp connection end")}
	var err error
	if e.ca, err = fake365.NewCA(); err != nil {
		t.Fatalf("NewCA() = %v", err)
	}
	if e.idp, err = fake365.NewIdP(); err != nil {
		t.Fatalf("NewIdP() = %v", err)
	}
	t.Cleanup(e.idp.Close)
	e.idp.AddClient(fake365.Client{ID: testClientID})
	e.idp.AddUser(testUser)
	scopes := []string{"https://outlook.office.com/SMTP.Send", "offline_access"}
	_, tokenURL, _ := e.idp.Endpoints("contoso.onmicrosoft.com")
	e.tokens = &testTokens{
		cfg: &oauth2.Config{
			ClientID: testClientID,
			Endpoint: oauth2.Endpoint{TokenURL: tokenURL, AuthStyle: oauth2.AuthStyleInParams},
			Scopes:   scopes,
		},
		refresh: e.idp.GrantRefreshToken(testClientID, testUser, scopes),
	}

	upTLS, err := e.ca.ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS() = %v", err)
	}
	if e.up, err = fake365.NewSMTPUpstream(e.idp, upTLS, o.upstreamImplicitTLS); err != nil {
		t.Fatalf("NewSMTPUpstream() = %v", err)
	}
	t.Cleanup(func() { e.up.Close() })

	upstreamAddr := e.up.Addr
	var dial upstream.Dialer
	if o.upstreamImplicitTLS {
		// Port 465 selects implicit TLS; the dialer takes it to the fake.
		upstreamAddr = "127.0.0.1:465"
		real := e.up.Addr
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != upstreamAddr {
				return nil, fmt.Errorf("dial %s: unexpected address", addr)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, real)
		}
	}
	mailbox := o.mailbox
	if mailbox == "" {
		mailbox = testUser
	}
	var tokens auth.TokenSource = e.tokens
	if o.tokens != nil {
		tokens = o.tokens
	}
	if o.upstreamAddr != "" {
		upstreamAddr = o.upstreamAddr
	}
	if o.upstreamScript != nil {
		cfg, err := e.ca.ServerTLS()
		if err != nil {
			t.Fatalf("ServerTLS() = %v", err)
		}
		real, _ := scriptedTLS(t, cfg, o.upstreamScript)
		upstreamAddr = "127.0.0.1:465"
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, real)
		}
	}
	accounts := auth.NewAccounts([]auth.AccountSpec{{
		Username:     testUser,
		Mailbox:      mailbox,
		Identity:     testUser,
		PasswordHash: testHash(t),
		Tokens:       tokens,
		Upstream:     &upstream.Upstream{Addr: map[string]string{"smtp": upstreamAddr}, TLS: e.ca.ClientTLS()},
	}}, nil)
	e.accounts = accounts

	e.srv = &Server{
		Auth:            accounts,
		Logger:          slog.New(e.logs),
		Dial:            dial,
		Domain:          "proxy.test",
		MaxMessageBytes: o.maxMessageBytes,
	}
	if o.frontTLS || o.frontImplicitTLS {
		if e.srv.TLSConfig, err = e.ca.ServerTLS(); err != nil {
			t.Fatalf("ServerTLS() = %v", err)
		}
	}
	if o.server != nil {
		o.server(e.srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen() = %v", err)
	}
	e.addr = ln.Addr().String()
	if o.frontImplicitTLS {
		ln = tls.NewListener(ln, e.srv.TLSConfig)
	}
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(ln) }()
	t.Cleanup(func() {
		e.srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve() = %v, want ErrServerClosed", err)
		}
		e.checkLogs()
	})
	return e
}

// checkLogs fails the test if a secret reached the log.
func (e *env) checkLogs() {
	e.t.Helper()
	logs := e.logs.String()
	if strings.Contains(logs, testPassword) {
		e.t.Errorf("log contains the password:\n%s", logs)
	}
	for _, tok := range e.tokens.issued() {
		if strings.Contains(logs, tok) {
			e.t.Errorf("log contains an access token")
		}
	}
}

// dial opens a go-smtp client to the proxy's plain listener.
func (e *env) dial() *smtp.Client {
	e.t.Helper()
	c, err := smtp.Dial(e.addr)
	if err != nil {
		e.t.Fatalf("smtp.Dial(%s) = %v", e.addr, err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// login opens a client and logs in with AUTH PLAIN.
func (e *env) login() *smtp.Client {
	e.t.Helper()
	c := e.dial()
	if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
		e.t.Fatalf("Auth(PLAIN) = %v", err)
	}
	return c
}

// send runs one transaction and returns the proxy's reply to the final dot.
func send(t *testing.T, c *smtp.Client, from string, to []string, msg []byte) (string, error) {
	t.Helper()
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write(msg); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

// messages checks that the fake upstream recorded n messages. It records a
// message before it replies 250, and the proxy replies only after that, so
// once a client has its 250 there is nothing to wait for.
func (e *env) messages(n int) []fake365.Message {
	e.t.Helper()
	msgs := e.up.Messages()
	if len(msgs) != n {
		e.t.Fatalf("upstream Messages() has %d messages, want %d", len(msgs), n)
	}
	return msgs
}

func testMessage(subject string) []byte {
	return []byte("From: alice@contoso.com\r\nTo: bob@example.com\r\nSubject: " + subject +
		"\r\n\r\nHello.\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n")
}

// wantSMTPError checks that err is an *smtp.SMTPError with the given code,
// enhanced code and (if not "") text.
func wantSMTPError(t *testing.T, op string, err error, code int, ec smtp.EnhancedCode, text string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("%s = %v, want SMTP error %d %v %q", op, err, code, ec, text)
	}
	if se.Code != code || se.EnhancedCode != ec || (text != "" && se.Message != text) {
		t.Fatalf("%s = %d %v %q, want %d %v %q", op, se.Code, se.EnhancedCode, se.Message, code, ec, text)
	}
}

// testTokens is a minimal single-flight token source over the fake IdP:
// a mutex serialises refreshes, so concurrent callers share one.
type testTokens struct {
	cfg *oauth2.Config

	mu      sync.Mutex // protects the fields below
	access  string
	expiry  time.Time
	refresh string
	all     []string // every access token handed out
}

func (s *testTokens) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.access != "" && time.Until(s.expiry) > 5*time.Minute {
		return s.access, nil
	}
	return s.refreshLocked(ctx)
}

func (s *testTokens) Refresh(ctx context.Context, rejected string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.access != "" && s.access != rejected {
		return s.access, nil
	}
	return s.refreshLocked(ctx)
}

func (s *testTokens) refreshLocked(ctx context.Context) (string, error) {
	tok, err := s.cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: s.refresh, Expiry: time.Unix(1, 0)}).Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.ErrorCode == "invalid_grant" {
			return "", &signInError{err}
		}
		return "", fmt.Errorf("refresh token: %w", err)
	}
	s.access, s.expiry, s.refresh = tok.AccessToken, tok.Expiry, tok.RefreshToken
	s.all = append(s.all, tok.AccessToken)
	return s.access, nil
}

func (s *testTokens) issued() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.all...)
}

type signInError struct{ err error }

func (e *signInError) Error() string     { return "refresh token: " + e.err.Error() }
func (e *signInError) Unwrap() error     { return e.err }
func (e *signInError) NeedsSignIn() bool { return true }
func (e *signInError) Hint() string      { return "AADSTS70008: sign in again with mailproxy login" }

// waitEnd waits for the end line of one proxy connection.
func (e *env) waitEnd() {
	e.t.Helper()
	select {
	case <-e.logs.Seen():
	case <-time.After(testWait):
		e.t.Fatalf("no connection end line after %v; log:\n%s", testWait, e.logs.String())
	}
}

// raw is a line-level client for what go-smtp's client cannot do.
type raw struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (e *env) raw() *raw {
	e.t.Helper()
	c, err := net.DialTimeout("tcp", e.addr, testWait)
	if err != nil {
		e.t.Fatalf("Dial(%s) = %v", e.addr, err)
	}
	c.SetDeadline(time.Now().Add(testWait))
	e.t.Cleanup(func() { c.Close() })
	r := &raw{t: e.t, c: c, r: bufio.NewReader(c)}
	r.expect("220 ")
	return r
}

// cmd sends a line and returns the last line of the reply.
func (r *raw) cmd(line string) string {
	r.t.Helper()
	if _, err := fmt.Fprintf(r.c, "%s\r\n", line); err != nil {
		r.t.Fatalf("write %q: %v", line, err)
	}
	return r.reply()
}

func (r *raw) reply() string {
	r.t.Helper()
	for {
		l, err := r.r.ReadString('\n')
		if err != nil {
			r.t.Fatalf("read reply: %v", err)
		}
		l = strings.TrimRight(l, "\r\n")
		if len(l) < 4 || l[3] != '-' {
			return l
		}
	}
}

func (r *raw) expect(prefix string) string {
	r.t.Helper()
	l := r.reply()
	if !strings.HasPrefix(l, prefix) {
		r.t.Fatalf("reply = %q, want prefix %q", l, prefix)
	}
	return l
}

func (r *raw) mustCmd(line, prefix string) string {
	r.t.Helper()
	l := r.cmd(line)
	if !strings.HasPrefix(l, prefix) {
		r.t.Fatalf("%s: reply = %q, want prefix %q", line, l, prefix)
	}
	return l
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
