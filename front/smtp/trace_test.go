package smtp

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"io"
	"log/slog"
	"mailproxy/internal/testutil"
	"mailproxy/submit"
	"mailproxy/upstream"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// traceSecrets are the forms a credential of the tests can take on the
// wire; none may reach a trace.
func traceSecrets(e *env) []string {
	s := []string{
		testPassword,
		b64(testPassword),
		b64(testUser),
		b64("\x00" + testUser + "\x00" + testPassword),
		b64(testUser + "\x00" + testUser + "\x00" + testPassword),
		b64("wrong password"),
	}
	for _, tok := range e.tokens.issued() {
		s = append(s, tok, base64.StdEncoding.EncodeToString(upstream.XOAuth2(testUser, tok)))
	}
	return s
}

func checkTrace(t *testing.T, e *env, trace string, want []string) {
	t.Helper()
	for _, secret := range traceSecrets(e) {
		if strings.Contains(trace, secret) {
			t.Errorf("trace holds a credential %q:\n%s", submit.Truncate(secret, 20), trace)
		}
	}
	if strings.Contains(trace, "traced-body-marker") {
		t.Errorf("trace holds message data:\n%s", trace)
	}
	for _, w := range want {
		if !strings.Contains(trace, w) {
			t.Errorf("trace lacks %q:\n%s", w, trace)
		}
	}
}

func TestTrace(t *testing.T) {
	t.Parallel()
	tr := testutil.NewLogSink(nil, "smtp connection end")
	e := newEnv(t, envOpts{frontTLS: true, server: func(s *Server) { s.Trace = slog.New(tr) }})
	body := []byte("Subject: traced\r\n\r\ntraced-body-marker\r\n.traced-body-marker\r\n")

	// AUTH PLAIN with an initial response, and a delivery: the upstream
	// side logs in with XOAUTH2 on the AUTH line.
	c := e.login()
	if _, err := send(t, c, "alice@contoso.com", []string{"bob@example.com"}, body); err != nil {
		t.Fatalf("send() = %v", err)
	}
	c.Quit()

	// AUTH LOGIN, prompted and with the user name as initial response, as
	// go-sasl's client does it too.
	r := e.raw()
	r.mustCmd("EHLO client", "250 ")
	r.mustCmd("AUTH LOGIN", "334 ")
	r.mustCmd(b64(testUser), "334 ")
	r.mustCmd(b64(testPassword), "235 ")
	r = e.raw()
	r.mustCmd("EHLO client", "250 ")
	r.mustCmd("AUTH LOGIN "+b64(testUser), "334 ")
	r.mustCmd(b64(testPassword), "235 ")
	if err := e.dial().Auth(sasl.NewLoginClient(testUser, testPassword)); err != nil {
		t.Fatalf("Auth(LOGIN) = %v", err)
	}
	// AUTH PLAIN prompted, a wrong password, and an authorization identity.
	r = e.raw()
	r.mustCmd("EHLO client", "250 ")
	r.mustCmd("AUTH PLAIN", "334 ")
	r.mustCmd(b64("\x00"+testUser+"\x00wrong password"), "535 ")
	r.mustCmd("AUTH PLAIN "+b64(testUser+"\x00"+testUser+"\x00"+testPassword), "235 ")

	// Credentials sent without waiting for the 334s, and a confused client
	// sending them again as commands after the AUTH failed.
	r = e.raw()
	r.mustCmd("EHLO client", "250 ")
	io.WriteString(r.c, "AUTH LOGIN\r\n"+b64(testUser)+"\r\n"+b64(testPassword)+"\r\nAUTH NOPE "+b64(testPassword)+"\r\n"+b64(testPassword)+"\r\nNOOP\r\n")
	for _, want := range []string{"334 ", "334 ", "235 ", "503 ", "5", "250 "} {
		r.expect(want)
	}
	// STARTTLS, then AUTH PLAIN over TLS and a delivery whose upstream
	// login sends the token after the 334 (the AUTH line is too long).
	e.up.SetMaxAuthLine(1000)
	tc, err := smtp.DialStartTLS(e.addr, e.ca.ClientTLS())
	if err != nil {
		t.Fatalf("DialStartTLS() = %v", err)
	}
	defer tc.Close()
	if err := tc.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
		t.Fatalf("Auth(PLAIN) after STARTTLS = %v", err)
	}
	if _, err := send(t, tc, "alice@contoso.com", []string{"carol@example.org"}, body); err != nil {
		t.Fatalf("send() after STARTTLS = %v", err)
	}
	tc.Quit()

	checkTrace(t, e, tr.String(), []string{
		`dir=client->proxy line="MAIL FROM:<alice@contoso.com>`,
		`dir=client->proxy line="RCPT TO:<bob@example.com>"`,
		`dir=client->proxy line="RCPT TO:<carol@example.org>"`,
		`dir=client->proxy line=DATA`,
		`dir=client->proxy line="DATA: 60 bytes"`, // as go-smtp decoded it
		`dir=proxy->client line="250 2.0.0 OK <`,
		`dir=client->proxy line="AUTH PLAIN <redacted>"`,
		`dir=client->proxy line="AUTH LOGIN <redacted>"`,
		`dir=client->proxy line="AUTH LOGIN"`,
		`dir=client->proxy line=<redacted>`,
		`dir=client->proxy line=STARTTLS`,
		`dir=proxy->client line="334 VXNlcm5hbWU6"`,
		`dir=proxy->client line="235 2.0.0 Authentication succeeded"`,
		`dir=proxy->upstream line="EHLO proxy.test"`,
		`dir=proxy->upstream line="AUTH XOAUTH2 <redacted>"`,
		`dir=upstream->proxy line="500 5.5.2 Line too long"`,
		`dir=proxy->upstream line="AUTH XOAUTH2"`,
		`dir=proxy->upstream line=<redacted>`,
		`dir=proxy->upstream line="MAIL FROM:<alice@contoso.com> BODY=8BITMIME"`,
		`dir=proxy->upstream line="DATA: 60 bytes"`, // the message
		`dir=upstream->proxy line="250 2.0.0 OK <`,
		`level=DEBUG`,
		`conn=`,
	})
	if n := len(e.up.Messages()); n != 2 {
		t.Errorf("upstream got %d messages, want 2", n)
	}
}

// The upstream side of the trace with implicit TLS on both sides.
func TestTraceImplicitTLS(t *testing.T) {
	t.Parallel()
	tr := testutil.NewLogSink(nil, "smtp connection end")
	e := newEnv(t, envOpts{frontImplicitTLS: true, upstreamImplicitTLS: true, server: func(s *Server) { s.Trace = slog.New(tr) }})
	conn, err := tls.Dial("tcp", e.addr, e.ca.ClientTLS())
	if err != nil {
		t.Fatalf("tls.Dial() = %v", err)
	}
	defer conn.Close()
	r := &raw{t: t, c: conn, r: bufio.NewReader(conn)}
	r.expect("220 ")
	r.mustCmd("EHLO client", "250 ")
	r.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "235 ")
	r.mustCmd("MAIL FROM:<alice@contoso.com>", "250 ")
	r.mustCmd("QUIT", "221 ")
	// go-smtp traces its reply after writing it, and closes after that.
	if _, err := io.ReadAll(r.r); err != nil {
		t.Fatalf("read after QUIT: %v", err)
	}
	checkTrace(t, e, tr.String(), []string{
		`dir=client->proxy line="AUTH PLAIN <redacted>"`,
		`dir=upstream->proxy line="220 smtp.fake365.test ESMTP Service Ready"`,
		`dir=proxy->upstream line="AUTH XOAUTH2 <redacted>"`,
		`dir=client->proxy line="MAIL FROM:<alice@contoso.com>"`,
		`dir=proxy->client line=250`,
	})
}
