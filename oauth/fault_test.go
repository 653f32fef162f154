package oauth

import (
	"log/slog"
	"mailproxy/internal/testutil"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The state directory cannot be written when a rotated refresh token must
// be persisted. Tests run as root in CI, where chmod 0500 stops nothing, so
// the fault is made by replacing the store directory with a regular file
// of the same name: every open, lock and rename under it fails with
// ENOTDIR, for root too. The source keeps serving the new tokens from
// memory, says so loudly in the log, and persists them once the directory
// is back.
func TestFaultStateDirUnwritable(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(t.TempDir(), "state")
	st := e.openStore(t, dir)
	var logs testutil.Buffer
	m := NewManager(st, slog.New(slog.NewTextHandler(&logs, nil)))
	m.Now = e.clock.Now
	m.SetAccount(Account{Username: testUser, Flow: "authcode", Provider: e.p})
	e.signIn(t, m, "pw")
	src := mustOpen(t, m, testUser, "pw")
	first := mustToken(t, src) // the first refresh persists fine
	if src.State().Unsaved {
		t.Fatalf("State().Unsaved after a persisted refresh = true")
	}

	moved := dir + ".moved"
	if err := os.Rename(dir, moved); err != nil {
		t.Fatalf("Rename() = %v", err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatalf("WriteFile() = %v", err)
	}
	restore := func() {
		os.Remove(dir)
		os.Rename(moved, dir)
	}
	defer restore()

	e.clock.Advance(40 * time.Minute) // due for refresh
	tok := mustToken(t, src)
	if tok == first {
		t.Fatalf("Token() after 40 minutes returned the old token, want a refreshed one")
	}
	e.checkValid(t, tok, testUser)
	if !src.State().Unsaved {
		t.Errorf("State().Unsaved with the directory gone = false, want true")
	}
	if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "could not save the rotated refresh token") {
		t.Errorf("log does not say loudly that the token was not saved:\n%s", l)
	}
	if got := mustToken(t, src); got != tok {
		t.Errorf("Token() while unsaved = another token, want the one in memory")
	}

	restore()
	mustToken(t, src) // retries the save
	if src.State().Unsaved {
		t.Errorf("State().Unsaved after the directory came back = true, want false")
	}
	ent, _, err := e.openStore(t, dir).Unlock(testUser, "pw")
	if err != nil {
		t.Fatalf("Unlock() = %v", err)
	}
	if ent.Secret.RefreshToken != src.Tokens().RefreshToken {
		t.Errorf("token file does not hold the rotated refresh token after the retry")
	}
	// A restart picks it up, and the identity provider takes it.
	m2 := e.manager(t, e.openStore(t, dir))
	src2 := mustOpen(t, m2, testUser, "pw")
	if _, err := src2.Refresh(t.Context(), src2.Tokens().AccessToken); err != nil {
		t.Errorf("Refresh() with the persisted refresh token = %v", err)
	}
}

// Two mailproxy processes on one state directory (two Stores and Managers
// over the same files) take turns rotating the refresh token: each picks up
// the other's rotation at its next login, and the file always holds the
// newest token, which the identity provider still takes.
func TestFaultTwoProcessesTakeTurns(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	m1 := e.manager(t, e.openStore(t, dir))
	m2 := e.manager(t, e.openStore(t, dir))
	e.signIn(t, m1, "pw")

	for i, m := range []*Manager{m1, m2, m1, m2, m2, m1} {
		src := mustOpen(t, m, testUser, "pw") // a login: picks up the other's rotation
		e.clock.Advance(40 * time.Minute)
		tok := mustToken(t, src) // rotates
		e.checkValid(t, tok, testUser)
		ent, _, err := e.openStore(t, dir).Unlock(testUser, "pw")
		if err != nil {
			t.Fatalf("turn %d: Unlock() = %v", i, err)
		}
		if ent.Secret.RefreshToken != src.Tokens().RefreshToken {
			t.Fatalf("turn %d: token file does not hold the newest refresh token", i)
		}
	}
	if n := e.idp.Stats().Errors; n != 0 {
		t.Errorf("IdP errors = %d, want 0 (no refresh with a stale token)", n)
	}
	m3 := e.manager(t, e.openStore(t, dir))
	src := mustOpen(t, m3, testUser, "pw")
	if _, err := src.Refresh(t.Context(), src.Tokens().AccessToken); err != nil {
		t.Errorf("Refresh() with the token on file = %v", err)
	}
}

// Both processes refresh the same refresh token at the same moment. The
// identity provider rotates it for one; the other is refused. The winner's
// token is on file (the loser cannot overwrite it: it has nothing newer
// and SaveIf checks the stamp). The loser recovers the winner's tokens from
// the file at once when the winner saved them before the refusal came
// back, else at its next login.
func TestFaultTwoProcessesRace(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	m1 := e.manager(t, e.openStore(t, dir))
	m2 := e.manager(t, e.openStore(t, dir))
	e.signIn(t, m1, "pw")
	s1 := mustOpen(t, m1, testUser, "pw")
	s2 := mustOpen(t, m2, testUser, "pw")

	type result struct {
		src *Source
		tok string
		err error
	}
	results := make(chan result, 2)
	for _, s := range []*Source{s1, s2} {
		go func() {
			tok, err := s.Token(t.Context())
			results <- result{s, tok, err}
		}()
	}
	var ok []result
	var loser *Source
	for range 2 {
		r := <-results
		if r.err == nil {
			ok = append(ok, r)
		} else {
			loser = r.src
		}
	}
	if len(ok) == 0 {
		t.Fatalf("concurrent refreshes of one refresh token: both failed")
	}
	ent, _, err := e.openStore(t, dir).Unlock(testUser, "pw")
	if err != nil {
		t.Fatalf("Unlock() = %v", err)
	}
	for _, r := range ok {
		if ent.Secret.RefreshToken != r.src.Tokens().RefreshToken || ent.Secret.AccessToken != r.tok {
			t.Errorf("a process that got a token holds another one than the token file")
		}
	}
	if loser == nil {
		return // the loser recovered the winner's tokens at once
	}

	// The loser's next login reads the entry again and works.
	lm := m1
	if loser == s2 {
		lm = m2
	}
	again := mustOpen(t, lm, testUser, "pw")
	if again != loser {
		t.Errorf("Open() returned a new Source, want the existing one with the new tokens")
	}
	tok, err := again.Token(t.Context())
	if err != nil {
		t.Fatalf("Token() on the loser after a new login = %v", err)
	}
	e.checkValid(t, tok, testUser)
}

// A process whose refresh token was rotated by another process on the same
// state dir reads the new tokens from the file (same key, no password) and
// goes on, instead of asking for a new sign-in: the callers waiting on the
// refused refresh already get the recovered token.
func TestFaultOtherProcessRotatedFirst(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	m1 := e.manager(t, e.openStore(t, dir))
	m2 := e.manager(t, e.openStore(t, dir))
	e.signIn(t, m1, "pw")
	s1 := mustOpen(t, m1, testUser, "pw")
	s2 := mustOpen(t, m2, testUser, "pw")

	tok1, err := s1.Token(t.Context()) // rotates and saves
	if err != nil {
		t.Fatalf("first process: Token() = %v", err)
	}
	tok2, err := s2.Token(t.Context())
	if err != nil {
		t.Fatalf("second process: Token() with the rotated-away refresh token = %v, want the tokens on file", err)
	}
	if tok2 != tok1 {
		t.Errorf("second process uses another access token than the one on file")
	}
	if st := m2.Status(testUser); st.NeedsSignIn {
		t.Errorf("Status() after the other process rotated = needs sign-in (%s), want signed in", st.LastError)
	}
	// And it keeps refreshing with the file's refresh token.
	if _, err := s2.Refresh(t.Context(), tok2); err != nil {
		t.Errorf("second process: Refresh() = %v", err)
	}
}
