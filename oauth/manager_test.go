package oauth

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mailproxy/oauth/store"
)

var testKDF = store.Params{Time: 1, Memory: 64, Threads: 1}

func (e *env) openStore(t testing.TB, dir string) *store.Store {
	t.Helper()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatalf("store.Open() = %v", err)
	}
	st.KDF = testKDF
	return st
}

func (e *env) manager(t testing.TB, st *store.Store) *Manager {
	t.Helper()
	m := NewManager(st, slog.New(slog.DiscardHandler))
	m.Now = e.clock.Now
	m.SetAccount(Account{Username: testUser, Flow: "authcode", Provider: e.p})
	return m
}

// signIn seals a fresh grant for testUser under password, as `mailproxy
// login` does, and returns its refresh token.
func (e *env) signIn(t testing.TB, m *Manager, password string) string {
	t.Helper()
	ts := e.seed()
	if err := m.Seal(testUser, password, ts, store.Meta{Identity: testUser, Flow: "authcode"}); err != nil {
		t.Fatalf("Seal() = %v", err)
	}
	return ts.RefreshToken
}

func mustOpen(t testing.TB, m *Manager, user, password string) *Source {
	t.Helper()
	ts, id, err := m.Open(t.Context(), user, password)
	if err != nil {
		t.Fatalf("Open(%q) = %v", user, err)
	}
	if id != testUser {
		t.Errorf("Open(%q) identity = %q, want %q", user, id, testUser)
	}
	return ts
}

func TestManagerOpenCaches(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	m := e.manager(t, e.openStore(t, dir))
	e.signIn(t, m, "pw")

	s1 := mustOpen(t, m, testUser, "pw")
	if n := m.unlocks.Load(); n != 1 {
		t.Fatalf("unlocks after first Open = %d, want 1", n)
	}
	s2 := mustOpen(t, m, strings.ToUpper(testUser), "pw")
	if s2 != s1 {
		t.Errorf("second Open returned another Source")
	}
	if n := m.unlocks.Load(); n != 1 {
		t.Errorf("unlocks after second Open = %d, want 1 (no KDF)", n)
	}
}

func TestManagerConcurrentFirstOpen(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t, e.openStore(t, t.TempDir()))
	e.signIn(t, m, "pw")
	const n = 50
	srcs := make([]*Source, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ts, _, err := m.Open(t.Context(), testUser, "pw")
			if err != nil {
				t.Errorf("Open() = %v", err)
			}
			srcs[i] = ts
		})
	}
	wg.Wait()
	if got := m.unlocks.Load(); got != 1 {
		t.Errorf("unlocks after %d concurrent first Opens = %d, want 1", n, got)
	}
	for _, s := range srcs {
		if s != srcs[0] {
			t.Fatalf("concurrent Opens returned different sources")
		}
	}
}

func TestManagerWrongPassword(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	m := e.manager(t, e.openStore(t, dir))
	e.signIn(t, m, "pw")
	path := filepath.Join(dir, testUser+".token")
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Open(t.Context(), testUser, "wrong"); !errors.Is(err, store.ErrBadCredentials) {
		t.Errorf("Open(wrong) = %v, want ErrBadCredentials", err)
	}
	mustOpen(t, m, testUser, "pw")
	// With the right password cached, a wrong one still fails.
	if _, _, err := m.Open(t.Context(), testUser, "wrong"); !errors.Is(err, store.ErrBadCredentials) {
		t.Errorf("Open(wrong) after Open(right) = %v, want ErrBadCredentials", err)
	}
	if _, _, err := m.Open(t.Context(), testUser, ""); !errors.Is(err, store.ErrBadCredentials) {
		t.Errorf("Open(empty) = %v, want ErrBadCredentials", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Errorf("failed Opens changed the token file")
	}
}

func TestManagerNotSignedIn(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t, e.openStore(t, t.TempDir()))
	if _, _, err := m.Open(t.Context(), testUser, "pw"); !errors.Is(err, store.ErrNotSignedIn) {
		t.Errorf("Open(no entry) = %v, want ErrNotSignedIn", err)
	}
	if _, _, err := m.Open(t.Context(), "nobody@contoso.com", "pw"); err == nil {
		t.Errorf("Open(unconfigured account) = nil error")
	}
	st := m.Status(testUser)
	if st.SignedIn || !st.NeedsSignIn || !strings.Contains(st.Hint, "mailproxy login") {
		t.Errorf("Status(no entry) = %+v; want not signed in, needs sign-in, with a hint", st)
	}
}

// TestManagerPicksUpNewSignIn: `mailproxy login` (another process, another
// Manager on the same directory) replaces the entry while serve runs.
func TestManagerPicksUpNewSignIn(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	m := e.manager(t, e.openStore(t, dir))
	e.signIn(t, m, "pw")
	src := mustOpen(t, m, testUser, "pw")
	tok1 := mustToken(t, src)

	login := e.manager(t, e.openStore(t, dir))
	rt2 := e.signIn(t, login, "pw2")

	src2 := mustOpen(t, m, testUser, "pw2")
	if src2 != src {
		t.Errorf("Open after a new sign-in returned another Source; sessions share one")
	}
	if n := m.unlocks.Load(); n != 2 {
		t.Errorf("unlocks = %d, want 2 (the entry changed)", n)
	}
	if got := src.Tokens().RefreshToken; got != rt2 {
		t.Errorf("Source refresh token is not the new sign-in's")
	}
	tok2 := mustToken(t, src) // the new entry has no access token: refresh with rt2
	if tok2 == tok1 {
		t.Errorf("Token() after the new sign-in = the old token")
	}
	if _, _, err := m.Open(t.Context(), testUser, "pw"); !errors.Is(err, store.ErrBadCredentials) {
		t.Errorf("Open(old password) after the new sign-in = %v, want ErrBadCredentials", err)
	}
}

func TestManagerRotationResealed(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	st := e.openStore(t, dir)
	m := e.manager(t, st)
	rt0 := e.signIn(t, m, "pw")
	src := mustOpen(t, m, testUser, "pw")
	e.clock.Advance(time.Minute)
	mustToken(t, src)
	rt1 := src.Tokens().RefreshToken
	if rt1 == rt0 {
		t.Fatalf("refresh token not rotated")
	}

	ent, _, err := st.Unlock(testUser, "pw")
	if err != nil {
		t.Fatalf("Unlock() = %v", err)
	}
	if ent.Secret.RefreshToken != rt1 || ent.Secret.AccessToken != src.Tokens().AccessToken {
		t.Errorf("token file does not hold the rotated tokens")
	}
	if !ent.Meta.LastRefresh.Equal(e.clock.Now()) || !ent.Meta.RefreshObtained.Equal(e.clock.Now()) || !ent.Meta.AccessExpiry.Equal(src.Tokens().Expiry) {
		t.Errorf("meta after rotation = %+v; want last_refresh, refresh_obtained now and access_expiry set", ent.Meta)
	}
	// Our own write does not cost the next login a KDF.
	mustOpen(t, m, testUser, "pw")
	if n := m.unlocks.Load(); n != 1 {
		t.Errorf("unlocks after a rotation = %d, want 1", n)
	}

	// A restart (new Manager) opens the rotated entry and refreshes with rt1.
	m2 := e.manager(t, e.openStore(t, dir))
	src2 := mustOpen(t, m2, testUser, "pw")
	if _, err := src2.Refresh(t.Context(), src2.Tokens().AccessToken); err != nil {
		t.Errorf("Refresh() after restart = %v", err)
	}
}

// TestManagerPersistKeepsNewerSignIn: serve's Source rotates its (old)
// tokens after `login` wrote a new entry: the new entry must survive.
func TestManagerPersistKeepsNewerSignIn(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	st := e.openStore(t, dir)
	m := e.manager(t, st)
	e.signIn(t, m, "pw")
	src := mustOpen(t, m, testUser, "pw")

	rt2 := e.signIn(t, e.manager(t, e.openStore(t, dir)), "pw2")
	mustToken(t, src) // refreshes the old grant and tries to persist it

	ent, _, err := st.Unlock(testUser, "pw2")
	if err != nil {
		t.Fatalf("Unlock(new password) = %v; the new sign-in was overwritten", err)
	}
	if ent.Secret.RefreshToken != rt2 {
		t.Errorf("token file lost the new sign-in's refresh token")
	}
}

func TestManagerRecordsError(t *testing.T) {
	e := newEnv(t)
	st := e.openStore(t, t.TempDir())
	m := e.manager(t, st)
	e.signIn(t, m, "pw")
	src := mustOpen(t, m, testUser, "pw")
	e.idp.Revoke(testUser)
	if _, err := src.Token(t.Context()); err == nil {
		t.Fatalf("Token() after Revoke = nil error")
	}
	meta, err := st.ReadMeta(testUser)
	if err != nil {
		t.Fatal(err)
	}
	if !meta.NeedsSignIn || !strings.Contains(meta.LastError, "AADSTS70008") || !strings.Contains(meta.LastErrorHint, "mailproxy login") {
		t.Errorf("meta after invalid_grant = %+v; want needs_sign_in, AADSTS70008 and a hint", meta)
	}
	status := m.Status(testUser)
	if !status.SignedIn || !status.Open || !status.NeedsSignIn || !strings.Contains(status.Hint, "mailproxy login") || status.Identity != testUser {
		t.Errorf("Status() = %+v; want signed in, open, needs sign-in with a hint", status)
	}
	// Another Manager (the `status` command) sees it from the file alone.
	other := e.manager(t, st).Status(testUser)
	if !other.NeedsSignIn || other.Open || other.LastError != meta.LastError {
		t.Errorf("Status() from metadata = %+v", other)
	}

	// A new sign-in clears it.
	e.signIn(t, m, "pw")
	src = mustOpen(t, m, testUser, "pw")
	mustToken(t, src)
	if s := m.Status(testUser); s.NeedsSignIn || s.LastError != "" || s.LastRefresh.IsZero() {
		t.Errorf("Status() after a new sign-in = %+v; want no error and a last refresh", s)
	}
	if meta, _ := st.ReadMeta(testUser); meta.NeedsSignIn || meta.LastError != "" {
		t.Errorf("meta after a new sign-in = %+v; want the error cleared", meta)
	}
}

func TestManagerKDFUpgrade(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	st := e.openStore(t, dir)
	m := e.manager(t, st)
	e.signIn(t, m, "pw")
	stronger := store.Params{Time: 2, Memory: 128, Threads: 1}
	st.KDF = stronger
	mustOpen(t, m, testUser, "pw")
	_, k, err := st.Unlock(testUser, "pw")
	if err != nil {
		t.Fatal(err)
	}
	if k.Params() != stronger {
		t.Errorf("entry KDF params after Open = %+v, want %+v", k.Params(), stronger)
	}
	mustOpen(t, m, testUser, "pw") // the cache follows the re-sealed entry
	if n := m.unlocks.Load(); n != 1 {
		t.Errorf("unlocks = %d, want 1", n)
	}
}

func TestManagerSetAccountProvider(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t, e.openStore(t, t.TempDir()))
	e.signIn(t, m, "pw")
	src := mustOpen(t, m, testUser, "pw")
	bad := *e.p
	bad.ClientSecret = "rotated-away"
	m.SetAccount(Account{Username: testUser, Flow: "authcode", Provider: &bad})
	_, err := src.Token(t.Context())
	var te *TokenError
	if !errors.As(err, &te) || te.AADSTS != 7000215 {
		t.Errorf("Token() after SetAccount with a wrong secret = %v, want AADSTS7000215", err)
	}
	m.RemoveAccount(testUser)
	if _, _, err := m.Open(t.Context(), testUser, "pw"); err == nil {
		t.Errorf("Open() after RemoveAccount = nil error")
	}
}

func benchManager(b *testing.B) (*Manager, *env) {
	e := newEnv(b)
	st, err := store.Open(b.TempDir()) // default KDF params: the real cost
	if err != nil {
		b.Fatal(err)
	}
	m := e.manager(b, st)
	e.signIn(b, m, "pw")
	return m, e
}

func BenchmarkManagerOpenCold(b *testing.B) {
	m, e := benchManager(b)
	b.ReportAllocs()
	for b.Loop() {
		fresh := NewManager(m.store, slog.New(slog.DiscardHandler))
		fresh.SetAccount(Account{Username: testUser, Provider: e.p})
		if _, _, err := fresh.Open(b.Context(), testUser, "pw"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkManagerOpenWarm(b *testing.B) {
	m, _ := benchManager(b)
	if _, _, err := m.Open(b.Context(), testUser, "pw"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := m.Open(b.Context(), testUser, "pw"); err != nil {
			b.Fatal(err)
		}
	}
	if n := m.unlocks.Load(); n != 1 {
		b.Errorf("unlocks = %d, want 1", n)
	}
}

func TestManagerOpenGivesUpWhileQueued(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t, e.openStore(t, t.TempDir()))
	e.signIn(t, m, "pw")
	a := m.account(testUser)
	a.slow <- struct{}{} // another login is deriving the key
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := m.Open(ctx, testUser, "pw"); !errors.Is(err, context.Canceled) {
		t.Errorf("Open() queued behind a KDF with a canceled ctx = %v, want context.Canceled", err)
	}
	<-a.slow
	mustOpen(t, m, testUser, "pw")
}
