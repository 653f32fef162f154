package smtp

import (
	"bufio"
	"crypto/tls"
	"io"
	"strings"
	"testing"
	"time"
)

// bigMessage is a message long enough for conn's read-ahead to engage,
// with a few dot-lines.
func bigMessage() string {
	var b strings.Builder
	b.WriteString("Subject: big\r\n\r\n")
	for i := 0; b.Len() < 1<<20; i++ {
		if i%500 == 0 {
			b.WriteString(".a dot-line\r\n")
		}
		b.WriteString("a line of a large message, long enough to fill buffers fast\r\n")
	}
	return b.String()
}

func dotted(msg string) string { return strings.ReplaceAll(msg, "\r\n.", "\r\n..") + ".\r\n" }

// A large message written in one go, with the next transaction and QUIT
// pipelined behind it, arrives whole, and every reply comes in order:
// what the read-ahead holds past the end of the data goes to go-smtp as
// the next commands. The session then holds no read-ahead buffer.
func TestReadAheadPipelined(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	r := e.session()
	big, small := bigMessage(), "Subject: small\r\n\r\nafter the big one\r\n"
	tx := func(msg string) string {
		return "MAIL FROM:<alice@contoso.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n" + dotted(msg)
	}
	go io.WriteString(r.c, tx(big)+tx(small)+"NOOP\r\n")
	for _, want := range []string{"250 ", "250 ", "354 ", "250 2.0.0 OK <", "250 ", "250 ", "354 ", "250 2.0.0 OK <", "250 "} {
		r.expect(want)
	}
	msgs := e.messages(2)
	if string(msgs[0].Data) != big || string(msgs[1].Data) != small {
		t.Errorf("upstream got %d and %d bytes, want %d and %d, unchanged", len(msgs[0].Data), len(msgs[1].Data), len(big), len(small))
	}
	if c := e.onlyConn(); c.ra.held.Load() {
		t.Errorf("an idle session holds a read-ahead buffer")
	}
}

// onlyConn returns the proxy's one client connection.
func (e *env) onlyConn() *conn {
	e.t.Helper()
	e.srv.mu.Lock()
	defer e.srv.mu.Unlock()
	if len(e.srv.conns) != 1 {
		e.t.Fatalf("proxy has %d connections, want 1", len(e.srv.conns))
	}
	for c := range e.srv.conns {
		return c
	}
	return nil
}

// Commands a client pipelines behind STARTTLS were sent in clear: they
// must never run as commands inside TLS (CVE-2011-0411). Pipelined right
// after EHLO, go-smtp drops them with its reader; pipelined behind a large
// message, more than go-smtp's reader holds, part of them stays in the
// read-ahead buffer and goes into the TLS handshake, which fails.
func TestSTARTTLSPipelinedCommandNotRun(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		before   func(r *raw) string // the session so far; returns what to write before STARTTLS
		injected string
		mayFail  bool // the TLS handshake may fail
	}{
		{"after EHLO", func(r *raw) string {
			r.mustCmd("EHLO client", "250 ")
			return ""
		}, "VRFY injected\r\n", false},
		{"after a large message", func(r *raw) string {
			r.mustCmd("EHLO client", "250 ")
			r.mustCmd("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "235 ")
			return "MAIL FROM:<alice@contoso.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n" + dotted(bigMessage())
		}, "VRFY injected\r\n" + strings.Repeat("NOOP\r\n", 2000), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOpts{frontTLS: true})
			r := e.raw()
			pre := tc.before(r)
			go io.WriteString(r.c, pre+"STARTTLS\r\n"+tc.injected)
			if pre != "" {
				for _, want := range []string{"250 ", "250 ", "354 ", "250 2.0.0 OK <"} {
					r.expect(want)
				}
			}
			r.expect("220 ")
			cfg := e.ca.ClientTLS()
			cfg.ServerName = "127.0.0.1"
			tlsc := tls.Client(r.c, cfg)
			tlsc.SetDeadline(time.Now().Add(testWait))
			if err := tlsc.Handshake(); err != nil {
				if !tc.mayFail {
					t.Fatalf("TLS Handshake() = %v", err)
				}
				t.Logf("TLS handshake failed, as it may: %v", err)
				return
			}
			tr := &raw{t: t, c: tlsc, r: bufio.NewReader(tlsc)}
			if l := tr.cmd("RSET"); !strings.HasPrefix(l, "250 ") {
				t.Fatalf("first reply inside TLS = %q, want the 250 to RSET (a command sent in clear ran inside TLS)", l)
			}
		})
	}
}
