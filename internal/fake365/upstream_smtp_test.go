package fake365

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

type smtpEnv struct {
	up        *SMTPUpstream
	v         *upValidator
	clientTLS *tls.Config
	implicit  bool
}

func newSMTPEnv(t *testing.T, implicitTLS bool) *smtpEnv {
	t.Helper()
	serverTLS, clientTLS := upTLS(t)
	v := newUpValidator()
	up, err := NewSMTPUpstream(v, serverTLS, implicitTLS)
	if err != nil {
		t.Fatalf("NewSMTPUpstream(implicitTLS %v) error = %v", implicitTLS, err)
	}
	t.Cleanup(func() { up.Close() })
	return &smtpEnv{up: up, v: v, clientTLS: clientTLS, implicit: implicitTLS}
}

// dial connects with TLS (STARTTLS or implicit) but does not authenticate.
func (e *smtpEnv) dial(t *testing.T) *smtp.Client {
	t.Helper()
	var c *smtp.Client
	var err error
	if e.implicit {
		c, err = smtp.DialTLS(e.up.Addr, e.clientTLS)
	} else {
		c, err = smtp.DialStartTLS(e.up.Addr, e.clientTLS)
	}
	if err != nil {
		t.Fatalf("dial SMTP %s: %v", e.up.Addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (e *smtpEnv) login(t *testing.T, user, subject string) *smtp.Client {
	t.Helper()
	c := e.dial(t)
	if err := c.Auth(upXOAuth2{user, e.v.issue(subject, time.Hour)}); err != nil {
		t.Fatalf("Auth(XOAUTH2 user=%s subject=%s) error = %v", user, subject, err)
	}
	return c
}

// rawEHLO opens a raw TLS session (implicit TLS env only), says EHLO and
// reads the whole reply.
func (e *smtpEnv) rawEHLO(t *testing.T) *upRaw {
	t.Helper()
	if !e.implicit {
		t.Fatalf("rawEHLO needs an implicit TLS server")
	}
	c := dialUpRaw(t, e.up.Addr, e.clientTLS)
	c.expectPrefix("220 ")
	c.send("EHLO client.test")
	for {
		line := c.readLine()
		if !strings.HasPrefix(line, "250-") {
			if !strings.HasPrefix(line, "250 ") {
				t.Fatalf("EHLO reply line = %q, want 250", line)
			}
			return c
		}
	}
}

func sendMessage(t *testing.T, c *smtp.Client, from string, mailOpts *smtp.MailOptions, to string, rcptOpts *smtp.RcptOptions, data string) (string, error) {
	t.Helper()
	if err := c.Mail(from, mailOpts); err != nil {
		return "", err
	}
	if err := c.Rcpt(to, rcptOpts); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(w, data); err != nil {
		t.Fatalf("DATA write error = %v", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

func checkSMTPError(t *testing.T, what string, err error, want *smtp.SMTPError) {
	t.Helper()
	var got *smtp.SMTPError
	if !errors.As(err, &got) {
		t.Fatalf("%s error = %v, want %d %v %s", what, err, want.Code, want.EnhancedCode, want.Message)
	}
	if got.Code != want.Code || got.EnhancedCode != want.EnhancedCode || got.Message != want.Message {
		t.Errorf("%s error = %d %v %q, want %d %v %q", what, got.Code, got.EnhancedCode, got.Message, want.Code, want.EnhancedCode, want.Message)
	}
}

func TestSMTPUpstreamSendRecordsMessage(t *testing.T) {
	e := newSMTPEnv(t, false)
	delivered := make(chan Message, 1)
	e.up.SetDeliver(func(m Message) { delivered <- m })

	c := e.dial(t)
	if ok, _ := c.Extension("AUTH"); !ok || !c.SupportsAuth("XOAUTH2") || c.SupportsAuth("PLAIN") {
		t.Errorf("after STARTTLS AUTH extension = %v, want only XOAUTH2", ok)
	}
	for _, ext := range []string{"SMTPUTF8", "DSN", "PIPELINING", "8BITMIME"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("Extension(%s) = false, want true", ext)
		}
	}
	if size, ok := c.MaxMessageSize(); !ok || size != 35<<20 {
		t.Errorf("MaxMessageSize() = %d, %v; want %d, true", size, ok, 35<<20)
	}
	if err := c.Auth(upXOAuth2{"alice@contoso.com", e.v.issue("alice@contoso.com", time.Hour)}); err != nil {
		t.Fatalf("Auth() error = %v", err)
	}

	// Dot-stuffed line, 8-bit text, and a body line far beyond 2000 bytes.
	data := "From: alice@contoso.com\r\n" +
		"To: bøb@fabrikam.com\r\n" +
		"Subject: grüße\r\n" +
		"\r\n" +
		".leading dot\r\n" +
		strings.Repeat("x", 5000) + "\r\n" +
		"end\r\n"
	mailOpts := &smtp.MailOptions{
		Size:       int64(len(data)),
		UTF8:       true,
		Return:     smtp.DSNReturnHeaders,
		EnvelopeID: "env-42",
	}
	rcptOpts := &smtp.RcptOptions{
		Notify:                []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822,
		OriginalRecipient:     "bob@fabrikam.com",
	}
	status, err := sendMessage(t, c, "alice@contoso.com", mailOpts, "bøb@fabrikam.com", rcptOpts, data)
	if err != nil {
		t.Fatalf("send error = %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Errorf("Quit() error = %v", err)
	}

	msgs := e.up.Messages()
	if len(msgs) != 1 {
		t.Fatalf("Messages() = %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if want := "2.0.0 OK <" + m.QueueID + "> Queued"; status != want {
		t.Errorf("DATA reply = %q, want %q", status, want)
	}
	if string(m.Data) != data {
		t.Errorf("Data = %.200q (len %d), want %.200q (len %d)", m.Data, len(m.Data), data, len(data))
	}
	if m.AuthUser != "alice@contoso.com" || m.From != "alice@contoso.com" {
		t.Errorf("AuthUser, From = %q, %q; want alice@contoso.com twice", m.AuthUser, m.From)
	}
	wantMail := smtp.MailOptions{
		Body:       smtp.Body8BitMIME, // go-smtp's client always adds it
		Size:       int64(len(data)),
		UTF8:       true,
		Return:     smtp.DSNReturnHeaders,
		EnvelopeID: "env-42",
	}
	if !reflect.DeepEqual(m.MailOpts, wantMail) {
		t.Errorf("MailOpts = %+v, want %+v", m.MailOpts, wantMail)
	}
	wantRcpts := []Rcpt{{Addr: "bøb@fabrikam.com", Opts: *rcptOpts}}
	if !reflect.DeepEqual(m.Rcpts, wantRcpts) {
		t.Errorf("Rcpts = %+v, want %+v", m.Rcpts, wantRcpts)
	}

	select {
	case d := <-delivered:
		if !reflect.DeepEqual(d, m) {
			t.Errorf("delivered message differs from Messages()[0]")
		}
	default:
		t.Errorf("deliver hook not called before the 250")
	}

	// Messages returns copies.
	msgs[0].Data[0] = 'X'
	msgs[0].Rcpts[0].Opts.Notify[0] = smtp.DSNNotifyNever
	again := e.up.Messages()[0]
	if string(again.Data) != data || again.Rcpts[0].Opts.Notify[0] != smtp.DSNNotifySuccess {
		t.Errorf("Messages() changed after modifying the copy it returned")
	}
	if got := e.up.Logins(); got != 1 {
		t.Errorf("Logins() = %d, want 1", got)
	}
	if got := e.up.Connections(); got != 1 {
		t.Errorf("Connections() = %d, want 1", got)
	}
}

func TestSMTPUpstreamImplicitTLS(t *testing.T) {
	e := newSMTPEnv(t, true)
	c := e.login(t, "alice@contoso.com", "alice@contoso.com")
	if _, ok := c.TLSConnectionState(); !ok {
		t.Errorf("TLSConnectionState() ok = false, want true")
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Errorf("Extension(STARTTLS) = true on implicit TLS, want false")
	}
	if _, err := sendMessage(t, c, "alice@contoso.com", nil, "bob@fabrikam.com", nil, upTestMessage); err != nil {
		t.Fatalf("send error = %v", err)
	}
	if msgs := e.up.Messages(); len(msgs) != 1 || string(msgs[0].Data) != upTestMessage {
		t.Errorf("Messages() = %+v, want the one message", msgs)
	}
}

func TestSMTPUpstreamAuthRequired(t *testing.T) {
	e := newSMTPEnv(t, false)

	// Before STARTTLS there is no AUTH at all.
	raw := dialUpRaw(t, e.up.Addr, nil)
	raw.expectPrefix("220 ")
	raw.send("EHLO client.test")
	var caps []string
	for {
		line := raw.readLine()
		caps = append(caps, line[4:])
		if strings.HasPrefix(line, "250 ") {
			break
		}
	}
	joined := strings.Join(caps, "|")
	if !strings.Contains(joined, "STARTTLS") || strings.Contains(joined, "AUTH") {
		t.Errorf("EHLO before STARTTLS = %q, want STARTTLS and no AUTH", joined)
	}
	raw.send("AUTH XOAUTH2 " + upXOAuth2B64("alice@contoso.com", e.v.issue("alice@contoso.com", time.Hour)))
	raw.expectPrefix("523 5.7.10 ")

	// After STARTTLS but before AUTH, MAIL is refused.
	c := e.dial(t)
	err := c.Mail("alice@contoso.com", nil)
	checkSMTPError(t, "MAIL before AUTH", err, &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"})
}

func TestSMTPUpstreamBadToken(t *testing.T) {
	e := newSMTPEnv(t, false)
	want := &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}
	tests := []struct {
		name, user, token string
	}{
		{"unknown token", "alice@contoso.com", "nope"},
		{"expired token", "alice@contoso.com", e.v.issue("alice@contoso.com", -time.Second)},
		{"other user", "bob@contoso.com", e.v.issue("alice@contoso.com", time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.dial(t)
			checkSMTPError(t, "Auth", c.Auth(upXOAuth2{tt.user, tt.token}), want)
		})
	}
	if got := e.up.AuthFailures(); got != len(tests) {
		t.Errorf("AuthFailures() = %d, want %d", got, len(tests))
	}
}

func TestSMTPUpstreamDelegation(t *testing.T) {
	e := newSMTPEnv(t, false)
	e.up.Delegate("shared@contoso.com", "alice@contoso.com")
	tests := []struct {
		name, user, subject string
		ok                  bool
	}{
		{"own", "alice@contoso.com", "alice@contoso.com", true},
		{"delegated", "shared@contoso.com", "Alice@contoso.com", true},
		{"not delegated", "shared@contoso.com", "bob@contoso.com", false},
		{"app token", "anyone@contoso.com", "app:client-1", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.dial(t)
			err := c.Auth(upXOAuth2{tt.user, e.v.issue(tt.subject, time.Hour)})
			if (err == nil) != tt.ok {
				t.Errorf("Auth(user=%s, token of %s) error = %v, want ok %v", tt.user, tt.subject, err, tt.ok)
			}
		})
	}
}

func TestSMTPUpstreamFailAt(t *testing.T) {
	stages := []struct {
		stage string
		err   *smtp.SMTPError
	}{
		{"AUTH", &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."}},
		{"MAIL", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: "SMTP; Client does not have permissions to send as this sender"}},
		{"RCPT", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10}, Message: "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}},
		{"DATA", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 500}, Message: "Server busy. Please try again later."}},
	}
	for _, s := range stages {
		t.Run(s.stage, func(t *testing.T) {
			e := newSMTPEnv(t, false)
			e.up.FailAt(s.stage, s.err)
			c := e.dial(t)
			err := c.Auth(upXOAuth2{"alice@contoso.com", e.v.issue("alice@contoso.com", time.Hour)})
			if s.stage == "AUTH" {
				checkSMTPError(t, "Auth", err, s.err)
				return
			}
			if err != nil {
				t.Fatalf("Auth() error = %v", err)
			}
			_, err = sendMessage(t, c, "alice@contoso.com", nil, "bob@fabrikam.com", nil, upTestMessage)
			checkSMTPError(t, s.stage, err, s.err)
			if msgs := e.up.Messages(); len(msgs) != 0 {
				t.Errorf("Messages() = %d messages after a failed %s, want 0", len(msgs), s.stage)
			}

			// Cleared, the same connection goes through.
			e.up.FailAt(s.stage, nil)
			if err := c.Reset(); err != nil {
				t.Fatalf("Reset() error = %v", err)
			}
			if _, err := sendMessage(t, c, "alice@contoso.com", nil, "bob@fabrikam.com", nil, upTestMessage); err != nil {
				t.Fatalf("send after FailAt(%s, nil) error = %v", s.stage, err)
			}
			if msgs := e.up.Messages(); len(msgs) != 1 {
				t.Errorf("Messages() = %d messages, want 1", len(msgs))
			}
		})
	}
}

func TestSMTPUpstreamMaxAuthLine(t *testing.T) {
	e := newSMTPEnv(t, true)
	e.up.SetMaxAuthLine(1000)
	// Entra access tokens are about 1500 bytes.
	token := e.v.issue("alice@contoso.com", time.Hour) + strings.Repeat("A", 1500)
	e.v.mu.Lock()
	e.v.tokens[token] = upToken{subject: "alice@contoso.com", expiry: time.Now().Add(time.Hour)}
	e.v.mu.Unlock()

	c := e.rawEHLO(t)
	c.send("AUTH XOAUTH2 " + upXOAuth2B64("alice@contoso.com", token))
	c.expect("500 5.5.2 Line too long")
	c.send("AUTH XOAUTH2")
	c.expect("334 ")
	c.send(upXOAuth2B64("alice@contoso.com", token))
	c.expect("235 2.0.0 Authentication succeeded")

	// A short initial response is still fine.
	short := e.rawEHLO(t)
	short.send("AUTH XOAUTH2 " + upXOAuth2B64("alice@contoso.com", e.v.issue("alice@contoso.com", time.Hour)))
	short.expect("235 2.0.0 Authentication succeeded")

	if got := e.up.Logins(); got != 2 {
		t.Errorf("Logins() = %d, want 2", got)
	}
	if got := e.up.AuthFailures(); got != 0 {
		t.Errorf("AuthFailures() = %d, want 0 (a too long line is not a bad token)", got)
	}
}

func TestSMTPUpstreamCutOffDataNotRecorded(t *testing.T) {
	e := newSMTPEnv(t, true)
	c := e.rawEHLO(t)
	c.send("AUTH XOAUTH2 " + upXOAuth2B64("alice@contoso.com", e.v.issue("alice@contoso.com", time.Hour)))
	c.expectPrefix("235 ")
	c.send("MAIL FROM:<alice@contoso.com>")
	c.expectPrefix("250 ")
	c.send("RCPT TO:<bob@fabrikam.com>")
	c.expectPrefix("250 ")
	c.send("DATA")
	c.expectPrefix("354 ")
	c.send("Subject: half a message\r\n\r\nthe rest never comes")
	c.conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.up.WaitConns(ctx, 0); err != nil {
		t.Fatalf("WaitConns(0) error = %v", err)
	}
	if msgs := e.up.Messages(); len(msgs) != 0 {
		t.Errorf("Messages() = %+v after a cut-off DATA, want none", msgs)
	}
}

func TestSMTPUpstreamMaxMessageBytes(t *testing.T) {
	e := newSMTPEnv(t, false)
	e.up.SetMaxMessageBytes(100)
	c := e.login(t, "alice@contoso.com", "alice@contoso.com")
	err := c.Mail("alice@contoso.com", &smtp.MailOptions{Size: 200})
	checkSMTPError(t, "MAIL SIZE=200", err, &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Max message size exceeded"})

	_, err = sendMessage(t, c, "alice@contoso.com", nil, "bob@fabrikam.com", nil, strings.Repeat("y", 200)+"\r\n")
	checkSMTPError(t, "DATA of 202 bytes", err, smtp.ErrDataTooLarge)
	if msgs := e.up.Messages(); len(msgs) != 0 {
		t.Errorf("Messages() = %d messages, want 0", len(msgs))
	}
}

func TestSMTPUpstreamCloseClosesConns(t *testing.T) {
	e := newSMTPEnv(t, true)
	c := e.rawEHLO(t)
	if got := e.up.Conns(); got != 1 {
		t.Errorf("Conns() = %d, want 1", got)
	}
	if err := e.up.Close(); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	c.expectEOF()
	if got := e.up.Conns(); got != 0 {
		t.Errorf("Conns() after Close() = %d, want 0", got)
	}
	if got := e.up.Connections(); got != 1 {
		t.Errorf("Connections() = %d, want 1", got)
	}
}

func TestNewSMTPUpstreamImplicitNeedsTLS(t *testing.T) {
	up, err := NewSMTPUpstream(newUpValidator(), nil, true)
	if err == nil {
		up.Close()
		t.Fatalf("NewSMTPUpstream(nil TLS, implicit) error = nil, want an error")
	}
}

// SetRecordSize on an implicit TLS server splits its replies into records
// of that size, and the session works as before: AUTH is offered and no
// STARTTLS inside TLS. (go-smtp writes a reply line at a time, so only a
// size below a line's length splits anything.)
func TestSMTPUpstreamRecordSize(t *testing.T) {
	e := newSMTPEnv(t, true)
	const size = 16 // shorter than most reply lines
	e.up.SetRecordSize(size)
	raw, err := net.Dial("tcp", e.up.Addr)
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(20 * time.Second))
	spy := &recordSpy{Conn: raw}
	cfg := e.clientTLS.Clone()
	cfg.ServerName = "127.0.0.1"
	// TLS 1.2: handshake records are not application data records.
	cfg.MaxVersion = tls.VersionTLS12
	tconn := tls.Client(spy, cfg)
	c := smtp.NewClient(tconn)
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("Hello() error = %v", err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Errorf("Extension(STARTTLS) = true on implicit TLS, want false")
	}
	if err := c.Auth(upXOAuth2{"alice@contoso.com", e.v.issue("alice@contoso.com", time.Hour)}); err != nil {
		t.Fatalf("Auth(XOAUTH2) error = %v", err)
	}
	if _, err := sendMessage(t, c, "alice@contoso.com", nil, "bob@fabrikam.com", nil, upTestMessage); err != nil {
		t.Fatalf("send error = %v", err)
	}
	sizes := spy.plaintexts(tconn.ConnectionState().Version)
	largest, full := 0, 0
	for _, n := range sizes {
		largest = max(largest, n)
		if n == size {
			full++
		}
	}
	if largest != size || full < 2 {
		t.Errorf("SetRecordSize(%d): record sizes %v; want none larger and reply lines in full ones", size, sizes)
	}
	if msgs := e.up.Messages(); len(msgs) != 1 || string(msgs[0].Data) != upTestMessage {
		t.Errorf("Messages() = %d messages, want the one sent", len(msgs))
	}
}
