package smtp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"mailproxy/submit"
	"net"
	"strings"
	"sync"
	"testing"
)

// End-to-end tests of the one DATA path (go-smtp's reader, the
// Submitter): the same client bytes give the same replies and the same
// delivered messages with the protocol trace off and on.

// traced turns the protocol trace on.
func traced(s *Server) { s.Trace = slog.New(slog.DiscardHandler) }

// paths runs f with the trace off and on.
func paths(t *testing.T, o envOpts, f func(t *testing.T, e *env, traced bool)) {
	t.Helper()
	for _, on := range []bool{false, true} {
		name := "untraced"
		if on {
			name = "traced"
		}
		t.Run(name, func(t *testing.T) {
			o := o
			if on {
				next := o.server
				o.server = func(s *Server) {
					traced(s)
					if next != nil {
						next(s)
					}
				}
			}
			f(t, newEnv(t, o), on)
		})
	}
}

// session logs a raw client in.
func (e *env) session() *raw {
	e.t.Helper()
	r := e.raw()
	r.mustCmd("EHLO client", "250 ")
	r.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "235 ")
	return r
}

// sendRaw runs a transaction whose data (end line included) is wire, as
// it is, and returns the reply to it.
func (r *raw) sendRaw(wire []byte) string {
	r.t.Helper()
	r.mustCmd("MAIL FROM:<alice@contoso.com>", "250 ")
	r.mustCmd("RCPT TO:<bob@example.com>", "250 ")
	r.mustCmd("DATA", "354 ")
	if _, err := r.c.Write(wire); err != nil {
		r.t.Fatalf("write message data: %v", err)
	}
	return r.reply()
}

// trickyMessages are client bytes after DATA, each ending with an end line
// go-smtp's reader finds.
var trickyMessages = []string{
	"Subject: plain\r\n\r\nHello.\r\n.\r\n",
	".\r\n",
	"..\r\n...\r\n.leading\r\n..stuffed\r\n.\r\n",
	"bare\nLF\n.\nlines\n\r\n.\r\n",
	"a\r\n.\nnot the end\r\n.\r\n",
	"a\r\r\n.\r\nstill data (go-smtp's CR-CR reading)\r\n.\r\n",
	"lone\rCR\r\n.\rx\r\n.\r\n",
	"no CRLF before end?\r\n\r\n.\r\n",
	strings.Repeat("z", 40000) + "\r\n" + strings.Repeat(".long\r\n", 3000) + ".\r\n",
	strings.Repeat("0123456789abcdef", 1<<11) + "\n" + strings.Repeat("q", 60000) + "\r\n.\r\n",
}

func TestDataTracedMatchesUntraced(t *testing.T) {
	t.Parallel()
	got := map[bool][][]byte{}
	replies := map[bool][]string{}
	var mu sync.Mutex
	paths(t, envOpts{}, func(t *testing.T, e *env, on bool) {
		r := e.session()
		var reps []string
		for _, m := range trickyMessages {
			rep := r.sendRaw([]byte(m))
			if !strings.HasPrefix(rep, "250 2.0.0 OK <") {
				t.Fatalf("reply to message %q = %q, want 250 with the queue id", submit.Truncate(m, 60), rep)
			}
			reps = append(reps, rep[:14])
		}
		r.mustCmd("NOOP", "250 ")
		var data [][]byte
		for _, m := range e.messages(len(trickyMessages)) {
			data = append(data, m.Data)
		}
		mu.Lock()
		got[on], replies[on] = data, reps
		mu.Unlock()
	})
	for i := range trickyMessages {
		if len(got[true]) <= i || len(got[false]) <= i {
			break
		}
		if !bytes.Equal(got[true][i], got[false][i]) {
			t.Errorf("message %q delivered as %q untraced, %q traced",
				submit.Truncate(trickyMessages[i], 60), submit.Truncate(string(got[false][i]), 200), submit.Truncate(string(got[true][i]), 200))
		}
	}
}

// A client that sends everything at once, two transactions and QUIT, gets
// every reply in order and both messages delivered.
func TestDataPipelined(t *testing.T) {
	t.Parallel()
	paths(t, envOpts{}, func(t *testing.T, e *env, on bool) {
		r := e.session()
		msg1 := "Subject: one\r\n\r\n.dot\r\nend\r\n"
		msg2 := "Subject: two\r\n\r\n" + strings.Repeat("line\r\n", 10000)
		tx := func(msg string) string {
			return "MAIL FROM:<alice@contoso.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n" +
				strings.ReplaceAll(msg, "\r\n.", "\r\n..") + ".\r\n"
		}
		if _, err := io.WriteString(r.c, tx(msg1)+tx(msg2)+"QUIT\r\n"); err != nil {
			t.Fatalf("write: %v", err)
		}
		for _, want := range []string{"250 ", "250 ", "354 ", "250 2.0.0 OK <", "250 ", "250 ", "354 ", "250 2.0.0 OK <", "221 "} {
			r.expect(want)
		}
		msgs := e.messages(2)
		if string(msgs[0].Data) != msg1 || string(msgs[1].Data) != msg2 {
			t.Errorf("upstream Data = %q, %q, want %q, %q", submit.Truncate(string(msgs[0].Data), 100), submit.Truncate(string(msgs[1].Data), 100), msg1, submit.Truncate(msg2, 100))
		}
	})
}

// A message line of maxLineLength bytes is refused and the connection
// closed, as go-smtp's line limit does; nothing is delivered.
func TestDataLineTooLong(t *testing.T) {
	t.Parallel()
	paths(t, envOpts{}, func(t *testing.T, e *env, on bool) {
		r := e.session()
		r.mustCmd("MAIL FROM:<alice@contoso.com>", "250 ")
		r.mustCmd("RCPT TO:<bob@example.com>", "250 ")
		r.mustCmd("DATA", "354 ")
		go io.WriteString(r.c, "Subject: long\r\n\r\n"+strings.Repeat("x", maxLineLength+100)+"\r\n.\r\n")
		r.expect("500 5.5.2 Line too long")
		r.expect("500 5.4.0 ")
		if l, err := r.r.ReadString('\n'); err == nil {
			t.Errorf("after the line limit: read %q, want the connection closed", l)
		}
		e.messages(0)
	})
}

// MaxMessageBytes counts decoded bytes, and a message of exactly that
// size is refused (go-smtp's reader stops there); the session goes on.
func TestMessageSizeLimit(t *testing.T) {
	t.Parallel()
	paths(t, envOpts{maxMessageBytes: 1000}, func(t *testing.T, e *env, on bool) {
		r := e.session()
		decoded := func(n int) string { // n bytes, some lines starting with a dot
			s := strings.Repeat(".dot-line\r\n", 10)
			return s + strings.Repeat("y", n-len(s)-2) + "\r\n"
		}
		stuffed := func(s string) []byte {
			return []byte(strings.ReplaceAll("\r\n"+s, "\r\n.", "\r\n..")[2:] + ".\r\n")
		}
		if rep := r.sendRaw(stuffed(decoded(999))); !strings.HasPrefix(rep, "250 ") {
			t.Errorf("reply to a 999-byte message = %q, want 250", rep)
		}
		if rep := r.sendRaw(stuffed(decoded(1000))); !strings.HasPrefix(rep, "552 5.3.4 ") {
			t.Errorf("reply to a 1000-byte message = %q, want 552 5.3.4", rep)
		}
		r.mustCmd("NOOP", "250 ")
		if m := e.messages(1)[0]; len(m.Data) != 999 {
			t.Errorf("delivered %d bytes, want 999", len(m.Data))
		}
	})
}

// miniUpstream is a scripted submission server (implicit TLS through
// envOpts.upstreamScript) with knobs for the DATA phase.
type miniUpstream struct {
	dataReply string // reply to DATA; "" = "354 go ahead"
	rcptReply string // reply to RCPT; "" = "250 2.1.0 OK"
	dieInData int    // the connection that hangs up after 1 KiB of data; 0: none

	mu    sync.Mutex // protects the fields below
	conns int
	data  [][]byte // messages received, as sent (dot-stuffed)
}

func (m *miniUpstream) serve(conn net.Conn, r *bufio.Reader) {
	m.mu.Lock()
	m.conns++
	n := m.conns
	m.mu.Unlock()
	w := func(s string) { io.WriteString(conn, s) }
	w("220 mini ESMTP\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		verb, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			w("250-mini\r\n250-AUTH XOAUTH2\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SIZE 100000000\r\n")
		case "AUTH":
			w("235 2.7.0 Authentication successful\r\n")
		case "QUIT":
			w("221 2.0.0 Bye\r\n")
			return
		case "DATA":
			if m.dataReply != "" {
				w(m.dataReply + "\r\n")
				continue
			}
			w("354 go ahead\r\n")
			var msg []byte
			for {
				l, err := r.ReadBytes('\n')
				if err != nil {
					return
				}
				if string(l) == ".\r\n" {
					break
				}
				msg = append(msg, l...)
				if n == m.dieInData && len(msg) > 1024 {
					return
				}
			}
			m.mu.Lock()
			m.data = append(m.data, msg)
			m.mu.Unlock()
			w("250 2.0.0 OK queued as mini" + fmt.Sprint(n) + "\r\n")
		case "RCPT":
			if m.rcptReply != "" {
				w(m.rcptReply + "\r\n")
				continue
			}
			w("250 2.1.5 OK\r\n")
		default:
			w("250 2.1.0 OK\r\n")
		}
	}
}

func (m *miniUpstream) received() (conns int, data [][]byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conns, append([][]byte(nil), m.data...)
}

// The upstream refuses the DATA command itself: the client, which already
// has its 354 from go-smtp, sends its message and gets the upstream's
// reply; the message data is read to its end and the session goes on.
func TestUpstreamRefusesDataCommand(t *testing.T) {
	t.Parallel()
	m := &miniUpstream{dataReply: "554 5.7.1 Message refused by policy"}
	paths(t, envOpts{upstreamScript: m.serve}, func(t *testing.T, e *env, on bool) {
		r := e.session()
		msg := "Subject: refused\r\n\r\n" + strings.Repeat("some text\r\n", 20000) + ".\r\n"
		if rep := r.sendRaw([]byte(msg + "NOOP\r\n")); rep != "554 5.7.1 Message refused by policy" {
			t.Errorf("reply to the message = %q, want the upstream's 554 5.7.1", rep)
		}
		r.expect("250 ") // NOOP
		r.mustCmd("RSET", "250 ")
		r.mustCmd("MAIL FROM:<alice@contoso.com>", "250 ")
	})
}

// The upstream hangs up in the middle of the message data: the client
// gets 451 once its message is read, nothing is delivered, and the next
// message goes out on a new connection.
func TestUpstreamGoneInData(t *testing.T) {
	t.Parallel()
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprint("traced=", on), func(t *testing.T) {
			t.Parallel()
			m := &miniUpstream{dieInData: 1}
			o := envOpts{upstreamScript: m.serve}
			if on {
				o.server = traced
			}
			e := newEnv(t, o)
			r := e.session()
			msg := "Subject: cut\r\n\r\n" + strings.Repeat("a line of text\r\n", 100000)
			if rep := r.sendRaw([]byte(msg + ".\r\n")); !strings.HasPrefix(rep, "451 4.4.2 ") {
				t.Errorf("reply to a message the upstream dropped = %q, want 451 4.4.2", rep)
			}
			if rep := r.sendRaw([]byte("Subject: next\r\n\r\nok\r\n.\r\n")); !strings.HasPrefix(rep, "250 2.0.0 OK queued as mini2") {
				t.Errorf("reply to the next message = %q, want 250 from a second connection", rep)
			}
			if conns, data := m.received(); conns != 2 || len(data) != 1 || string(data[0]) != "Subject: next\r\n\r\nok\r\n" {
				t.Errorf("upstream got %d connections, messages %q; want 2 and only the second message", conns, data)
			}
		})
	}
}
