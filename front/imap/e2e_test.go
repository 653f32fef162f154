package imap

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"mailproxy/auth"
	"mailproxy/upstream"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// newIMAPClient connects an imapclient to the proxy over plain TCP.
func newIMAPClient(t *testing.T, addr string, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatalf("Dial(%s) = %v", addr, err)
	}
	c := imapclient.New(conn, opts)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestIMAPClient(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	big := message(20<<20, "big")
	if err := e.up.Append(alice, "INBOX", big); err != nil {
		t.Fatalf("Append() to the upstream = %v", err)
	}

	c := newIMAPClient(t, e.addr, nil)
	if err := c.Login(alice, alicePass).Wait(); err != nil {
		t.Fatalf("Login() = %v", err)
	}
	// The upstream's tagged OK [CAPABILITY ...] reached the client.
	if caps := c.Caps(); !caps.Has(imap.CapUIDPlus) || caps.Has(imap.Cap("AUTH=PLAIN")) {
		t.Errorf("Caps() after login = %v, want the upstream's", caps)
	}

	list, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatalf("List() = %v", err)
	}
	if len(list) == 0 || list[0].Mailbox != "INBOX" {
		t.Errorf("List() = %v, want INBOX", list)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("Select() = %v", err)
	}
	if sel.NumMessages != 1 {
		t.Errorf("Select().NumMessages = %d, want 1", sel.NumMessages)
	}

	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatalf("Fetch(BODY.PEEK[]) = %v", err)
	}
	if len(msgs) != 1 {
		t.Fatalf("Fetch() returned %d messages, want 1", len(msgs))
	}
	if got := msgs[0].FindBodySection(section); !bytes.Equal(got, big) {
		t.Errorf("Fetch() body: %d bytes differ from the %d appended", len(got), len(big))
	}

	app := message(10<<20, "append")
	cmd := c.Append("INBOX", int64(len(app)), nil)
	if _, err := cmd.Write(app); err != nil {
		t.Fatalf("Append().Write() = %v", err)
	}
	if err := cmd.Close(); err != nil {
		t.Fatalf("Append().Close() = %v", err)
	}
	data, err := cmd.Wait()
	if err != nil {
		t.Fatalf("Append().Wait() = %v", err)
	}
	msgs, err = c.Fetch(imap.UIDSetNum(data.UID), &imap.FetchOptions{RFC822Size: true}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("Fetch(UID %d RFC822.SIZE) = %v, %v", data.UID, msgs, err)
	}
	if msgs[0].RFC822Size != int64(len(app)) {
		t.Errorf("RFC822.SIZE of the appended message = %d, want %d", msgs[0].RFC822Size, len(app))
	}

	if err := c.Logout().Wait(); err != nil {
		t.Errorf("Logout() = %v", err)
	}
}

// imapclient sends a non-ASCII password as a LITERAL+ literal.
func TestIMAPClientNonASCIIPassword(t *testing.T) {
	e := newEnv(t)
	c := newIMAPClient(t, e.addr, nil)
	if err := c.Login(bob, bobPass).Wait(); err != nil {
		t.Fatalf("Login(%q) = %v", bob, err)
	}
	if err := c.Login(bob, bobPass).Wait(); err == nil {
		t.Errorf("second Login() = nil, want the upstream's error")
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("Logout() = %v", err)
	}
	c2 := newIMAPClient(t, e.addr, nil)
	err := c2.Login(bob, "wrong").Wait()
	var ie *imap.Error
	if !errors.As(err, &ie) || ie.Code != imap.ResponseCodeAuthenticationFailed {
		t.Errorf("Login() with a wrong password = %v, want NO [AUTHENTICATIONFAILED]", err)
	}
}

func TestIdle(t *testing.T) {
	e := newEnv(t)
	exists := make(chan uint32, 10)
	a := newIMAPClient(t, e.addr, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(data *imapclient.UnilateralDataMailbox) {
				if data.NumMessages != nil {
					exists <- *data.NumMessages
				}
			},
		},
	})
	if err := a.Login(alice, alicePass).Wait(); err != nil {
		t.Fatalf("Login() = %v", err)
	}
	if _, err := a.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("Select() = %v", err)
	}
	idle, err := a.Idle()
	if err != nil {
		t.Fatalf("Idle() = %v", err)
	}

	b := newIMAPClient(t, e.addr, nil)
	if err := b.Login(alice, alicePass).Wait(); err != nil {
		t.Fatalf("Login() of the second session = %v", err)
	}
	msg := message(1000, "idle")
	cmd := b.Append("INBOX", int64(len(msg)), nil)
	cmd.Write(msg)
	cmd.Close()
	if _, err := cmd.Wait(); err != nil {
		t.Fatalf("Append() = %v", err)
	}

	select {
	case n := <-exists:
		if n != 1 {
			t.Errorf("EXISTS during IDLE = %d, want 1", n)
		}
	case <-time.After(testTimeout):
		t.Fatalf("no EXISTS during IDLE after another session's APPEND")
	}
	if err := idle.Close(); err != nil {
		t.Errorf("Idle().Close() = %v", err)
	}
	if err := idle.Wait(); err != nil {
		t.Errorf("Idle().Wait() = %v", err)
	}
	if err := a.Logout().Wait(); err != nil {
		t.Errorf("Logout() = %v", err)
	}
}

func TestPythonImaplib(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	e := newEnv(t)
	msg := message(50000, "python")
	if err := e.up.Append(alice, "INBOX", msg); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	const script = `
import imaplib, sys
m = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=20)
m.login(sys.argv[3], sys.argv[4])
typ, data = m.select('INBOX')
assert typ == 'OK', (typ, data)
typ, data = m.fetch('1', '(RFC822)')
assert typ == 'OK', (typ, data)
sys.stdout.buffer.write(data[0][1])
m.logout()
`
	host, port, _ := net.SplitHostPort(e.addr)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, python, "-c", script, host, port, alice, alicePass)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3 imaplib = %v\n%s", err, stderr.Bytes())
	}
	if !bytes.Equal(out, msg) {
		t.Errorf("python3 imaplib fetched %d bytes, want the %d appended", len(out), len(msg))
	}
}

func TestCurl(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	e := newEnv(t)
	msg := message(5000, "curl")
	if err := e.up.Append(alice, "INBOX", msg); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	run := func(url string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, curl, "-sS", "--max-time", "20", "-u", alice+":"+alicePass, url)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl %s = %v\n%s", url, err, stderr.Bytes())
		}
		return out
	}
	// curl logs in with AUTHENTICATE PLAIN and SASL-IR.
	if list := run("imap://" + e.addr + "/"); !bytes.Contains(list, []byte("INBOX")) {
		t.Errorf("curl imap://.../ = %q, want a LIST with INBOX", list)
	}
	run("imap://" + e.addr + "/INBOX") // LIST "INBOX" *: no children, but it must succeed
	if got := run("imap://" + e.addr + "/INBOX/;UID=1"); !bytes.Equal(got, msg) {
		t.Errorf("curl imap://.../INBOX/;UID=1 fetched %d bytes, want the %d appended", len(got), len(msg))
	}
}

// loginOnce logs in, logs out and reports an error; safe in goroutines.
func loginOnce(addr, user, pass string) error {
	conn, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	fmt.Fprintf(conn, "a LOGIN %s %s\r\nb LOGOUT\r\n", quote(user), quote(pass))
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("read LOGIN reply: %w", err)
		}
		if strings.HasPrefix(l, "a ") {
			if !strings.HasPrefix(l, "a OK") {
				return fmt.Errorf("LOGIN = %q", l)
			}
			return nil
		}
	}
}

// Concurrent logins of one account share one token refresh.
func TestConcurrentLoginsOneRefresh(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withServer(func(s *Server) { s.MaxUpstreamPerMailbox = 100 }))
	const dave, davePass = "dave@example.com", "pw"
	e.addAccount(dave, davePass) // no access token yet
	before := e.idp.Stats().Refreshes
	logins := e.up.Logins()

	const n = 50
	errs := make(chan error, n)
	for range n {
		go func() { errs <- loginOnce(e.addr, dave, davePass) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("concurrent login: %v", err)
		}
	}
	if got := e.idp.Stats().Refreshes - before; got != 1 {
		t.Errorf("refreshes for %d concurrent logins = %d, want 1", n, got)
	}
	if got := e.up.Logins() - logins; got != n {
		t.Errorf("upstream logins = %d, want %d", got, n)
	}
}

// An access token the upstream no longer accepts is refreshed once.
func TestTokenExpiredAtUpstream(t *testing.T) {
	for _, gmail := range []bool{false, true} {
		t.Run(fmt.Sprintf("gmail=%v", gmail), func(t *testing.T) {
			e := newEnv(t)
			e.up.SetGmailStyle(gmail)
			if err := loginOnce(e.addr, alice, alicePass); err != nil { // caches a token
				t.Fatalf("first login: %v", err)
			}
			e.idp.ExpireAccessTokens()
			refreshes, failures, dials := e.idp.Stats().Refreshes, e.up.AuthFailures(), e.dials.Load()

			c := greet(t, e.addr)
			c.login("a", alice, alicePass)
			c.send("b SELECT INBOX\r\n")
			if reply, _ := c.untilTagged("b"); !strings.HasPrefix(reply, "b OK") {
				t.Errorf("SELECT after a refreshed login = %q, want OK", reply)
			}
			if got := e.idp.Stats().Refreshes - refreshes; got != 1 {
				t.Errorf("refreshes = %d, want 1", got)
			}
			if got := e.up.AuthFailures() - failures; got != 1 {
				t.Errorf("upstream auth failures = %d, want 1", got)
			}
			if got := e.dials.Load() - dials; got != 2 {
				t.Errorf("upstream dials = %d, want 2 (a new connection for the retry)", got)
			}
		})
	}
}

// A revoked sign-in is reported as such.
func TestTokenRevoked(t *testing.T) {
	e := newEnv(t)
	if err := loginOnce(e.addr, alice, alicePass); err != nil {
		t.Fatalf("first login: %v", err)
	}
	e.idp.Revoke(alice)
	e.idp.ExpireAccessTokens()
	c := greet(t, e.addr)
	c.send("a LOGIN " + alice + " " + alicePass + "\r\n")
	reply := c.line()
	if !strings.HasPrefix(reply, "a NO [ALERT] ") || !strings.Contains(reply, "needs a new sign-in") {
		t.Errorf("LOGIN with a revoked sign-in = %q, want NO [ALERT] saying a sign-in is needed", reply)
	}
}

// staticTokens always returns the same token.
type staticTokens struct {
	tok       string
	refreshes atomic.Int64
	err       error
}

func (s *staticTokens) Token(ctx context.Context) (string, error) { return s.tok, s.err }
func (s *staticTokens) Refresh(ctx context.Context, rejected string) (string, error) {
	s.refreshes.Add(1)
	return s.tok, s.err
}

// scriptedUpstream serves TLS connections with handle, which gets the
// connection number (from 1).
func (e *env) scriptedUpstream(handle func(n int, conn net.Conn, r *bufio.Reader)) string {
	e.t.Helper()
	cfg, err := e.ca.ServerTLS()
	if err != nil {
		e.t.Fatalf("ServerTLS() = %v", err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		e.t.Fatalf("Listen() = %v", err)
	}
	var wg sync.WaitGroup
	e.t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 1; ; n++ {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(testTimeout))
				handle(n, conn, bufio.NewReader(conn))
			}()
		}
	}()
	return ln.Addr().String()
}

// addScripted adds an account whose upstream is addr.
func (e *env) addScripted(username, password, addr string, tokens auth.TokenSource) {
	e.auth.set(username, password, &auth.Grant{
		Username: username,
		Mailbox:  username,
		Tokens:   tokens,
		Upstream: &upstream.Upstream{Addr: map[string]string{"imap": addr}, TLS: e.ca.ClientTLS()},
	})
}

func readLine(r *bufio.Reader) string {
	l, _ := r.ReadString('\n')
	return strings.TrimRight(l, "\r\n")
}

// An Exchange-like upstream: no capabilities in the greeting, so no SASL-IR;
// untagged data before the tagged OK reaches the client.
func TestUpstreamWithoutSASLIR(t *testing.T) {
	e := newEnv(t)
	tokens := &staticTokens{tok: "token-1"}
	wantResp := b64(string(upstream.XOAuth2("carol@example.com", "token-1")))
	got := make(chan string, 2)
	addr := e.scriptedUpstream(func(n int, conn net.Conn, r *bufio.Reader) {
		fmt.Fprintf(conn, "* OK The Microsoft Exchange IMAP4 service is ready. [TQBXADIA]\r\n")
		got <- readLine(r)
		fmt.Fprintf(conn, "+ \r\n")
		if resp := readLine(r); resp != wantResp {
			fmt.Fprintf(conn, "x1 NO wrong response %q\r\n", resp)
			return
		}
		fmt.Fprintf(conn, "* CAPABILITY IMAP4 IMAP4rev1 IDLE\r\n")
		fmt.Fprintf(conn, "x1 OK AUTHENTICATE completed.\r\n")
		got <- readLine(r)
		fmt.Fprintf(conn, "x2 OK NOOP completed.\r\n")
	})
	e.addScripted("carol@example.com", "pw", addr, tokens)

	c := greet(t, e.addr)
	c.send("x1 LOGIN carol@example.com pw\r\n")
	if reply, untagged := c.untilTagged("x1"); reply != "x1 OK AUTHENTICATE completed." || len(untagged) != 1 || untagged[0] != "* CAPABILITY IMAP4 IMAP4rev1 IDLE" {
		t.Errorf("LOGIN = %q after %q, want the upstream's lines", reply, untagged)
	}
	if cmd := <-got; cmd != "x1 AUTHENTICATE XOAUTH2" {
		t.Errorf("upstream got %q, want %q", cmd, "x1 AUTHENTICATE XOAUTH2")
	}
	c.send("x2 NOOP\r\n")
	c.expect("x2 OK NOOP completed.")
	if cmd := <-got; cmd != "x2 NOOP" {
		t.Errorf("upstream got %q, want %q", cmd, "x2 NOOP")
	}
}

func TestUpstreamRefusals(t *testing.T) {
	tests := []struct {
		name      string
		greeting  string
		reply     string // to AUTHENTICATE
		want      string // the client's tagged reply
		refreshes int64
		conns     int
	}{
		{
			name:      "token refused twice",
			greeting:  "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready",
			reply:     "a NO AUTHENTICATE failed.",
			want:      "a NO [AUTHENTICATIONFAILED] upstream refused the access token for carol@example.com; the account may need a new sign-in",
			refreshes: 1,
			conns:     2,
		},
		{
			name:     "throttled",
			greeting: "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready",
			reply:    "a NO Request is throttled. Suggested Backoff Time: 2000 milliseconds",
			want:     "a NO [UNAVAILABLE] Request is throttled. Suggested Backoff Time: 2000 milliseconds",
			conns:    1,
		},
		{
			name:     "BYE greeting",
			greeting: "* BYE too busy",
			want:     "a NO [UNAVAILABLE] the mail server is unavailable: too busy",
			conns:    1,
		},
		{
			name:     "closed during login",
			greeting: "* OK [CAPABILITY IMAP4rev1 SASL-IR] ready",
			reply:    "* BYE going away",
			want:     "a NO [UNAVAILABLE] the mail server closed the connection: going away",
			conns:    1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			tokens := &staticTokens{tok: "token-1"}
			var conns atomic.Int64
			addr := e.scriptedUpstream(func(n int, conn net.Conn, r *bufio.Reader) {
				conns.Add(1)
				fmt.Fprintf(conn, "%s\r\n", tt.greeting)
				readLine(r)
				if tt.reply != "" {
					fmt.Fprintf(conn, "%s\r\n", tt.reply)
				}
			})
			e.addScripted("carol@example.com", "pw", addr, tokens)
			c := greet(t, e.addr)
			c.send("a LOGIN carol@example.com pw\r\n")
			if got := c.line(); got != tt.want {
				t.Errorf("LOGIN = %q, want %q", got, tt.want)
			}
			if got := tokens.refreshes.Load(); got != tt.refreshes {
				t.Errorf("refreshes = %d, want %d", got, tt.refreshes)
			}
			if got := e.dials.Load(); got != int64(tt.conns) {
				t.Errorf("upstream dials = %d, want %d", got, tt.conns)
			}
			c.send("b NOOP\r\n")
			c.expect("b OK")
		})
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	e := newEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen() = %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	e.addScripted("carol@example.com", "pw", addr, &staticTokens{tok: "t"})
	e.addScripted("erin@example.com", "pw", addr, &staticTokens{err: context.DeadlineExceeded})
	c := greet(t, e.addr)
	c.send("a LOGIN carol@example.com pw\r\n")
	c.expect("a NO [UNAVAILABLE] cannot reach the mail server")
	c.send("b LOGIN erin@example.com pw\r\n")
	c.expect("b NO [UNAVAILABLE] temporary failure getting a token")
}

// A client that stops reading during a big FETCH holds up the upstream:
// the proxy buffers a bounded amount.
func TestBackPressure(t *testing.T) {
	e := newEnv(t)
	const size = 50 << 20
	if err := e.up.Append(alice, "INBOX", message(size, "huge")); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	conn, err := net.DialTimeout("tcp", e.addr, testTimeout)
	if err != nil {
		t.Fatalf("Dial() = %v", err)
	}
	defer conn.Close()
	// A small receive buffer keeps the kernel from absorbing the stall.
	conn.(*net.TCPConn).SetReadBuffer(64 << 10)
	conn.SetDeadline(time.Now().Add(testTimeout))
	c := &rawClient{t: t, conn: conn, r: bufio.NewReaderSize(conn, 4096)}
	c.expect("* OK")
	c.login("a", alice, alicePass)
	c.send("b SELECT INBOX\r\n")
	c.untilTagged("b")

	start := e.upRead.Load()
	c.send("c FETCH 1 BODY.PEEK[]\r\n")

	// Wait until the upstream data has started to flow (the fake upstream
	// has built its copy of the message by then), then take the heap.
	wait := func(what string, done func() bool) {
		t.Helper()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(testTimeout)
		for !done() {
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	wait("the FETCH data", func() bool { return e.upRead.Load()-start > 256<<10 })
	heap0 := heapInuse()

	// Wait for the flow to stop: the counter unchanged for 30 ticks.
	var last int64 = -1
	still := 0
	wait("the upstream to stall", func() bool {
		n := e.upRead.Load()
		if n == last {
			still++
		} else {
			still, last = 0, n
		}
		return still >= 30
	})
	buffered := last - start // the client has read none of it
	if buffered >= 16<<20 {
		t.Errorf("proxy read %d bytes from upstream for a client that reads nothing, want < 16 MiB", buffered)
	}
	if grew := int64(heapInuse()) - int64(heap0); grew > 4<<20 {
		t.Errorf("heap grew by %d bytes while the client stalled, want < 4 MiB", grew)
	}
	t.Logf("stalled after %d bytes from upstream", buffered)

	// Once the client is gone, the proxy closes the upstream connection.
	// (Not checked at the fake upstream: imapserver keeps a connection
	// whose FETCH write failed open, its encoder lock still held.)
	conn.Close()
	select {
	case <-e.upClosed:
	case <-time.After(testTimeout):
		t.Errorf("upstream connection still open %v after the client left", testTimeout)
	}
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// Neither passwords nor tokens reach the log, in any encoding.
func TestNoSecretsInLogs(t *testing.T) {
	e := newEnv(t)
	const frank, frankPass = "frank@example.com", "Unique-Passw0rd-4711"
	ts := e.addAccount(frank, frankPass)
	c := greet(t, e.addr)
	c.send("a LOGIN " + frank + " wrong-" + frankPass + "\r\n")
	c.expect("a NO")
	c.send("b AUTHENTICATE PLAIN " + b64("\x00"+frank+"\x00"+frankPass) + "\r\n")
	c.untilTagged("b")
	c.send("c LOGOUT\r\n")
	c.untilTagged("c")
	c = greet(t, e.addr)
	c.send("a AUTHENTICATE LOGIN " + b64(frank) + "\r\n")
	c.expect("+ ")
	c.send(b64(frankPass) + "\r\n")
	c.untilTagged("a")
	c.send("b LOGOUT\r\n")
	c.untilTagged("b")
	e.idp.ExpireAccessTokens() // the next login refreshes: two tokens go upstream
	c = greet(t, e.addr)
	c.login("a", frank, frankPass)
	c.send("b LOGOUT\r\n")
	c.untilTagged("b")
	c.conn.Close()
	tok, err := ts.Token(context.Background())
	if err != nil {
		t.Fatalf("Token() = %v", err)
	}
	e.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	e.srv.Shutdown(ctx) // waits for the end lines

	logs := e.logs.String()
	for _, secret := range []string{frankPass, b64(frankPass), b64("\x00" + frank + "\x00" + frankPass), tok, tok[:40]} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains a secret %.20q...", secret)
		}
	}
	if !strings.Contains(logs, frank) {
		t.Errorf("log does not name the account %s", frank)
	}
}
