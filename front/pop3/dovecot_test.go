package pop3

import (
	"slices"
	"testing"

	"mailproxy/internal/dovecot"
)

// TestDovecot runs Python's poplib through the front to a real POP3 server
// (a private Dovecot whose oauth2 passdb asks the fake IdP about tokens):
// every message byte for byte, UIDL stable, DELE applied at QUIT.
func TestDovecot(t *testing.T) {
	e := newEnv(t)
	dv := dovecot.New(t, e.ca, e.idp, "common")
	e.setPOPAddr(dv.POP3S)
	msgs := testMessages()
	var want []string
	for _, m := range msgs {
		if err := dv.Deliver(alice, m); err != nil {
			t.Fatal(err)
		}
		want = append(want, sha(m))
	}
	r1 := poplibFetch(t, e.addr, alice, alicePass, 1)
	if r1.Count != len(msgs) || !slices.Equal(r1.SHA, want) {
		t.Fatalf("poplib through mailproxy to Dovecot = %d messages, sha %v; want %d, %v", r1.Count, r1.SHA, len(msgs), want)
	}
	r2 := poplibFetch(t, e.addr, alice, alicePass, 0)
	if !slices.Equal(r2.UIDL, r1.UIDL[1:]) || !slices.Equal(r2.SHA, want[1:]) {
		t.Errorf("after DELE 1 and QUIT: UIDL %v sha %v, want %v %v", r2.UIDL, r2.SHA, r1.UIDL[1:], want[1:])
	}
}
