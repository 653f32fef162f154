package pop3

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestCAPAPreLogin(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	c.cmd("CAPA")
	caps := c.multi()
	for _, want := range []string{"USER", "SASL PLAIN LOGIN", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "UIDL", "TOP"} {
		if !slices.Contains(caps, want) {
			t.Errorf("CAPA = %q, want %q among them", caps, want)
		}
	}
	if slices.Contains(caps, "STLS") {
		t.Errorf("CAPA = %q offers STLS without a TLS config", caps)
	}
}

func TestPreLoginCommands(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	for _, tc := range []struct{ cmd, want string }{
		{"NOOP", "-ERR not logged in"},
		{"STAT", "-ERR not logged in"},
		{"RETR 1", "-ERR not logged in"},
		{"APOP alice@example.com 0123456789abcdef0123456789abcdef", "-ERR APOP is not supported"},
		{"PASS secret", "-ERR send USER first"},
		{"XYZZY", "-ERR unknown command"},
		{"STLS", "-ERR STLS not available"},
		{"AUTH CRAM-MD5", "-ERR unsupported authentication mechanism"},
		{"AUTH PLAIN !!!notbase64", "-ERR invalid base64"},
		{"CAPA x", "-ERR CAPA takes no arguments"},
	} {
		if got := c.cmd(tc.cmd); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s = %q, want prefix %q", tc.cmd, got, tc.want)
		}
	}
}

func TestBareAUTHListsMechanisms(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	if got := c.cmd("AUTH"); got != "+OK" {
		t.Fatalf("AUTH = %q, want +OK", got)
	}
	if got := c.multi(); !slices.Equal(got, []string{"PLAIN", "LOGIN"}) {
		t.Errorf("AUTH list = %q, want PLAIN, LOGIN", got)
	}
	if got := c.cmd("QUIT"); !strings.HasPrefix(got, "+OK") {
		t.Errorf("QUIT = %q, want +OK", got)
	}
	if rest := c.readToEOF(); rest != "" {
		t.Errorf("after QUIT: %q, want the connection closed", rest)
	}
}

func TestLoginForms(t *testing.T) {
	e := newEnv(t)
	e.seed(alice, []byte("Subject: hi\r\n\r\nhello\r\n"))
	for _, tc := range []struct {
		name  string
		steps []string // command, then client lines after each "+ "
	}{
		{"USER/PASS", nil},
		{"PLAIN initial response", []string{"AUTH PLAIN " + b64("\x00"+alice+"\x00"+alicePass)}},
		{"PLAIN initial response with authzid", []string{"AUTH PLAIN " + b64(alice+"\x00"+alice+"\x00"+alicePass)}},
		{"PLAIN two-step", []string{"AUTH PLAIN", b64("\x00" + alice + "\x00" + alicePass)}},
		{"LOGIN", []string{"AUTH LOGIN", b64(alice), b64(alicePass)}},
		{"LOGIN initial response", []string{"AUTH LOGIN " + b64(alice), b64(alicePass)}},
		{"lower-case command and mechanism", []string{"auth plain " + b64("\x00"+alice+"\x00"+alicePass)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := greet(t, e.addr)
			if tc.steps == nil {
				c.login(alice, alicePass)
			} else {
				c.send(tc.steps[0] + "\r\n")
				for _, s := range tc.steps[1:] {
					c.expect("+ ")
					c.send(s + "\r\n")
				}
				c.expect("+OK User successfully authenticated")
			}
			if got := c.cmd("STAT"); got != "+OK 1 22" {
				t.Errorf("STAT = %q, want +OK 1 22", got)
			}
			c.cmd("QUIT")
		})
	}
}

func TestAUTHCancelAndGarbage(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	c.send("AUTH PLAIN\r\n")
	c.expect("+ ")
	if got := c.cmd("*"); !strings.HasPrefix(got, "-ERR authentication cancelled") {
		t.Errorf("* = %q, want -ERR authentication cancelled", got)
	}
	c.send("AUTH LOGIN\r\n")
	if got := c.line(); got != "+ "+b64("Username:") {
		t.Errorf("AUTH LOGIN challenge = %q, want Username:", got)
	}
	if got := c.cmd("%%%"); !strings.HasPrefix(got, "-ERR invalid base64") {
		t.Errorf("garbage SASL response = %q, want -ERR invalid base64", got)
	}
	if got := c.cmd("AUTH PLAIN " + b64("only-one-field")); !strings.HasPrefix(got, "-ERR invalid SASL response") {
		t.Errorf("malformed PLAIN = %q, want -ERR invalid SASL response", got)
	}
	if got := c.cmd("AUTH PLAIN " + b64("mallory\x00"+alice+"\x00"+alicePass)); !strings.HasPrefix(got, "-ERR [AUTH] authorization identity") {
		t.Errorf("PLAIN as another identity = %q, want -ERR [AUTH] authorization identity ...", got)
	}
	// Still usable.
	c.login(alice, alicePass)
}

func TestTooManyErrors(t *testing.T) {
	e := newEnv(t)
	c := greet(t, e.addr)
	var b strings.Builder
	for i := 0; i < maxBadCommands; i++ {
		b.WriteString("BOGUS\r\n")
	}
	c.send(b.String())
	out := c.readToEOF()
	if n := strings.Count(out, "-ERR unknown command"); n != maxBadCommands {
		t.Errorf("got %d unknown-command replies, want %d; output %q", n, maxBadCommands, out)
	}
	if !strings.HasSuffix(out, "-ERR unknown command\r\n-ERR too many errors\r\n") {
		t.Errorf("output ends %q, want the last error then -ERR too many errors", out[max(0, len(out)-80):])
	}
}

func TestLongLine(t *testing.T) {
	e := newEnv(t, withServer(func(s *Server) { s.MaxLine = 1000 }))
	c := greet(t, e.addr)
	// Within the bound: an ordinary error.
	if got := c.cmd("USER " + strings.Repeat("a", 900)); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("USER with a 905-byte line = %q, want +OK", got)
	}
	c.send("USER " + strings.Repeat("a", 1<<20) + "\r\n")
	if got := c.line(); got != "-ERR line too long" {
		t.Errorf("1 MiB line = %q, want -ERR line too long", got)
	}
	c.readToEOF()
}

func TestPipelinedLogin(t *testing.T) {
	e := newEnv(t)
	e.seed(alice, []byte("Subject: a\r\n\r\nA\r\n"), []byte("Subject: b\r\n\r\nB\r\n"))
	c := greet(t, e.addr)
	// RFC 2449 PIPELINING: everything in one write, the login included.
	c.send("CAPA\r\nUSER " + alice + "\r\nPASS " + alicePass + "\r\nSTAT\r\nLIST\r\nRETR 2\r\nQUIT\r\n")
	c.expect("+OK")
	c.multi()
	c.expect("+OK")
	c.expect("+OK User successfully authenticated")
	if got := c.line(); got != "+OK 2 34" {
		t.Errorf("STAT = %q, want +OK 2 34", got)
	}
	c.expect("+OK")
	if got := c.multi(); !slices.Equal(got, []string{"1 17", "2 17"}) {
		t.Errorf("LIST = %q", got)
	}
	c.expect("+OK 17 octets")
	if got := strings.Join(c.multi(), "\n"); got != "Subject: b\n\nB" {
		t.Errorf("RETR 2 = %q", got)
	}
	c.expect("+OK")
	c.readToEOF()
}

func TestSTLS(t *testing.T) {
	e := newEnv(t)
	local, err := e.ca.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	e.srv.TLSConfig = local
	e.srv.PlaintextAllowed = func(netip.Addr) bool { return false }
	e.seed(alice, []byte("Subject: hi\r\n\r\nhello\r\n"))

	c := greet(t, e.addr)
	c.cmd("CAPA")
	caps := c.multi()
	if !slices.Contains(caps, "STLS") || slices.Contains(caps, "USER") || slices.Contains(caps, "SASL PLAIN LOGIN") {
		t.Errorf("CAPA without TLS, plain text not allowed = %q, want STLS and neither USER nor SASL", caps)
	}
	if got := c.cmd("USER " + alice); !strings.HasPrefix(got, "-ERR [SYS/PERM] TLS required") {
		t.Errorf("USER without TLS = %q, want -ERR [SYS/PERM] TLS required", got)
	}
	if got := c.cmd("AUTH PLAIN " + b64("\x00"+alice+"\x00"+alicePass)); !strings.HasPrefix(got, "-ERR [SYS/PERM] TLS required") {
		t.Errorf("AUTH without TLS = %q, want -ERR [SYS/PERM]", got)
	}
	// Bytes pipelined after STLS came in clear text: they must be dropped,
	// not run as the first command under TLS.
	c.send("STLS\r\nUSER " + alice + "\r\nPASS " + alicePass + "\r\n")
	c.expect("+OK begin TLS")
	cfg := e.ca.ClientTLS()
	cfg.ServerName = "127.0.0.1"
	tc := tls.Client(c.conn, cfg)
	tc.SetDeadline(time.Now().Add(testTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake after STLS = %v", err)
	}
	c2 := &rawClient{t: t, conn: tc, r: bufio.NewReader(tc)}
	if got := c2.cmd("STAT"); got != "-ERR not logged in" {
		t.Errorf("STAT after STLS = %q, want -ERR not logged in (pipelined login dropped)", got)
	}
	c2.cmd("CAPA")
	caps = c2.multi()
	if slices.Contains(caps, "STLS") || !slices.Contains(caps, "USER") || !slices.Contains(caps, "SASL PLAIN LOGIN") {
		t.Errorf("CAPA under TLS = %q, want USER and SASL, no STLS", caps)
	}
	if got := c2.cmd("STLS"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("second STLS = %q, want -ERR", got)
	}
	c2.login(alice, alicePass)
	if got := c2.cmd("STAT"); got != "+OK 1 22" {
		t.Errorf("STAT = %q, want +OK 1 22", got)
	}
}

func TestImplicitTLS(t *testing.T) {
	e := newEnv(t)
	local, err := e.ca.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	e.srv.PlaintextAllowed = func(netip.Addr) bool { return false }
	addr := e.serve(local)
	tc, err := tls.Dial("tcp", addr, e.ca.ClientTLS())
	if err != nil {
		t.Fatalf("tls.Dial() = %v", err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(testTimeout))
	c := &rawClient{t: t, conn: tc, r: bufio.NewReader(tc)}
	c.expect("+OK")
	c.cmd("CAPA")
	if caps := c.multi(); slices.Contains(caps, "STLS") || !slices.Contains(caps, "USER") {
		t.Errorf("CAPA on implicit TLS = %q, want USER and no STLS", caps)
	}
	c.login(alice, alicePass)
}

func TestPreLoginTimeout(t *testing.T) {
	e := newEnv(t, withServer(func(s *Server) { s.PreAuthTimeout = 200 * time.Millisecond }))
	c := greet(t, e.addr)
	// The deadline is for the whole pre-login phase: commands do not
	// extend it.
	c.cmd("CAPA")
	c.multi()
	if out := c.readToEOF(); out != "-ERR pre-login timeout\r\n" {
		t.Errorf("after the pre-login deadline = %q, want -ERR pre-login timeout", out)
	}
}
