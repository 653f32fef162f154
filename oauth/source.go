package oauth

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// Source gives the access tokens of one delegated account and keeps them
// fresh. One Source is shared by every session of the account:
//
//   - Token refreshes once less than half of the token's lifetime is left
//     (30 minutes when the lifetime is unknown), so a new upstream session
//     starts with most of the token's life ahead;
//   - concurrent callers share one request to the token endpoint;
//   - a rotated refresh token is handed to persist before the new access
//     token is handed out; if persist fails the tokens are kept in memory
//     and persisting is retried on the next call;
//   - while the identity provider fails for a temporary reason, the current
//     access token is handed out as long as it has a minute left, and no
//     new attempt is made before a backoff has passed. The refresh token is
//     never dropped.
type Source struct {
	// Now is the clock; nil means time.Now. Set it before first use.
	Now func() time.Time
	// OnError, if set, is called with every failed refresh, before the
	// waiting callers get the error. Keep it short: it delays them.
	OnError func(*TokenError)
	// OnRefresh, if set, is called after every request to the token
	// endpoint with its outcome (for metrics). Keep it short.
	OnRefresh func(ok bool)

	fetch   func(ctx context.Context, p *Provider, cur TokenSet) (TokenSet, error)
	persist func(TokenSet) error
	// recover, if set, is asked after a refresh that needs a new sign-in
	// whether tokens already on file replace the refused ones (another
	// process rotated the refresh token first); they go to the waiting
	// callers as if the refresh had returned them.
	recover func() (TokenSet, bool)
	logger  *slog.Logger

	persistMu sync.Mutex // serializes persist calls, so an older set never overwrites a newer one
	// redeemMu is held across every redemption of the refresh token,
	// this source's and its Graph source's: each rotation kills the token
	// the other would send.
	redeemMu sync.Mutex
	// parent is the source whose refresh token a Graph source redeems; nil
	// for an account's own source.
	parent *Source

	mu          sync.Mutex // protects the fields below
	provider    *Provider
	ts          TokenSet
	gen         uint64        // incremented by SetTokens: refreshes started before are discarded
	dirty       bool          // ts holds rotated tokens not yet persisted
	call        *refreshCall  // the refresh in flight, if any
	lastErr     *TokenError   // the last refresh failure; nil after a success
	retryAt     time.Time     // no new refresh before this, after a failure
	backoff     time.Duration // the last backoff, doubled on each failure
	lastRefresh time.Time
	warnedAt    time.Time
	graph       *Source // the Graph source, once asked for
}

// refreshCall is one request to the token endpoint, shared by every caller
// that arrives while it runs.
type refreshCall struct {
	done chan struct{} // closed when ts and err are set
	ts   TokenSet
	err  *TokenError
}

// NewSource makes the token source of a delegated account from its current
// tokens. persist (nil: none) stores rotated tokens; it must not log them.
func NewSource(p *Provider, ts TokenSet, persist func(TokenSet) error, logger *slog.Logger) *Source {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Source{
		persist:  persist,
		logger:   logger,
		provider: p,
		ts:       ts,
	}
	s.fetch = func(ctx context.Context, p *Provider, cur TokenSet) (TokenSet, error) {
		return s.redeem(ctx, p, cur, p.refreshScopes(cur.Scopes), false)
	}
	return s
}

// redeem redeems the account's refresh token for scopes. It runs under
// redeemMu and reads the refresh token there, so that it always sends the
// latest one, and adopts the rotated one before letting the next
// redemption in. cur carries what to keep (IDToken, Scopes).
func (s *Source) redeem(ctx context.Context, p *Provider, cur TokenSet, scopes []string, persist bool) (TokenSet, error) {
	s.redeemMu.Lock()
	defer s.redeemMu.Unlock()
	s.mu.Lock()
	rt, gen := s.ts.RefreshToken, s.gen
	s.mu.Unlock()
	if rt == "" {
		return TokenSet{}, &TokenError{Code: "missing_refresh_token", Err: errors.New("no refresh token stored")}
	}
	start := clockFrom(ctx)
	tok, err := p.refresh(ctx, rt, scopes)
	if err != nil {
		return TokenSet{}, err
	}
	ts := TokenSetFrom(tok, start, cur.Scopes)
	if ts.RefreshToken == "" {
		ts.RefreshToken = rt
	}
	if ts.IDToken == "" {
		ts.IDToken = cur.IDToken
	}
	if ts.RefreshToken != rt {
		s.mu.Lock()
		adopted := s.gen == gen
		if adopted {
			s.ts.RefreshToken = ts.RefreshToken
			s.dirty = true
		}
		s.mu.Unlock()
		if adopted && persist {
			s.persistCurrent(true)
		}
	}
	return ts, nil
}

// Graph returns the source of the account's Microsoft Graph access tokens
// (the provider's GraphScopes), redeemed with this source's refresh token:
// a rotated refresh token goes back here and is persisted before the next
// redemption. It shares single flight, refresh ahead and backoff with
// every caller of the Graph source; its failures are reported like this
// source's. The same Graph source is returned every time.
func (s *Source) Graph() *Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.graph == nil {
		g := &Source{Now: s.Now, OnError: s.OnError, OnRefresh: s.OnRefresh, logger: s.logger.With("resource", "graph"), provider: s.provider, parent: s}
		g.fetch = func(ctx context.Context, p *Provider, cur TokenSet) (TokenSet, error) {
			ts, err := s.redeem(ctx, p, cur, p.GraphScopes, true)
			ts.RefreshToken = "" // the parent keeps it
			return ts, err
		}
		s.graph = g
	}
	return s.graph
}

// clockKey carries the source's clock to fetch functions, so that "obtained"
// is measured with the same clock as expiry decisions.
type clockKey struct{}

func clockFrom(ctx context.Context) time.Time {
	if now, ok := ctx.Value(clockKey{}).(func() time.Time); ok {
		return now()
	}
	return time.Now()
}

func (s *Source) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// needsRefresh reports whether ts should be refreshed before use: at
// half-life, or once it has less than minLife left (unless its whole life
// is shorter: then a new one would not be better).
func needsRefresh(ts TokenSet, now time.Time, minLife time.Duration) bool {
	if ts.AccessToken == "" || ts.Expiry.IsZero() {
		return true
	}
	left := ts.Expiry.Sub(now)
	lifetime := ts.Expiry.Sub(ts.Obtained)
	if ts.Obtained.IsZero() || lifetime <= 0 {
		return left < max(refreshMargin, minLife)
	}
	if minLife > 0 && lifetime > minLife && left < minLife {
		return true
	}
	return left < lifetime/2
}

// usable reports whether ts may still be handed out when a refresh failed
// or is slow.
func usable(ts TokenSet, now time.Time, minLife time.Duration) bool {
	return ts.AccessToken != "" && ts.Expiry.Sub(now) > max(minUsable, minLife)
}

// minLife is the provider's minimum token lifetime. s.mu must be held.
func (s *Source) minLifeLocked() time.Duration {
	if s.provider == nil {
		return 0
	}
	return s.provider.MinTokenLifetime
}

func (s *Source) minLife() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.minLifeLocked()
}

// Token returns an access token with at least half of its life left,
// refreshing first when needed.
func (s *Source) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	if c := s.call; c != nil {
		s.mu.Unlock()
		return s.wait(ctx, c, false)
	}
	now := s.now()
	ts := s.ts
	minLife := s.minLifeLocked()
	if !needsRefresh(ts, now, minLife) {
		dirty := s.dirty
		s.mu.Unlock()
		if dirty {
			s.persistCurrent(false)
		}
		return ts.AccessToken, nil
	}
	if now.Before(s.retryAt) {
		err := s.lastErr
		s.mu.Unlock()
		if usable(ts, now, minLife) {
			s.warnServing(err)
			return ts.AccessToken, nil
		}
		return "", backingOff(err)
	}
	c := s.startLocked(ctx)
	s.mu.Unlock()
	return s.wait(ctx, c, false)
}

// Refresh is called after the upstream refused rejected. If the current
// access token is another one, Refresh returns that (refreshing it if it is
// due); else it forces one refresh, shared with concurrent callers.
func (s *Source) Refresh(ctx context.Context, rejected string) (string, error) {
	s.mu.Lock()
	if c := s.call; c != nil {
		s.mu.Unlock()
		return s.wait(ctx, c, true)
	}
	if s.ts.AccessToken != rejected && s.ts.AccessToken != "" {
		s.mu.Unlock()
		return s.Token(ctx)
	}
	if s.now().Before(s.retryAt) {
		err := s.lastErr
		s.mu.Unlock()
		return "", backingOff(err)
	}
	c := s.startLocked(ctx)
	s.mu.Unlock()
	return s.wait(ctx, c, true)
}

// startLocked starts a refresh. It runs in its own goroutine, detached from
// ctx's cancellation, so that a caller giving up does not fail the others.
func (s *Source) startLocked(ctx context.Context) *refreshCall {
	c := &refreshCall{done: make(chan struct{})}
	s.call = c
	ctx = context.WithValue(context.WithoutCancel(ctx), clockKey{}, s.now)
	go s.run(ctx, c, s.provider, s.ts, s.gen)
	return c
}

func (s *Source) run(ctx context.Context, c *refreshCall, p *Provider, cur TokenSet, gen uint64) {
	ctx, cancel := context.WithTimeout(ctx, tokenRequestTimeout)
	defer cancel()
	ts, err := s.fetch(ctx, p, cur)
	now := s.now()

	if err != nil && s.recover != nil && classify(err).NeedsSignIn() {
		if rec, ok := s.recover(); ok {
			s.mu.Lock()
			if s.gen == gen {
				s.ts, s.dirty, s.lastErr, s.backoff, s.retryAt = rec, false, nil, 0, time.Time{}
			}
			c.ts = rec
			s.call = nil
			s.mu.Unlock()
			close(c.done)
			return
		}
	}
	if err != nil {
		te := classify(err)
		backoff := s.fail(te, now, gen)
		level := slog.LevelWarn
		if te.NeedsSignIn() {
			level = slog.LevelError
		}
		s.logger.Log(ctx, level, "token refresh failed",
			"err", te, "hint", te.Hint(), "needs_sign_in", te.NeedsSignIn(), "retry_in", backoff.Round(time.Second))
		if s.OnError != nil {
			s.OnError(te)
		}
		if s.OnRefresh != nil {
			s.OnRefresh(false)
		}
		s.mu.Lock()
		c.err = te
		s.call = nil
		s.mu.Unlock()
		close(c.done)
		return
	}

	if s.OnRefresh != nil {
		s.OnRefresh(true)
	}
	s.mu.Lock()
	current := s.gen == gen
	if current {
		latest := s.ts.RefreshToken
		s.ts = ts
		if latest != cur.RefreshToken {
			// Adopted during the redemption, perhaps rotated again by
			// the Graph source since: the newest one stays.
			s.ts.RefreshToken = latest
		}
		s.dirty = true
		s.lastErr = nil
		s.backoff = 0
		s.retryAt = time.Time{}
		s.lastRefresh = now
	}
	s.mu.Unlock()
	if current {
		// Persist before anyone gets the new access token: the old refresh
		// token is dead, so this one must survive a crash.
		s.persistCurrent(true)
		s.logger.Debug("token refreshed", "expiry", ts.Expiry, "rotated", ts.RefreshToken != cur.RefreshToken)
	}
	s.mu.Lock()
	c.ts = ts
	s.call = nil
	s.mu.Unlock()
	close(c.done)
}

// fail records a failed refresh and returns the backoff before the next.
func (s *Source) fail(te *TokenError, now time.Time, gen uint64) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != gen {
		return 0
	}
	s.lastErr = te
	switch {
	case te.NeedsSignIn():
		s.backoff = signInBackoff
	case s.backoff == 0:
		s.backoff = minBackoff
	default:
		s.backoff = min(2*s.backoff, maxBackoff)
	}
	s.retryAt = now.Add(s.backoff)
	return s.backoff
}

// wait waits for c. A failed refresh that is not forced still yields the
// current token while it is usable.
func (s *Source) wait(ctx context.Context, c *refreshCall, forced bool) (string, error) {
	minLife := s.minLife()
	var ahead <-chan time.Time
	if !forced {
		if ts, now := s.Tokens(), s.now(); ts.AccessToken != "" && ts.Expiry.Sub(now) > max(aheadUsable, minLife) {
			t := time.NewTimer(aheadWait)
			defer t.Stop()
			ahead = t.C
		}
	}
	select {
	case <-ahead:
		// The refresh ahead of expiry is slow; it goes on for the next
		// caller, this one takes the current token.
		return s.Tokens().AccessToken, nil
	case <-c.done:
		if c.err == nil {
			return c.ts.AccessToken, nil
		}
		if !forced && c.err.Temporary() {
			if ts, now := s.Tokens(), s.now(); usable(ts, now, minLife) {
				s.warnServing(c.err)
				return ts.AccessToken, nil
			}
		}
		return "", c.err
	case <-ctx.Done():
		if !forced {
			if ts, now := s.Tokens(), s.now(); usable(ts, now, minLife) {
				s.warnServing(nil)
				return ts.AccessToken, nil
			}
		}
		return "", &TokenError{Err: ctx.Err()}
	}
}

// backingOff is the error for a caller that arrives during the backoff
// after a failed refresh: the failure itself.
func backingOff(last *TokenError) error {
	if last == nil {
		return &TokenError{Err: errors.New("waiting before the next refresh attempt")}
	}
	return last
}

// warnServing logs, at most every warnEvery, that the current token is
// handed out because refreshing it failed.
func (s *Source) warnServing(err *TokenError) {
	s.mu.Lock()
	now := s.now()
	if !s.warnedAt.IsZero() && now.Sub(s.warnedAt) < warnEvery {
		s.mu.Unlock()
		return
	}
	s.warnedAt = now
	expiry := s.ts.Expiry
	s.mu.Unlock()
	attrs := []any{"expires_in", expiry.Sub(now).Round(time.Second)}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	s.logger.Warn("identity provider failing; using the current access token while it is valid", attrs...)
}

// persistCurrent hands the current tokens to persist if they are not stored
// yet. With block false it gives up when another persist is running.
// Flush saves rotated tokens that an earlier save could not store, and
// reports whether unsaved tokens remain. serve calls it at shutdown.
func (s *Source) Flush() (unsaved bool) {
	s.persistCurrent(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dirty
}

func (s *Source) persistCurrent(block bool) {
	if s.persist == nil {
		s.mu.Lock()
		s.dirty = false
		s.mu.Unlock()
		return
	}
	if block {
		s.persistMu.Lock()
	} else if !s.persistMu.TryLock() {
		return
	}
	defer s.persistMu.Unlock()
	s.mu.Lock()
	if !s.dirty {
		s.mu.Unlock()
		return
	}
	snap, gen := s.ts, s.gen
	s.mu.Unlock()

	err := s.persist(snap)

	s.mu.Lock()
	if err == nil && s.gen == gen && s.ts.RefreshToken == snap.RefreshToken && s.ts.AccessToken == snap.AccessToken {
		s.dirty = false
	}
	s.mu.Unlock()
	if err != nil {
		// Loud: if the process stops now, the account needs a new sign-in.
		s.logger.Error("could not save the rotated refresh token; keeping it in memory and retrying on next use", "err", err)
	}
}

// Tokens returns a copy of the current token set.
func (s *Source) Tokens() TokenSet {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ts
}

// SetTokens replaces the token set (a new sign-in happened). A refresh in
// flight finishes for its callers but its result is discarded, and the
// error state and backoff are reset.
func (s *Source) SetTokens(ts TokenSet) {
	s.mu.Lock()
	s.ts = ts
	s.gen++
	s.dirty = false
	s.lastErr = nil
	s.backoff = 0
	s.retryAt = time.Time{}
	g := s.graph
	s.mu.Unlock()
	if g != nil {
		// The new sign-in may have consented to other scopes: the
		// Graph source starts over with it.
		g.SetTokens(TokenSet{})
	}
}

// SetProvider replaces the provider (config reload); the next refresh uses it.
func (s *Source) SetProvider(p *Provider) {
	s.mu.Lock()
	s.provider = p
	g := s.graph
	s.mu.Unlock()
	if g != nil {
		g.SetProvider(p)
	}
}

// SourceState describes a source for status pages. It holds no secret.
type SourceState struct {
	Expiry      time.Time   // of the current access token
	LastRefresh time.Time   // last successful refresh by this process
	LastError   *TokenError // last failure; nil after a success
	Unsaved     bool        // rotated tokens could not be stored yet
}

// State returns the source's state.
func (s *Source) State() SourceState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return SourceState{Expiry: s.ts.Expiry, LastRefresh: s.lastRefresh, LastError: s.lastErr, Unsaved: s.dirty}
}

// AppSource gives app-only access tokens (client credentials grant) with the
// same sharing, refresh-ahead and failure handling as Source. Refresh after a
// rejection fetches a new token.
type AppSource struct {
	Source
}

// NewAppSource makes a client credentials source for p.AppScopes.
func NewAppSource(p *Provider, logger *slog.Logger) *AppSource {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &AppSource{Source: Source{fetch: appFetch(func(p *Provider) []string { return p.AppScopes }), logger: logger, provider: p}}
}

func appFetch(scopes func(*Provider) []string) func(context.Context, *Provider, TokenSet) (TokenSet, error) {
	return func(ctx context.Context, p *Provider, _ TokenSet) (TokenSet, error) {
		start := clockFrom(ctx)
		sc := scopes(p)
		tok, err := p.appToken(ctx, sc)
		if err != nil {
			return TokenSet{}, err
		}
		return TokenSetFrom(tok, start, sc), nil
	}
}

// Graph returns the app-only source of Microsoft Graph tokens
// (p.GraphAppScopes, https://graph.microsoft.com/.default), made once.
func (a *AppSource) Graph() *Source {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.graph == nil {
		a.graph = &Source{Now: a.Now, OnError: a.OnError, OnRefresh: a.OnRefresh, logger: a.logger.With("resource", "graph"), provider: a.provider,
			fetch: appFetch(func(p *Provider) []string { return p.GraphAppScopes })}
	}
	return a.graph
}
