package imap

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"mailproxy/auth"
	"mailproxy/upstream"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// scriptUpstream is an IMAP server that takes any XOAUTH2 login and then
// hands each connection to the test, which plays the upstream's part.
type scriptUpstream struct {
	conns chan *scriptConn
}

type scriptConn struct {
	net.Conn
	r *bufio.Reader
}

// newScriptUpstream starts a scriptUpstream and points username's account
// at it.
func newScriptUpstream(e *env, username, password string) *scriptUpstream {
	e.t.Helper()
	cfg, err := e.ca.ServerTLS()
	if err != nil {
		e.t.Fatalf("ServerTLS() = %v", err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		e.t.Fatalf("Listen() = %v", err)
	}
	e.t.Cleanup(func() { ln.Close() })
	s := &scriptUpstream{conns: make(chan *scriptConn, 4)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.login(c)
		}
	}()
	e.auth.set(username, password, &auth.Grant{
		Username: username,
		Mailbox:  username,
		Tokens:   e.tokens[username],
		Upstream: &upstream.Upstream{Addr: map[string]string{"imap": ln.Addr().String()}, TLS: e.ca.ClientTLS()},
	})
	return s
}

func (s *scriptUpstream) login(c net.Conn) {
	c.SetDeadline(time.Now().Add(testTimeout))
	r := bufio.NewReader(c)
	io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] script ready\r\n")
	line, err := r.ReadString('\n')
	tag, rest, _ := strings.Cut(line, " ")
	if err != nil || !strings.HasPrefix(rest, "AUTHENTICATE XOAUTH2 ") {
		c.Close()
		return
	}
	io.WriteString(c, tag+" OK [CAPABILITY IMAP4rev1] logged in\r\n")
	c.SetDeadline(time.Time{})
	s.conns <- &scriptConn{Conn: c, r: r}
}

// next returns the next logged-in upstream connection.
func (s *scriptUpstream) next(t *testing.T) *scriptConn {
	t.Helper()
	select {
	case c := <-s.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(testTimeout):
		t.Fatalf("no upstream login within %v", testTimeout)
		return nil
	}
}

// A relayed session in the middle of a large FETCH literal at shutdown gets
// the BYE only after the literal and its line: what it read before is what
// the upstream sent. Shutdown waits for it.
func TestShutdownByeAfterLiteral(t *testing.T) {
	e := newEnv(t)
	script := newScriptUpstream(e, alice, alicePass)
	kicked := make(chan struct{})
	e.srv.core.AfterKick = func() {
		select {
		case kicked <- struct{}{}:
		default:
		}
	}
	c := greet(t, e.addr)
	c.login("a", alice, alicePass)
	up := script.next(t)
	c.send("f UID FETCH 7 BODY[]\r\n")
	if line, err := up.r.ReadString('\n'); err != nil || line != "f UID FETCH 7 BODY[]\r\n" {
		t.Fatalf("upstream read %q, %v, want the FETCH", line, err)
	}

	const size = 20 << 20
	msg := message(size, "shutdown")
	var stream []byte
	stream = fmt.Appendf(stream, "* 1 FETCH (UID 7 BODY[] {%d}\r\n", len(msg))
	head := len(stream) + 1<<20
	stream = append(stream, msg...)
	stream = append(stream, ")\r\n"...)
	fetchEnd := len(stream)
	stream = append(stream, "f OK FETCH completed\r\n"...)

	// The client reads the first MiB: the session is inside the literal.
	go up.Write(stream[:head])
	first := make([]byte, head)
	if _, err := io.ReadFull(c.r, first); err != nil || !bytes.Equal(first, stream[:head]) {
		t.Fatalf("client ReadFull() = %v, bytes equal %v", err, bytes.Equal(first, stream[:head]))
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c.r)
		c.conn.Close()
		got <- append(first, b...)
	}()
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(context.Background()) }()
	select {
	case <-kicked:
	case <-time.After(testTimeout):
		t.Fatalf("Shutdown did not ask the sessions to end")
	}
	// The rest of the literal, slowly; the BYE must wait for it.
	for off := head; off < len(stream); {
		n := min(len(stream)-off, 256<<10)
		if _, err := up.Write(stream[off : off+n]); err != nil {
			break // closed after the BYE
		}
		off += n
		if off < fetchEnd {
			select {
			case err := <-done:
				t.Fatalf("Shutdown() = %v in the middle of a literal, want it to wait", err)
			default:
			}
		}
	}

	b := <-got
	prefix, ok := bytes.CutSuffix(b, []byte(shutdownBye))
	switch {
	case !ok:
		t.Fatalf("client read %d bytes ending %q, want them to end with %q", len(b), b[max(0, len(b)-60):], shutdownBye)
	case !bytes.HasPrefix(stream, prefix):
		i := 0
		for i < len(prefix) && prefix[i] == stream[i] {
			i++
		}
		t.Fatalf("client bytes before the BYE differ from the upstream's at offset %d of %d", i, len(prefix))
	case len(prefix) != fetchEnd && len(prefix) != len(stream):
		t.Fatalf("BYE after %d bytes, want it after the FETCH response (%d) or the tagged OK (%d)", len(prefix), fetchEnd, len(stream))
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown() = %v, want nil", err)
		}
	case <-time.After(testTimeout):
		t.Fatalf("Shutdown() did not return after the session ended")
	}
	// The proxy closed the upstream connection.
	up.SetReadDeadline(time.Now().Add(testTimeout))
	if rest, err := io.ReadAll(up.r); err != nil && !isReset(err) {
		t.Errorf("upstream ReadAll() = %q, %v, want EOF", rest, err)
	}
}

// A client that stops reading while the upstream streams a literal cannot
// be told BYE: Shutdown closes it when its context ends.
func TestShutdownClientNotReading(t *testing.T) {
	e := newEnv(t)
	script := newScriptUpstream(e, alice, alicePass)
	c := greet(t, e.addr)
	c.login("a", alice, alicePass)
	up := script.next(t)
	c.send("f UID FETCH 7 BODY[]\r\n")
	if _, err := up.r.ReadString('\n'); err != nil {
		t.Fatalf("upstream ReadString() = %v", err)
	}
	// The upstream streams a literal until the proxy's buffers and the
	// client's socket are full: its writes then block.
	written := make(chan error, 1)
	go func() {
		if _, err := io.WriteString(up, "* 1 FETCH (UID 7 BODY[] {1000000000}\r\n"); err != nil {
			written <- err
			return
		}
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096)
		for {
			up.SetWriteDeadline(time.Now().Add(testTimeout))
			if _, err := up.Write(chunk); err != nil {
				written <- err
				return
			}
		}
	}()

	// The client reads the literal's announcement, so the session is
	// inside the literal, and then nothing more.
	c.expect("* 1 FETCH (UID 7 BODY[] {1000000000}")

	const grace = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	start := time.Now()
	err := e.srv.Shutdown(ctx)
	if d := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || d < grace || d > grace+5*time.Second {
		t.Errorf("Shutdown() = %v after %v, want %v after about %v", err, d, context.DeadlineExceeded, grace)
	}
	// Both connections are closed: the upstream's writer fails, the
	// client reads what was in flight and then the end.
	select {
	case err := <-written:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("upstream Write() = %v, want the connection closed", err)
		}
	case <-time.After(testTimeout):
		t.Fatalf("upstream writer still running: the proxy did not close the upstream")
	}
	b, err := io.ReadAll(c.r)
	if err != nil && !isReset(err) {
		t.Fatalf("client ReadAll() = %d bytes, %v, want EOF", len(b), err)
	}
	if bytes.Contains(b, []byte("BYE")) {
		t.Errorf("client read a BYE in the middle of the literal")
	}
}
