package smtp

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    reply
		wantErr string
	}{
		{in: "250 OK\r\n", want: reply{250, []string{"OK"}}},
		{in: "250\r\n", want: reply{250, []string{""}}},
		{in: "220 bare LF\n", want: reply{220, []string{"bare LF"}}},
		{in: "250-host\r\n250-PIPELINING\r\n250 SIZE 100\r\n", want: reply{250, []string{"host", "PIPELINING", "SIZE 100"}}},
		{in: "250-a\r\n251 b\r\n", wantErr: "malformed reply line"},
		{in: "25O OK\r\n", wantErr: "malformed reply line"},
		{in: "650 OK\r\n", wantErr: "malformed reply line"},
		{in: "250x\r\n", wantErr: "malformed reply line"},
		{in: "250-cut", wantErr: "unexpected EOF"},
		{in: "250 " + strings.Repeat("x", readBufferSize) + "\r\n", wantErr: "reply line too long"},
		{in: strings.Repeat("250-x\r\n", maxReplyLines) + "250 x\r\n", wantErr: "reply of more than"},
	} {
		u := &upClient{r: bufio.NewReaderSize(strings.NewReader(tc.in), readBufferSize)}
		got, err := u.readReply()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("readReply(%q) = %v, %v, want error %q", truncate(tc.in, 40), got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("readReply(%q) = %v, %v, want %v, nil", tc.in, got, err, tc.want)
		}
	}
}

func TestReplyErr(t *testing.T) {
	for _, tc := range []struct {
		rep  reply
		want *smtp.SMTPError
	}{
		{reply{550, []string{"5.1.1 User unknown"}}, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}},
		{reply{452, []string{"4.5.3 Too many", "4.5.3 recipients"}}, &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many\nrecipients"}},
		{reply{554, []string{"Transaction failed"}}, &smtp.SMTPError{Code: 554, Message: "Transaction failed"}},
		{reply{421, []string{""}}, &smtp.SMTPError{Code: 421}},
	} {
		var se *smtp.SMTPError
		if err := tc.rep.err(); !errors.As(err, &se) || !reflect.DeepEqual(se, tc.want) {
			t.Errorf("%v.err() = %#v, want %#v", tc.rep, err, tc.want)
		}
	}
	// Anything but a 4xx or 5xx where another reply was due is a broken
	// conversation, not a reply for the client.
	for _, code := range []int{220, 250, 334, 354} {
		var se *smtp.SMTPError
		if err := (reply{code, []string{"x"}}).err(); err == nil || errors.As(err, &se) {
			t.Errorf("reply %d .err() = %v, want a protocol error", code, err)
		}
	}
}

func TestXtext(t *testing.T) {
	for in, want := range map[string]string{
		"alice@contoso.com": "alice@contoso.com",
		"a+b=c d":           "a+2Bb+3Dc+20d",
		"jörg":              "j+C3+B6rg",
		"\x01":              "+01",
	} {
		if got := xtext(in); got != want {
			t.Errorf("xtext(%q) = %q, want %q", in, got, want)
		}
	}
	for _, tc := range []struct {
		in      string
		unitext bool
		want    string
	}{
		{"bob@example.com", false, "bob@example.com"},
		{"jörg@example.com", false, `j\x{F6}rg@example.com`},
		{"jörg@example.com", true, "jörg@example.com"},
		{"a b+c=d\\e", true, `a\x{20}b\x{2B}c\x{3D}d\x{5C}e`},
	} {
		if got := utf8AddrText(tc.in, tc.unitext); got != tc.want {
			t.Errorf("utf8AddrText(%q, %v) = %q, want %q", tc.in, tc.unitext, got, tc.want)
		}
	}
}

// A multi-line upstream refusal reaches the client on one line with its
// own codes.
func TestUpstreamMultilineReply(t *testing.T) {
	t.Parallel()
	m := &miniUpstream{rcptReply: "550-5.1.10 RESOLVER.ADR.RecipientNotFound;\r\n550 5.1.10 Recipient not found by SMTP address lookup"}
	e := newEnv(t, envOpts{upstreamScript: m.serve})
	c := e.login()
	err := c.Mail("alice@contoso.com", nil)
	if err == nil {
		err = c.Rcpt("nobody@example.com", nil)
	}
	wantSMTPError(t, "Rcpt()", err, 550, smtp.EnhancedCode{5, 1, 10},
		"RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup")
}

// Gmail answers a refused token with a 334 carrying a JSON error; the
// proxy answers it with an empty line, reads the final 535, refreshes the
// token once and gives up on the second refusal. No "*" is sent.
func TestUpstreamXOAuth2ErrorChallenge(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []string
	handle := func(conn net.Conn, r *bufio.Reader) {
		w := func(s string) { fmt.Fprint(conn, s) }
		w("220 gmail-ish\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\r\n")
			verb, _, _ := strings.Cut(line, " ")
			mu.Lock()
			got = append(got, verb)
			mu.Unlock()
			switch {
			case verb == "EHLO":
				w("250-gmail-ish\r\n250 AUTH XOAUTH2\r\n")
			case verb == "AUTH":
				w("334 eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIn0=\r\n")
				if l, _ := r.ReadString('\n'); l != "\r\n" {
					w("500 expected an empty line\r\n")
					continue
				}
				w("535 5.7.8 Username and Password not accepted\r\n")
			case verb == "QUIT":
				w("221 bye\r\n")
				return
			default:
				w("502 5.5.1 unexpected\r\n")
			}
		}
	}
	e := newEnv(t, envOpts{upstreamScript: handle})
	c := e.login()
	err := c.Mail("alice@contoso.com", nil)
	wantSMTPError(t, "Mail() with the token refused", err, 454, smtp.EnhancedCode{4, 7, 0},
		"upstream refused the access token for "+testUser+"; the account needs attention (sign in again)")
	mu.Lock()
	defer mu.Unlock()
	if want := "EHLO AUTH EHLO AUTH"; strings.Join(got, " ") != want {
		t.Errorf("upstream saw %q, want %q", strings.Join(got, " "), want)
	}
}

// An upstream that sends plain text right after its 220 to STARTTLS (an
// injection that would be read as if it came over TLS) is refused.
func TestUpstreamSTARTTLSInjection(t *testing.T) {
	t.Parallel()
	addr, _ := scripted(t, func(conn net.Conn, r *bufio.Reader) {
		fmt.Fprint(conn, "220 ready\r\n")
		readLineSMTP(r) // EHLO
		fmt.Fprint(conn, "250-ready\r\n250 STARTTLS\r\n")
		readLineSMTP(r) // STARTTLS
		fmt.Fprint(conn, "220 go ahead\r\n235 2.7.0 injected\r\n")
		waitClose(conn, r)
	})
	e := newEnv(t, envOpts{upstreamAddr: addr})
	c := e.login()
	err := c.Mail("alice@contoso.com", nil)
	wantSMTPError(t, "Mail() with an injecting upstream", err, 451, smtp.EnhancedCode{4, 4, 1}, "")
	if !strings.Contains(e.logs.String(), "server sent data after its 220 reply") {
		t.Errorf("log does not name the injection:\n%s", e.logs.String())
	}
}

// An upstream without STARTTLS on the submission port never gets the
// token.
func TestUpstreamWithoutSTARTTLS(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []string
	addr, _ := scripted(t, func(conn net.Conn, r *bufio.Reader) {
		fmt.Fprint(conn, "220 ready\r\n")
		for {
			l := readLineSMTP(r)
			if l == "" {
				return
			}
			mu.Lock()
			got = append(got, l)
			mu.Unlock()
			fmt.Fprint(conn, "250-ready\r\n250 AUTH XOAUTH2\r\n")
		}
	})
	e := newEnv(t, envOpts{upstreamAddr: addr})
	c := e.login()
	err := c.Mail("alice@contoso.com", nil)
	wantSMTPError(t, "Mail() with an upstream without STARTTLS", err, 451, smtp.EnhancedCode{4, 4, 1}, "")
	mu.Lock()
	defer mu.Unlock()
	for _, l := range got {
		if strings.HasPrefix(l, "AUTH") {
			t.Errorf("upstream without TLS got %q", l)
		}
	}
}
