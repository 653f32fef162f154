package smtp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// checkDelivered checks the one message at the upstream.
func checkDelivered(t *testing.T, e *env, from string, to []string, data []byte) {
	t.Helper()
	m := e.messages(1)[0]
	if m.AuthUser != testUser {
		t.Errorf("upstream AuthUser = %q, want %q", m.AuthUser, testUser)
	}
	if m.From != from {
		t.Errorf("upstream From = %q, want %q", m.From, from)
	}
	var got []string
	for _, r := range m.Rcpts {
		got = append(got, r.Addr)
	}
	if strings.Join(got, ",") != strings.Join(to, ",") {
		t.Errorf("upstream Rcpts = %v, want %v", got, to)
	}
	if !bytes.Equal(m.Data, data) {
		t.Errorf("upstream Data = %q, want %q", m.Data, data)
	}
}

func TestDelivery(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		o    envOpts
		dial func(e *env) (*smtp.Client, error)
	}{
		{"plain", envOpts{}, func(e *env) (*smtp.Client, error) { return smtp.Dial(e.addr) }},
		{"starttls", envOpts{frontTLS: true}, func(e *env) (*smtp.Client, error) {
			return smtp.DialStartTLS(e.addr, e.ca.ClientTLS())
		}},
		{"implicit-tls", envOpts{frontImplicitTLS: true}, func(e *env) (*smtp.Client, error) {
			return smtp.DialTLS(e.addr, e.ca.ClientTLS())
		}},
		{"upstream-implicit-tls", envOpts{upstreamImplicitTLS: true}, func(e *env) (*smtp.Client, error) {
			return smtp.Dial(e.addr)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, tc.o)
			c, err := tc.dial(e)
			if err != nil {
				t.Fatalf("dial proxy = %v", err)
			}
			defer c.Close()
			if tc.o.frontTLS {
				if ok, _ := c.Extension("STARTTLS"); ok {
					t.Errorf("STARTTLS advertised after STARTTLS")
				}
			}
			if ok, _ := c.Extension("STARTTLS"); ok && tc.o.frontImplicitTLS {
				t.Errorf("STARTTLS advertised on an implicit TLS listener")
			}
			if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
				t.Fatalf("Auth(PLAIN) = %v", err)
			}
			msg := testMessage(tc.name)
			resp, err := send(t, c, "alice@contoso.com", []string{"bob@example.com", "carol@example.org"}, msg)
			if err != nil {
				t.Fatalf("send() = %v", err)
			}
			if err := c.Quit(); err != nil {
				t.Errorf("Quit() = %v", err)
			}
			checkDelivered(t, e, "alice@contoso.com", []string{"bob@example.com", "carol@example.org"}, msg)
			// The upstream's reply text (its queue id), not go-smtp's default.
			if want := "2.0.0 OK <" + e.up.Messages()[0].QueueID + "> Queued"; resp != want {
				t.Errorf("reply to DATA = %q, want %q", resp, want)
			}
			e.waitEnd()
			logs := e.logs.String()
			for _, want := range []string{"smtp connection start", "smtp connection end", "messages=1", "account=" + testUser, "outcome=ok"} {
				if !strings.Contains(logs, want) {
					t.Errorf("log lacks %q:\n%s", want, logs)
				}
			}
		})
	}
}

func TestSharedMailbox(t *testing.T) {
	t.Parallel()
	const shared = "sales@contoso.com"
	e := newEnv(t, envOpts{mailbox: shared})
	c := e.login()
	msg := testMessage("shared")
	if _, err := send(t, c, shared, []string{"bob@example.com"}, msg); err != nil {
		t.Fatalf("send(from %s) = %v", shared, err)
	}
	// XOAUTH2 as the signed-in delegate, MAIL FROM the shared address.
	checkDelivered(t, e, shared, []string{"bob@example.com"}, msg)
}

func TestBDAT(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	r := e.raw()
	r.mustCmd("EHLO client", "250 ")
	r.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "235 ")
	r.mustCmd("MAIL FROM:<alice@contoso.com>", "250 ")
	r.mustCmd("RCPT TO:<bob@example.com>", "250 ")
	part1, part2 := "Subject: chunks\r\n\r\n.dot\r\n", "last part\r\n"
	// cmd adds the CRLF that ends each chunk.
	r.mustCmd(fmt.Sprintf("BDAT %d\r\n%s", len(part1), strings.TrimSuffix(part1, "\r\n")), "250 ")
	reply := r.mustCmd(fmt.Sprintf("BDAT %d LAST\r\n%s", len(part2), strings.TrimSuffix(part2, "\r\n")), "250 2.0.0 OK <")
	m := e.messages(1)[0]
	if want := "250 2.0.0 OK <" + m.QueueID + "> Queued"; reply != want {
		t.Errorf("reply to BDAT LAST = %q, want %q", reply, want)
	}
	if got, want := string(m.Data), part1+part2; got != want {
		t.Errorf("upstream Data = %q, want %q", got, want)
	}
}

func TestEHLOAdvertises(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{maxMessageBytes: 20 << 20})
	c := e.dial()
	for _, ext := range []string{"SIZE", "8BITMIME", "PIPELINING", "SMTPUTF8", "DSN", "AUTH"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("Extension(%s) = false, want true", ext)
		}
	}
	if _, p := c.Extension("SIZE"); p != "20971520" {
		t.Errorf("Extension(SIZE) = %q, want 20971520", p)
	}
	if _, p := c.Extension("AUTH"); p != "PLAIN LOGIN" {
		t.Errorf("Extension(AUTH) = %q, want \"PLAIN LOGIN\"", p)
	}
	if ok, _ := c.Extension("BINARYMIME"); ok {
		t.Errorf("Extension(BINARYMIME) = true, want false")
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Errorf("Extension(STARTTLS) = true without TLSConfig")
	}
}

func TestAuthLogin(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})

	t.Run("go-smtp", func(t *testing.T) {
		c := e.dial()
		// go-sasl's LOGIN client sends the username as initial response.
		if err := c.Auth(sasl.NewLoginClient(testUser, testPassword)); err != nil {
			t.Fatalf("Auth(LOGIN) = %v", err)
		}
		if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, testMessage("login")); err != nil {
			t.Fatalf("send() = %v", err)
		}
	})
	t.Run("prompted", func(t *testing.T) {
		r := e.raw()
		r.mustCmd("EHLO client", "250 ")
		r.mustCmd("AUTH LOGIN", "334 "+b64("Username:"))
		r.mustCmd(b64(testUser), "334 "+b64("Password:"))
		r.mustCmd(b64(testPassword), "235 ")
		r.mustCmd("MAIL FROM:<alice@contoso.com>", "250 ")
	})
	t.Run("initial-response", func(t *testing.T) {
		r := e.raw()
		r.mustCmd("EHLO client", "250 ")
		r.mustCmd("AUTH LOGIN "+b64(testUser), "334 "+b64("Password:"))
		r.mustCmd(b64(testPassword), "235 ")
		r.mustCmd("MAIL FROM:<alice@contoso.com>", "250 ")
	})
	t.Run("plain-prompted", func(t *testing.T) {
		r := e.raw()
		r.mustCmd("EHLO client", "250 ")
		r.mustCmd("AUTH PLAIN", "334 ")
		r.mustCmd(b64("\x00"+testUser+"\x00"+testPassword), "235 ")
	})
	t.Run("wrong-password", func(t *testing.T) {
		r := e.raw()
		r.mustCmd("EHLO client", "250 ")
		r.mustCmd("AUTH LOGIN "+b64(testUser), "334 ")
		r.mustCmd(b64("wrong"), "535 5.7.8 Authentication credentials invalid")
	})
	t.Run("cancel", func(t *testing.T) {
		r := e.raw()
		r.mustCmd("EHLO client", "250 ")
		r.mustCmd("AUTH LOGIN", "334 ")
		r.mustCmd("*", "501 ")
		r.mustCmd("MAIL FROM:<alice@contoso.com>", "530 5.7.0 ")
	})
}

func TestMailBeforeAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	c := e.dial()
	wantSMTPError(t, "Mail() before AUTH", c.Mail("alice@contoso.com", nil), 530, smtp.EnhancedCode{5, 7, 0}, "Authentication required")
	if n := e.up.Connections(); n != 0 {
		t.Errorf("upstream Connections() = %d, want 0", n)
	}
}

func TestBadCredentials(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	for _, tc := range []struct{ user, pass string }{
		{testUser, "wrong password"},
		{"mallory@contoso.com", testPassword},
		{"", ""},
	} {
		c := e.dial()
		err := c.Auth(sasl.NewPlainClient("", tc.user, tc.pass))
		wantSMTPError(t, fmt.Sprintf("Auth(PLAIN %q)", tc.user), err, 535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
		wantSMTPError(t, "Mail() after failed AUTH", c.Mail("alice@contoso.com", nil), 530, smtp.EnhancedCode{5, 7, 0}, "")
	}
	c := e.dial()
	err := c.Auth(sasl.NewPlainClient("bob@contoso.com", testUser, testPassword))
	wantSMTPError(t, "Auth(PLAIN with other authzid)", err, 535, smtp.EnhancedCode{5, 7, 8}, "")
	if n := e.up.Connections(); n != 0 {
		t.Errorf("upstream Connections() = %d, want 0", n)
	}
}

func TestBigMessage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	c := e.login()
	// 30 MB of 78-byte lines, some starting with dots.
	const size = 30 << 20
	var b bytes.Buffer
	b.Grow(size + 100)
	b.WriteString("Subject: big\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		if i%7 == 0 {
			b.WriteString(".")
		}
		fmt.Fprintf(&b, "%08d abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 -----\r\n", i)
	}
	msg := b.Bytes()
	if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, msg); err != nil {
		t.Fatalf("send(30 MB) = %v", err)
	}
	m := e.messages(1)[0]
	if got, want := sha256.Sum256(m.Data), sha256.Sum256(msg); got != want {
		t.Errorf("sha256(upstream Data) = %x (%d bytes), want %x (%d bytes)", got, len(m.Data), want, len(msg))
	}
}

func TestLongLine(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	c := e.login()
	msg := []byte("Subject: long\r\n\r\n" + strings.Repeat("x", 10000) + "\r\n")
	if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, msg); err != nil {
		t.Fatalf("send(10,000-byte line) = %v", err)
	}
	if m := e.messages(1)[0]; !bytes.Equal(m.Data, msg) {
		t.Errorf("upstream Data has %d bytes, want %d", len(m.Data), len(msg))
	}
}

func TestOptionsPassThrough(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	c := e.login()
	auth := "alice@contoso.com"
	mailOpts := &smtp.MailOptions{UTF8: true, Return: smtp.DSNReturnHeaders, EnvelopeID: "env-42", Size: 200, Auth: &auth}
	if err := c.Mail("jörg@contoso.com", mailOpts); err != nil {
		t.Fatalf("Mail(SMTPUTF8, DSN) = %v", err)
	}
	rcptOpts := &smtp.RcptOptions{
		Notify:                []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822,
		OriginalRecipient:     "bob@example.com",
	}
	if err := c.Rcpt("bob@example.com", rcptOpts); err != nil {
		t.Fatalf("Rcpt(NOTIFY, ORCPT) = %v", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("Data() = %v", err)
	}
	msg := []byte("Subject: Grüße\r\n\r\nHallo.\r\n")
	w.Write(msg)
	if err := w.Close(); err != nil {
		t.Fatalf("DATA = %v", err)
	}
	m := e.messages(1)[0]
	if m.From != "jörg@contoso.com" {
		t.Errorf("upstream From = %q, want %q", m.From, "jörg@contoso.com")
	}
	o := m.MailOpts
	if !o.UTF8 || o.Return != smtp.DSNReturnHeaders || o.EnvelopeID != "env-42" || o.Size != 200 || o.Auth == nil || *o.Auth != auth {
		t.Errorf("upstream MailOpts = %+v, want UTF8, RET=HDRS, ENVID=env-42, SIZE=200, AUTH=%s", o, auth)
	}
	if o.Body == smtp.BodyBinaryMIME {
		t.Errorf("upstream MailOpts.Body = %q", o.Body)
	}
	if len(m.Rcpts) != 1 {
		t.Fatalf("upstream Rcpts = %+v, want 1", m.Rcpts)
	}
	ro := m.Rcpts[0].Opts
	if fmt.Sprint(ro.Notify) != "[SUCCESS FAILURE]" || ro.OriginalRecipientType != smtp.DSNAddressTypeRFC822 || ro.OriginalRecipient != "bob@example.com" {
		t.Errorf("upstream RcptOpts = %+v, want NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com", ro)
	}
	if !bytes.Equal(m.Data, msg) {
		t.Errorf("upstream Data = %q, want %q", m.Data, msg)
	}
}

func TestUpstreamErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	c := e.login()
	for _, tc := range []struct {
		stage string
		err   *smtp.SMTPError
	}{
		{"MAIL", &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}},
		{"MAIL", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Sender rejected"}},
		{"RCPT", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10}, Message: "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}},
		{"RCPT", &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}},
		{"DATA", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 252}, Message: "SendAsDenied; alice@contoso.com not allowed to send as bob@contoso.com"}},
		{"DATA", &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Insufficient system resources"}},
	} {
		name := fmt.Sprintf("%s %d", tc.stage, tc.err.Code)
		e.up.FailAt(tc.stage, tc.err)
		_, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, testMessage(name))
		wantSMTPError(t, name, err, tc.err.Code, tc.err.EnhancedCode, tc.err.Message)
		e.up.FailAt(tc.stage, nil)
		if err := c.Reset(); err != nil {
			t.Fatalf("%s: Reset() = %v", name, err)
		}
		// The session keeps working.
		if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, testMessage("after "+name)); err != nil {
			t.Fatalf("send() after %s = %v", name, err)
		}
	}
	if n := len(e.up.Messages()); n != 6 {
		t.Errorf("upstream Messages() has %d messages, want 6", n)
	}
	if n := e.up.Connections(); n != 1 {
		t.Errorf("upstream Connections() = %d, want 1", n)
	}
}

func TestUpstream421(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	c := e.login()
	e.up.FailAt("RCPT", &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service not available"})
	_, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, testMessage("421"))
	wantSMTPError(t, "send() with RCPT 421", err, 421, smtp.EnhancedCode{4, 3, 2}, "Service not available")
}

func TestClientGoneMidData(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	r := e.raw()
	r.mustCmd("EHLO client", "250 ")
	r.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "235 ")
	r.mustCmd("MAIL FROM:<alice@contoso.com>", "250 ")
	r.mustCmd("RCPT TO:<bob@example.com>", "250 ")
	r.mustCmd("DATA", "354 ")
	// Half a message, enough to have reached the upstream, then hang up.
	half := bytes.Repeat([]byte("a line of the message that will never end\r\n"), 2000)
	if _, err := r.c.Write(half); err != nil {
		t.Fatalf("write half a message: %v", err)
	}
	r.c.Close()
	e.waitEnd()
	// The proxy has closed its upstream connection; wait until the fake
	// upstream has finished with it too.
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	if err := e.up.WaitConns(ctx, 0); err != nil {
		t.Fatalf("upstream WaitConns(0) = %v", err)
	}
	if n := e.up.Connections(); n != 1 {
		t.Errorf("upstream Connections() = %d, want 1", n)
	}
	e.messages(0)
	if !strings.Contains(e.logs.String(), "outcome=\"client aborted DATA\"") {
		t.Errorf("log lacks outcome \"client aborted DATA\":\n%s", e.logs.String())
	}
}

func TestCloseDuringData(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	r := e.raw()
	r.mustCmd("EHLO client", "250 ")
	r.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "235 ")
	r.mustCmd("MAIL FROM:<alice@contoso.com>", "250 ")
	r.mustCmd("RCPT TO:<bob@example.com>", "250 ")
	r.mustCmd("DATA", "354 ")
	if _, err := r.c.Write([]byte("Subject: cut by Close\r\n\r\nsome of the body\r\n")); err != nil {
		t.Fatalf("write part of a message: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	// Close only once the upstream has the transaction open.
	if err := e.up.WaitConns(ctx, 1); err != nil {
		t.Fatalf("upstream WaitConns(1) = %v", err)
	}
	if err := e.srv.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if l, err := r.r.ReadString('\n'); err == nil {
		t.Errorf("after Close: read %q, want the connection closed", l)
	}
	e.waitEnd()
	if err := e.up.WaitConns(ctx, 0); err != nil {
		t.Fatalf("upstream WaitConns(0) = %v", err)
	}
	e.messages(0)
}

func TestMessageTooLarge(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{maxMessageBytes: 1000})
	c := e.login()
	_, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, bytes.Repeat([]byte("0123456789\r\n"), 200))
	wantSMTPError(t, "send(2400 bytes) with MaxMessageBytes 1000", err, 552, smtp.EnhancedCode{5, 3, 4}, "")
	// The session goes on, on a new upstream connection.
	if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, testMessage("small")); err != nil {
		t.Fatalf("send(small) = %v", err)
	}
	e.messages(1)
}

func TestReuseUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	c := e.login()
	for i := range 20 {
		if i == 10 {
			// An abandoned transaction in between.
			if err := c.Mail("alice@contoso.com", nil); err != nil {
				t.Fatalf("Mail() = %v", err)
			}
			if err := c.Reset(); err != nil {
				t.Fatalf("Reset() = %v", err)
			}
		}
		if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, testMessage(fmt.Sprint(i))); err != nil {
			t.Fatalf("send(#%d) = %v", i, err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Errorf("Quit() = %v", err)
	}
	e.messages(20)
	if n := e.up.Connections(); n != 1 {
		t.Errorf("upstream Connections() = %d, want 1", n)
	}
	e.waitEnd()
	if !strings.Contains(e.logs.String(), "messages=20") {
		t.Errorf("end line lacks messages=20:\n%s", e.logs.String())
	}
}

func TestConcurrentSessionsOneRefresh(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	// Warm the password cache without fetching a token, so that the 20
	// sessions do not each run the password KDF.
	e.login().Quit()
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(e.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
				errs <- err
				return
			}
			if err := c.SendMail("alice@contoso.com", []string{"bob@example.com"}, bytes.NewReader(testMessage(fmt.Sprint(i)))); err != nil {
				errs <- err
				return
			}
			errs <- c.Quit()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("session: %v", err)
		}
	}
	e.messages(n)
	if got := e.idp.Stats().Refreshes; got != 1 {
		t.Errorf("IdP Stats().Refreshes = %d, want 1", got)
	}
}

func TestTokenRefusedRefreshes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	c := e.login()
	if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, testMessage("1")); err != nil {
		t.Fatalf("send(#1) = %v", err)
	}
	c.Quit()
	// The cached token still looks valid to the proxy, but the upstream
	// refuses it.
	e.idp.ExpireAccessTokens()
	c = e.login()
	if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, testMessage("2")); err != nil {
		t.Fatalf("send(#2) with a refused token = %v", err)
	}
	e.messages(2)
	if got := e.idp.Stats().Refreshes; got != 2 {
		t.Errorf("IdP Stats().Refreshes = %d, want 2", got)
	}
	if got := e.up.AuthFailures(); got != 1 {
		t.Errorf("upstream AuthFailures() = %d, want 1", got)
	}
}

func TestRevokedNeedsSignIn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	c := e.login()
	if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, testMessage("1")); err != nil {
		t.Fatalf("send(#1) = %v", err)
	}
	c.Quit()
	e.idp.Revoke(testUser)
	e.idp.ExpireAccessTokens()
	c = e.login()
	err := c.Mail("alice@contoso.com", nil)
	wantSMTPError(t, "Mail() with a revoked sign-in", err, 454, smtp.EnhancedCode{4, 7, 0}, "")
	msg := err.(*smtp.SMTPError).Message
	if !strings.Contains(msg, "needs a new sign-in") || !strings.Contains(msg, "AADSTS70008") {
		t.Errorf("Mail() reply text = %q, want the sign-in text with AADSTS70008", msg)
	}
}

func TestUpstreamRefusesRefreshedToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	// Every token is refused: the proxy refreshes once, then gives up.
	e.up.FailAt("AUTH", &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"})
	c := e.login()
	err := c.Mail("alice@contoso.com", nil)
	wantSMTPError(t, "Mail() with refused tokens", err, 454, smtp.EnhancedCode{4, 7, 0},
		"upstream refused the access token for "+testUser+"; the account needs attention (sign in again)")
	if got := e.idp.Stats().Refreshes; got != 2 {
		t.Errorf("IdP Stats().Refreshes = %d, want 2 (first token, one forced refresh)", got)
	}
}

func TestLongAuthLine(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.up.SetMaxAuthLine(1000)
	c := e.login()
	msg := testMessage("after 334")
	if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, msg); err != nil {
		t.Fatalf("send() with SetMaxAuthLine(1000) = %v", err)
	}
	checkDelivered(t, e, "alice@contoso.com", []string{"bob@example.com"}, msg)
	if !strings.Contains(e.logs.String(), "500 5.5.2 Line too long") {
		t.Errorf("log does not show the refused AUTH line:\n%s", e.logs.String())
	}
	if n := e.up.Connections(); n != 1 {
		t.Errorf("upstream Connections() = %d, want 1 (the 334 path on the same connection)", n)
	}
}

func TestSMTPAuthDisabled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.up.FailAt("AUTH", &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
		Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."})
	c := e.login()
	err := c.Mail("alice@contoso.com", nil)
	wantSMTPError(t, "Mail() with SMTP AUTH disabled", err, 535, smtp.EnhancedCode{5, 7, 139}, authDisabledText)
	if !strings.Contains(e.logs.String(), authDisabledText) {
		t.Errorf("log lacks %q:\n%s", authDisabledText, e.logs.String())
	}
	if got := e.idp.Stats().Refreshes; got != 1 {
		t.Errorf("IdP Stats().Refreshes = %d, want 1 (no refresh for 5.7.139)", got)
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.up.Close()
	c := e.login()
	err := c.Mail("alice@contoso.com", nil)
	wantSMTPError(t, "Mail() with the upstream down", err, 451, smtp.EnhancedCode{4, 4, 1}, "")
}

// A shutdown poll that comes after the message went upstream but before
// the client heard 250 must not cut the connection with 421: the client
// would send the delivered message again.
func TestShutdownDoesNotCutTheReplyToData(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	polled := false
	hook := func() {
		e.srv.closeIdle() // as Shutdown's poll does
		polled = true
	}
	e.srv.afterData.Store(&hook)
	c := e.login()
	if err := c.Mail("alice@contoso.com", nil); err != nil {
		t.Fatalf("Mail() = %v", err)
	}
	if err := c.Rcpt("bob@example.com", nil); err != nil {
		t.Fatalf("Rcpt() = %v", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("Data() = %v", err)
	}
	io.Copy(w, bytes.NewReader(testMessage("reply pending")))
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA with a shutdown poll before the reply = %v, want 250", err)
	}
	if !polled {
		t.Fatal("the afterData hook did not run")
	}
	e.messages(1)
}

func TestShutdown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	idle := e.raw()
	idle.mustCmd("EHLO client", "250 ")
	idle.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "235 ")
	busy := e.login()
	if err := busy.Mail("alice@contoso.com", nil); err != nil {
		t.Fatalf("Mail() = %v", err)
	}
	if err := busy.Rcpt("bob@example.com", nil); err != nil {
		t.Fatalf("Rcpt() = %v", err)
	}
	shut := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	go func() { shut <- e.srv.Shutdown(ctx) }()

	// The idle session is closed with 421 ...
	idle.expect("421 4.3.2 ")
	if l, err := idle.r.ReadString('\n'); err != io.EOF {
		t.Errorf("idle session after 421: read %q, %v; want EOF", l, err)
	}
	// ... the open transaction finishes ...
	w, err := busy.Data()
	if err != nil {
		t.Fatalf("Data() during Shutdown = %v", err)
	}
	io.Copy(w, bytes.NewReader(testMessage("during shutdown")))
	if err := w.Close(); err != nil {
		t.Fatalf("DATA during Shutdown = %v", err)
	}
	// ... and then its connection closes too.
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown() = %v", err)
		}
	case <-time.After(testWait):
		t.Fatalf("Shutdown() did not return")
	}
	e.messages(1)
}
