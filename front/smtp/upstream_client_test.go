package smtp

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

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
