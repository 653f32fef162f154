package auth

import (
	"context"
	"errors"
	"fmt"
	"mailproxy/upstream"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// fakeTokens is a TokenSource that hands out a fixed token.
type fakeTokens struct{ token string }

func (f *fakeTokens) Token(context.Context) (string, error)           { return f.token, nil }
func (f *fakeTokens) Refresh(context.Context, string) (string, error) { return f.token, nil }

// fakeVault opens entries keyed by username, like the encrypted token store.
type fakeVault struct {
	mu       sync.Mutex // protects the fields below
	entries  map[string]vaultEntry
	failWith error // returned by every Open when set
	opens    int
}

type vaultEntry struct {
	password, identity string
	tokens             TokenSource
}

func (v *fakeVault) Open(ctx context.Context, username, password string) (TokenSource, string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.opens++
	if v.failWith != nil {
		return nil, "", v.failWith
	}
	e, ok := v.entries[username]
	if !ok {
		return nil, "", ErrNotSignedIn
	}
	if e.password != password {
		return nil, "", fmt.Errorf("open %s: %w", username, ErrBadCredentials)
	}
	return e.tokens, e.identity, nil
}

var (
	remote    = netip.MustParseAddr("127.0.0.1")
	upstream1 = &upstream.Upstream{Addr: map[string]string{"imap": "imap.test:993", "smtp": "smtp.test:587"}}
)

// newTestAccounts returns Accounts whose dummy check is cheap.
func newTestAccounts(specs []AccountSpec, vault Vault) *Accounts {
	a := NewAccounts(specs, vault)
	a.kdf = cheapArgon
	return a
}

func wantAuthError(t *testing.T, err error, kind AuthKind, msg string) {
	t.Helper()
	var ae *AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("error = %v (%T), want *AuthError", err, err)
	}
	if ae.Kind != kind || ae.Msg != msg {
		t.Errorf("error = {%v, %q}, want {%v, %q}", ae.Kind, ae.Msg, kind, msg)
	}
}

func TestAccountsPasswordHash(t *testing.T) {
	appTokens := &fakeTokens{"app-token"}
	specs := []AccountSpec{
		{Username: "Printer@Contoso.com", Mailbox: "scans@contoso.com", PasswordHash: cheapHash(t, "printer-pw"), Tokens: appTokens, Upstream: upstream1},
		{Username: "app@contoso.com", Identity: "sender@contoso.com", PasswordHash: cheapHash(t, "app-pw"), Tokens: appTokens},
		{Username: "plain@contoso.com", PasswordHash: cheapHash(t, "plain-pw"), Tokens: appTokens},
		{Username: "notokens@contoso.com", PasswordHash: cheapHash(t, "nt-pw")},
		{Username: "badhash@contoso.com", PasswordHash: "$argon2id$v=19$m=1,t=1,p=1$xx$yy", Tokens: appTokens},
	}
	a := newTestAccounts(specs, nil)
	ctx := context.Background()

	tests := []struct {
		user, pass string
		want       *Grant // nil: an error
		kind       AuthKind
		msg        string
	}{
		{user: "printer@contoso.com", pass: "printer-pw",
			want: &Grant{Username: "Printer@Contoso.com", Mailbox: "scans@contoso.com", Identity: "scans@contoso.com", Tokens: appTokens, Upstream: upstream1}},
		{user: "PRINTER@CONTOSO.COM", pass: "printer-pw",
			want: &Grant{Username: "Printer@Contoso.com", Mailbox: "scans@contoso.com", Identity: "scans@contoso.com", Tokens: appTokens, Upstream: upstream1}},
		{user: "app@contoso.com", pass: "app-pw",
			want: &Grant{Username: "app@contoso.com", Mailbox: "app@contoso.com", Identity: "sender@contoso.com", Tokens: appTokens}},
		{user: "plain@contoso.com", pass: "plain-pw",
			want: &Grant{Username: "plain@contoso.com", Mailbox: "plain@contoso.com", Identity: "plain@contoso.com", Tokens: appTokens}},
		{user: "printer@contoso.com", pass: "Printer-pw", kind: AuthFailed, msg: "invalid credentials"},
		{user: "printer@contoso.com", pass: "", kind: AuthFailed, msg: "invalid credentials"},
		{user: "nobody@contoso.com", pass: "printer-pw", kind: AuthFailed, msg: "invalid credentials"},
		{user: "", pass: "", kind: AuthFailed, msg: "invalid credentials"},
		{user: "notokens@contoso.com", pass: "nt-pw", kind: AuthNeedsSignIn,
			msg: "account notokens@contoso.com is not signed in; an admin must run `mailproxy login notokens@contoso.com`"},
		{user: "badhash@contoso.com", pass: "x", kind: AuthFailed, msg: "invalid credentials"},
	}
	for _, tt := range tests {
		g, err := a.Authenticate(ctx, tt.user, tt.pass, remote)
		if tt.want == nil {
			if err == nil {
				t.Errorf("Authenticate(%q, %q) = %+v, want an error", tt.user, tt.pass, g)
				continue
			}
			wantAuthError(t, err, tt.kind, tt.msg)
			if strings.Contains(err.Error(), tt.pass) && tt.pass != "" {
				t.Errorf("Authenticate(%q, %q) error %q contains the password", tt.user, tt.pass, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Authenticate(%q, %q) = %v, want success", tt.user, tt.pass, err)
			continue
		}
		if *g != *tt.want {
			t.Errorf("Authenticate(%q, %q) = %+v, want %+v", tt.user, tt.pass, *g, *tt.want)
		}
	}
}

func TestAccountsUnknownUserPaysKDF(t *testing.T) {
	a := newTestAccounts([]AccountSpec{{Username: "a@x", PasswordHash: cheapHash(t, "pw"), Tokens: &fakeTokens{}}}, nil)
	ctx := context.Background()
	before := a.kdfRuns.Load()
	_, errUnknown := a.Authenticate(ctx, "b@x", "pw", remote)
	if got := a.kdfRuns.Load() - before; got != 1 {
		t.Errorf("Authenticate(unknown user) ran the KDF %d times, want 1", got)
	}
	_, errWrong := a.Authenticate(ctx, "a@x", "wrong", remote)
	var u, w *AuthError
	if !errors.As(errUnknown, &u) || !errors.As(errWrong, &w) || u.Kind != w.Kind || u.Msg != w.Msg {
		t.Errorf("unknown user error %v and wrong password error %v differ for the client", errUnknown, errWrong)
	}
}

func TestAccountsCache(t *testing.T) {
	tokens := &fakeTokens{"t"}
	a := newTestAccounts([]AccountSpec{{Username: "a@x", PasswordHash: cheapHash(t, "pw1"), Tokens: tokens}}, nil)
	ctx := context.Background()
	auth := func(pass string) error {
		t.Helper()
		_, err := a.Authenticate(ctx, "A@x", pass, remote)
		return err
	}
	kdf := func() int64 { return a.kdfRuns.Load() }

	if err := auth("pw1"); err != nil {
		t.Fatalf("first Authenticate(a@x, pw1) = %v", err)
	}
	if got := kdf(); got != 1 {
		t.Fatalf("KDF runs after first login = %d, want 1", got)
	}
	for i := 0; i < 3; i++ {
		if err := auth("pw1"); err != nil {
			t.Fatalf("cached Authenticate(a@x, pw1) = %v", err)
		}
	}
	if got := kdf(); got != 1 {
		t.Errorf("KDF runs after cached logins = %d, want 1", got)
	}
	// A wrong password never matches the cache and pays the KDF.
	if err := auth("pw2"); err == nil {
		t.Fatalf("Authenticate(a@x, pw2) succeeded, want failure")
	}
	if got := kdf(); got != 2 {
		t.Errorf("KDF runs after a wrong password = %d, want 2", got)
	}
	// ... and leaves the cached good password alone.
	if err := auth("pw1"); err != nil || kdf() != 2 {
		t.Errorf("Authenticate(a@x, pw1) after a wrong one = %v with %d KDF runs, want success with 2", err, kdf())
	}

	// The same hash again: the cache survives Replace.
	spec, _ := a.Lookup("a@x")
	a.Replace([]AccountSpec{spec})
	if err := auth("pw1"); err != nil || kdf() != 2 {
		t.Errorf("Authenticate(a@x, pw1) after Replace with the same hash = %v with %d KDF runs, want success with 2", err, kdf())
	}

	// A new hash: the old password must fail, the new one pays the KDF once.
	spec.PasswordHash = cheapHash(t, "pw2")
	a.Replace([]AccountSpec{spec})
	if err := auth("pw1"); err == nil {
		t.Errorf("Authenticate(a@x, old password) after a hash change succeeded, want failure")
	}
	if err := auth("pw2"); err != nil {
		t.Errorf("Authenticate(a@x, new password) = %v, want success", err)
	}
	n := kdf()
	if err := auth("pw2"); err != nil || kdf() != n {
		t.Errorf("Authenticate(a@x, new password) again = %v, KDF runs %d -> %d, want success from the cache", err, n, kdf())
	}

	// Removed account: gone, cache and all.
	a.Replace(nil)
	if err := auth("pw2"); err == nil {
		t.Errorf("Authenticate(a@x) after the account was removed succeeded, want failure")
	}
	a.mu.RLock()
	left := len(a.cache)
	a.mu.RUnlock()
	if left != 0 {
		t.Errorf("cache entries after removing every account = %d, want 0", left)
	}
}

func TestAccountsReplaceDuringCheckDoesNotCacheStaleHash(t *testing.T) {
	old := AccountSpec{Username: "a@x", PasswordHash: cheapHash(t, "old"), Tokens: &fakeTokens{}}
	a := newTestAccounts([]AccountSpec{old}, nil)
	newHash := cheapHash(t, "new")
	// The hash changes while the old password is being checked against
	// the old hash: the login may succeed, but must not be cached for the
	// new hash.
	a.hookKDF = func() {
		a.hookKDF = nil
		a.Replace([]AccountSpec{{Username: "a@x", PasswordHash: newHash, Tokens: &fakeTokens{}}})
	}
	if _, err := a.Authenticate(context.Background(), "a@x", "old", remote); err != nil {
		t.Fatalf("Authenticate(a@x, old) during Replace = %v, want success (checked against the hash it read)", err)
	}
	if _, err := a.Authenticate(context.Background(), "a@x", "old", remote); err == nil {
		t.Errorf("Authenticate(a@x, old) after the hash changed succeeded, want failure")
	}
	a.mu.RLock()
	n := len(a.cache)
	a.mu.RUnlock()
	if n != 0 {
		t.Errorf("cache entries = %d, want 0", n)
	}
}

func TestAccountsVault(t *testing.T) {
	aliceTokens, sharedTokens := &fakeTokens{"alice"}, &fakeTokens{"shared"}
	v := &fakeVault{entries: map[string]vaultEntry{
		"alice@contoso.com":  {password: "alice-pw", identity: "alice@contoso.com", tokens: aliceTokens},
		"shared@contoso.com": {password: "shared-pw", identity: "bob@contoso.com", tokens: sharedTokens},
		"noid@contoso.com":   {password: "noid-pw", tokens: sharedTokens},
		"nil@contoso.com":    {password: "nil-pw"},
	}}
	specs := []AccountSpec{
		{Username: "alice@contoso.com", Upstream: upstream1},
		{Username: "shared@contoso.com", Mailbox: "info@contoso.com"},
		{Username: "noid@contoso.com", Identity: "config-id@contoso.com"},
		{Username: "nil@contoso.com"},
		{Username: "new@contoso.com"},
	}
	a := newTestAccounts(specs, v)
	ctx := context.Background()
	tests := []struct {
		user, pass string
		want       *Grant
		kind       AuthKind
		msg        string
	}{
		{user: "Alice@contoso.com", pass: "alice-pw",
			want: &Grant{Username: "alice@contoso.com", Mailbox: "alice@contoso.com", Identity: "alice@contoso.com", Tokens: aliceTokens, Upstream: upstream1}},
		{user: "shared@contoso.com", pass: "shared-pw",
			want: &Grant{Username: "shared@contoso.com", Mailbox: "info@contoso.com", Identity: "bob@contoso.com", Tokens: sharedTokens}},
		{user: "noid@contoso.com", pass: "noid-pw",
			want: &Grant{Username: "noid@contoso.com", Mailbox: "noid@contoso.com", Identity: "config-id@contoso.com", Tokens: sharedTokens}},
		{user: "alice@contoso.com", pass: "wrong", kind: AuthFailed, msg: "invalid credentials"},
		{user: "new@contoso.com", pass: "anything", kind: AuthNeedsSignIn,
			msg: "account new@contoso.com is not signed in; an admin must run `mailproxy login new@contoso.com`"},
		{user: "nil@contoso.com", pass: "nil-pw", kind: AuthNeedsSignIn,
			msg: "account nil@contoso.com is not signed in; an admin must run `mailproxy login nil@contoso.com`"},
	}
	for _, tt := range tests {
		g, err := a.Authenticate(ctx, tt.user, tt.pass, remote)
		if tt.want == nil {
			if err == nil {
				t.Errorf("Authenticate(%q, %q) = %+v, want an error", tt.user, tt.pass, g)
				continue
			}
			wantAuthError(t, err, tt.kind, tt.msg)
			continue
		}
		if err != nil {
			t.Errorf("Authenticate(%q, %q) = %v, want success", tt.user, tt.pass, err)
			continue
		}
		if *g != *tt.want {
			t.Errorf("Authenticate(%q, %q) = %+v, want %+v", tt.user, tt.pass, *g, *tt.want)
		}
	}

	// Vault logins are not cached here: every login asks the vault.
	v.mu.Lock()
	before := v.opens
	v.mu.Unlock()
	for i := 0; i < 3; i++ {
		if _, err := a.Authenticate(ctx, "alice@contoso.com", "alice-pw", remote); err != nil {
			t.Fatalf("Authenticate(alice) = %v", err)
		}
	}
	v.mu.Lock()
	got := v.opens - before
	v.mu.Unlock()
	if got != 3 {
		t.Errorf("vault opened %d times for 3 logins, want 3 (no cache in Accounts for vault accounts)", got)
	}
	if n := a.kdfRuns.Load(); n != 0 {
		t.Errorf("Accounts ran the KDF %d times for vault accounts, want 0 (the vault does its own)", n)
	}
}

func TestAccountsVaultErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		err  error
		kind AuthKind
		msg  string
	}{
		{"temporary", &tokenErr{temp: true, hint: "IdP unreachable"}, AuthUnavailable, "temporary failure getting a token: IdP unreachable"},
		{"needs sign-in", &tokenErr{signIn: true, hint: "AADSTS70008: expired"}, AuthNeedsSignIn, "account a@x needs a new sign-in by the admin: AADSTS70008: expired"},
		{"deadline", context.DeadlineExceeded, AuthUnavailable, "temporary failure getting a token: try again later"},
		{"other", errors.New("disk on fire"), AuthUnavailable, msgTokenFailed},
	}
	for _, tt := range tests {
		v := &fakeVault{failWith: tt.err}
		a := newTestAccounts([]AccountSpec{{Username: "a@x"}}, v)
		_, err := a.Authenticate(ctx, "a@x", "pw", remote)
		if !errors.Is(err, tt.err) {
			t.Errorf("%s: Authenticate error %v does not wrap %v", tt.name, err, tt.err)
		}
		wantAuthError(t, err, tt.kind, tt.msg)
	}

	a := newTestAccounts([]AccountSpec{{Username: "a@x"}}, nil)
	_, err := a.Authenticate(ctx, "a@x", "pw", remote)
	wantAuthError(t, err, AuthNeedsSignIn, "account a@x is not signed in; an admin must run `mailproxy login a@x`")
}

func TestAccountsBusy(t *testing.T) {
	a := newTestAccounts([]AccountSpec{{Username: "a@x", PasswordHash: cheapHash(t, "pw"), Tokens: &fakeTokens{}}}, nil)
	for i := 0; i < cap(a.kdfSlots); i++ {
		a.kdfSlots <- struct{}{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, user := range []string{"a@x", "unknown@x"} {
		_, err := a.Authenticate(ctx, user, "pw", remote)
		wantAuthError(t, err, AuthUnavailable, "server busy; try again later")
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Authenticate(%q) with all KDF slots taken = %v, want it to wrap context.Canceled", user, err)
		}
	}
}

func TestAccountsLookup(t *testing.T) {
	a := newTestAccounts([]AccountSpec{{Username: "Alice@X", Mailbox: "m@x"}}, nil)
	for _, u := range []string{"alice@x", "ALICE@X", "Alice@X"} {
		s, ok := a.Lookup(u)
		if !ok || s.Username != "Alice@X" || s.Mailbox != "m@x" {
			t.Errorf("Lookup(%q) = %+v, %v, want the Alice@X spec", u, s, ok)
		}
	}
	if s, ok := a.Lookup("bob@x"); ok {
		t.Errorf("Lookup(bob@x) = %+v, true, want false", s)
	}
	a.Replace([]AccountSpec{{Username: "bob@x"}})
	if _, ok := a.Lookup("alice@x"); ok {
		t.Errorf("Lookup(alice@x) after Replace without alice = true, want false")
	}
	if _, ok := a.Lookup("BOB@x"); !ok {
		t.Errorf("Lookup(BOB@x) after Replace = false, want true")
	}
}

func TestAccountsConcurrent(t *testing.T) {
	hash := cheapHash(t, "pw")
	tokens := &fakeTokens{}
	specs := func(n int) []AccountSpec {
		var s []AccountSpec
		for i := 0; i < n; i++ {
			s = append(s, AccountSpec{Username: fmt.Sprintf("u%d@x", i), PasswordHash: hash, Tokens: tokens})
		}
		return s
	}
	a := newTestAccounts(specs(8), nil)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				user := fmt.Sprintf("u%d@x", (g+i)%8)
				if _, err := a.Authenticate(context.Background(), user, "pw", remote); err != nil {
					t.Errorf("Authenticate(%q, pw) = %v, want success", user, err)
					return
				}
				a.Lookup(user)
			}
		}()
	}
	for i := 0; i < 20; i++ {
		a.Replace(specs(8))
	}
	wg.Wait()
}

func BenchmarkAccountsWarm(b *testing.B) {
	h, err := HashPassword("warm password")
	if err != nil {
		b.Fatalf("HashPassword: %v", err)
	}
	a := NewAccounts([]AccountSpec{{Username: "printer@contoso.com", PasswordHash: h, Tokens: &fakeTokens{}}}, nil)
	ctx := context.Background()
	if _, err := a.Authenticate(ctx, "printer@contoso.com", "warm password", remote); err != nil {
		b.Fatalf("first Authenticate: %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(ctx, "printer@contoso.com", "warm password", remote); err != nil {
			b.Fatalf("Authenticate: %v", err)
		}
	}
	if n := a.kdfRuns.Load(); n != 1 {
		b.Errorf("KDF runs = %d, want 1 (every later login from the cache)", n)
	}
}
