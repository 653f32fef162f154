package imap

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	capsPlain = "IMAP4rev1 SASL-IR ID LITERAL+ AUTH=PLAIN AUTH=LOGIN"
	capsTLS   = capsPlain + " STARTTLS"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// withTLS gives the server a certificate (STARTTLS).
func withTLS(e *env) {
	cfg, err := e.ca.ServerTLS()
	if err != nil {
		e.t.Fatalf("ServerTLS() = %v", err)
	}
	e.srv.TLSConfig = cfg
}

func TestGreeting(t *testing.T) {
	e := newEnv(t)
	c := dialRaw(t, e.addr)
	if got, want := c.line(), "* OK [CAPABILITY "+capsPlain+"] mailproxy ready"; got != want {
		t.Errorf("greeting without TLS = %q, want %q", got, want)
	}
	c.send("a CAPABILITY\r\n")
	if got, want := c.line(), "* CAPABILITY "+capsPlain; got != want {
		t.Errorf("CAPABILITY without TLS = %q, want %q", got, want)
	}
	c.expect("a OK")
	c.send("b STARTTLS\r\n")
	c.expect("b BAD STARTTLS not available")

	e2 := newEnv(t, withTLS)
	c = dialRaw(t, e2.addr)
	if got, want := c.line(), "* OK [CAPABILITY "+capsTLS+"] mailproxy ready"; got != want {
		t.Errorf("greeting with STARTTLS = %q, want %q", got, want)
	}

	// Implicit TLS: no STARTTLS offered, login works.
	addr := e2.serve(e2.srv.TLSConfig)
	conn, err := tls.Dial("tcp", addr, e2.ca.ClientTLS())
	if err != nil {
		t.Fatalf("tls.Dial(%s) = %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(testTimeout))
	c = &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	if got, want := c.line(), "* OK [CAPABILITY "+capsPlain+"] mailproxy ready"; got != want {
		t.Errorf("greeting with implicit TLS = %q, want %q", got, want)
	}
	c.login("a", alice, alicePass)
	c.send("b LOGOUT\r\n")
	c.untilTagged("b")
}

func TestPreAuthCommands(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	c.send("a NOOP\r\n")
	c.expect("a OK NOOP")
	c.send("b ID (\"name\" \"test\" \"version\" \"1\")\r\n")
	c.expect(`* ID ("name" "mailproxy")`)
	c.expect("b OK")
	c.send("c id nil\r\n")
	c.expect(`* ID ("name" "mailproxy")`)
	c.expect("c OK")
	c.send("d SELECT INBOX\r\n")
	c.expect("d BAD command not allowed before login")
	c.send("e FROB\r\n")
	c.expect("e BAD unknown command")
	c.send("f NOOP extra\r\n")
	c.expect("f BAD")
	c.send("g ID (\"name\"\r\n")
	c.expect("g BAD invalid ID arguments")
	c.send("h LOGOUT\r\n")
	c.expect("* BYE")
	c.expect("h OK LOGOUT")
	if rest := c.readToEOF(); rest != "" {
		t.Errorf("after LOGOUT read %q, want EOF", rest)
	}
	if n := e.dials.Load(); n != 0 {
		t.Errorf("upstream dials = %d, want 0", n)
	}
}

func TestLoginForms(t *testing.T) {
	e := newEnv(t)
	const carol, carolPass = "carol@example.com", `pa"ss\wörd`
	e.addAccount(carol, carolPass)

	tests := []struct {
		name  string
		login func(c *rawClient)
	}{
		{"atoms", func(c *rawClient) { c.send("a LOGIN " + alice + " " + alicePass + "\r\n") }},
		{"quoted escapes", func(c *rawClient) { c.send("a LOGIN " + quote(carol) + " " + quote(carolPass) + "\r\n") }},
		{"sync literals", func(c *rawClient) {
			c.send("a LOGIN {" + strconv.Itoa(len(bob)) + "}\r\n")
			c.expect("+ ")
			c.send(bob + " {" + strconv.Itoa(len(bobPass)) + "}\r\n")
			c.expect("+ ")
			c.send(bobPass + "\r\n")
		}},
		{"literal+", func(c *rawClient) {
			c.send("a LOGIN " + literal(bob, true) + " " + literal(bobPass, true) + "\r\n")
		}},
		{"mixed", func(c *rawClient) {
			c.send("a login " + quote(carol) + " " + literal(carolPass, true) + "\r\n")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := greet(t, e.addr)
			tt.login(c)
			reply, _ := c.untilTagged("a")
			if !strings.HasPrefix(reply, "a OK [CAPABILITY ") {
				t.Fatalf("login reply = %q, want the upstream's OK [CAPABILITY ...]", reply)
			}
			c.send("b SELECT INBOX\r\nc LOGOUT\r\n")
			if reply, _ := c.untilTagged("b"); !strings.HasPrefix(reply, "b OK") {
				t.Errorf("SELECT after login = %q, want OK", reply)
			}
			c.untilTagged("c")
		})
	}
}

// Commands pipelined after LOGIN in the same write reach the upstream.
func TestPipelinedAfterLogin(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	c.send("a LOGIN " + alice + " " + alicePass + "\r\nb SELECT INBOX\r\nc LOGOUT\r\n")
	if reply, _ := c.untilTagged("a"); !strings.HasPrefix(reply, "a OK") {
		t.Fatalf("LOGIN = %q, want OK", reply)
	}
	if reply, _ := c.untilTagged("b"); !strings.HasPrefix(reply, "b OK") {
		t.Errorf("pipelined SELECT = %q, want OK", reply)
	}
	if reply, untagged := c.untilTagged("c"); !strings.HasPrefix(reply, "c OK") || len(untagged) == 0 || !strings.HasPrefix(untagged[0], "* BYE") {
		t.Errorf("pipelined LOGOUT = %q after %q, want * BYE and OK", reply, untagged)
	}
}

func TestAuthenticate(t *testing.T) {
	e := newEnv(t)
	plain := b64("\x00" + alice + "\x00" + alicePass)
	tests := []struct {
		name   string
		steps  []string // client line, then expected prefix of the server's line, ...
		result string   // prefix of the tagged reply
	}{
		{"PLAIN SASL-IR", []string{"a AUTHENTICATE PLAIN " + plain}, "a OK [CAPABILITY"},
		{"PLAIN identity", []string{"a AUTHENTICATE PLAIN " + b64(alice+"\x00"+alice+"\x00"+alicePass)}, "a OK"},
		{"plain lower case", []string{"a authenticate plain " + plain}, "a OK"},
		{"PLAIN continuation", []string{"a AUTHENTICATE PLAIN", "+ ", plain}, "a OK"},
		{"PLAIN non-ASCII", []string{"a AUTHENTICATE PLAIN " + b64("\x00"+bob+"\x00"+bobPass)}, "a OK"},
		{"LOGIN", []string{"a AUTHENTICATE LOGIN", "+ " + b64("Username:"), b64(alice), "+ " + b64("Password:"), b64(alicePass)}, "a OK"},
		{"LOGIN SASL-IR", []string{"a AUTHENTICATE LOGIN " + b64(alice), "+ " + b64("Password:"), b64(alicePass)}, "a OK"},
		{"PLAIN cancel", []string{"a AUTHENTICATE PLAIN", "+ ", "*"}, "a BAD AUTHENTICATE cancelled"},
		{"LOGIN cancel", []string{"a AUTHENTICATE LOGIN", "+ ", b64(alice), "+ ", "*"}, "a BAD AUTHENTICATE cancelled"},
		{"bad base64 IR", []string{"a AUTHENTICATE PLAIN !!!"}, "a BAD"},
		{"bad base64 continuation", []string{"a AUTHENTICATE PLAIN", "+ ", "%%%"}, "a BAD"},
		{"PLAIN empty", []string{"a AUTHENTICATE PLAIN ="}, "a BAD"},
		{"PLAIN wrong password", []string{"a AUTHENTICATE PLAIN " + b64("\x00"+alice+"\x00nope")}, "a NO [AUTHENTICATIONFAILED] Invalid credentials"},
		{"PLAIN other identity", []string{"a AUTHENTICATE PLAIN " + b64(bob+"\x00"+alice+"\x00"+alicePass)}, "a NO [AUTHORIZATIONFAILED]"},
		{"unsupported", []string{"a AUTHENTICATE XOAUTH2 " + b64("x")}, "a NO"},
		{"too many args", []string{"a AUTHENTICATE PLAIN x y"}, "a BAD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := greet(t, e.addr)
			for i, s := range tt.steps {
				if i%2 == 0 {
					c.send(s + "\r\n")
				} else {
					c.expect(s)
				}
			}
			reply, _ := c.untilTagged("a")
			if !strings.HasPrefix(reply, tt.result) {
				t.Fatalf("AUTHENTICATE = %q, want prefix %q", reply, tt.result)
			}
			// The session goes on either way.
			c.send("z NOOP\r\n")
			if reply, _ := c.untilTagged("z"); !strings.HasPrefix(reply, "z OK") {
				t.Errorf("NOOP after AUTHENTICATE = %q, want OK", reply)
			}
		})
	}
}

// A refused login says the same for a wrong password and an unknown
// account, and opens no upstream connection.
func TestLoginRefused(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	const want = "NO [AUTHENTICATIONFAILED] Invalid credentials"
	c.send("a LOGIN " + alice + " wrong\r\n")
	if got := c.line(); got != "a "+want {
		t.Errorf("LOGIN with a wrong password = %q, want %q", got, "a "+want)
	}
	c.send("b LOGIN nobody@example.com " + alicePass + "\r\n")
	if got := c.line(); got != "b "+want {
		t.Errorf("LOGIN of an unknown account = %q, want %q", got, "b "+want)
	}
	if n := e.dials.Load(); n != 0 {
		t.Errorf("upstream dials after refused logins = %d, want 0", n)
	}
	c.send("c LOGIN " + alice + " " + alicePass + "\r\n")
	if reply, _ := c.untilTagged("c"); !strings.HasPrefix(reply, "c OK") {
		t.Errorf("LOGIN after failures = %q, want OK", reply)
	}
}

// AuthError kinds map to response codes; the text is cleaned.
func TestLoginRefusalKinds(t *testing.T) {
	e := newEnv(t, withServer(func(s *Server) { s.Auth = refusingAuth{} }))
	c := greet(t, e.addr)
	c.send("a LOGIN alert x\r\n")
	if got, want := c.line(), "a NO [ALERT] account alert needs a new sign-in * injected"; got != want {
		t.Errorf("needs sign-in = %q, want %q", got, want)
	}
	c.send("b LOGIN busy x\r\n")
	if got, want := c.line(), "b NO [UNAVAILABLE] try later"; got != want {
		t.Errorf("unavailable = %q, want %q", got, want)
	}
}

func TestStartTLS(t *testing.T) {
	e := newEnv(t, withTLS)
	c := greet(t, e.addr)
	// The LOGIN after STARTTLS in the same write was sent in clear text:
	// an attacker could have injected it. It must be dropped.
	c.send("a STARTTLS\r\nb LOGIN " + alice + " " + alicePass + "\r\n")
	c.expect("a OK")
	if n := c.r.Buffered(); n != 0 {
		t.Fatalf("%d bytes after the STARTTLS reply, want 0", n)
	}
	cfg := e.ca.ClientTLS()
	cfg.ServerName = "127.0.0.1"
	tc := tls.Client(c.conn, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("Handshake() = %v", err)
	}
	c = &rawClient{t: t, conn: tc, r: bufio.NewReader(tc)}
	c.send("c CAPABILITY\r\n")
	if got, want := c.line(), "* CAPABILITY "+capsPlain; got != want {
		t.Errorf("CAPABILITY after STARTTLS = %q, want %q (and nothing for the injected command)", got, want)
	}
	c.expect("c OK")
	c.send("d STARTTLS\r\n")
	c.expect("d BAD")
	if n := e.auth.calls.Load(); n != 0 {
		t.Errorf("logins checked = %d, want 0", n)
	}
	c.login("e", alice, alicePass)
	c.send("f LOGOUT\r\n")
	c.untilTagged("f")
}

func TestTooManyErrors(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	c.send(strings.Repeat("x FROB\r\n", 12))
	for i := range maxBadCommands {
		if got := c.line(); !strings.HasPrefix(got, "x BAD") {
			t.Fatalf("reply %d = %q, want BAD", i, got)
		}
	}
	c.expect("* BYE too many errors")
	if rest := c.readToEOF(); rest != "" {
		t.Errorf("after BYE read %q, want EOF", rest)
	}
}

func TestGarbage(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	c.send("\x00\x01\x02\r\n")
	c.expect("* BAD")
	c.send("+ \r\n")
	c.expect("* BAD")
	c.send("a\r\n")
	c.expect("a BAD")
	c.send("a NOOP\r\n")
	c.expect("a OK")
}

func TestLongLine(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	done := make(chan error, 1)
	go func() {
		// The server may stop reading; a failed write is fine.
		_, err := c.conn.Write([]byte("a LOGIN " + strings.Repeat("x", 10<<20) + "\r\n"))
		done <- err
	}()
	c.expect("* BYE line too long")
	if rest := c.readToEOF(); rest != "" {
		t.Errorf("after BYE read %q, want EOF", rest)
	}
	<-done
}

func TestBigLiteral(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	c.send("a LOGIN {99999999999}\r\n")
	c.expect("a BAD literal too big")
	c.send("b LOGIN " + literal(alice, false)[:4] + "\r\n") // "{17}" waits for "+"
	c.expect("+ ")
	c.send(alice + " {70000}\r\n")
	c.expect("b BAD literal too big")
	c.send("c NOOP\r\n")
	c.expect("c OK")
	c.send("d LOGIN {99999999999+}\r\n")
	c.expect("* BYE literal too big")
	if rest := c.readToEOF(); rest != "" {
		t.Errorf("after BYE read %q, want EOF", rest)
	}
}

func TestPreAuthTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withServer(func(s *Server) { s.PreAuthTimeout = 200 * time.Millisecond }))
	c := greet(t, e.addr)
	c.send("a NOOP\r\n")
	c.expect("a OK")
	c.send("b LOGIN half") // and nothing more
	if got := c.readToEOF(); got != "* BYE pre-auth timeout\r\n" {
		t.Errorf("after the pre-auth timeout read %q, want the BYE and EOF", got)
	}
}

func TestShutdown(t *testing.T) {
	e := newEnv(t)
	pre := greet(t, e.addr)
	relayed := greet(t, e.addr)
	relayed.login("a", alice, alicePass)
	relayed.send("b NOOP\r\n")
	relayed.untilTagged("b")

	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(context.Background()) }()

	if got := pre.readToEOF(); got != "* BYE server shutting down\r\n" {
		t.Errorf("pre-auth connection read %q at shutdown, want the BYE and EOF", got)
	}
	// New connections are refused.
	if conn, err := net.DialTimeout("tcp", e.addr, testTimeout); err == nil {
		conn.SetDeadline(time.Now().Add(testTimeout))
		if n, err := conn.Read(make([]byte, 1)); err == nil {
			t.Errorf("new connection during shutdown read %d bytes, want EOF", n)
		}
		conn.Close()
	}
	// The relayed session, idle between responses, hears BYE at once.
	if got := relayed.readToEOF(); got != shutdownBye {
		t.Errorf("relayed session read %q at shutdown, want %q and EOF", got, shutdownBye)
	}
	relayed.conn.Close()
	// Shutdown returns once the sessions have ended, without its context
	// ending.
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown() = %v, want nil", err)
		}
	case <-time.After(testTimeout):
		t.Fatalf("Shutdown() did not return after the last session ended")
	}
	if logs := e.logs.String(); !strings.Contains(logs, "account="+alice+" outcome=shutdown") {
		t.Errorf("log has no end line of %s with outcome=shutdown", alice)
	}
}
