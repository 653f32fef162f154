package smtp

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"mailproxy/front"
	"mailproxy/internal/testutil"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Raw-socket tests of hostile input: each command gets a reply with the
// expected prefix, nothing crashes, and the session goes on.
func TestHostileInput(t *testing.T) {
	t.Parallel()
	auth := "AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPassword)
	tests := []struct {
		name  string
		steps [][2]string // command, reply prefix
	}{
		{"NUL bytes", [][2]string{
			{"EHLO cli\x00ent", "250 "},
			{"NO\x00OP", "5"},
			{"AUTH PLAIN " + b64("\x00"+testUser+"\x00\x00"+testPassword), "5"},
			{"AUTH PLAIN " + b64("\x00al\x00ice\x00pw"), "5"},
			{"NOOP", "250 "},
		}},
		{"CRLF injection in AUTH", [][2]string{
			// A user name holding CR LF and a command: one refused login,
			// no MAIL run.
			{"EHLO client", "250 "},
			{"AUTH PLAIN " + b64("\x00"+testUser+"\r\nMAIL FROM:<x@example.com>\x00"+testPassword), "535 5.7.8 "},
			{"AUTH LOGIN " + b64(testUser+"\r\nRSET"), "334 "},
			{b64(testPassword), "535 5.7.8 "},
			{"NOOP", "250 "},
		}},
		{"AUTH with bad base64", [][2]string{
			{"EHLO client", "250 "},
			{"AUTH PLAIN !!!!", "454 4.7.0 "},
			{"AUTH LOGIN", "334 "},
			{"%%%%", "454 4.7.0 "},
			{"AUTH PLAIN", "334 "},
			{"====", "454 4.7.0 "},
			{"AUTH XOAUTH2 " + b64("user=x\x01auth=Bearer y\x01\x01"), "5"},
			{auth, "235 "},
		}},
		{"huge sizes", [][2]string{
			{"EHLO client", "250 "},
			{auth, "235 "},
			{"MAIL FROM:<alice@contoso.com> SIZE=9223372036854775808", "5"},
			{"MAIL FROM:<alice@contoso.com> SIZE=18446744073709551617", "5"},
			{"MAIL FROM:<alice@contoso.com> SIZE=-1", "5"},
			{"BDAT 18446744073709551617 LAST", "5"},
			{"NOOP", "250 "},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOpts{})
			r := e.raw()
			for _, st := range tt.steps {
				r.mustCmd(st[0], st[1])
			}
			if n := len(e.up.Messages()); n != 0 {
				t.Errorf("upstream got %d messages, want 0", n)
			}
			for _, l := range strings.Split(e.logs.String(), "\n") {
				if strings.HasPrefix(l, "MAIL FROM") || strings.HasPrefix(l, "RSET") {
					t.Errorf("a client's bytes started a log line: %q", l)
				}
			}
		})
	}
}

// A 10 MB command line is refused and the connection closed; the server
// keeps serving.
func TestHostileLongLine(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	r := e.raw()
	go io.WriteString(r.c, "EHLO "+strings.Repeat("x", 10<<20)+"\r\n") // may fail once the server closes
	got, err := io.ReadAll(r.r)
	if err != nil && !isReset(err) {
		t.Fatalf("ReadAll() after a 10 MB line = %q, %v", got, err)
	}
	// The reply may be lost to the reset that closing with unread input
	// causes; if it arrived it must be the refusal.
	if len(got) > 0 && !strings.HasPrefix(string(got), "500 5.4.0 ") {
		t.Errorf("reply to a 10 MB line = %q, want 500 5.4.0", got)
	}
	r = e.raw()
	r.mustCmd("EHLO client", "250 ")
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || errors.Is(err, net.ErrClosed))
}

// A DATA that never ends is cut by the read timeout; nothing is sent.
func TestHostileUnterminatedData(t *testing.T) {
	t.Parallel()
	// Long enough that the commands before DATA, each bounded by it too,
	// are not cut on a loaded machine.
	e := newEnv(t, envOpts{server: func(s *Server) { s.ReadTimeout = 2 * time.Second }})
	r := e.raw()
	r.mustCmd("EHLO client", "250 ")
	r.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "235 ")
	r.mustCmd("MAIL FROM:<alice@contoso.com>", "250 ")
	r.mustCmd("RCPT TO:<bob@example.com>", "250 ")
	r.mustCmd("DATA", "354 ")
	io.WriteString(r.c, "Subject: never ends\r\n\r\nhello\r\n")
	r.expect("421 4.4.2 ")
	if n := len(e.up.Messages()); n != 0 {
		t.Errorf("upstream got %d messages, want 0", n)
	}
}

// A client that writes before the greeting is served in order.
func TestCommandsBeforeGreeting(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	conn, err := net.DialTimeout("tcp", e.addr, testWait)
	if err != nil {
		t.Fatalf("Dial() = %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testWait))
	io.WriteString(conn, "EHLO client\r\nAUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword)+"\r\nNOOP\r\nQUIT\r\n")
	r := &raw{t: t, c: conn, r: bufio.NewReader(conn)}
	r.expect("220 ")
	r.expect("250 ")
	r.expect("235 ")
	r.expect("250 ")
	r.expect("221 ")
}

// dialMany opens n connections to addr.
func dialMany(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	if lim := testutil.FileLimit(); lim != 0 && lim < uint64(2*n+200) {
		t.Skipf("open file limit %d is too low for %d connections", lim, n)
	}
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := net.DialTimeout("tcp", addr, testWait)
		if err != nil {
			t.Fatalf("Dial() after %d connections = %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	return conns
}

func readUntilEOF(c net.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(testWait))
	b, err := io.ReadAll(c)
	if isReset(err) {
		err = nil
	}
	return string(b), err
}

// 1000 connections opened and left silent are all closed by the read
// timeout, and nothing is left behind.
func TestSilentConnections(t *testing.T) {
	base := runtime.NumGoroutine()
	const n = 1000
	e := newEnv(t, envOpts{server: func(s *Server) { s.ReadTimeout = time.Second; s.MaxPreAuthConns = n }})
	conns := dialMany(t, e.addr, n)
	for i, c := range conns {
		got, err := readUntilEOF(c)
		if err != nil || !strings.HasPrefix(got, "220 ") || !strings.HasSuffix(got, "421 4.4.2 Idle timeout, bye bye\r\n") {
			t.Fatalf("connection %d read %q, %v, want the greeting, 421 and EOF", i, got, err)
		}
		c.Close()
	}
	e.checkGoroutines(base)
}

// With a connection limit, connections over it are refused at once with
// 421, and slots come back when connections close.
func TestConnectionLimit(t *testing.T) {
	base := runtime.NumGoroutine()
	const limit, extra = 100, 50
	e := newEnv(t, envOpts{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen() = %v", err)
	}
	lim := front.NewConnLimiter(limit, 0)
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(lim.Listener(ln, TooManyConnections, slog.New(slog.DiscardHandler))) }()
	addr := ln.Addr().String()

	conns := dialMany(t, addr, limit)
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(testWait))
		if l, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.HasPrefix(l, "220 ") {
			t.Fatalf("connection %d under the limit read %q, %v, want the greeting", i, l, err)
		}
	}
	for i, c := range dialMany(t, addr, extra) {
		if got, err := readUntilEOF(c); err != nil || got != TooManyConnections {
			t.Fatalf("connection %d over the limit read %q, %v, want %q and EOF", i, got, err, TooManyConnections)
		}
		c.Close()
	}
	if got := lim.Refused(); got != extra {
		t.Errorf("Refused() = %d, want %d", got, extra)
	}
	for _, c := range conns {
		c.Close()
	}
	deadline := time.Now().Add(testWait)
	for lim.Open() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling a count nothing signals
	}
	if n := lim.Open(); n != 0 {
		t.Errorf("Open() after every connection closed = %d, want 0", n)
	}
	e.checkGoroutines(base)
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve() = %v, want ErrServerClosed", err)
	}
}
