package imap

import (
	"strings"
	"testing"
)

// A flood of silent connections on one listener is capped there: one more is
// told so at once, another listener of the same server still serves, and a
// connection that logged in leaves the count.
func TestPreAuthConnsPerListener(t *testing.T) {
	e := newEnv(t, withServer(func(s *Server) { s.MaxPreAuthConns = 2 }))
	first := greet(t, e.addr)
	greet(t, e.addr)

	over := dialRaw(t, e.addr)
	if l := over.line(); l+"\r\n" != TooManyWaiting {
		t.Fatalf("third connection read %q, want %q", l, strings.TrimSpace(TooManyWaiting))
	}
	if rest := over.readToEOF(); rest != "" {
		t.Errorf("after the refusal read %q, want the connection closed", rest)
	}

	other := greet(t, e.serve(nil))
	other.login("a1", bob, bobPass)

	// Logged in: off the count, so the listener takes one more.
	first.login("a1", alice, alicePass)
	greet(t, e.addr)
	if !strings.Contains(e.logs.String(), "too many connections on this listener waiting to log in") {
		t.Errorf("no log line for the refusal; log:\n%s", e.logs.String())
	}
}
