package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/argon2"

	"mailproxy/internal/cmdline"
	"mailproxy/upstream"
)

// AccountSpec is one local account as the configuration describes it.
type AccountSpec struct {
	Username     string // what the client logs in with; matched case-insensitively
	Mailbox      string // XOAUTH2 user= for IMAP; "" means Username
	Identity     string // XOAUTH2 user= for SMTP; "" means the vault's identity, else Mailbox
	PasswordHash string // Argon2id PHC string; "" means the Vault checks the password
	Tokens       TokenSource
	Upstream     *upstream.Upstream
}

// Authentication failure causes, for the log only: the client sees
// msgInvalidCredentials for both.
var (
	errUnknownAccount = errors.New("no such account")
	errWrongPassword  = errors.New("wrong password")
)

// Accounts is the Authenticator over the configured accounts. It is safe for
// concurrent use, and Replace swaps the accounts under live sessions (SIGHUP).
//
// An account with a PasswordHash is checked against it; the first success
// leaves a keyed hash of the password in memory (HMAC-SHA256 under a random
// per-process key) so that later logins, which legacy clients make once per
// job, cost microseconds instead of an Argon2id run. The entry is bound to
// the PasswordHash it was checked against and dies when that changes.
//
// An account without a PasswordHash is opened by the Vault, with the
// password as the key to its token entry. Those logins are not cached here:
// the vault keeps its own cache and is the one that knows when its entry is
// rewritten (a new sign-in with a new password), which a cache here could not
// see.
//
// An unknown username costs the same Argon2id run as a wrong password and
// fails the same way. A vault account that was never signed in is the one
// exception: the client is told an admin must sign it in, which tells that
// the account exists. Without a token entry there is nothing behind the
// account to protect, and the message saves the admin a support call.
type Accounts struct {
	vault    Vault
	cacheKey []byte        // HMAC key of the login cache, random per process
	kdf      argonParams   // cost of the dummy check for unknown users
	dummy    []byte        // salt of the dummy check
	kdfSlots chan struct{} // bounds concurrent Argon2id runs (64 MiB each)
	kdfRuns  atomic.Int64  // Argon2id runs so far, for tests and metrics
	hookKDF  func()        // tests: runs before each password check's KDF
	lockout  atomic.Pointer[Lockout]

	mu    sync.RWMutex           // protects specs and cache
	specs map[string]AccountSpec // by folded username
	cache map[string]cachedLogin // by folded username
}

// cachedLogin remembers a password accepted for an account.
type cachedLogin struct {
	phc string // the PasswordHash the password was checked against
	mac []byte // HMAC-SHA256(cacheKey, folded username NUL password)
}

var _ Authenticator = (*Accounts)(nil)

// NewAccounts returns the Authenticator for specs. vault opens accounts that
// have no PasswordHash; it may be nil when every account has one. When two
// specs differ only in the case of Username, the later one wins.
func NewAccounts(specs []AccountSpec, vault Vault) *Accounts {
	slots := min(runtime.GOMAXPROCS(0), 4)
	a := &Accounts{
		vault:    vault,
		cacheKey: randomBytes(32),
		kdf:      defaultArgon,
		dummy:    randomBytes(defaultArgon.saltLen),
		kdfSlots: make(chan struct{}, slots),
		specs:    specMap(specs),
		cache:    make(map[string]cachedLogin),
	}
	return a
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails since Go 1.24
	return b
}

func specMap(specs []AccountSpec) map[string]AccountSpec {
	m := make(map[string]AccountSpec, len(specs))
	for _, s := range specs {
		m[foldUsername(s.Username)] = s
	}
	return m
}

// foldUsername is the key accounts are matched under.
func foldUsername(u string) string { return strings.ToLower(u) }

// Replace swaps in a new set of accounts. Sessions already granted keep
// what they got. A cached login survives only if its account is still there
// with the same PasswordHash.
func (a *Accounts) Replace(specs []AccountSpec) {
	m := specMap(specs)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.specs = m
	for k, c := range a.cache {
		if s, ok := m[k]; !ok || s.PasswordHash != c.phc {
			delete(a.cache, k)
		}
	}
}

// Lookup returns the account username logs in as (matched
// case-insensitively).
func (a *Accounts) Lookup(username string) (AccountSpec, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	s, ok := a.specs[foldUsername(username)]
	return s, ok
}

// SetLockout makes Authenticate rate-limit failed logins with l (nil: no
// lockout). It may be called at any time (config reload); the counts live
// in l, so keep the same Lockout across reloads unless its settings change.
func (a *Accounts) SetLockout(l *Lockout) { a.lockout.Store(l) }

// Authenticate checks username and password and returns what the session
// needs upstream. Grant.Username is the configured spelling of the account
// name, whatever case the client used. Errors are *AuthError.
//
// With a Lockout set, the attempt is counted before the check and first
// waits out the delay that recent failures of its address and username
// call for. A blocked attempt is refused without a password check as a
// temporary failure (AuthUnavailable) whose Msg says why and until when
// (Err wraps a *LockedOutError). A success clears the failures of its
// address and username only; a check that could not be made is not
// counted.
func (a *Accounts) Authenticate(ctx context.Context, username, password string, remote netip.Addr) (*Grant, error) {
	key := foldUsername(username)
	lo := a.lockout.Load()
	if lo == nil {
		return a.authenticate(ctx, key, password)
	}
	if err := lo.Begin(ctx, key, remote); err != nil {
		var le *LockedOutError
		if errors.As(err, &le) {
			return nil, &AuthError{Kind: AuthUnavailable, Msg: ClientText(le.Message()), Err: err}
		}
		return nil, &AuthError{Kind: AuthUnavailable, Msg: "server busy; " + msgTryLater,
			Err: fmt.Errorf("wait before a password check: %w", err)}
	}
	g, err := a.authenticate(ctx, key, password)
	switch {
	case err == nil:
		lo.Succeeded(key, remote)
	case errors.Is(err, errWrongPassword), errors.Is(err, errUnknownAccount), isBadCredentials(err):
		// Counted when it started.
	default:
		lo.Refund(key, remote)
	}
	return g, err
}

func (a *Accounts) authenticate(ctx context.Context, key, password string) (*Grant, error) {
	a.mu.RLock()
	spec, ok := a.specs[key]
	cached, hasCached := a.cache[key]
	a.mu.RUnlock()

	if !ok {
		if err := a.dummyCheck(ctx, password); err != nil {
			return nil, err
		}
		return nil, &AuthError{Kind: AuthFailed, Msg: msgInvalidCredentials, Err: errUnknownAccount}
	}
	if spec.PasswordHash == "" {
		return a.openVault(ctx, spec, password)
	}

	mac := a.mac(key, password)
	if !hasCached || cached.phc != spec.PasswordHash || !hmac.Equal(cached.mac, mac) {
		if err := a.verify(ctx, spec, password); err != nil {
			return nil, err
		}
		a.mu.Lock()
		// Replace may have changed the hash while we were checking.
		if cur, ok := a.specs[key]; ok && cur.PasswordHash == spec.PasswordHash {
			a.cache[key] = cachedLogin{phc: spec.PasswordHash, mac: mac}
		}
		a.mu.Unlock()
	}
	if spec.Tokens == nil {
		return nil, notSignedIn(spec.Username, errors.New("account has a password hash but no token source"))
	}
	return grantFor(spec, spec.Tokens, ""), nil
}

// verify runs Argon2id against the account's PasswordHash.
func (a *Accounts) verify(ctx context.Context, spec AccountSpec, password string) error {
	if err := a.acquireKDF(ctx); err != nil {
		return err
	}
	if a.hookKDF != nil {
		a.hookKDF()
	}
	ok, err := VerifyPassword(spec.PasswordHash, password)
	a.releaseKDF()
	if err != nil {
		// A config problem the client cannot fix; the log says what it is.
		return &AuthError{Kind: AuthFailed, Msg: msgInvalidCredentials,
			Err: fmt.Errorf("verify password of %q: %w", spec.Username, err)}
	}
	if !ok {
		return &AuthError{Kind: AuthFailed, Msg: msgInvalidCredentials, Err: errWrongPassword}
	}
	return nil
}

// dummyCheck spends what a password check costs, so that an unknown
// username cannot be told from a wrong password by the time it takes.
func (a *Accounts) dummyCheck(ctx context.Context, password string) error {
	if err := a.acquireKDF(ctx); err != nil {
		return err
	}
	argon2.IDKey([]byte(password), a.dummy, a.kdf.time, a.kdf.memory, a.kdf.threads, a.kdf.keyLen)
	a.releaseKDF()
	return nil
}

// acquireKDF waits for a free Argon2id slot: each run takes 64 MiB, so a
// burst of logins must queue rather than exhaust memory.
func (a *Accounts) acquireKDF(ctx context.Context) error {
	if err := a.acquireSlot(ctx); err != nil {
		return err
	}
	a.kdfRuns.Add(1)
	return nil
}

// acquireSlot takes a KDF slot without counting a run of ours (a vault
// open, which may run its own).
func (a *Accounts) acquireSlot(ctx context.Context) error {
	select {
	case a.kdfSlots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return &AuthError{Kind: AuthUnavailable, Msg: "server busy; " + msgTryLater,
			Err: fmt.Errorf("wait for a password check slot: %w", ctx.Err())}
	}
}

func (a *Accounts) releaseKDF() { <-a.kdfSlots }

func (a *Accounts) openVault(ctx context.Context, spec AccountSpec, password string) (*Grant, error) {
	if a.vault == nil {
		return nil, notSignedIn(spec.Username, errors.New("account has no password hash and there is no token vault"))
	}
	// Opening a vault entry may run Argon2id (64 MiB) as a hash check
	// does: it takes the same slots, so that guesses against vault
	// accounts cannot run more KDFs at once than against hash accounts.
	if err := a.acquireSlot(ctx); err != nil {
		return nil, err
	}
	tokens, identity, err := a.vault.Open(ctx, spec.Username, password)
	a.releaseKDF()
	switch {
	case err == nil && tokens == nil:
		return nil, notSignedIn(spec.Username, errors.New("vault returned no token source"))
	case err == nil:
		return grantFor(spec, tokens, identity), nil
	case isBadCredentials(err):
		return nil, &AuthError{Kind: AuthFailed, Msg: msgInvalidCredentials, Err: err}
	case isNotSignedIn(err):
		return nil, notSignedIn(spec.Username, err)
	default:
		return nil, TokenAuthError(spec.Username, fmt.Errorf("open token vault of %q: %w", spec.Username, err))
	}
}

// notSignedIn is the error for an account that has no tokens yet.
func notSignedIn(username string, cause error) *AuthError {
	return &AuthError{
		Kind: AuthNeedsSignIn,
		Msg:  ClientText("account " + username + " is not signed in; an admin must run `" + cmdline.Login(username) + "`"),
		Err:  cause,
	}
}

func (a *Accounts) mac(foldedUser, password string) []byte {
	h := hmac.New(sha256.New, a.cacheKey)
	h.Write([]byte(foldedUser))
	h.Write([]byte{0})
	h.Write([]byte(password))
	return h.Sum(nil)
}

func grantFor(spec AccountSpec, tokens TokenSource, identity string) *Grant {
	mailbox := spec.Mailbox
	if mailbox == "" {
		mailbox = spec.Username
	}
	if identity == "" {
		identity = spec.Identity
	}
	if identity == "" {
		identity = mailbox
	}
	return &Grant{
		Username: spec.Username,
		Mailbox:  mailbox,
		Identity: identity,
		Tokens:   tokens,
		Upstream: spec.Upstream,
	}
}
