package oauth

import (
	"sync"
	"testing"
)

func TestManagerOnRefresh(t *testing.T) {
	e := newEnv(t)
	st := e.openStore(t, t.TempDir())
	m := NewManager(st, nil)
	m.Now = e.clock.Now
	var mu sync.Mutex
	var got []bool
	m.OnRefresh = func(user string, ok bool) {
		mu.Lock()
		defer mu.Unlock()
		if user != testUser {
			t.Errorf("OnRefresh user = %q, want %q", user, testUser)
		}
		got = append(got, ok)
	}
	m.SetAccount(Account{Username: testUser, Flow: "authcode", Provider: e.p})
	e.signIn(t, m, "pw")
	src := mustOpen(t, m, testUser, "pw")
	if _, err := src.Token(t.Context()); err != nil {
		t.Fatalf("Token() = %v", err)
	}
	e.idp.Revoke(testUser)
	tok := src.Tokens().AccessToken
	if _, err := src.Refresh(t.Context(), tok); err == nil {
		t.Fatalf("Refresh() after Revoke = nil error, want invalid_grant")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || !got[0] || got[1] {
		t.Errorf("OnRefresh outcomes = %v, want [true false]", got)
	}
}
