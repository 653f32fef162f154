package fake365

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// upValidator is a TokenValidator backed by a map, so tests choose
// subjects and expiries without an IdP.
type upValidator struct {
	mu     sync.Mutex // protects tokens
	tokens map[string]upToken
}

type upToken struct {
	subject string
	expiry  time.Time
}

func newUpValidator() *upValidator {
	return &upValidator{tokens: make(map[string]upToken)}
}

// issue returns a new token for subject valid for life.
func (v *upValidator) issue(subject string, life time.Duration) string {
	b := make([]byte, 16)
	rand.Read(b)
	tok := "tok-" + base64.RawURLEncoding.EncodeToString(b)
	v.mu.Lock()
	defer v.mu.Unlock()
	v.tokens[tok] = upToken{subject: subject, expiry: time.Now().Add(life)}
	return tok
}

func (v *upValidator) Validate(token string) (string, time.Time, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	t, ok := v.tokens[token]
	if !ok || !time.Now().Before(t.expiry) {
		return "", time.Time{}, false
	}
	return t.subject, t.expiry, true
}

// upTLS returns a server config with a fresh certificate for 127.0.0.1 and
// a client config that trusts only its CA.
func upTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	ca, err := NewCA()
	if err != nil {
		t.Fatalf("NewCA() error = %v", err)
	}
	server, err = ca.ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS() error = %v", err)
	}
	return server, ca.ClientTLS()
}

// upXOAuth2 is a SASL XOAUTH2 client; it answers an error challenge with an
// empty response, as clients must.
type upXOAuth2 struct{ user, token string }

func (c upXOAuth2) Start() (string, []byte, error) {
	return "XOAUTH2", upXOAuth2Resp(c.user, c.token), nil
}

func (c upXOAuth2) Next(challenge []byte) ([]byte, error) { return []byte{}, nil }

func upXOAuth2Resp(user, token string) []byte {
	return []byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
}

func upXOAuth2B64(user, token string) string {
	return base64.StdEncoding.EncodeToString(upXOAuth2Resp(user, token))
}

// upRaw is a line-oriented raw client for checking exact protocol bytes.
type upRaw struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialUpRaw(t *testing.T, addr string, clientTLS *tls.Config) *upRaw {
	t.Helper()
	var conn net.Conn
	var err error
	if clientTLS != nil {
		conn, err = tls.Dial("tcp", addr, clientTLS)
	} else {
		conn, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	// A safety net so a broken server fails the test instead of hanging it.
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	return &upRaw{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (c *upRaw) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatalf("write %.40q: %v", line, err)
	}
}

func (c *upRaw) readLine() string {
	c.t.Helper()
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read line: got %q, error %v", line, err)
	}
	return strings.TrimSuffix(line, "\r\n")
}

func (c *upRaw) expect(want string) {
	c.t.Helper()
	if got := c.readLine(); got != want {
		c.t.Fatalf("read line = %q, want %q", got, want)
	}
}

func (c *upRaw) expectPrefix(prefix string) string {
	c.t.Helper()
	got := c.readLine()
	if !strings.HasPrefix(got, prefix) {
		c.t.Fatalf("read line = %q, want prefix %q", got, prefix)
	}
	return got
}

// expectEOF reads until the server closes the connection.
func (c *upRaw) expectEOF() {
	c.t.Helper()
	rest, err := io.ReadAll(c.r)
	if err != nil || len(rest) != 0 {
		c.t.Fatalf("read to EOF = %q, %v; want \"\", nil", rest, err)
	}
}

type imapEnv struct {
	up        *IMAPUpstream
	v         *upValidator
	clientTLS *tls.Config
}

func newIMAPEnv(t *testing.T) *imapEnv {
	t.Helper()
	serverTLS, clientTLS := upTLS(t)
	v := newUpValidator()
	up, err := NewIMAPUpstream(v, serverTLS)
	if err != nil {
		t.Fatalf("NewIMAPUpstream() error = %v", err)
	}
	t.Cleanup(func() { up.Close() })
	return &imapEnv{up: up, v: v, clientTLS: clientTLS}
}

func (e *imapEnv) dial(t *testing.T, options *imapclient.Options) *imapclient.Client {
	t.Helper()
	if options == nil {
		options = &imapclient.Options{}
	}
	options.TLSConfig = e.clientTLS
	c, err := imapclient.DialTLS(e.up.Addr, options)
	if err != nil {
		t.Fatalf("imapclient.DialTLS(%s) error = %v", e.up.Addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (e *imapEnv) login(t *testing.T, user, subject string, options *imapclient.Options) *imapclient.Client {
	t.Helper()
	c := e.dial(t, options)
	if err := c.Authenticate(upXOAuth2{user, e.v.issue(subject, time.Hour)}); err != nil {
		t.Fatalf("Authenticate(XOAUTH2 user=%s subject=%s) error = %v", user, subject, err)
	}
	return c
}

// rawAuth opens a raw session and returns the tagged reply to
// AUTHENTICATE XOAUTH2 with an initial response.
func (e *imapEnv) rawAuth(t *testing.T, user, token string) (*upRaw, string) {
	t.Helper()
	c := dialUpRaw(t, e.up.Addr, e.clientTLS)
	c.expectPrefix("* OK ")
	c.send("A1 AUTHENTICATE XOAUTH2 " + upXOAuth2B64(user, token))
	return c, c.readLine()
}

const upTestMessage = "From: bob@contoso.com\r\n" +
	"To: alice@contoso.com\r\n" +
	"Subject: hello\r\n" +
	"Message-Id: <1@contoso.com>\r\n" +
	"\r\n" +
	"Hi Alice.\r\n"

func TestIMAPUpstreamFetchAppended(t *testing.T) {
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@contoso.com")
	if err := e.up.Append("alice@contoso.com", "INBOX", []byte(upTestMessage)); err != nil {
		t.Fatalf("Append() error = %v", err)
	}

	c := e.dial(t, nil)
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatalf("Capability() error = %v", err)
	}
	for _, want := range []imap.Cap{"AUTH=XOAUTH2", imap.CapSASLIR} {
		if !caps.Has(want) {
			t.Errorf("capabilities = %v, want %s", caps, want)
		}
	}
	if caps.Has("AUTH=PLAIN") {
		t.Errorf("capabilities = %v, want no AUTH=PLAIN", caps)
	}
	if err := c.Authenticate(upXOAuth2{"alice@contoso.com", e.v.issue("alice@contoso.com", time.Hour)}); err != nil {
		t.Fatalf("Authenticate() error = %v", err)
	}

	list, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatalf("List() error = %v", err)
	}
	if len(list) != 1+len(StandardFolders) || list[0].Mailbox != "INBOX" {
		t.Errorf("List() = %+v, want INBOX first and the %d standard folders", list, len(StandardFolders))
	}
	for _, l := range list[1:] {
		if use := specialUse(l.Mailbox); use == "" || !slices.Contains(l.Attrs, use) {
			t.Errorf("List() entry %+v: want a special-use attribute", l)
		}
	}
	special, err := c.List("", "*", &imap.ListOptions{SelectSpecialUse: true}).Collect()
	if err != nil || len(special) != len(StandardFolders) {
		t.Errorf("List(SPECIAL-USE) = %+v, %v; want the %d standard folders", special, err, len(StandardFolders))
	}
	// Folders a client creates, renames and deletes are listed as they are.
	if err := c.Create("Projects", nil).Wait(); err != nil {
		t.Fatalf("Create(Projects) = %v", err)
	}
	if err := c.Rename("Projects", "Projects 2026", nil).Wait(); err != nil {
		t.Fatalf("Rename(Projects) = %v", err)
	}
	if l, err := c.List("", "Proj*", nil).Collect(); err != nil || len(l) != 1 || l[0].Mailbox != "Projects 2026" || len(l[0].Attrs) != 0 {
		t.Errorf("List(Proj*) after CREATE and RENAME = %+v, %v; want only Projects 2026 without attributes", l, err)
	}
	if err := c.Delete("Projects 2026").Wait(); err != nil {
		t.Fatalf("Delete(Projects 2026) = %v", err)
	}
	if l, err := c.List("", "Proj*", nil).Collect(); err != nil || len(l) != 0 {
		t.Errorf("List(Proj*) after DELETE = %+v, %v; want nothing", l, err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("Select(INBOX) error = %v", err)
	}
	if sel.NumMessages != 1 {
		t.Errorf("Select(INBOX).NumMessages = %d, want 1", sel.NumMessages)
	}
	body := &imap.FetchItemBodySection{}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil {
		t.Fatalf("Fetch(1 BODY[]) error = %v", err)
	}
	if len(msgs) != 1 {
		t.Fatalf("Fetch(1 BODY[]) returned %d messages, want 1", len(msgs))
	}
	if got := string(msgs[0].FindBodySection(body)); got != upTestMessage {
		t.Errorf("Fetch(1 BODY[]) = %q, want %q", got, upTestMessage)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("Logout() error = %v", err)
	}
	if got := e.up.Logins(); got != 1 {
		t.Errorf("Logins() = %d, want 1", got)
	}
	if got := e.up.AuthFailures(); got != 0 {
		t.Errorf("AuthFailures() = %d, want 0", got)
	}
}

func TestIMAPUpstreamAuthenticateWithoutSASLIR(t *testing.T) {
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@contoso.com")
	c := dialUpRaw(t, e.up.Addr, e.clientTLS)
	c.expectPrefix("* OK ")
	c.send("A1 AUTHENTICATE XOAUTH2")
	c.expect("+ ")
	c.send(upXOAuth2B64("alice@contoso.com", e.v.issue("alice@contoso.com", time.Hour)))
	got := c.expectPrefix("A1 OK [CAPABILITY ")
	if !strings.HasSuffix(got, "XOAUTH2 authentication successful") {
		t.Errorf("AUTHENTICATE reply = %q, want it to end in %q", got, "XOAUTH2 authentication successful")
	}
	if got := e.up.Logins(); got != 1 {
		t.Errorf("Logins() = %d, want 1", got)
	}
}

func TestIMAPUpstreamLoginRefused(t *testing.T) {
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@contoso.com")
	c := e.dial(t, nil)
	err := c.Login("alice@contoso.com", "password").Wait()
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) || imapErr.Type != imap.StatusResponseTypeNo || imapErr.Text != "LOGIN failed." {
		t.Errorf("Login() error = %v, want NO LOGIN failed.", err)
	}
	if got := e.up.AuthFailures(); got != 1 {
		t.Errorf("AuthFailures() = %d, want 1", got)
	}

	// Other mechanisms are not offered and refused.
	r := dialUpRaw(t, e.up.Addr, e.clientTLS)
	r.expectPrefix("* OK ")
	r.send("A1 AUTHENTICATE PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice@contoso.com\x00password")))
	r.expectPrefix("A1 NO ")
}

func TestIMAPUpstreamBadTokenExchangeStyle(t *testing.T) {
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@contoso.com")
	expired := e.v.issue("alice@contoso.com", -time.Second)
	for name, token := range map[string]string{"unknown": "not-a-token", "expired": expired} {
		t.Run(name, func(t *testing.T) {
			_, got := e.rawAuth(t, "alice@contoso.com", token)
			if want := "A1 NO AUTHENTICATE failed."; got != want {
				t.Errorf("AUTHENTICATE reply = %q, want %q", got, want)
			}
		})
	}
	// Malformed XOAUTH2 (no ^A^A terminator).
	c := dialUpRaw(t, e.up.Addr, e.clientTLS)
	c.expectPrefix("* OK ")
	c.send("A1 AUTHENTICATE XOAUTH2 " + base64.StdEncoding.EncodeToString([]byte("user=alice@contoso.com")))
	c.expect("A1 NO AUTHENTICATE failed.")

	if got := e.up.AuthFailures(); got != 3 {
		t.Errorf("AuthFailures() = %d, want 3", got)
	}
	if got := e.up.Logins(); got != 0 {
		t.Errorf("Logins() = %d, want 0", got)
	}
}

func TestIMAPUpstreamBadTokenGmailStyle(t *testing.T) {
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@gmail.com")
	e.up.SetGmailStyle(true)

	c, got := e.rawAuth(t, "alice@gmail.com", "bad-token")
	wantJSON := `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`
	if want := "+ " + base64.StdEncoding.EncodeToString([]byte(wantJSON)); got != want {
		t.Fatalf("AUTHENTICATE reply = %q, want %q", got, want)
	}
	c.send("")
	c.expect("A1 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)")

	// The connection stays usable: a good token still works.
	c.send("A2 AUTHENTICATE XOAUTH2 " + upXOAuth2B64("alice@gmail.com", e.v.issue("alice@gmail.com", time.Hour)))
	c.expectPrefix("A2 OK ")

	// And imapclient copes with the challenge (answers it with an empty line).
	ic := e.dial(t, nil)
	err := ic.Authenticate(upXOAuth2{"alice@gmail.com", "bad-token"})
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) || imapErr.Code != imap.ResponseCodeAuthenticationFailed {
		t.Errorf("Authenticate(bad token) error = %v, want NO [AUTHENTICATIONFAILED]", err)
	}
	if got := e.up.AuthFailures(); got != 2 {
		t.Errorf("AuthFailures() = %d, want 2", got)
	}
}

func TestIMAPUpstreamMailboxAccess(t *testing.T) {
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@contoso.com")
	e.up.AddMailbox("bob@contoso.com")
	e.up.AddMailbox("shared@contoso.com")
	e.up.Delegate("shared@contoso.com", "alice@contoso.com")
	if err := e.up.Append("shared@contoso.com", "INBOX", []byte(upTestMessage)); err != nil {
		t.Fatalf("Append() error = %v", err)
	}

	tests := []struct {
		name, user, subject string
		ok                  bool
	}{
		{"own mailbox", "alice@contoso.com", "alice@contoso.com", true},
		{"own mailbox other case", "Alice@Contoso.com", "alice@contoso.com", true},
		{"delegated mailbox", "shared@contoso.com", "alice@contoso.com", true},
		{"delegated mailbox other case", "SHARED@contoso.com", "ALICE@contoso.com", true},
		{"not delegated", "shared@contoso.com", "bob@contoso.com", false},
		{"someone else's mailbox", "bob@contoso.com", "alice@contoso.com", false},
		{"unknown mailbox", "carol@contoso.com", "carol@contoso.com", false},
		{"app token any mailbox", "bob@contoso.com", "app:client-1", true},
		{"app token shared mailbox", "shared@contoso.com", "app:client-1", true},
		{"app token unknown mailbox", "carol@contoso.com", "app:client-1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got := e.rawAuth(t, tt.user, e.v.issue(tt.subject, time.Hour))
			if ok := strings.HasPrefix(got, "A1 OK "); ok != tt.ok {
				t.Errorf("AUTHENTICATE user=%s with token of %s = %q, want ok %v", tt.user, tt.subject, got, tt.ok)
			}
		})
	}

	// The delegate sees the shared mailbox's messages, not its own.
	c := e.login(t, "shared@contoso.com", "alice@contoso.com", nil)
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("Select(INBOX) error = %v", err)
	}
	if sel.NumMessages != 1 {
		t.Errorf("shared INBOX NumMessages = %d, want 1", sel.NumMessages)
	}
}

func TestIMAPUpstreamByeWhenTokenExpires(t *testing.T) {
	t.Parallel()
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@contoso.com")
	token := e.v.issue("alice@contoso.com", time.Second)

	c, got := e.rawAuth(t, "alice@contoso.com", token)
	if !strings.HasPrefix(got, "A1 OK ") {
		t.Fatalf("AUTHENTICATE reply = %q, want A1 OK", got)
	}
	c.send("A2 SELECT INBOX")
	for {
		line := c.readLine()
		if strings.HasPrefix(line, "A2 ") {
			if !strings.HasPrefix(line, "A2 OK ") {
				t.Fatalf("SELECT reply = %q, want A2 OK", line)
			}
			break
		}
	}
	// Nothing more is sent; the next line must be the BYE, then EOF.
	c.expect("* BYE Session invalidated - AccessTokenExpired")
	c.expectEOF()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.up.WaitConns(ctx, 0); err != nil {
		t.Errorf("WaitConns(0) after BYE: %v", err)
	}
}

func TestIMAPUpstreamByeDuringIdle(t *testing.T) {
	t.Parallel()
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@contoso.com")
	c, got := e.rawAuth(t, "alice@contoso.com", e.v.issue("alice@contoso.com", time.Second))
	if !strings.HasPrefix(got, "A1 OK ") {
		t.Fatalf("AUTHENTICATE reply = %q, want A1 OK", got)
	}
	c.send("A2 IDLE")
	c.expect("+ idling")
	c.expect("* BYE Session invalidated - AccessTokenExpired")
	c.expectEOF()
}

func TestIMAPUpstreamIdleSeesAppend(t *testing.T) {
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@contoso.com")

	exists := make(chan uint32, 10)
	idler := e.login(t, "alice@contoso.com", "alice@contoso.com", &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(data *imapclient.UnilateralDataMailbox) {
				if data.NumMessages != nil {
					exists <- *data.NumMessages
				}
			},
		},
	})
	if _, err := idler.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("Select(INBOX) error = %v", err)
	}
	idle, err := idler.Idle()
	if err != nil {
		t.Fatalf("Idle() error = %v", err)
	}

	// Another session appends over IMAP.
	other := e.login(t, "alice@contoso.com", "alice@contoso.com", nil)
	ac := other.Append("INBOX", int64(len(upTestMessage)), nil)
	if _, err := io.WriteString(ac, upTestMessage); err != nil {
		t.Fatalf("Append write error = %v", err)
	}
	if err := ac.Close(); err != nil {
		t.Fatalf("Append close error = %v", err)
	}
	if _, err := ac.Wait(); err != nil {
		t.Fatalf("APPEND error = %v", err)
	}
	waitExists(t, exists, 1)

	// And the test harness appends directly.
	if err := e.up.Append("alice@contoso.com", "inbox", []byte(upTestMessage)); err != nil {
		t.Fatalf("Append() error = %v", err)
	}
	waitExists(t, exists, 2)

	if err := idle.Close(); err != nil {
		t.Fatalf("Idle Close() error = %v", err)
	}
	if err := idle.Wait(); err != nil {
		t.Errorf("Idle Wait() error = %v", err)
	}
}

// A change queued for a session before it starts IDLE is reported at once
// in IDLE, without waiting for a later change (imapmemserver's own Idle
// loses it: idle.go).
func TestIMAPUpstreamIdleReportsEarlierChange(t *testing.T) {
	t.Parallel()
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@contoso.com")
	c, got := e.rawAuth(t, "alice@contoso.com", e.v.issue("alice@contoso.com", time.Hour))
	if !strings.HasPrefix(got, "A1 OK ") {
		t.Fatalf("AUTHENTICATE reply = %q, want A1 OK", got)
	}
	c.send("A2 SELECT INBOX")
	for line := c.readLine(); !strings.HasPrefix(line, "A2 "); line = c.readLine() {
	}
	if err := e.up.Append("alice@contoso.com", "INBOX", []byte(upTestMessage)); err != nil {
		t.Fatalf("Append() error = %v", err)
	}
	c.send("A3 IDLE")
	c.expect("+ idling")
	c.expect("* 1 EXISTS")
	c.send("DONE")
	c.expectPrefix("A3 OK ")
}

func waitExists(t *testing.T, exists <-chan uint32, want uint32) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case n := <-exists:
			if n == want {
				return
			}
		case <-timeout:
			t.Fatalf("no * %d EXISTS during IDLE", want)
		}
	}
}

func TestIMAPUpstreamAppend(t *testing.T) {
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@contoso.com")
	e.up.AddMailbox("alice@contoso.com") // twice is harmless
	if err := e.up.Append("nobody@contoso.com", "INBOX", []byte(upTestMessage)); err == nil {
		t.Errorf("Append(unknown mailbox) error = nil, want an error")
	}
	if err := e.up.Append("alice@contoso.com", "Sent Items", []byte(upTestMessage)); err != nil {
		t.Fatalf("Append(Sent Items) error = %v", err)
	}
	c := e.login(t, "alice@contoso.com", "alice@contoso.com", nil)
	data, err := c.Status("Sent Items", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		t.Fatalf("Status(Sent Items) error = %v", err)
	}
	if data.NumMessages == nil || *data.NumMessages != 1 {
		t.Errorf("Status(Sent Items).NumMessages = %v, want 1", data.NumMessages)
	}
}

func TestIMAPUpstreamCloseClosesConns(t *testing.T) {
	e := newIMAPEnv(t)
	e.up.AddMailbox("alice@contoso.com")
	c := e.login(t, "alice@contoso.com", "alice@contoso.com", nil)
	raw := dialUpRaw(t, e.up.Addr, e.clientTLS)
	raw.expectPrefix("* OK ")
	if got := e.up.Conns(); got != 2 {
		t.Errorf("Conns() = %d, want 2", got)
	}
	if err := e.up.Close(); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	raw.expectEOF()
	select {
	case <-c.Closed():
	case <-time.After(10 * time.Second):
		t.Fatalf("imapclient still open after Close()")
	}
	if got := e.up.Conns(); got != 0 {
		t.Errorf("Conns() after Close() = %d, want 0", got)
	}
	if _, err := net.Dial("tcp", e.up.Addr); err == nil {
		t.Errorf("Dial after Close() succeeded, want refused")
	}
}

func TestIMAPUpstreamPlainText(t *testing.T) {
	v := newUpValidator()
	up, err := NewIMAPUpstream(v, nil)
	if err != nil {
		t.Fatalf("NewIMAPUpstream(nil TLS) error = %v", err)
	}
	defer up.Close()
	up.AddMailbox("alice@contoso.com")
	c := dialUpRaw(t, up.Addr, nil)
	c.expectPrefix("* OK ")
	c.send("A1 AUTHENTICATE XOAUTH2 " + upXOAuth2B64("alice@contoso.com", v.issue("alice@contoso.com", time.Hour)))
	c.expectPrefix("A1 OK ")
}

func TestParseXOAuth2(t *testing.T) {
	tests := []struct {
		in          string
		user, token string
		ok          bool
	}{
		{"user=a@b.c\x01auth=Bearer tok\x01\x01", "a@b.c", "tok", true},
		{"user=a@b.c\x01auth=bearer tok\x01\x01", "a@b.c", "tok", true},
		{"auth=Bearer tok\x01user=a@b.c\x01\x01", "a@b.c", "tok", true},
		{"user=a@b.c\x01auth=Bearer tok\x01", "", "", false},
		{"user=a@b.c\x01auth=Basic tok\x01\x01", "", "", false},
		{"user=\x01auth=Bearer tok\x01\x01", "", "", false},
		{"user=a@b.c\x01\x01", "", "", false},
		{"", "", "", false},
	}
	for _, tt := range tests {
		user, token, err := parseXOAuth2([]byte(tt.in))
		if user != tt.user || token != tt.token || (err == nil) != tt.ok {
			t.Errorf("parseXOAuth2(%q) = %q, %q, %v; want %q, %q, ok %v", tt.in, user, token, err, tt.user, tt.token, tt.ok)
		}
	}
}
