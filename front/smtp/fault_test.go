package smtp

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

	"github.com/emersion/go-smtp"

	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
	"mailproxy/oauth"
)

// The fault tests count goroutines before and after, so none of them runs
// in parallel: the package's parallel tests start only after every
// sequential test has finished.

// closeAll stops the proxy, the fake upstream and the fake IdP and waits
// for the proxy's connections to end, so that a test can count what is
// left. The cleanups registered by newEnv still run and do nothing more.
func (e *env) closeAll() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	e.srv.Shutdown(ctx)
	e.srv.Close()
	e.up.Close()
	e.idp.Close()
}

func (e *env) checkGoroutines(base int) {
	e.t.Helper()
	e.closeAll()
	fake365.WaitGoroutines(e.t, base, testWait)
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

// The identity provider fails (HTTP 500) or hangs. While the access token is
// still valid, mail goes out with it; once a refresh is needed the client
// gets 454 4.7.0 saying why, within the upstream timeout, and the stored
// refresh token is kept.
func TestFaultIdentityProvider(t *testing.T) {
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
				var (
					clock = testutil.NewWallClock()
					rec   persistRecorder
					src   *oauth.Source
				)
				holder := &lateTokens{}
				e := newEnv(t, envOpts{tokens: holder, server: func(s *Server) { s.UpstreamTimeout = timeout }})
				_, tokenURL, _ := e.idp.Endpoints("contoso.onmicrosoft.com")
				scopes := []string{"https://outlook.office.com/SMTP.Send", "offline_access"}
				p := &oauth.Provider{Name: "fake", ClientID: testClientID, TokenURL: tokenURL, Scopes: scopes}
				src = oauth.NewSource(p, oauth.TokenSet{RefreshToken: e.idp.GrantRefreshToken(testClientID, testUser, scopes)},
					rec.persist, slog.New(e.logs).With("account", testUser))
				src.Now = clock.Now
				holder.set(src)

				c := e.login()
				if err := c.Mail("alice@contoso.com", nil); err != nil { // the first token
					t.Fatalf("Mail() with the IdP up = %v", err)
				}
				c.Quit()
				rt, saved := src.Tokens().RefreshToken, rec.count()

				f := tc.failure
				e.idp.SetFailure(&f)
				if needRefresh {
					clock.Set(2 * time.Hour)
				} else {
					clock.Set(40 * time.Minute)
				}
				c = e.login()
				start := time.Now()
				err := c.Mail("alice@contoso.com", nil)
				elapsed := time.Since(start)
				if needRefresh {
					wantSMTPError(t, "Mail() needing a refresh", err, 454, smtp.EnhancedCode{4, 7, 0}, "")
					const want = "temporary failure getting a token: the identity provider"
					if msg := err.(*smtp.SMTPError).Message; !strings.HasPrefix(msg, want) {
						t.Errorf("Mail() reply = %q, want prefix %q", msg, want)
					}
				} else if err != nil {
					t.Errorf("Mail() with a valid token = %v, want nil", err)
				}
				if elapsed > timeout+time.Second {
					t.Errorf("Mail() took %v, want an answer within the upstream timeout %v", elapsed, timeout)
				}
				if got := src.Tokens().RefreshToken; got != rt {
					t.Errorf("refresh token changed while the IdP failed")
				}
				if got := rec.count(); got != saved {
					t.Errorf("persisted %d token sets while the IdP failed, want none", got-saved)
				}
				c.Close()
				e.checkGoroutines(base)
			})
		}
	}
}

// lateTokens is a TokenSource set after the env exists (the source needs
// the env's IdP).
type lateTokens struct {
	mu  sync.Mutex // protects src
	src *oauth.Source
}

func (l *lateTokens) set(s *oauth.Source) { l.mu.Lock(); l.src = s; l.mu.Unlock() }
func (l *lateTokens) get() *oauth.Source  { l.mu.Lock(); defer l.mu.Unlock(); return l.src }

func (l *lateTokens) Token(ctx context.Context) (string, error) { return l.get().Token(ctx) }
func (l *lateTokens) Refresh(ctx context.Context, rejected string) (string, error) {
	return l.get().Refresh(ctx, rejected)
}

// scripted serves raw TCP connections with handle until stop, which closes
// the listener and every connection and waits for the handlers.
func scripted(t *testing.T, handle func(conn net.Conn, r *bufio.Reader)) (addr string, stop func()) {
	t.Helper()
	return scriptedTLS(t, nil, handle)
}

// scriptedTLS is scripted with implicit TLS when cfg is not nil.
func scriptedTLS(t *testing.T, cfg *tls.Config, handle func(conn net.Conn, r *bufio.Reader)) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen() = %v", err)
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
				conn.SetDeadline(time.Now().Add(testWait))
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
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// waitClose reads until the proxy closes the connection.
func waitClose(conn net.Conn, r *bufio.Reader) {
	for {
		if _, err := r.ReadByte(); err != nil {
			return
		}
	}
}

// The upstream is down or hangs at some step: the client gets a clear
// temporary error within the upstream timeout, and nothing is left behind.
func TestFaultUpstream(t *testing.T) {
	for _, tc := range []struct {
		name   string
		handle func(conn net.Conn, r *bufio.Reader)
		refuse bool
		want   string
	}{
		{name: "dial refused", refuse: true, want: "cannot reach the upstream mail server; try again later"},
		{name: "no greeting", handle: waitClose, want: "upstream mail server did not answer in time; try again later"},
		{name: "hangs after the greeting", handle: func(conn net.Conn, r *bufio.Reader) {
			fmt.Fprintf(conn, "220 upstream ready\r\n")
			waitClose(conn, r)
		}, want: "upstream mail server did not answer in time; try again later"},
		{name: "hangs in the TLS handshake", handle: func(conn net.Conn, r *bufio.Reader) {
			fmt.Fprintf(conn, "220 upstream ready\r\n")
			readLineSMTP(r) // EHLO
			fmt.Fprintf(conn, "250-upstream\r\n250 STARTTLS\r\n")
			readLineSMTP(r) // STARTTLS
			fmt.Fprintf(conn, "220 go ahead\r\n")
			waitClose(conn, r)
		}, want: "upstream mail server did not answer in time; try again later"},
		{name: "closes after the greeting", handle: func(conn net.Conn, r *bufio.Reader) {
			fmt.Fprintf(conn, "220 upstream ready\r\n")
			readLineSMTP(r)
		}, want: "cannot reach the upstream mail server; try again later"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			const timeout = 500 * time.Millisecond
			var addr string
			stop := func() {}
			if tc.refuse {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatalf("Listen() = %v", err)
				}
				addr = ln.Addr().String()
				ln.Close()
			} else {
				addr, stop = scripted(t, tc.handle)
			}
			e := newEnv(t, envOpts{upstreamAddr: addr, server: func(s *Server) { s.UpstreamTimeout = timeout }})
			c := e.login()
			start := time.Now()
			err := c.Mail("alice@contoso.com", nil)
			wantSMTPError(t, "Mail()", err, 451, smtp.EnhancedCode{4, 4, 1}, tc.want)
			if d := time.Since(start); d > timeout+time.Second {
				t.Errorf("Mail() answered after %v, want within the upstream timeout %v", d, timeout)
			}
			// The session is still usable.
			if err := c.Noop(); err != nil {
				t.Errorf("Noop() after the failure = %v", err)
			}
			c.Close()
			stop()
			e.checkGoroutines(base)
		})
	}
}

func readLineSMTP(r *bufio.Reader) string {
	l, _ := r.ReadString('\n')
	return strings.TrimRight(l, "\r\n")
}

// The upstream goes away in the middle of a session: the client gets an
// error reply at once instead of a hang, and can carry on.
func TestFaultUpstreamClosesMidSession(t *testing.T) {
	base := runtime.NumGoroutine()
	e := newEnv(t, envOpts{})
	c := e.login()
	if err := c.Mail("alice@contoso.com", nil); err != nil {
		t.Fatalf("Mail() = %v", err)
	}
	e.up.Close() // every upstream connection is cut
	done := make(chan error, 1)
	go func() { done <- c.Rcpt("bob@example.com", nil) }()
	select {
	case err := <-done:
		wantSMTPError(t, "Rcpt() after the upstream went away", err, 451, smtp.EnhancedCode{4, 4, 2}, "")
	case <-time.After(testWait):
		t.Fatalf("Rcpt() hangs after the upstream went away")
	}
	if err := c.Noop(); err != nil {
		t.Errorf("Noop() after the upstream went away = %v, want nil", err)
	}
	c.Close()
	e.checkGoroutines(base)
}
