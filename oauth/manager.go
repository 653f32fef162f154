package oauth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mailproxy/internal/cmdline"
	"mailproxy/oauth/store"
)

// Account is a delegated account as the Manager needs it.
type Account struct {
	Username string
	Flow     string // authcode, device...
	Provider *Provider
}

// Manager opens the password-sealed token entries of delegated accounts and
// keeps one Source per account (the vault of the local logins).
//
// The first login of an account pays the KDF; later logins with the same
// password compare an HMAC of it (under a random per-process key) in
// constant time and cost microseconds, as long as the entry on disk is the
// one that was opened. When `mailproxy login` replaced the entry meanwhile,
// the next login opens it again and hands the new tokens to the existing
// Source, so running sessions need no restart.
type Manager struct {
	// Now is the clock of the sources the Manager makes; nil means
	// time.Now. Set it before first use.
	Now func() time.Time
	// OnRefresh, if set, is called after each token refresh of any
	// account with its outcome (for metrics). Set it before first use.
	OnRefresh func(username string, ok bool)

	store   *store.Store
	logger  *slog.Logger
	hashKey [32]byte

	unlocks atomic.Int64 // KDF runs, for tests

	mu       sync.Mutex // protects accounts
	accounts map[string]*account
}

// account is the Manager's state for one account.
type account struct {
	name string // lowercased username

	slow chan struct{} // one token: serializes the slow path (KDF) of Open

	mu        sync.Mutex // protects the fields below
	cfg       Account
	source    *Source
	key       *store.Key  // the key of the entry on disk, to re-seal rotated tokens
	stamp     store.Stamp // stamp of the entry source's tokens came from (or were saved to)
	pwMAC     []byte      // HMAC of the password that opened it; nil: none
	identity  string      // who signed in
	rtSum     [32]byte    // hash of the stored refresh token, to notice rotation
	meta      store.Meta  // last known metadata
	lastErr   string      // last error written to meta, to skip identical rewrites
	damagedAt time.Time   // last time a damaged file was logged
}

// NewManager returns a Manager over st.
func NewManager(st *store.Store, logger *slog.Logger) *Manager {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{store: st, logger: logger, accounts: make(map[string]*account)}
	if _, err := rand.Read(m.hashKey[:]); err != nil {
		panic("oauth: no randomness: " + err.Error()) // crypto/rand does not fail on supported systems
	}
	return m
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// SetAccount adds or updates an account (config load or reload). A live
// Source of the account switches to the new provider.
func (m *Manager) SetAccount(a Account) {
	name := strings.ToLower(a.Username)
	m.mu.Lock()
	acc := m.accounts[name]
	if acc == nil {
		acc = &account{name: name, slow: make(chan struct{}, 1)}
		m.accounts[name] = acc
	}
	m.mu.Unlock()
	acc.mu.Lock()
	acc.cfg = a
	src := acc.source
	acc.mu.Unlock()
	if src != nil && a.Provider != nil {
		src.SetProvider(a.Provider)
	}
}

// RemoveAccount forgets an account (config reload). Sessions holding its
// Source keep it; the next Open fails.
func (m *Manager) RemoveAccount(username string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.accounts, strings.ToLower(username))
}

func (m *Manager) account(username string) *account {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.accounts[strings.ToLower(username)]
}

func (m *Manager) mac(name, password string) []byte {
	h := hmac.New(sha256.New, m.hashKey[:])
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write([]byte(password))
	return h.Sum(nil)
}

// cached returns the account's source when password is the one that opened
// it and the entry on disk is still the one opened.
func (a *account) cached(mac []byte, stamp store.Stamp) (*Source, string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.source == nil || a.pwMAC == nil || stamp.IsZero() || stamp != a.stamp {
		return nil, "", false
	}
	if !hmac.Equal(mac, a.pwMAC) {
		return nil, "", false
	}
	return a.source, a.identity, true
}

// Open is the vault of the local logins (auth.VaultOf(m.Open)): it returns
// the account's Source and who signed in. A wrong password yields an error
// wrapping store.ErrBadCredentials and a missing entry one wrapping
// store.ErrNotSignedIn; neither changes the entry.
func (m *Manager) Open(ctx context.Context, username, password string) (*Source, string, error) {
	return m.open(ctx, username, password)
}

func (m *Manager) open(ctx context.Context, username, password string) (*Source, string, error) {
	a := m.account(username)
	if a == nil {
		return nil, "", fmt.Errorf("open tokens for %q: account not configured for the token store", username)
	}
	mac := m.mac(a.name, password)
	if stamp, err := m.store.Stamp(a.name); err == nil {
		if src, id, ok := a.cached(mac, stamp); ok {
			return src, id, nil
		}
	}

	// Slow path: one KDF at a time per account, so that 50 clients logging
	// in at once derive the key once and an attacker guessing passwords
	// cannot make us run many KDFs in parallel.
	select {
	case a.slow <- struct{}{}:
		defer func() { <-a.slow }()
	case <-ctx.Done():
		return nil, "", fmt.Errorf("open tokens for %q: %w", username, ctx.Err())
	}
	if stamp, err := m.store.Stamp(a.name); err == nil {
		if src, id, ok := a.cached(mac, stamp); ok {
			return src, id, nil
		}
	}
	m.unlocks.Add(1)
	e, key, err := m.store.Unlock(a.name, password)
	if err != nil {
		if errors.Is(err, store.ErrCorrupt) {
			m.damaged(a, err)
		}
		return nil, "", fmt.Errorf("open tokens for %q: %w", username, err)
	}
	stamp := e.Stamp
	if e.Outdated && key.Params() == m.store.Params() {
		// An older file format: rewrite it in the current one (same key).
		if st, err := m.store.SaveIf(a.name, key, &store.Entry{Meta: e.Meta, Secret: e.Secret}, stamp); err == nil {
			stamp = st
		} else {
			m.logger.Warn("could not rewrite the token file in the current format", "account", a.name, "err", err)
		}
	}
	if want := m.store.Params(); key.Params() != want {
		// The KDF parameters were changed in the config or code: re-seal
		// with them now that we have the password.
		if k2, err := m.store.NewKey(password); err == nil {
			if st, err := m.store.SaveIf(a.name, k2, &store.Entry{Meta: e.Meta, Secret: e.Secret}, stamp); err == nil {
				key, stamp = k2, st
			} else {
				m.logger.Warn("could not re-seal tokens with new KDF parameters", "account", a.name, "err", err)
			}
		}
	}
	identity := e.Meta.Identity
	if identity == "" {
		identity = IdentityFromIDToken(e.Secret.IDToken)
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfg.Provider == nil {
		return nil, "", fmt.Errorf("open tokens for %q: account has no provider", username)
	}
	switch {
	case a.source == nil:
		a.source = m.newSource(a, e.Secret)
	case stamp != a.stamp:
		// A new sign-in (or another process) replaced the entry: sessions
		// sharing the Source pick the new tokens up.
		a.source.SetTokens(e.Secret)
	}
	a.key, a.stamp, a.pwMAC, a.identity, a.meta = key, stamp, mac, identity, e.Meta
	a.rtSum = sha256.Sum256([]byte(e.Secret.RefreshToken))
	return a.source, identity, nil
}

func (m *Manager) newSource(a *account, ts TokenSet) *Source {
	logger := m.logger.With("account", a.name)
	src := NewSource(a.cfg.Provider, ts, func(ts TokenSet) error { return m.persist(a, ts) }, logger)
	src.Now = m.Now
	src.OnError = func(te *TokenError) { m.recordError(a, te) }
	src.recover = func() (TokenSet, bool) { return m.recoverRotated(a) }
	if m.OnRefresh != nil {
		src.OnRefresh = func(ok bool) { m.OnRefresh(a.name, ok) }
	}
	return src
}

// persist re-seals rotated tokens with the key of the entry they came from,
// unless the entry was replaced meanwhile (then the newer sign-in wins and
// the next Open picks it up).
func (m *Manager) persist(a *account, ts TokenSet) error {
	a.mu.Lock()
	key, prev, meta, rtSum := a.key, a.stamp, a.meta, a.rtSum
	a.mu.Unlock()
	if key == nil {
		return errors.New("persist tokens: no key")
	}
	if cur, err := m.store.ReadMeta(a.name); err == nil {
		meta = *cur
	}
	now := m.now()
	newSum := sha256.Sum256([]byte(ts.RefreshToken))
	if newSum != rtSum {
		meta.RefreshObtained = ts.Obtained
		if meta.RefreshObtained.IsZero() {
			meta.RefreshObtained = now
		}
	}
	meta.LastRefresh = now
	meta.AccessExpiry = ts.Expiry
	meta.LastError, meta.LastErrorHint, meta.NeedsSignIn = "", "", false

	stamp, err := m.store.SaveIf(a.name, key, &store.Entry{Meta: meta, Secret: ts}, prev)
	if errors.Is(err, store.ErrChanged) {
		m.logger.Info("token entry replaced by a new sign-in; not overwriting it", "account", a.name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("persist tokens for %q: %w", a.name, err)
	}
	a.mu.Lock()
	if a.stamp == prev {
		a.stamp, a.meta, a.rtSum, a.lastErr = stamp, meta, newSum, ""
	}
	a.mu.Unlock()
	return nil
}

// damaged reports a token file that cannot be opened although it exists
// (unreadable, or its key check passed and the seal did not): at ERROR,
// at most once per damagedLogEvery per account, and in the file's
// metadata when that part is still readable, so that `status` and the
// admin page say it.
func (m *Manager) damaged(a *account, err error) {
	now := m.now()
	a.mu.Lock()
	quiet := !a.damagedAt.IsZero() && now.Sub(a.damagedAt) < damagedLogEvery
	if !quiet {
		a.damagedAt = now
	}
	a.mu.Unlock()
	if quiet {
		return
	}
	m.logger.Error("token file is damaged; the account needs a new sign-in", "account", a.name, "err", err,
		"hint", strings.ReplaceAll((&store.DamagedError{}).Hint(), "<user>", a.name))
	var de *store.DamagedError
	if !errors.As(err, &de) {
		return
	}
	msg := de.Error()
	a.mu.Lock()
	a.lastErr = msg
	a.mu.Unlock()
	if err := m.store.UpdateMeta(a.name, func(meta *store.Meta) {
		meta.LastError, meta.LastErrorHint, meta.NeedsSignIn = msg, de.Hint(), true
	}); err != nil {
		m.logger.Warn("could not record the damage in the token file", "account", a.name, "err", err)
	}
}

// damagedLogEvery bounds how often a damaged token file is logged while
// clients keep trying the account.
const damagedLogEvery = time.Minute

// recordError writes a refresh failure into the entry's metadata, where
// `mailproxy status` and the admin page look.
func (m *Manager) recordError(a *account, te *TokenError) {
	msg := te.Error()
	a.mu.Lock()
	same := a.lastErr == msg
	a.lastErr = msg
	a.mu.Unlock()
	if same {
		return
	}
	err := m.store.UpdateMeta(a.name, func(meta *store.Meta) {
		meta.LastError, meta.LastErrorHint, meta.NeedsSignIn = msg, te.Hint(), te.NeedsSignIn()
	})
	if err != nil {
		m.logger.Warn("could not record the refresh error in the token file", "account", a.name, "err", err)
	}
}

// recoverRotated handles a refresh token refused because another process
// on the same state dir rotated it first: that process re-sealed the entry
// with the same key, so the new tokens can be read without the password.
// It returns them for the source to hand to its waiting callers.
func (m *Manager) recoverRotated(a *account) (TokenSet, bool) {
	a.mu.Lock()
	key, stamp := a.key, a.stamp
	a.mu.Unlock()
	if key == nil {
		return TokenSet{}, false
	}
	cur, err := m.store.Stamp(a.name)
	if err != nil || cur == stamp {
		return TokenSet{}, false
	}
	e, err := m.store.UnlockWithKey(a.name, key)
	if err != nil {
		return TokenSet{}, false // a new sign-in under another password: the next login reads it
	}
	a.mu.Lock()
	a.stamp, a.meta, a.lastErr = e.Stamp, e.Meta, ""
	a.rtSum = sha256.Sum256([]byte(e.Secret.RefreshToken))
	a.mu.Unlock()
	m.logger.Info("another process rotated the tokens first; using the ones on file", "account", a.name)
	return e.Secret, true
}

// Flush saves every source's rotated tokens that are not on disk yet (a
// save that failed, say on a full disk) and returns the accounts whose
// tokens still could not be saved.
func (m *Manager) Flush() (unsaved []string) {
	m.mu.Lock()
	accts := make([]*account, 0, len(m.accounts))
	for _, a := range m.accounts {
		accts = append(accts, a)
	}
	m.mu.Unlock()
	for _, a := range accts {
		a.mu.Lock()
		src := a.source
		a.mu.Unlock()
		if src != nil && src.Flush() {
			unsaved = append(unsaved, a.name)
		}
	}
	return unsaved
}

// Seal writes a new entry for username, sealed with a fresh key derived from
// password (`mailproxy login`, the admin page, demo), and forgets what was
// cached for the account, so the next Open reads the new entry.
func (m *Manager) Seal(username, password string, ts TokenSet, meta store.Meta) error {
	key, err := m.store.NewKey(password)
	if err != nil {
		return fmt.Errorf("seal tokens for %q: %w", username, err)
	}
	now := m.now()
	if meta.Created.IsZero() {
		meta.Created = now
	}
	if meta.Identity == "" {
		meta.Identity = IdentityFromIDToken(ts.IDToken)
	}
	if meta.RefreshObtained.IsZero() {
		meta.RefreshObtained = ts.Obtained
		if meta.RefreshObtained.IsZero() {
			meta.RefreshObtained = now
		}
	}
	meta.AccessExpiry = ts.Expiry
	meta.LastError, meta.LastErrorHint, meta.NeedsSignIn = "", "", false
	if err := m.store.Save(username, key, &store.Entry{Meta: meta, Secret: ts}); err != nil {
		return fmt.Errorf("seal tokens for %q: %w", username, err)
	}
	if a := m.account(username); a != nil {
		a.mu.Lock()
		a.pwMAC = nil
		a.lastErr = ""
		a.mu.Unlock()
	}
	return nil
}

// AccountStatus describes an account for `status` and the admin page. It
// holds no secret.
type AccountStatus struct {
	Username        string
	SignedIn        bool // a token entry exists
	Open            bool // a login opened the entry since this process started
	Identity        string
	Flow            string
	AccessExpiry    time.Time
	RefreshObtained time.Time // the refresh token's age counts from here (90 days of inactivity)
	LastRefresh     time.Time
	LastError       string
	Hint            string
	NeedsSignIn     bool
	Unsaved         bool // rotated tokens this process could not store yet
}

// Status returns what is known about username from its entry's metadata and,
// when open, its live Source.
func (m *Manager) Status(username string) (st AccountStatus) {
	st = AccountStatus{Username: strings.ToLower(username)}
	defer func() { st.Hint = cmdline.Expand(st.Hint, username) }()
	if a := m.account(username); a != nil {
		a.mu.Lock()
		st.Flow = a.cfg.Flow
		a.mu.Unlock()
	}
	meta, err := m.store.ReadMeta(username)
	if err != nil {
		st.NeedsSignIn = true
		if errors.Is(err, store.ErrNotSignedIn) {
			st.Hint = "not signed in: " + signInAgain
		} else {
			st.LastError = err.Error()
		}
		return st
	}
	st.SignedIn = true
	st.Identity = meta.Identity
	if meta.Flow != "" {
		st.Flow = meta.Flow
	}
	st.AccessExpiry = meta.AccessExpiry
	st.RefreshObtained = meta.RefreshObtained
	st.LastRefresh = meta.LastRefresh
	st.LastError, st.Hint, st.NeedsSignIn = meta.LastError, meta.LastErrorHint, meta.NeedsSignIn

	a := m.account(username)
	if a == nil {
		return st
	}
	a.mu.Lock()
	src := a.source
	if a.pwMAC != nil && a.identity != "" {
		st.Identity = a.identity
	}
	a.mu.Unlock()
	if src == nil {
		return st
	}
	st.Open = true
	ss := src.State()
	st.AccessExpiry = ss.Expiry
	st.Unsaved = ss.Unsaved
	if ss.LastRefresh.After(st.LastRefresh) {
		st.LastRefresh = ss.LastRefresh
	}
	if ss.LastError != nil {
		st.LastError, st.Hint, st.NeedsSignIn = ss.LastError.Error(), ss.LastError.Hint(), ss.LastError.NeedsSignIn()
	} else if !ss.LastRefresh.IsZero() {
		st.LastError, st.Hint, st.NeedsSignIn = "", "", false
	}
	return st
}
