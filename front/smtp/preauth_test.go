package smtp

import (
	"bufio"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// A client that sends NOOP every second never lets go-smtp's per-command
// read timeout fire; smtp.preauth_timeout ends it anyway.
func TestPreAuthTimeoutAbsolute(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{server: func(s *Server) { s.PreAuthTimeout = 3 * time.Second; s.ReadTimeout = time.Minute }})
	r := e.raw()
	r.mustCmd("EHLO client", "250 ")
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		if i > 8 {
			t.Fatalf("still connected after %d NOOPs a second apart, want closed after 3s", i)
		}
		<-tick.C
		line := r.cmd("NOOP")
		if strings.HasPrefix(line, "421 4.4.2") {
			break
		}
		if !strings.HasPrefix(line, "250") {
			t.Fatalf("NOOP = %q", line)
		}
	}
	if _, err := r.r.ReadByte(); err == nil {
		t.Errorf("connection still open after the 421")
	}
	// A client that logs in in time is not cut off later.
	r2 := e.session()
	<-tick.C
	<-tick.C
	<-tick.C
	<-tick.C
	r2.mustCmd("NOOP", "250 ")
}

// Commands before AUTH are capped.
func TestPreAuthCommandCap(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{server: func(s *Server) { s.MaxPreAuthCommands = 10 }})
	r := e.raw()
	r.c.Write([]byte(strings.Repeat("NOOP\r\n", 40)))
	replies := 0
	for {
		line, err := r.r.ReadString('\n')
		if err != nil {
			break
		}
		if strings.HasPrefix(line, "421 4.4.2") {
			replies = -replies
			break
		}
		replies++
	}
	if replies >= 0 || -replies > 11 {
		t.Errorf("after 40 pipelined NOOPs with a cap of 10: %d replies, then 421 = %v; want at most 11 replies and a 421", max(replies, -replies), replies < 0)
	}
	// Logged in, the cap is off.
	r2 := e.session()
	for range 20 {
		r2.mustCmd("NOOP", "250 ")
	}
}

// A flood of silent connections on one listener fills its pre-login slots
// only: further connections to it are refused at once with 421, logged-in
// sessions go on, and another listener of the server still serves.
func TestPreAuthFloodOneListener(t *testing.T) {
	t.Parallel()
	const slots = 20
	e := newEnv(t, envOpts{server: func(s *Server) { s.MaxPreAuthConns = slots }})
	in := e.session() // logged in before the flood
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(ln)
	conns := dialMany(t, e.addr, slots)
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(testWait))
		if l, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.HasPrefix(l, "220 ") {
			t.Fatalf("greeting = %q, %v", l, err)
		}
	}
	extra, err := net.DialTimeout("tcp", e.addr, testWait)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	got, err := readUntilEOF(extra)
	if err != nil || got != TooManyWaiting {
		t.Errorf("connection over the pre-login cap read %q, %v; want %q and EOF", got, err, TooManyWaiting)
	}
	in.mustCmd("NOOP", "250 ")
	other, err := net.DialTimeout("tcp", ln.Addr().String(), testWait)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.SetReadDeadline(time.Now().Add(testWait))
	if l, err := bufio.NewReader(other).ReadString('\n'); err != nil || !strings.HasPrefix(l, "220 ") {
		t.Errorf("other listener during the flood: %q, %v; want the greeting", l, err)
	}
	// A slot comes back when a waiting connection goes.
	conns[0].Close()
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", e.addr, testWait)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(testWait))
		l, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err == nil && strings.HasPrefix(l, "220 ") {
			break
		}
		if i > 100 || err != nil && !errors.Is(err, net.ErrClosed) && l == "" {
			t.Fatalf("no slot after a waiting connection closed: %q, %v", l, err)
		}
	}
}
