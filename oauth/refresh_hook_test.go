package oauth

import (
	"context"
	"time"

	"mailproxy/internal/fake365"
	"strings"
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

func TestFlushSavesUnsavedTokens(t *testing.T) {
	e := newEnv(t)
	rec := &recorder{fail: 2}
	s := e.source(t, e.seed(), rec.persist)
	mustToken(t, s) // the save fails: rotated tokens only in memory
	if !s.Flush() {
		t.Fatalf("Flush() with the save still failing = saved, want unsaved")
	}
	if s.Flush() {
		t.Errorf("Flush() after the store recovered = unsaved, want saved")
	}
	last, n := rec.last()
	if n != 1 || last.RefreshToken != s.Tokens().RefreshToken {
		t.Errorf("saved %d sets (current refresh token: %v), want 1 with the current token", n, last.RefreshToken == s.Tokens().RefreshToken)
	}
}

func TestStatusHintNamesTheAccount(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t, e.openStore(t, t.TempDir()))
	st := m.Status(testUser)
	if !st.NeedsSignIn || !strings.Contains(st.Hint, "mailproxy login "+testUser) {
		t.Errorf("Status(never signed in) = needs sign-in %v, hint %q; want a hint naming %s", st.NeedsSignIn, st.Hint, testUser)
	}
}

func TestSlowRefreshAheadDoesNotDelayLogins(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.seed(), nil)
	tok := mustToken(t, s)
	e.clock.Advance(35 * time.Minute) // due for a refresh, 25 minutes left
	e.idp.SetFailure(&fake365.Failure{Hang: true})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	got, err := s.Token(ctx)
	if err != nil || got != tok {
		t.Fatalf("Token() with a hanging IdP and 25 min left = %v; want the current token", err)
	}
	if ctx.Err() != nil {
		t.Errorf("Token() returned only when the caller's deadline passed; want it to return after a short wait")
	}
}
