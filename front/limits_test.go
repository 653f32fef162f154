package front

import (
	"bufio"
	"io"
	"log/slog"
	"mailproxy/internal/testutil"
	"net"
	"strings"
	"testing"
	"time"
)

const testRefusal = "* BYE too many connections\r\n"

// limitServer accepts from ln and hands every connection to the test.
func limitServer(t *testing.T, ln net.Listener) <-chan net.Conn {
	t.Helper()
	ch := make(chan net.Conn, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(ch)
				return
			}
			c.Write([]byte("* OK hello\r\n"))
			ch <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range ch {
			c.Close()
		}
	})
	return ch
}

// dialFrom connects to addr from the local address from ("" for any) and
// returns the first line the server sent, or "EOF" if it closed at once.
func dialFrom(t *testing.T, from, addr string) (net.Conn, string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("Dial(%s from %q) = %v", addr, from, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		if err == io.EOF && line == "" {
			return c, "EOF"
		}
		t.Fatalf("read first line from %s = %q, %v", addr, line, err)
	}
	return c, line
}

func TestLimitListenerTotal(t *testing.T) {
	var logs testutil.Buffer
	ln := NewConnLimiter(2, 0).Listener(testutil.Listen(t), testRefusal, slog.New(slog.NewTextHandler(&logs, nil)))
	accepted := limitServer(t, ln)
	addr := ln.Addr().String()

	_, l1 := dialFrom(t, "", addr)
	_, l2 := dialFrom(t, "", addr)
	if l1 != "* OK hello\r\n" || l2 != "* OK hello\r\n" {
		t.Fatalf("first two connections got %q, %q, want the greeting", l1, l2)
	}
	_, l3 := dialFrom(t, "", addr)
	if l3 != testRefusal {
		t.Errorf("third connection got %q, want %q", l3, testRefusal)
	}
	// Closing an accepted connection frees its slot.
	c1 := <-accepted
	<-accepted
	c1.Close()
	c1.Close() // a second Close must not free a second slot
	_, l4 := dialFrom(t, "", addr)
	if l4 != "* OK hello\r\n" {
		t.Errorf("connection after one closed got %q, want the greeting", l4)
	}
	_, l5 := dialFrom(t, "", addr)
	if l5 != testRefusal {
		t.Errorf("connection over the limit again got %q, want %q", l5, testRefusal)
	}
	if got := logs.String(); strings.Count(got, "too many connections") != 1 || !strings.Contains(got, "remote=127.0.0.1 ") || !strings.Contains(got, "limit=max_connections") {
		t.Errorf("log = %q, want one rate-limited refusal line naming the bare address and the limit", got)
	}
}

func TestLimitListenerPerIP(t *testing.T) {
	lim := NewConnLimiter(10, 1)
	ln := lim.Listener(testutil.Listen(t), "", slog.New(slog.DiscardHandler))
	limitServer(t, ln)
	addr := ln.Addr().String()

	if _, l := dialFrom(t, "127.0.0.1", addr); l != "* OK hello\r\n" {
		t.Fatalf("first connection from 127.0.0.1 got %q, want the greeting", l)
	}
	if _, l := dialFrom(t, "127.0.0.1", addr); l != "EOF" {
		t.Errorf("second connection from 127.0.0.1 got %q, want it closed at once (no refusal line)", l)
	}
	if _, l := dialFrom(t, "127.0.0.2", addr); l != "* OK hello\r\n" {
		t.Errorf("connection from 127.0.0.2 got %q, want the greeting", l)
	}
	if got := lim.Refused(); got != 1 {
		t.Errorf("Refused() = %d, want 1", got)
	}
	if got := lim.Open(); got != 2 {
		t.Errorf("Open() = %d, want 2", got)
	}
}

// The wrapped connection still half-closes, which the relay relies on.
func TestLimitConnCloseWrite(t *testing.T) {
	ln := NewConnLimiter(1, 1).Listener(testutil.Listen(t), "", nil)
	accepted := limitServer(t, ln)
	c, _ := dialFrom(t, "", ln.Addr().String())
	sc := <-accepted
	cw, ok := sc.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("accepted %T has no CloseWrite", sc)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite() = %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("client Read after CloseWrite = %v, want EOF", err)
	}
	if _, err := c.Write([]byte("still open\r\n")); err != nil {
		t.Errorf("client Write after the server's CloseWrite = %v, want nil", err)
	}
	buf := make([]byte, 12)
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(sc, buf); err != nil {
		t.Errorf("server Read after its CloseWrite = %v, want the data", err)
	}
}

func TestConnLimiterSetLimits(t *testing.T) {
	l := NewConnLimiter(1, 0)
	ln := l.Listener(testutil.Listen(t), testRefusal, slog.New(slog.DiscardHandler))
	limitServer(t, ln)
	addr := ln.Addr().String()
	if _, line := dialFrom(t, "", addr); line != "* OK hello\r\n" {
		t.Fatalf("first connection got %q, want the greeting", line)
	}
	if _, line := dialFrom(t, "", addr); line != testRefusal {
		t.Fatalf("second connection with a limit of 1 got %q, want %q", line, testRefusal)
	}
	l.SetLimits(2, 0) // reload raises the limit
	if _, line := dialFrom(t, "", addr); line != "* OK hello\r\n" {
		t.Errorf("second connection after SetLimits(2) got %q, want the greeting", line)
	}
}
