package imap

import (
	"encoding/base64"
	"strconv"
	"strings"
	"testing"

	"mailproxy/auth"
	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
	"mailproxy/upstream"
)

// The protocol trace shows the pre-auth conversation and the upstream
// login, and no password, SASL response, access token or XOAUTH2 string:
// LOGIN with quoted and literal passwords, AUTHENTICATE PLAIN with and
// without an initial response, AUTHENTICATE LOGIN, a wrong password, and a
// token the upstream refuses before a refresh.
func TestTraceHidesCredentials(t *testing.T) {
	const (
		carol     = "carol@example.com"
		carolPass = "Carol-Pw-7Zq!unique"
		wrongPass = "Wrong-Pw-but-secret-42"
	)
	trace := fake365.NewCapture()
	e := newEnv(t, withServer(func(s *Server) { s.Trace = trace.Logger() }))
	secrets := testutil.NewSecrets()
	secrets.Add("password", carolPass)
	secrets.Add("password", wrongPass)
	ts := e.addAccount(carol, carolPass)
	e.auth.set(carol, carolPass, &auth.Grant{
		Username: carol,
		Mailbox:  carol,
		Tokens:   testutil.RecordingTokens{Src: ts, Secrets: secrets, RefreshToken: func() string { return ts.Tokens().RefreshToken }},
		Upstream: e.upstream,
	})

	loggedIn := func(c *rawClient, tag string) {
		t.Helper()
		if reply, _ := c.untilTagged(tag); !strings.HasPrefix(reply, tag+" OK") {
			t.Fatalf("login %s = %q, want OK", tag, reply)
		}
		c.send("z SELECT INBOX\r\nzz LOGOUT\r\n")
		c.untilTagged("zz")
	}

	c := greet(t, e.addr)
	c.send("a CAPABILITY\r\n")
	c.untilTagged("a")
	c.send("b LOGIN " + quote(carol) + " " + quote(wrongPass) + "\r\n")
	if reply, _ := c.untilTagged("b"); !strings.HasPrefix(reply, "b NO") {
		t.Fatalf("LOGIN with a wrong password = %q, want NO", reply)
	}
	c.send("c LOGIN " + quote(carol) + " " + quote(carolPass) + "\r\n")
	loggedIn(c, "c")

	// Literal passwords, synchronizing and not.
	c = greet(t, e.addr)
	c.send("a LOGIN " + carol + " {" + strconv.Itoa(len(carolPass)) + "}\r\n")
	c.expect("+ ")
	c.send(carolPass + "\r\n")
	loggedIn(c, "a")
	c = greet(t, e.addr)
	c.send("a LOGIN " + carol + " " + literal(carolPass, true) + "\r\n")
	loggedIn(c, "a")

	// AUTHENTICATE PLAIN with an initial response, then without.
	plain := b64("\x00" + carol + "\x00" + carolPass)
	c = greet(t, e.addr)
	c.send("a AUTHENTICATE PLAIN " + plain + "\r\n")
	loggedIn(c, "a")
	c = greet(t, e.addr)
	c.send("a AUTHENTICATE PLAIN\r\n")
	c.expect("+ ")
	c.send(plain + "\r\n")
	loggedIn(c, "a")

	// AUTHENTICATE LOGIN, cancelled once.
	c = greet(t, e.addr)
	c.send("a AUTHENTICATE LOGIN\r\n")
	c.expect("+ ")
	c.send("*\r\n")
	c.untilTagged("a")
	c.send("b AUTHENTICATE LOGIN\r\n")
	c.expect("+ ")
	c.send(b64(carol) + "\r\n")
	c.expect("+ ")
	c.send(b64(carolPass) + "\r\n")
	loggedIn(c, "b")

	// The upstream refuses the token; the proxy refreshes and retries.
	e.idp.ExpireAccessTokens()
	c = greet(t, e.addr)
	c.send("a LOGIN " + quote(carol) + " " + quote(carolPass) + "\r\n")
	loggedIn(c, "a")

	// Wait for the sessions' last lines.
	c.conn.Close()
	e.srv.Close()

	all := secrets.All()
	tokens := 0
	for k, v := range secrets.All() {
		if strings.HasPrefix(k, "access token") {
			tokens++
			x := string(upstream.XOAuth2(carol, v))
			all["xoauth2 for "+k] = x
			all["xoauth2 base64 for "+k] = base64.StdEncoding.EncodeToString([]byte(x))
		}
	}
	if tokens < 2 {
		t.Errorf("the run handed out %d access tokens, want at least 2 (one refused, one refreshed)", tokens)
	}
	if leaks := trace.Leaks(all); len(leaks) > 0 {
		t.Errorf("trace contains secrets: %q", leaks)
	}
	text := trace.String()
	for _, want := range []string{
		`line="* OK [CAPABILITY IMAP4rev1 `, // our greeting
		`line="a CAPABILITY"`,
		`line="c LOGIN \"` + carol + `\" <redacted>"`,
		`line="a AUTHENTICATE PLAIN <redacted>"`,
		`line="b NO [AUTHENTICATIONFAILED]`,
		`dir=client->proxy line=*`,
		`dir=upstream->proxy line="* OK`, // the upstream's greeting
		`AUTHENTICATE XOAUTH2 <redacted>"`,
		`dir=upstream->proxy line="c OK`, // the upstream's tagged OK
		`dir=proxy->client line="c OK`,   // passed on to the client
		`msg="relaying; trace ends"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("trace does not contain %s", want)
		}
	}
	// After the login nothing is traced.
	if strings.Contains(text, "SELECT INBOX") || strings.Contains(text, "z SELECT") {
		t.Errorf("trace contains the relayed SELECT")
	}
	if n := strings.Count(text, "relaying; trace ends"); n != 7 {
		t.Errorf("trace says %d times that it ends, want 7 (once per relayed session)", n)
	}
	t.Logf("trace:\n%s", text)
}
