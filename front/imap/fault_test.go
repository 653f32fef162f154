package imap

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/auth"
	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
	"mailproxy/oauth"
)

// The fault tests count goroutines before and after, so none of them runs
// in parallel: the package's parallel tests start only after every
// sequential test has finished.

// closeAll stops the proxy, the fake upstream and the fake IdP, waiting for
// their goroutines, so that a test can count what is left. The cleanups
// registered by newEnv still run and do nothing more.
func (e *env) closeAll() {
	e.t.Helper()
	e.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		e.t.Errorf("Shutdown() after Close = %v", err)
	}
	e.up.Close()
	e.idp.Close()
}

// checkGoroutines closes everything and checks that the goroutine count is
// back to base.
func (e *env) checkGoroutines(base int) {
	e.t.Helper()
	e.closeAll()
	fake365.WaitGoroutines(e.t, base, testTimeout)
}

// persistRecorder is an oauth.Source persist func that records.
type persistRecorder struct {
	mu   sync.Mutex // protects sets
	sets []oauth.TokenSet
}

func (r *persistRecorder) persist(ts oauth.TokenSet) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets = append(r.sets, ts)
	return nil
}

func (r *persistRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sets)
}

func (r *persistRecorder) last() oauth.TokenSet {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sets[len(r.sets)-1]
}

func (e *env) logger() *slog.Logger { return e.srv.Logger }

func (e *env) tokenURL() string {
	_, u, _ := e.idp.Endpoints("common")
	return u
}

// addSourceAccount adds an account whose tokens come from an oauth.Source
// with clock and a persist func that records.
func (e *env) addSourceAccount(username, password string, clock *testutil.Clock, rec *persistRecorder) *oauth.Source {
	e.t.Helper()
	e.idp.AddUser(username)
	e.up.AddMailbox(username)
	p := &oauth.Provider{Name: "fake", ClientID: testClientID, TokenURL: e.tokenURL(), Scopes: testScopes}
	src := oauth.NewSource(p, oauth.TokenSet{RefreshToken: e.idp.GrantRefreshToken(testClientID, username, testScopes)},
		rec.persist, e.logger().With("account", username))
	src.Now = clock.Now
	e.auth.set(username, password, &auth.Grant{
		Username: username, Mailbox: username, Identity: username, Tokens: src, Upstream: e.upstream,
	})
	return src
}

// The identity provider fails (HTTP 500) or hangs. While the access token is
// still valid logins go on with it; once a refresh is needed they fail with
// a temporary error saying why, within the upstream timeout, and the stored
// refresh token is kept.
func TestFaultIdentityProvider(t *testing.T) {
	const gina, ginaPass = "gina@example.com", "gina-pw"
	for _, tc := range []struct {
		name    string
		failure fake365.Failure
	}{
		{"500", fake365.Failure{Status: 500, Code: "server_error"}},
		{"hang", fake365.Failure{Hang: true}},
	} {
		for _, needRefresh := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/refresh_needed=%v", tc.name, needRefresh), func(t *testing.T) {
				base := runtime.NumGoroutine()
				const timeout = time.Second
				e := newEnv(t, withServer(func(s *Server) { s.UpstreamTimeout = timeout }))
				clock := testutil.NewWallClock()
				var rec persistRecorder
				src := e.addSourceAccount(gina, ginaPass, clock, &rec)
				if err := loginOnce(e.addr, gina, ginaPass); err != nil { // the first token
					t.Fatalf("login with the IdP up: %v", err)
				}
				rt, saved := src.Tokens().RefreshToken, rec.count()
				if saved != 1 || rec.last().RefreshToken != rt {
					t.Fatalf("persisted %d token sets, want 1 with the current refresh token", saved)
				}

				f := tc.failure
				e.idp.SetFailure(&f)
				if needRefresh {
					clock.Set(2 * time.Hour) // the access token has expired
				} else {
					clock.Set(40 * time.Minute) // due for refresh, 20 minutes left
				}
				c := greet(t, e.addr)
				start := time.Now()
				c.send("a LOGIN " + gina + " " + ginaPass + "\r\n")
				reply, _ := c.untilTagged("a")
				elapsed := time.Since(start)
				if needRefresh {
					const want = "a NO [UNAVAILABLE] temporary failure getting a token: the identity provider"
					if !strings.HasPrefix(reply, want) {
						t.Errorf("LOGIN needing a refresh = %q, want prefix %q", reply, want)
					}
				} else if !strings.HasPrefix(reply, "a OK") {
					t.Errorf("LOGIN with a valid token = %q, want OK", reply)
				}
				if elapsed > timeout+time.Second {
					t.Errorf("LOGIN took %v, want an answer within the upstream timeout %v", elapsed, timeout)
				}
				if got := src.Tokens().RefreshToken; got != rt {
					t.Errorf("refresh token changed while the IdP failed")
				}
				if got := rec.count(); got != saved {
					t.Errorf("persisted %d token sets while the IdP failed, want none", got-saved)
				}
				c.conn.Close()
				e.checkGoroutines(base)
			})
		}
	}
}

// scripted serves TLS connections with handle like scriptedUpstream, and
// returns a stop func that closes the listener and every connection and
// waits for the handlers.
func (e *env) scripted(cfg *tls.Config, handle func(conn net.Conn, r *bufio.Reader)) (addr string, stop func()) {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatalf("Listen() = %v", err)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(testTimeout))
				handle(conn, bufio.NewReader(conn))
			}()
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ln.Close()
			mu.Lock()
			for _, c := range conns {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
	}
	e.t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// The upstream is down or hangs at some step: the client gets a clear
// temporary error within the upstream timeout, and nothing is left behind.
func TestFaultUpstream(t *testing.T) {
	greeting := "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n"
	// waitClose blocks until the proxy closes the connection.
	waitClose := func(conn net.Conn, r *bufio.Reader) {
		for {
			if _, err := r.ReadByte(); err != nil {
				return
			}
		}
	}
	for _, tc := range []struct {
		name   string
		tls    bool // the upstream completes TLS handshakes
		handle func(conn net.Conn, r *bufio.Reader)
		refuse bool // nobody listens
		want   string
	}{
		{name: "dial refused", refuse: true, want: "a NO [UNAVAILABLE] cannot reach the mail server"},
		{name: "no TLS handshake", handle: waitClose, want: "a NO [UNAVAILABLE] cannot reach the mail server"},
		{name: "no greeting", tls: true, handle: waitClose, want: "a NO [UNAVAILABLE] the mail server did not greet"},
		{name: "hangs after the greeting", tls: true, handle: func(conn net.Conn, r *bufio.Reader) {
			fmt.Fprint(conn, greeting)
			waitClose(conn, r)
		}, want: "a NO [UNAVAILABLE] the mail server did not answer the login"},
		{name: "closes after the greeting", tls: true, handle: func(conn net.Conn, r *bufio.Reader) {
			fmt.Fprint(conn, greeting)
			readLine(r)
		}, want: "a NO [UNAVAILABLE] the mail server did not answer the login"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			const timeout = 500 * time.Millisecond
			e := newEnv(t, withServer(func(s *Server) { s.UpstreamTimeout = timeout }))
			var addr string
			stop := func() {}
			switch {
			case tc.refuse:
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatalf("Listen() = %v", err)
				}
				addr = ln.Addr().String()
				ln.Close()
			default:
				var cfg *tls.Config
				if tc.tls {
					var err error
					if cfg, err = e.ca.ServerTLS(); err != nil {
						t.Fatalf("ServerTLS() = %v", err)
					}
				}
				addr, stop = e.scripted(cfg, tc.handle)
			}
			e.addScripted("carol@example.com", "pw", addr, &staticTokens{tok: "t"})

			c := greet(t, e.addr)
			start := time.Now()
			c.send("a LOGIN carol@example.com pw\r\n")
			if got := c.line(); got != tc.want {
				t.Errorf("LOGIN = %q, want %q", got, tc.want)
			}
			if d := time.Since(start); d > timeout+time.Second {
				t.Errorf("LOGIN answered after %v, want within the upstream timeout %v", d, timeout)
			}
			// The session is still usable.
			c.send("b NOOP\r\n")
			c.expect("b OK")
			c.conn.Close()
			stop()
			e.checkGoroutines(base)
		})
	}
}

// The upstream goes away in the middle of a relayed session: the client
// sees its connection end instead of a hang.
func TestFaultUpstreamClosesMidSession(t *testing.T) {
	t.Run("imapclient", func(t *testing.T) {
		base := runtime.NumGoroutine()
		e := newEnv(t)
		conn, err := net.DialTimeout("tcp", e.addr, testTimeout)
		if err != nil {
			t.Fatalf("Dial() = %v", err)
		}
		c := imapclient.New(conn, nil)
		if err := c.Login(alice, alicePass).Wait(); err != nil {
			t.Fatalf("Login() = %v", err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatalf("Select() = %v", err)
		}
		e.up.Close() // every upstream connection is cut
		done := make(chan error, 1)
		go func() { done <- c.Noop().Wait() }()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("Noop() after the upstream went away = nil, want an error")
			}
		case <-time.After(testTimeout):
			t.Fatalf("Noop() hangs after the upstream went away")
		}
		c.Close()
		e.checkGoroutines(base)
	})
	t.Run("raw", func(t *testing.T) {
		base := runtime.NumGoroutine()
		e := newEnv(t)
		c := greet(t, e.addr)
		c.login("a", alice, alicePass)
		c.send("b SELECT INBOX\r\n")
		c.untilTagged("b")
		e.up.Close()
		c.readToEOF() // whatever the upstream said last, then EOF: no hang
		c.conn.Close()
		e.checkGoroutines(base)
	})
}
