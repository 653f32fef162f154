package smtp

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"io"
	"log/slog"
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
			t.Errorf("trace holds a credential %q:\n%s", truncate(secret, 20), trace)
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
	tr := newLogSink()
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
		`dir=client->proxy line="DATA: 61 bytes"`, // as sent: one dot stuffed
		`dir=proxy->client line="250 2.0.0 OK <`,
		`dir=client->proxy line="AUTH PLAIN <redacted>"`,
		`dir=client->proxy line="AUTH LOGIN <redacted>"`,
		`dir=client->proxy line="AUTH LOGIN"`,
		`dir=client->proxy line=<redacted>`,
		`dir=client->proxy line="AUTH <redacted> <redacted>"`,
		`dir=client->proxy line="<unrecognized command line of`,
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

// traceOf runs a scripted exchange through a frontTrace: "C:" entries are
// client input chunks, "S:" entries what go-smtp writes.
func traceOf(t *testing.T, steps ...string) string {
	t.Helper()
	sink := newLogSink()
	c := &conn{trace: slog.New(sink)}
	f := newFrontTrace(c)
	for _, s := range steps {
		switch {
		case strings.HasPrefix(s, "C:"):
			f.Write([]byte(s[2:]))
		case strings.HasPrefix(s, "S:"):
			c.writes.Add(1)
			f.Write([]byte(s[2:]))
		case strings.HasPrefix(s, "W:"): // a write go-smtp does not show (TLS records)
			c.writes.Add(1)
		default:
			t.Fatalf("bad step %q", s)
		}
	}
	return sink.String()
}

func TestFrontTrace(t *testing.T) {
	for _, tc := range []struct {
		name          string
		steps         []string
		want, notWant []string
	}{
		{"pipelined AUTH LOGIN",
			[]string{"S:220 hi\r\n", "C:EHLO x\r\nAUTH LOGIN\r\nc2VjcmV0MQ==\r\nc2VjcmV0Mg==\r\nNOOP\r\n",
				"S:250-hi\r\n", "S:250 AUTH PLAIN LOGIN\r\n", "S:334 VXNlcm5hbWU6\r\n", "S:334 UGFzc3dvcmQ6\r\n", "S:235 2.0.0 ok\r\n", "S:250 2.0.0 noop\r\n"},
			[]string{`line="EHLO x"`, `line="AUTH LOGIN"`, `line=<redacted>`, `line=NOOP`, `line="235 2.0.0 ok"`},
			[]string{"c2VjcmV0"}},
		{"refused AUTH, then credentials as commands",
			[]string{"C:AUTH LOGIN c2VjcmV0MQ==\r\n", "S:538 5.7.11 Encryption required\r\n", "C:c2VjcmV0Mg==\r\n", "S:500 5.5.2 unknown\r\n"},
			[]string{`line="AUTH LOGIN <redacted>"`, `<unrecognized command line of 12 bytes>`},
			[]string{"c2VjcmV0"}},
		{"cancelled AUTH",
			[]string{"C:AUTH PLAIN\r\n", "S:334 \r\n", "C:*\r\n", "S:501 5.0.0 cancelled\r\n", "C:QUIT\r\n"},
			[]string{`line="AUTH PLAIN"`, `line=*`, `line=QUIT`},
			nil},
		{"data sent with DATA, and pipelined commands after it",
			[]string{"C:DATA\r\nSubject: secret\r\n\r\n..secret\r\n.\r\nQUIT\r\n", "S:354 go ahead\r\n", "S:250 2.0.0 ok\r\n", "S:221 bye\r\n"},
			[]string{`line=DATA`, `line="DATA: 29 bytes"`, `line=QUIT`, `line="221 bye"`},
			[]string{"secret"}},
		{"DATA refused: what follows is commands",
			[]string{"C:DATA\r\nNOOP\r\n", "S:502 5.5.1 Missing RCPT TO command.\r\n", "S:250 ok\r\n"},
			[]string{`line=NOOP`, `line="502 5.5.1 Missing RCPT TO command."`},
			[]string{"DATA: "}},
		{"data in small chunks, end line split",
			[]string{"C:DATA\r\n", "S:354 go\r\n", "C:secret\r", "C:\n.", "C:\r", "C:\nRSET\r\n", "S:250 ok\r\n", "S:250 reset\r\n"},
			[]string{`line="DATA: 8 bytes"`, `line=RSET`},
			[]string{"secret"}},
		{"go-smtp's CR-CR reading does not end the data",
			[]string{"C:DATA\r\n", "S:354 go\r\n", "C:a\r\r\n.\r\nsecret\r\n.\r\n", "S:250 ok\r\n"},
			[]string{`line="DATA: 15 bytes"`},
			[]string{"secret"}},
		{"BDAT chunks",
			[]string{"C:BDAT 8\r\nsecret\r\nBDAT 3 LAST\r\nsec", "S:250 2.0.0 Continue\r\n", "S:250 2.0.0 ok\r\n", "C:BDAT x\r\nNOOP\r\n", "S:501 bad\r\n", "S:250 ok\r\n"},
			[]string{`line="BDAT 8"`, `line="BDAT chunk: 8 bytes"`, `line="BDAT chunk: 3 bytes"`, `line=NOOP`},
			[]string{"secret", "line=sec"}},
		{"STARTTLS drops what was sent with it",
			[]string{"C:STARTTLS\r\nAUTH PLAIN c2VjcmV0\r\n", "S:220 2.0.0 Ready to start TLS\r\n", "W:", "W:", "C:EHLO x\r\n", "S:250 hi\r\n"},
			[]string{`line=STARTTLS`, `bytes sent before TLS, ignored`, `line="EHLO x"`, `line="250 hi"`},
			[]string{"c2VjcmV0", "AUTH"}},
		{"client input after a TLS write is still input",
			[]string{"W:", "C:AUTH PLAIN c2VjcmV0\r\n", "S:535 no\r\n", "C:AUTH PLAIN\r\n", "S:334 \r\n", "W:", "C:c2VjcmV0MQ==\r\n", "S:235 ok\r\n"},
			[]string{`line="AUTH PLAIN <redacted>"`, `line=<redacted>`, `line="235 ok"`},
			[]string{"c2VjcmV0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := traceOf(t, tc.steps...)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("trace lacks %q:\n%s", w, got)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(got, w) {
					t.Errorf("trace holds %q:\n%s", w, got)
				}
			}
		})
	}
}

// The upstream side of the trace with implicit TLS on both sides.
func TestTraceImplicitTLS(t *testing.T) {
	t.Parallel()
	tr := newLogSink()
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
		`dir=proxy->client line="221 2.0.0 Bye"`,
	})
}
