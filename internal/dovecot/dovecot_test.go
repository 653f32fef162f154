package dovecot_test

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"mailproxy/internal/dovecot"
	"mailproxy/internal/fake365"
)

const (
	tenant   = "contoso.test"
	clientID = "dovecot-test"
	alice    = "alice@contoso.test"
	bob      = "bob@contoso.test"
)

var scopes = []string{"https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"}

type env struct {
	ca  *fake365.CA
	idp *fake365.IdP
	dv  *dovecot.Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if err := dovecot.Available(); err != nil {
		t.Skipf("real-server test skipped: %v", err)
	}
	ca, err := fake365.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	idp, err := fake365.NewIdP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	idp.AddClient(fake365.Client{ID: clientID})
	idp.AddUser(alice)
	idp.AddUser(bob)
	return &env{ca: ca, idp: idp, dv: dovecot.New(t, ca, idp, tenant)}
}

// token returns a fresh access token for user, the way mailproxy gets one.
func (e *env) token(t *testing.T, user string) string {
	t.Helper()
	rt := e.idp.GrantRefreshToken(clientID, user, scopes)
	_, tokenURL, _ := e.idp.Endpoints(tenant)
	resp, err := http2Form(tokenURL, map[string]string{
		"grant_type": "refresh_token", "client_id": clientID, "refresh_token": rt, "scope": strings.Join(scopes, " "),
	})
	if err != nil {
		t.Fatalf("refresh at the fake IdP: %v", err)
	}
	return resp
}

func (e *env) tlsConfig() *tls.Config {
	c := e.ca.ClientTLS()
	c.ServerName = "127.0.0.1"
	return c
}

type xoauth2 struct{ user, token string }

func (x xoauth2) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}
func (x xoauth2) Next([]byte) ([]byte, error) { return []byte{}, nil }

var _ sasl.Client = xoauth2{}

func TestIMAPWithFakeIdPTokens(t *testing.T) {
	e := newEnv(t)
	msg := "From: bob@contoso.test\r\nTo: alice@contoso.test\r\nSubject: real server\r\n\r\nHello from Maildir.\r\n"
	if err := e.dv.Deliver(alice, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	c, err := imapclient.DialTLS(e.dv.IMAPS, &imapclient.Options{TLSConfig: e.tlsConfig()})
	if err != nil {
		t.Fatalf("DialTLS(%s) = %v", e.dv.IMAPS, err)
	}
	defer c.Close()
	if err := c.Authenticate(xoauth2{alice, e.token(t, alice)}); err != nil {
		t.Fatalf("Authenticate(XOAUTH2 %s) = %v", alice, err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("Select(INBOX) = %v", err)
	}
	body := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("Fetch(1) = %d messages, %v; want 1", len(msgs), err)
	}
	if got := string(msgs[0].FindBodySection(body)); got != msg {
		t.Errorf("Fetch(1 BODY[]) = %q, want %q", got, msg)
	}
	c.Logout().Wait()
}

func TestIMAPRefusesBadTokens(t *testing.T) {
	e := newEnv(t)
	for name, x := range map[string]xoauth2{
		"unknown token":        {alice, "not-a-token"},
		"another user's token": {alice, e.token(t, bob)},
	} {
		c, err := imapclient.DialTLS(e.dv.IMAPS, &imapclient.Options{TLSConfig: e.tlsConfig()})
		if err != nil {
			t.Fatalf("DialTLS(%s) = %v", e.dv.IMAPS, err)
		}
		if err := c.Authenticate(x); err == nil {
			t.Errorf("Authenticate(XOAUTH2, %s) = nil, want a refusal", name)
		}
		c.Close()
	}
}

func TestPOP3WithFakeIdPTokens(t *testing.T) {
	e := newEnv(t)
	msg := "Subject: pop\r\n\r\nline one\r\n.leading dot\r\n"
	if err := e.dv.Deliver(alice, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", e.dv.POP3S, e.tlsConfig())
	if err != nil {
		t.Fatalf("tls.Dial(%s) = %v", e.dv.POP3S, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(conn)
	line := func() string {
		t.Helper()
		s, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		return strings.TrimRight(s, "\r\n")
	}
	if g := line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting = %q, want +OK", g)
	}
	ir := base64.StdEncoding.EncodeToString([]byte("user=" + alice + "\x01auth=Bearer " + e.token(t, alice) + "\x01\x01"))
	fmt.Fprintf(conn, "AUTH XOAUTH2 %s\r\n", ir)
	if g := line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("AUTH XOAUTH2 = %q, want +OK", g)
	}
	io.WriteString(conn, "RETR 1\r\n")
	if g := line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("RETR 1 = %q, want +OK", g)
	}
	var got strings.Builder
	for {
		l := line()
		if l == "." {
			break
		}
		got.WriteString(strings.TrimPrefix(l, ".") + "\r\n")
	}
	if got.String() != msg {
		t.Errorf("RETR 1 = %q, want %q", got.String(), msg)
	}
	io.WriteString(conn, "QUIT\r\n")
}

// Dovecot must not outlive its Server: Close stops every process.
func TestCloseStopsDovecot(t *testing.T) {
	e := newEnv(t)
	addr := e.dv.IMAPS
	e.dv.Close()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("dial %s after Close = nil error, want refused", addr)
	}
}
