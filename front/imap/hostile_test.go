package imap

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailproxy/front"
	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
)

// Raw-socket tests of hostile input. Each step sends bytes and expects
// reply lines (prefixes); a step with eof expects the server to close.
type hostileStep struct {
	send   string
	expect []string
	eof    bool
}

func TestHostileInput(t *testing.T) {
	tenMB := strings.Repeat("x", 10<<20)
	tests := []struct {
		name  string
		steps []hostileStep
	}{
		{"10 MB line", []hostileStep{
			{send: "a LOGIN " + tenMB + "\r\n", expect: []string{"* BYE line too long"}, eof: true},
		}},
		// Over max_line but with an end in sight: BAD, and the next
		// command is read in step, literals of the skipped one included.
		{"line over max_line", []hostileStep{
			{send: "a LOGIN " + strings.Repeat("x", DefaultMaxLine) + "\r\n", expect: []string{"a BAD command line too long"}},
			{send: "b NOOP\r\n", expect: []string{"b OK"}},
		}},
		{"line over max_line ending in a literal", []hostileStep{
			{send: "a LOGIN " + strings.Repeat("x", DefaultMaxLine) + " {5}\r\n", expect: []string{"a BAD command line too long"}},
			{send: "b NOOP\r\n", expect: []string{"b OK"}},
			{send: "c LOGIN " + strings.Repeat("x", DefaultMaxLine) + " {5+}\r\nab\r\nc {3+}\r\n\r\nx yz\r\n", expect: []string{"c BAD command line too long"}},
			{send: "d NOOP\r\n", expect: []string{"d OK"}},
		}},
		{"10 MB line without a line ending", []hostileStep{
			{send: tenMB, expect: []string{"* BYE line too long"}, eof: true},
		}},
		{"unterminated literal", []hostileStep{
			{send: "a LOGIN {10}\r\n", expect: []string{"+ "}},
			{send: "abc", expect: []string{"* BYE pre-auth timeout"}, eof: true},
		}},
		{"unterminated literal+", []hostileStep{
			{send: "a LOGIN {10+}\r\nabc", expect: []string{"* BYE pre-auth timeout"}, eof: true},
		}},
		{"literal of 2^63 bytes", []hostileStep{
			{send: "a LOGIN {9223372036854775808}\r\n", expect: []string{"a BAD literal too big"}},
			{send: "b LOGIN {9223372036854775807}\r\n", expect: []string{"b BAD literal too big"}},
			{send: "c NOOP\r\n", expect: []string{"c OK"}},
			{send: "d LOGIN {9223372036854775808+}\r\n", expect: []string{"* BYE literal too big"}, eof: true},
		}},
		{"literal of 2^64+1 bytes", []hostileStep{
			{send: "a LOGIN {18446744073709551617}\r\n", expect: []string{"a BAD literal too big"}},
			{send: "b LOGIN {-1}\r\n", expect: []string{"b BAD"}},
			{send: "c LOGIN {18446744073709551617+}\r\n", expect: []string{"* BYE literal too big"}, eof: true},
		}},
		{"NUL bytes", []hostileStep{
			{send: "a LOGIN \"al\x00ice\" pw\r\n", expect: []string{"a BAD NUL byte in argument"}},
			{send: "b LOGIN {5+}\r\nal\x00ce pw\r\n", expect: []string{"b BAD NUL byte in argument"}},
			{send: "c\x00 NOOP\r\n", expect: []string{"* BAD"}},
			{send: "\x00\x00\x00\r\n", expect: []string{"* BAD"}},
			{send: "d NOOP\r\n", expect: []string{"d OK"}},
		}},
		{"CRLF injection in a quoted string", []hostileStep{
			// A client that quotes a user name holding CR LF: the second
			// line must not run as a command.
			{send: "a LOGIN \"" + alice + "\r\nb LOGOUT\" \"" + alicePass + "\"\r\n", expect: []string{
				"a BAD unterminated quoted string", "b BAD"}},
			{send: "c NOOP\r\n", expect: []string{"c OK"}},
		}},
		{"bad command continued by a literal+", []hostileStep{
			// Found by FuzzPreAuth: the continuation line must not
			// overwrite the tag of the BAD reply.
			{send: "a LOGIN \"x{0+}\r\nzz\r\n", expect: []string{"a BAD unterminated quoted string"}},
			{send: "c NOOP\r\n", expect: []string{"c OK"}},
		}},
		{"CRLF in a literal", []hostileStep{
			// Legal inside a literal: it is part of the user name, which
			// does not exist.
			{send: "a LOGIN {" + strconv.Itoa(len("x\r\nb LOGOUT")) + "+}\r\nx\r\nb LOGOUT pw\r\n", expect: []string{
				"a NO [AUTHENTICATIONFAILED] Invalid credentials"}},
			{send: "c NOOP\r\n", expect: []string{"c OK"}},
		}},
		{"AUTHENTICATE with bad base64", []hostileStep{
			{send: "a AUTHENTICATE PLAIN !!!!\r\n", expect: []string{"a BAD invalid base64 in initial response"}},
			{send: "b AUTHENTICATE PLAIN\r\n", expect: []string{"+ "}},
			{send: "%%%%\r\n", expect: []string{"b BAD invalid base64 in SASL response"}},
			{send: "c AUTHENTICATE LOGIN\r\n", expect: []string{"+ " + b64("Username:")}},
			{send: "====\r\n", expect: []string{"c BAD invalid base64 in SASL response"}},
			{send: "d AUTHENTICATE PLAIN " + b64("\x00\x00\x00") + "\r\n", expect: []string{"d BAD invalid SASL response"}},
			{send: "e AUTHENTICATE PLAIN " + b64(strings.Repeat("\x00", 5000)) + "\r\n", expect: []string{"e BAD invalid SASL response"}},
			{send: "f NOOP\r\n", expect: []string{"f OK"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Short only where the test waits for the pre-auth timeout:
			// elsewhere, under -race on a loaded machine, sending 10 MB
			// can take longer than that, and the timeout would answer
			// instead of the check under test.
			preAuth := time.Minute
			for _, st := range tt.steps {
				if slices.Contains(st.expect, "* BYE pre-auth timeout") {
					preAuth = 2 * time.Second
				}
			}
			e := newEnv(t, withServer(func(s *Server) { s.PreAuthTimeout = preAuth }))
			c := greet(t, e.addr)
			for i, st := range tt.steps {
				// Big writes may block or fail once the server stops
				// reading; the replies are what matters.
				werr := make(chan error, 1)
				go func() {
					_, err := io.WriteString(c.conn, st.send)
					werr <- err
				}()
				for _, want := range st.expect {
					if got := c.line(); !strings.HasPrefix(got, want) {
						t.Fatalf("step %d: read %q, want prefix %q", i, got, want)
					}
				}
				if st.eof {
					if rest := c.readToEOF(); rest != "" {
						t.Errorf("step %d: read %q, want EOF", i, rest)
					}
				}
				<-werr
			}
			if n := e.auth.calls.Load(); tt.name != "CRLF in a literal" && n != 0 {
				t.Errorf("password checks = %d, want 0", n)
			}
			for _, l := range strings.Split(e.logs.String(), "\n") {
				if strings.HasPrefix(l, "b LOGOUT") {
					t.Errorf("a client's bytes started a log line: %q", l)
				}
			}
		})
	}
}

// A client that writes before the greeting arrives (or without waiting for
// it at all) is served in order.
func TestCommandsBeforeGreeting(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	conn, err := net.DialTimeout("tcp", e.addr, testTimeout)
	if err != nil {
		t.Fatalf("Dial() = %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	io.WriteString(conn, "a CAPABILITY\r\nb LOGIN "+alice+" "+alicePass+"\r\nc SELECT INBOX\r\nd LOGOUT\r\n")
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.expect("* OK [CAPABILITY ")
	c.expect("* CAPABILITY ")
	c.expect("a OK")
	if reply, _ := c.untilTagged("b"); !strings.HasPrefix(reply, "b OK") {
		t.Errorf("LOGIN sent before the greeting = %q, want OK", reply)
	}
	if reply, _ := c.untilTagged("c"); !strings.HasPrefix(reply, "c OK") {
		t.Errorf("SELECT sent before the greeting = %q, want OK", reply)
	}
	c.untilTagged("d")
}

// dialMany opens n connections to addr and returns them.
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
		c, err := net.DialTimeout("tcp", addr, testTimeout)
		if err != nil {
			t.Fatalf("Dial() after %d connections = %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	return conns
}

// readAllUntilEOF reads c until the server closes it.
func readAllUntilEOF(c net.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(testTimeout))
	b, err := io.ReadAll(c)
	if err != nil && isReset(err) {
		err = nil
	}
	return string(b), err
}

// 1000 connections opened and left silent are all closed by the pre-auth
// timeout, and nothing is left behind.
func TestSilentConnections(t *testing.T) {
	base := runtime.NumGoroutine()
	const n = 1000
	e := newEnv(t, withServer(func(s *Server) { s.PreAuthTimeout = time.Second; s.MaxPreAuthConns = n }))
	conns := dialMany(t, e.addr, n)
	for i, c := range conns {
		got, err := readAllUntilEOF(c)
		if err != nil {
			t.Fatalf("connection %d: ReadAll() = %q, %v; want the greeting, BYE and EOF", i, got, err)
		}
		if !strings.HasPrefix(got, "* OK [CAPABILITY ") || !strings.HasSuffix(got, "* BYE pre-auth timeout\r\n") {
			t.Fatalf("connection %d read %q, want the greeting and the pre-auth timeout BYE", i, got)
		}
		c.Close()
	}
	e.checkGoroutines(base)
}

// With a connection limit, connections over it are refused at once with a
// BYE, and slots come back when connections close.
func TestConnectionLimit(t *testing.T) {
	base := runtime.NumGoroutine()
	const limit, extra = 100, 50
	e := newEnv(t)
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
		c.SetReadDeadline(time.Now().Add(testTimeout))
		if l, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.HasPrefix(l, "* OK") {
			t.Fatalf("connection %d under the limit read %q, %v, want the greeting", i, l, err)
		}
	}
	for i, c := range dialMany(t, addr, extra) {
		if got, err := readAllUntilEOF(c); err != nil || got != TooManyConnections {
			t.Fatalf("connection %d over the limit read %q, %v, want %q and EOF", i, got, err, TooManyConnections)
		}
		c.Close()
	}
	if got := lim.Refused(); got != extra {
		t.Errorf("Refused() = %d, want %d", got, extra)
	}
	conns[0].Close()
	pollUntil(t, "a slot to free", func() bool { return lim.Open() < limit })
	c := greet(t, addr)
	c.login("a", alice, alicePass)
	c.conn.Close()
	for _, c := range conns {
		c.Close()
	}
	e.closeAll()
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve() = %v, want ErrServerClosed", err)
	}
	fake365.WaitGoroutines(t, base, testTimeout)
	if n := lim.Open(); n != 0 {
		t.Errorf("Open() after every connection closed = %d, want 0", n)
	}
}

// RFC 2971's largest ID (30 fields of 30 octets with values of 1024
// octets, about 32 KB) passes the pre-login limits with the defaults.
func TestMaximalID(t *testing.T) {
	e := newEnv(t)
	var b strings.Builder
	b.WriteString("a ID (")
	for i := range 30 {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "\"%s\" \"%s\"", fmt.Sprintf("%030d", i), strings.Repeat("v", 1024))
	}
	b.WriteString(")\r\n")
	if b.Len() < 31000 {
		t.Fatalf("ID command is %d bytes, want about 32 KB", b.Len())
	}
	c := greet(t, e.addr)
	c.send(b.String())
	c.expect("* ID ")
	c.expect("a OK")
	c.send("b NOOP\r\n")
	c.expect("b OK")
}
