package pop3

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"maps"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailproxy/auth"
	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
	"mailproxy/oauth"
	"mailproxy/upstream"
)

const (
	testClientID = "pop3-test-client"
	testTimeout  = 30 * time.Second // bounds every blocking step of a test

	alice     = "alice@example.com"
	alicePass = "secret"
	bob       = "bob@example.com"
	bobPass   = "pässwörd with spaces"
	shared    = "shared@example.com"
)

var testScopes = []string{fake365.POPScope, "https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"}

// hashes caches Argon2id hashes per password: one hash per process.
var hashes sync.Map

func hashOf(t testing.TB, password string) string {
	t.Helper()
	if h, ok := hashes.Load(password); ok {
		return h.(string)
	}
	h, err := auth.HashPassword(password)
	if err != nil {
		t.Fatalf("HashPassword() = %v", err)
	}
	hashes.Store(password, h)
	return h
}

// env is the POP3 front in front of the fake IdP and the fake POP3
// upstream, with the real account check (auth.Accounts) and the real token
// source (oauth.Source).
type env struct {
	t        testing.TB
	ca       *fake365.CA
	idp      *fake365.IdP
	store    *fake365.IMAPUpstream
	pop      *fake365.POP3Upstream
	upstream *upstream.Upstream
	accounts *auth.Accounts
	specs    []auth.AccountSpec
	srv      *Server
	addr     string     // plain listener
	mu       sync.Mutex // protects tokens
	tokens   map[string]*oauth.Source
	dials    atomic.Int64
	logs     *testutil.LogSink
}

type envOption func(*env)

func withServer(f func(*Server)) envOption { return func(e *env) { f(e.srv) } }

func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, tokens: make(map[string]*oauth.Source)}
	var err error
	if e.ca, err = fake365.NewCA(); err != nil {
		t.Fatalf("NewCA() = %v", err)
	}
	if e.idp, err = fake365.NewIdP(); err != nil {
		t.Fatalf("NewIdP() = %v", err)
	}
	t.Cleanup(e.idp.Close)
	e.idp.AddClient(fake365.Client{ID: testClientID})
	upTLS, err := e.ca.ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS() = %v", err)
	}
	if e.store, err = fake365.NewIMAPUpstream(e.idp, upTLS); err != nil {
		t.Fatalf("NewIMAPUpstream() = %v", err)
	}
	t.Cleanup(func() { e.store.Close() })
	if e.pop, err = fake365.NewPOP3Upstream(e.idp, e.store, upTLS); err != nil {
		t.Fatalf("NewPOP3Upstream() = %v", err)
	}
	t.Cleanup(func() { e.pop.Close() })
	e.upstream = &upstream.Upstream{Addr: map[string]string{Name: e.pop.Addr}, TLS: e.ca.ClientTLS()}
	e.accounts = auth.NewAccounts(nil, nil)
	e.addAccount(alice, alicePass, "")
	e.addAccount(bob, bobPass, "")

	e.logs = testutil.NewLogSink(t, "")
	e.srv = &Server{
		Auth:   e.accounts,
		Logger: e.logs.Logger(),
		Dial:   e.dial,
	}
	for _, o := range opts {
		o(e)
	}
	e.addr = e.serve(nil)
	return e
}

// addAccount makes username known to the IdP, the upstream store and the
// proxy; mailbox "" is the user's own.
func (e *env) addAccount(username, password, mailbox string) *oauth.Source {
	e.t.Helper()
	e.idp.AddUser(username)
	e.store.AddMailbox(username)
	if mailbox != "" {
		e.store.AddMailbox(mailbox)
		e.store.Delegate(mailbox, username)
	}
	_, tokenURL, _ := e.idp.Endpoints("common")
	p := &oauth.Provider{Name: "fake", ClientID: testClientID, TokenURL: tokenURL, Scopes: testScopes}
	ts := oauth.NewSource(p, oauth.TokenSet{RefreshToken: e.idp.GrantRefreshToken(testClientID, username, testScopes)}, nil, nil)
	e.mu.Lock()
	e.tokens[username] = ts
	e.mu.Unlock()
	e.addSpec(auth.AccountSpec{Username: username, Mailbox: mailbox, PasswordHash: hashOf(e.t, password), Tokens: ts, Upstream: e.upstream})
	return ts
}

func (e *env) addSpec(spec auth.AccountSpec) {
	e.specs = append(e.specs, spec)
	e.accounts.Replace(e.specs)
}

// setPOPAddr points every account at another POP3 server.
func (e *env) setPOPAddr(addr string) {
	e.changeUpstream(func(u *upstream.Upstream) { u.Addr[Name] = addr })
}

// changeUpstream gives every account a changed copy of the Upstream:
// sessions may be reading the old one.
func (e *env) changeUpstream(f func(*upstream.Upstream)) {
	u := *e.upstream
	u.Addr = maps.Clone(u.Addr)
	f(&u)
	e.upstream = &u
	for i := range e.specs {
		e.specs[i].Upstream = e.upstream
	}
	e.accounts.Replace(e.specs)
}

// seed appends msgs to mailbox's INBOX.
func (e *env) seed(mailbox string, msgs ...[]byte) {
	e.t.Helper()
	for _, m := range msgs {
		if err := e.store.Append(mailbox, "INBOX", m); err != nil {
			e.t.Fatalf("Append() = %v", err)
		}
	}
}

// serve starts e.srv on a new listener (TLS when cfg != nil) and returns
// its address.
func (e *env) serve(cfg *tls.Config) string {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatalf("Listen() = %v", err)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ln) }()
	e.t.Cleanup(func() {
		e.srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			e.t.Errorf("Serve() = %v, want %v", err, ErrServerClosed)
		}
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			e.t.Errorf("Shutdown() after Close = %v, want nil", err)
		}
	})
	return ln.Addr().String()
}

func (e *env) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	e.dials.Add(1)
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// logOnly keeps the server's log in e.logs without t.Log, which a fuzz
// target may not call on its *testing.F.
func logOnly(e *env) {
	e.logs = testutil.NewLogSink(nil, "")
	e.srv.Logger = e.logs.Logger()
}

// rawClient speaks POP3 by hand.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatalf("Dial(%s) = %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(testTimeout))
	return &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// greet dials and reads the greeting.
func greet(t *testing.T, addr string) *rawClient {
	t.Helper()
	c := dialRaw(t, addr)
	c.expect("+OK ")
	return c
}

func (c *rawClient) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("Write(%q) = %v", s, err)
	}
}

func (c *rawClient) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("ReadString() = %q, %v; want a line", l, err)
	}
	return strings.TrimRight(l, "\r\n")
}

func (c *rawClient) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("read %q, want prefix %q", l, prefix)
	}
	return l
}

// cmd sends a command line and returns the first reply line.
func (c *rawClient) cmd(line string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.line()
}

// multi reads a dot-terminated block without the dot-stuffing.
func (c *rawClient) multi() []string {
	c.t.Helper()
	var lines []string
	for {
		l := c.line()
		if l == "." {
			return lines
		}
		lines = append(lines, strings.TrimPrefix(l, "."))
	}
}

// readToEOF reads until the server closes and returns what it read.
func (c *rawClient) readToEOF() string {
	c.t.Helper()
	b, err := io.ReadAll(c.r)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "connection reset") {
		c.t.Fatalf("ReadAll() = %q, %v; want EOF", b, err)
	}
	return string(b)
}

// login logs in with USER/PASS and checks the +OK.
func (c *rawClient) login(user, pass string) {
	c.t.Helper()
	if got := c.cmd("USER " + user); !strings.HasPrefix(got, "+OK") {
		c.t.Fatalf("USER = %q, want +OK", got)
	}
	if got := c.cmd("PASS " + pass); !strings.HasPrefix(got, "+OK") {
		c.t.Fatalf("PASS = %q, want +OK", got)
	}
}
