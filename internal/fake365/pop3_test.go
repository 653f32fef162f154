package fake365

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
)

// popClient is a minimal POP3 client for these tests.
type popClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialPOP(t *testing.T, addr string, cfg *tls.Config) *popClient {
	t.Helper()
	nc, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("tls.Dial(%s) = %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	c := &popClient{t: t, conn: nc, r: bufio.NewReader(nc)}
	if g := c.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting = %q, want +OK", g)
	}
	return c
}

func (c *popClient) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

// cmd sends line and returns the first line of the answer.
func (c *popClient) cmd(line string) string {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(line + "\r\n")); err != nil {
		c.t.Fatalf("write %q: %v", line, err)
	}
	return c.line()
}

// multi reads a dot-terminated block and undoes the dot-stuffing; the
// result keeps CRLF line endings.
func (c *popClient) multi() []byte {
	c.t.Helper()
	var b bytes.Buffer
	for {
		l, err := c.r.ReadBytes('\n')
		if err != nil {
			c.t.Fatalf("read multi-line: %v", err)
		}
		if string(l) == ".\r\n" {
			return b.Bytes()
		}
		if l[0] == '.' {
			l = l[1:]
		}
		b.Write(l)
	}
}

func (c *popClient) ok(line string) string {
	c.t.Helper()
	got := c.cmd(line)
	if !strings.HasPrefix(got, "+OK") {
		c.t.Fatalf("%s = %q, want +OK", redactAuth(line), got)
	}
	return got
}

func redactAuth(line string) string {
	if strings.HasPrefix(strings.ToUpper(line), "AUTH ") {
		return "AUTH ..."
	}
	return line
}

type popEnv struct {
	v         *upValidator
	imap      *IMAPUpstream
	pop       *POP3Upstream
	clientTLS *tls.Config
}

func newPOPEnv(t *testing.T, v TokenValidator) *popEnv {
	t.Helper()
	srvTLS, cliTLS := upTLS(t)
	im, err := NewIMAPUpstream(v, srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	pop, err := NewPOP3Upstream(v, im, srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pop.Close() })
	e := &popEnv{imap: im, pop: pop, clientTLS: cliTLS}
	if uv, ok := v.(*upValidator); ok {
		e.v = uv
	}
	return e
}

func xoauth2B64(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

func TestPOP3FetchDeleteUpdate(t *testing.T) {
	v := newUpValidator()
	e := newPOPEnv(t, v)
	e.imap.AddMailbox("alice@contoso.com")
	msgs := []string{
		"Subject: one\r\n\r\nhello\r\n",
		"Subject: two\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n",
		"Subject: three\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\n",
	}
	for _, m := range msgs {
		if err := e.imap.Append("alice@contoso.com", "INBOX", []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	tok := v.issue("alice@contoso.com", time.Hour)

	c := dialPOP(t, e.pop.Addr, e.clientTLS)
	c.ok("CAPA")
	if caps := string(c.multi()); !strings.Contains(caps, "SASL XOAUTH2") || !strings.Contains(caps, "UIDL") {
		t.Fatalf("CAPA = %q, want SASL XOAUTH2 and UIDL", caps)
	}
	if got := c.cmd("STAT"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("STAT before AUTH = %q, want -ERR", got)
	}
	// Two-step form.
	if got := c.cmd("AUTH XOAUTH2"); got != "+ " {
		t.Fatalf("AUTH XOAUTH2 = %q, want \"+ \"", got)
	}
	c.ok(xoauth2B64("alice@contoso.com", tok))
	want := int64(0)
	for _, m := range msgs {
		want += int64(len(m))
	}
	if got := c.ok("STAT"); got != fmt.Sprintf("+OK 3 %d", want) {
		t.Fatalf("STAT = %q, want +OK 3 %d", got, want)
	}
	for i, m := range msgs {
		c.ok(fmt.Sprintf("RETR %d", i+1))
		if got := string(c.multi()); got != m {
			t.Errorf("RETR %d = %q, want %q", i+1, got, m)
		}
	}
	c.ok("TOP 3 1")
	if got, want := string(c.multi()), "Subject: three\r\nX: y\r\n\r\nl1\r\n"; got != want {
		t.Errorf("TOP 3 1 = %q, want %q", got, want)
	}
	c.ok("UIDL")
	uidl1 := string(c.multi())
	c.ok("DELE 2")
	if got := c.cmd("RETR 2"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("RETR of a deleted message = %q, want -ERR", got)
	}
	c.ok("RSET")
	c.ok("DELE 1")
	c.ok("QUIT")

	// A second session sees the UPDATE; UIDs of the rest are stable.
	c = dialPOP(t, e.pop.Addr, e.clientTLS)
	c.ok("AUTH XOAUTH2 " + xoauth2B64("alice@contoso.com", tok))
	if got := c.ok("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
		t.Fatalf("STAT after DELE 1 and QUIT = %q, want 2 messages", got)
	}
	c.ok("UIDL")
	uidl2 := string(c.multi())
	lines1 := strings.Split(strings.TrimSpace(uidl1), "\r\n")
	lines2 := strings.Split(strings.TrimSpace(uidl2), "\r\n")
	if len(lines2) != 2 || strings.Fields(lines1[1])[1] != strings.Fields(lines2[0])[1] || strings.Fields(lines1[2])[1] != strings.Fields(lines2[1])[1] {
		t.Errorf("UIDL after delete = %q, want the ids of messages 2 and 3 of %q", uidl2, uidl1)
	}

	// IMAP sees the same store.
	ic, err := imapclient.DialTLS(e.imap.Addr, &imapclient.Options{TLSConfig: e.clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	if err := ic.Authenticate(upXOAuth2{"alice@contoso.com", tok}); err != nil {
		t.Fatal(err)
	}
	sel, err := ic.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 2 {
		t.Errorf("IMAP SELECT INBOX after POP3 DELE = %d messages, want 2", sel.NumMessages)
	}
}

func TestPOP3AuthRefusals(t *testing.T) {
	v := newUpValidator()
	e := newPOPEnv(t, v)
	e.imap.AddMailbox("alice@contoso.com")
	e.imap.AddMailbox("shared@contoso.com")
	tok := v.issue("alice@contoso.com", time.Hour)

	c := dialPOP(t, e.pop.Addr, e.clientTLS)
	c.ok("USER alice@contoso.com")
	if got := c.cmd("PASS secret"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("PASS = %q, want -ERR (basic auth is off)", got)
	}
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2B64("alice@contoso.com", "bogus")); got != pop3AuthFailed {
		t.Errorf("AUTH with a bad token = %q, want %q", got, pop3AuthFailed)
	}
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2B64("shared@contoso.com", tok)); got != pop3AuthFailed {
		t.Errorf("AUTH as an undelegated mailbox = %q, want %q", got, pop3AuthFailed)
	}
	e.imap.Delegate("shared@contoso.com", "alice@contoso.com")
	c.ok("AUTH XOAUTH2 " + xoauth2B64("shared@contoso.com", tok))
	if e.pop.AuthFailures() != 3 || e.pop.Logins() != 1 {
		t.Errorf("AuthFailures, Logins = %d, %d, want 3, 1", e.pop.AuthFailures(), e.pop.Logins())
	}

	// Gmail style: error challenge, answered with an empty line.
	e.pop.SetGmailStyle(true)
	c = dialPOP(t, e.pop.Addr, e.clientTLS)
	got := c.cmd("AUTH XOAUTH2 " + xoauth2B64("alice@contoso.com", "bogus"))
	if !strings.HasPrefix(got, "+ ") {
		t.Fatalf("Gmail-style AUTH with a bad token = %q, want an error challenge", got)
	}
	if got := c.cmd(""); got != pop3GmailAuthFailed {
		t.Errorf("after the empty answer = %q, want %q", got, pop3GmailAuthFailed)
	}

	// RFC 5034 line limit: the initial response form is refused, the
	// two-step form works.
	e.pop.SetGmailStyle(false)
	e.pop.SetMaxInitialResponseLine(255)
	c = dialPOP(t, e.pop.Addr, e.clientTLS)
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2B64("alice@contoso.com", tok+strings.Repeat("A", 300))); got != "-ERR line too long" {
		t.Errorf("AUTH with a 400-byte line = %q, want -ERR line too long", got)
	}
	c.cmd("AUTH XOAUTH2")
	c.ok(xoauth2B64("alice@contoso.com", tok))
}

// TestPOP3Scope checks that a delegated token without the POP scope is
// refused, as Exchange Online refuses an IMAP-only sign-in, and that app
// tokens pass.
func TestPOP3Scope(t *testing.T) {
	idp, err := NewIdP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	idp.AddUser("alice@contoso.com")
	e := newPOPEnv(t, idp)
	e.imap.AddMailbox("alice@contoso.com")

	idp.mu.Lock()
	user := idp.userLocked("alice@contoso.com")
	imapOnly, _ := idp.newAccessLocked("client", user, []string{"https://outlook.office.com/IMAP.AccessAsUser.All"})
	withPOP, _ := idp.newAccessLocked("client", user, []string{"https://outlook.office.com/IMAP.AccessAsUser.All", POPScope})
	app, _ := idp.newAccessLocked("client", nil, []string{"https://outlook.office365.com/.default"})
	idp.mu.Unlock()

	c := dialPOP(t, e.pop.Addr, e.clientTLS)
	if got := c.cmd("AUTH XOAUTH2 " + xoauth2B64("alice@contoso.com", imapOnly)); got != pop3AuthFailed {
		t.Errorf("AUTH with an IMAP-only token = %q, want %q", got, pop3AuthFailed)
	}
	c.ok("AUTH XOAUTH2 " + xoauth2B64("alice@contoso.com", withPOP))
	c = dialPOP(t, e.pop.Addr, e.clientTLS)
	c.ok("AUTH XOAUTH2 " + xoauth2B64("alice@contoso.com", app))
}

func TestPOP3CloseLeavesNothing(t *testing.T) {
	v := newUpValidator()
	e := newPOPEnv(t, v)
	e.imap.AddMailbox("alice@contoso.com")
	tok := v.issue("alice@contoso.com", time.Hour)
	c := dialPOP(t, e.pop.Addr, e.clientTLS)
	c.ok("AUTH XOAUTH2 " + xoauth2B64("alice@contoso.com", tok))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.pop.WaitConns(ctx, 1); err != nil {
		t.Fatal(err)
	}
	e.pop.Close()
	if err := e.pop.WaitConns(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.r.ReadString('\n'); err == nil {
		t.Errorf("read after Close succeeded, want the connection closed")
	}
}
