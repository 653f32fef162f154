package imap

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
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
	testClientID = "proxy-test-client"
	testTimeout  = 20 * time.Second // bounds every blocking step of a test

	alice     = "alice@example.com"
	alicePass = "secret"
	bob       = "bob@example.com"
	bobPass   = "pässwörd✓" // non-ASCII: imapclient sends it as a literal
)

var testScopes = []string{"https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"}

// env is a proxy in front of the fake IdP and fake IMAP upstream.
type env struct {
	t        *testing.T
	ca       *fake365.CA
	idp      *fake365.IdP
	up       *fake365.IMAPUpstream
	upstream *upstream.Upstream
	auth     *testAuth
	srv      *Server
	addr     string // plain listener
	tokens   map[string]*oauth.Source

	dials    atomic.Int64      // upstream connections the proxy opened
	upRead   atomic.Int64      // bytes the proxy read from upstream connections
	upClosed chan struct{}     // a value for every upstream connection the proxy closed
	logs     *testutil.LogSink // everything the server logged
}

type envOption func(*env)

// withServer changes the Server before it starts.
func withServer(f func(*Server)) envOption { return func(e *env) { f(e.srv) } }

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, logs: testutil.NewLogSink(t, ""), tokens: make(map[string]*oauth.Source), upClosed: make(chan struct{}, 1000)}
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
	if e.up, err = fake365.NewIMAPUpstream(e.idp, upTLS); err != nil {
		t.Fatalf("NewIMAPUpstream() = %v", err)
	}
	t.Cleanup(func() { e.up.Close() })
	e.upstream = &upstream.Upstream{Addr: map[string]string{"imap": e.up.Addr}, TLS: e.ca.ClientTLS()}

	e.auth = &testAuth{accounts: make(map[string]testAccount)}
	e.addAccount(alice, alicePass)
	e.addAccount(bob, bobPass)

	e.srv = &Server{
		Auth:   e.auth,
		Logger: e.logs.Logger(),
		Dial:   e.dial,
	}
	for _, o := range opts {
		o(e)
	}
	e.addr = e.serve(nil)
	return e
}

// addAccount makes username known to the IdP, the upstream and the proxy.
func (e *env) addAccount(username, password string) *oauth.Source {
	e.t.Helper()
	e.idp.AddUser(username)
	e.up.AddMailbox(username)
	ts := newTokens(e.idp, username)
	e.tokens[username] = ts
	e.auth.set(username, password, &auth.Grant{
		Username: username,
		Mailbox:  username,
		Identity: username,
		Tokens:   ts,
		Upstream: e.upstream,
	})
	return ts
}

// serve starts e.srv on a new listener (wrapped in TLS when cfg != nil) and
// returns its address.
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
		// Wait for the session goroutines, which log through t.
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			e.t.Errorf("Shutdown() after Close = %v, want nil", err)
		}
	})
	return ln.Addr().String()
}

// dial is the proxy's upstream dialer: it counts connections and bytes.
func (e *env) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	e.dials.Add(1)
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, n: &e.upRead, closed: e.upClosed}, nil
}

type countingConn struct {
	net.Conn
	n      *atomic.Int64
	closed chan<- struct{}
	once   sync.Once
}

func (c *countingConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		select {
		case c.closed <- struct{}{}:
		default:
		}
	})
	return err
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// testAuth is an Authenticator with fixed passwords.
type testAuth struct {
	mu       sync.Mutex // protects accounts
	accounts map[string]testAccount
	calls    atomic.Int64
}

type testAccount struct {
	password string
	grant    *auth.Grant
}

var _ auth.Authenticator = (*testAuth)(nil)

func (a *testAuth) set(username, password string, g *auth.Grant) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.accounts[strings.ToLower(username)] = testAccount{password, g}
}

func (a *testAuth) Authenticate(ctx context.Context, username, password string, remote netip.Addr) (*auth.Grant, error) {
	a.calls.Add(1)
	if !remote.IsLoopback() {
		return nil, &auth.AuthError{Kind: auth.AuthFailed, Msg: "invalid credentials", Err: fmt.Errorf("remote %v is not loopback", remote)}
	}
	a.mu.Lock()
	acct, ok := a.accounts[strings.ToLower(username)]
	a.mu.Unlock()
	if !ok || acct.password != password {
		return nil, &auth.AuthError{Kind: auth.AuthFailed, Msg: "invalid credentials", Err: auth.ErrBadCredentials}
	}
	g := *acct.grant
	return &g, nil
}

// newTokens returns the account's token source: oauth.Source, the real one
// (single flight, refresh ahead, error classification), seeded with a
// refresh token only.
func newTokens(idp *fake365.IdP, username string) *oauth.Source {
	_, tokenURL, _ := idp.Endpoints("common")
	p := &oauth.Provider{Name: "fake", ClientID: testClientID, TokenURL: tokenURL, Scopes: testScopes}
	return oauth.NewSource(p, oauth.TokenSet{RefreshToken: idp.GrantRefreshToken(testClientID, username, testScopes)}, nil, nil)
}

// rawClient speaks IMAP by hand.
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
	c.expect("* OK [CAPABILITY IMAP4rev1 ")
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

// expect reads a line and checks its prefix.
func (c *rawClient) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("read %q, want prefix %q", l, prefix)
	}
	return l
}

// untilTagged reads lines up to the tagged reply of tag, which it returns;
// untagged lines are returned too.
func (c *rawClient) untilTagged(tag string) (reply string, untagged []string) {
	c.t.Helper()
	for {
		l := c.line()
		if strings.HasPrefix(l, tag+" ") {
			return l, untagged
		}
		untagged = append(untagged, l)
	}
}

// readToEOF reads until the server closes and returns what it read.
func (c *rawClient) readToEOF() string {
	c.t.Helper()
	b, err := io.ReadAll(c.r)
	if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		c.t.Fatalf("ReadAll() = %q, %v; want EOF", b, err)
	}
	return string(b)
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// login logs in with LOGIN and checks the OK.
func (c *rawClient) login(tag, user, pass string) string {
	c.t.Helper()
	c.send(tag + " LOGIN " + quote(user) + " " + quote(pass) + "\r\n")
	reply, _ := c.untilTagged(tag)
	if !strings.HasPrefix(reply, tag+" OK") {
		c.t.Fatalf("LOGIN %s = %q, want OK", user, reply)
	}
	return reply
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func literal(s string, plus bool) string {
	if plus {
		return "{" + strconv.Itoa(len(s)) + "+}\r\n" + s
	}
	return "{" + strconv.Itoa(len(s)) + "}\r\n" + s
}

// message returns an RFC 5322 message of about size bytes whose body lines
// are numbered, so that lost or reordered bytes show.
func message(size int, id string) []byte {
	b := make([]byte, 0, size+256)
	b = fmt.Appendf(b, "From: sender@example.com\r\nTo: %s\r\nSubject: test %s\r\nMessage-ID: <%s@example.com>\r\n\r\n", alice, id, id)
	for i := 0; len(b) < size; i++ {
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, " the quick brown fox jumps over the lazy dog "...)
		b = append(b, id...)
		b = append(b, "\r\n"...)
	}
	return b
}
