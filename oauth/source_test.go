package oauth

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
)

const (
	testUser   = "alice@contoso.com"
	testClient = "client-1"
)

var testScopes = []string{
	"https://outlook.office.com/IMAP.AccessAsUser.All",
	"https://outlook.office.com/SMTP.Send",
	"offline_access",
	"openid",
}

type env struct {
	idp   *fake365.IdP
	clock *testutil.Clock
	p     *Provider
}

func newEnv(t testing.TB) *env {
	t.Helper()
	idp, err := fake365.NewIdP()
	if err != nil {
		t.Fatalf("NewIdP() = %v", err)
	}
	t.Cleanup(idp.Close)
	c := testutil.NewClock()
	idp.SetClock(c.Now)
	idp.AddClient(fake365.Client{ID: testClient, Secret: "s3cret", RedirectURIs: []string{"http://localhost/oauth2/callback"}})
	idp.AddUser(testUser)
	authURL, tokenURL, deviceURL := idp.Endpoints("contoso.onmicrosoft.com")
	p := &Provider{
		Name:          "contoso",
		ClientID:      testClient,
		ClientSecret:  "s3cret",
		AuthURL:       authURL,
		TokenURL:      tokenURL,
		DeviceAuthURL: deviceURL,
		RedirectURL:   "http://localhost:8025/oauth2/callback",
		Scopes:        testScopes,
		AppScopes:     []string{"https://outlook.office365.com/.default"},
		HTTPClient:    &http.Client{},
	}
	return &env{idp: idp, clock: c, p: p}
}

// seed returns a token set holding only a fresh refresh token.
func (e *env) seed() TokenSet {
	return TokenSet{RefreshToken: e.idp.GrantRefreshToken(testClient, testUser, testScopes), Scopes: testScopes}
}

// recorder is a persist callback that records what it was given.
type recorder struct {
	mu   sync.Mutex // protects sets, fail
	sets []TokenSet
	fail int // fail the next fail calls
}

func (r *recorder) persist(ts TokenSet) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return errors.New("disk full")
	}
	r.sets = append(r.sets, ts)
	return nil
}

func (r *recorder) last() (TokenSet, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sets) == 0 {
		return TokenSet{}, 0
	}
	return r.sets[len(r.sets)-1], len(r.sets)
}

func (e *env) source(t testing.TB, ts TokenSet, persist func(TokenSet) error) *Source {
	t.Helper()
	s := NewSource(e.p, ts, persist, slog.New(slog.DiscardHandler))
	s.Now = e.clock.Now
	return s
}

func mustToken(t testing.TB, s interface {
	Token(context.Context) (string, error)
}) string {
	t.Helper()
	tok, err := s.Token(t.Context())
	if err != nil {
		t.Fatalf("Token() = %v", err)
	}
	return tok
}

func (e *env) checkValid(t testing.TB, tok, wantSubject string) {
	t.Helper()
	sub, _, ok := e.idp.Validate(tok)
	if !ok || sub != wantSubject {
		t.Errorf("IdP.Validate(token) = %q, %v; want %q, true", sub, ok, wantSubject)
	}
}

func TestTokenRefreshAhead(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.seed(), nil)

	tok1 := mustToken(t, s) // no access token yet: refresh
	e.checkValid(t, tok1, testUser)
	if n := e.idp.Stats().Refreshes; n != 1 {
		t.Fatalf("Refreshes after first Token() = %d, want 1", n)
	}
	if ts := s.Tokens(); !ts.Obtained.Equal(e.clock.Now()) || !ts.Expiry.Equal(e.clock.Now().Add(time.Hour)) {
		t.Errorf("Tokens() obtained %v expiry %v; want now and now+1h by our clock", ts.Obtained, ts.Expiry)
	}

	e.clock.Advance(29 * time.Minute) // more than half of the hour left
	if tok := mustToken(t, s); tok != tok1 {
		t.Errorf("Token() at 29 min refreshed; want the same token")
	}
	if n := e.idp.Stats().Refreshes; n != 1 {
		t.Errorf("Refreshes at 29 min = %d, want 1", n)
	}

	e.clock.Advance(2 * time.Minute) // less than half left
	tok2 := mustToken(t, s)
	if tok2 == tok1 {
		t.Errorf("Token() at 31 min = the old token, want a refreshed one")
	}
	if n := e.idp.Stats().Refreshes; n != 2 {
		t.Errorf("Refreshes at 31 min = %d, want 2", n)
	}
	e.checkValid(t, tok2, testUser)
}

func TestTokenUnknownLifetimeMargin(t *testing.T) {
	e := newEnv(t)
	ts := e.seed()
	ts.AccessToken = "opaque"
	ts.Expiry = e.clock.Now().Add(40 * time.Minute) // Obtained unknown: 30 min margin
	s := e.source(t, ts, nil)
	if tok := mustToken(t, s); tok != "opaque" {
		t.Errorf("Token() with 40 min left = refreshed, want the current token")
	}
	e.clock.Advance(11 * time.Minute)
	if tok := mustToken(t, s); tok == "opaque" {
		t.Errorf("Token() with 29 min left = the current token, want a refresh")
	}
}

func TestTokenSingleFlight(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.seed(), nil)
	const n = 50
	var wg sync.WaitGroup
	toks := make([]string, n)
	for i := range n {
		wg.Go(func() {
			tok, err := s.Token(t.Context())
			if err != nil {
				t.Errorf("Token() = %v", err)
			}
			toks[i] = tok
		})
	}
	wg.Wait()
	if got := e.idp.Stats().Refreshes; got != 1 {
		t.Errorf("Refreshes after %d concurrent Token() = %d, want 1", n, got)
	}
	for i, tok := range toks {
		if tok != toks[0] {
			t.Fatalf("Token() #%d differs from #0", i)
		}
	}
}

func TestRotationPersistedBeforeReturn(t *testing.T) {
	e := newEnv(t)
	seed := e.seed()
	entered := make(chan TokenSet)
	release := make(chan struct{})
	var rec recorder
	s := e.source(t, seed, func(ts TokenSet) error {
		entered <- ts
		<-release
		return rec.persist(ts)
	})

	type result struct {
		tok string
		err error
	}
	got := make(chan result, 1)
	go func() {
		tok, err := s.Token(t.Context())
		got <- result{tok, err}
	}()
	persisted := <-entered
	if persisted.RefreshToken == "" || persisted.RefreshToken == seed.RefreshToken {
		t.Errorf("persist got refresh token %q, want a new (rotated) one", persisted.RefreshToken)
	}
	select {
	case r := <-got:
		t.Fatalf("Token() = %v before persist returned", r.err)
	default:
	}
	close(release)
	r := <-got
	if r.err != nil || r.tok != persisted.AccessToken {
		t.Fatalf("Token() = %v; want the persisted access token", r.err)
	}

	// The old refresh token is dead at the IdP: a second refresh works only
	// with the rotated one.
	go func() { <-entered }()
	tok2, err := s.Refresh(t.Context(), r.tok)
	if err != nil || tok2 == r.tok {
		t.Fatalf("Refresh(current) = %v; want a new token", err)
	}
	if n := e.idp.Stats().Refreshes; n != 2 {
		t.Errorf("Refreshes = %d, want 2", n)
	}
	old := e.source(t, seed, nil)
	_, err = old.Token(t.Context())
	var te *TokenError
	if !errors.As(err, &te) || !te.NeedsSignIn() {
		t.Errorf("Token() with the pre-rotation refresh token = %v, want a NeedsSignIn TokenError", err)
	}
}

func TestPersistFailureRetried(t *testing.T) {
	e := newEnv(t)
	rec := &recorder{fail: 1}
	s := e.source(t, e.seed(), rec.persist)

	tok := mustToken(t, s) // persist fails: token kept in memory
	if !s.State().Unsaved {
		t.Errorf("State().Unsaved = false after a failed persist, want true")
	}
	if _, n := rec.last(); n != 0 {
		t.Fatalf("persisted %d sets, want 0", n)
	}
	if tok2 := mustToken(t, s); tok2 != tok {
		t.Errorf("Token() after a failed persist refreshed again")
	}
	last, n := rec.last()
	if n != 1 || last.RefreshToken != s.Tokens().RefreshToken {
		t.Errorf("persist retried %d times with the current refresh token %v; want 1, true", n, last.RefreshToken == s.Tokens().RefreshToken)
	}
	if s.State().Unsaved {
		t.Errorf("State().Unsaved = true after the retry succeeded")
	}
	if n := e.idp.Stats().Refreshes; n != 1 {
		t.Errorf("Refreshes = %d, want 1", n)
	}
}

func TestInvalidGrantNeedsSignIn(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.seed(), nil)
	var hooked []*TokenError
	s.OnError = func(te *TokenError) { hooked = append(hooked, te) }
	mustToken(t, s)
	e.idp.Revoke(testUser)
	e.clock.Advance(time.Hour) // token expired

	_, err := s.Token(t.Context())
	var te *TokenError
	if !errors.As(err, &te) {
		t.Fatalf("Token() after Revoke = %v, want a *TokenError", err)
	}
	if !te.NeedsSignIn() || te.Temporary() || te.AADSTS != 70008 || te.Code != "invalid_grant" {
		t.Errorf("Token() error = %+v; want invalid_grant AADSTS70008, NeedsSignIn, not Temporary", te)
	}
	if h := te.Hint(); !strings.Contains(h, "mailproxy login") {
		t.Errorf("Hint() = %q, want it to say `mailproxy login`", h)
	}
	if got, want := te.Error(), "token endpoint: invalid_grant (AADSTS70008)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if len(hooked) != 1 || hooked[0] != te {
		t.Errorf("OnError called %d times, want once with the error", len(hooked))
	}
	if s.Tokens().RefreshToken == "" {
		t.Errorf("refresh token dropped after invalid_grant")
	}

	// Within the backoff the IdP is left alone.
	errs := e.idp.Stats().Errors
	if _, err := s.Token(t.Context()); !errors.As(err, &te) || !te.NeedsSignIn() {
		t.Errorf("Token() again = %v, want the NeedsSignIn error", err)
	}
	if got := e.idp.Stats().Errors; got != errs {
		t.Errorf("IdP errors = %d, want %d (no new request during backoff)", got, errs)
	}
}

func TestIdPDownServesCurrentToken(t *testing.T) {
	e := newEnv(t)
	var rec recorder
	s := e.source(t, e.seed(), rec.persist)
	tok := mustToken(t, s)
	rt := s.Tokens().RefreshToken
	e.clock.Advance(40 * time.Minute) // due for refresh, 20 min left

	e.idp.SetFailure(&fake365.Failure{Status: http.StatusServiceUnavailable})
	got, err := s.Token(t.Context())
	if err != nil || got != tok {
		t.Fatalf("Token() with the IdP failing = %v; want the current token", err)
	}
	if s.Tokens().RefreshToken != rt {
		t.Errorf("refresh token changed after a failed refresh")
	}
	if te := s.State().LastError; te == nil || !te.Temporary() || te.Status != http.StatusServiceUnavailable {
		t.Errorf("State().LastError = %v, want a temporary 503", te)
	}
	// Backoff: no new request right away.
	errs := e.idp.Stats().Errors
	if got, err := s.Token(t.Context()); err != nil || got != tok {
		t.Errorf("Token() during backoff = %v; want the current token", err)
	}
	if n := e.idp.Stats().Errors; n != errs {
		t.Errorf("IdP requests during backoff: errors %d, want %d", n, errs)
	}

	// The access token is nearly gone: the failure reaches the caller.
	e.idp.SetFailure(&fake365.Failure{Status: http.StatusBadGateway})
	e.clock.Advance(time.Hour)
	_, err = s.Token(t.Context())
	var te *TokenError
	if !errors.As(err, &te) || !te.Temporary() {
		t.Errorf("Token() with an expired token and the IdP failing = %v, want a temporary TokenError", err)
	}

	// Back up: the kept refresh token still works.
	e.idp.SetFailure(nil)
	e.clock.Advance(maxBackoff)
	got, err = s.Token(t.Context())
	if err != nil || got == tok {
		t.Fatalf("Token() after the IdP is back = %v; want a new token", err)
	}
	if last, _ := rec.last(); last.AccessToken != got {
		t.Errorf("new token not persisted")
	}
}

func TestIdPHangServesCurrentToken(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.seed(), nil)
	tok := mustToken(t, s)
	rt := s.Tokens().RefreshToken
	e.clock.Advance(40 * time.Minute)

	// The caller's deadline wins over the hanging request (which goes on
	// for other callers until IdP.Close releases it); the current token is
	// still good for 20 minutes.
	e.idp.SetFailure(&fake365.Failure{Hang: true})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if got, err := s.Token(ctx); err != nil || got != tok {
		t.Errorf("Token() with a hanging IdP = %v; want the current token", err)
	}
	if s.Tokens().RefreshToken != rt {
		t.Errorf("refresh token changed while the IdP hangs")
	}
	// A forced refresh cannot fall back on the rejected token.
	ctx2, cancel2 := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel2()
	if _, err := s.Refresh(ctx2, tok); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Refresh(rejected) with a hanging IdP = %v, want DeadlineExceeded", err)
	}
}

func TestRefreshRejected(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.seed(), nil)
	tokA := mustToken(t, s)

	if got, err := s.Refresh(t.Context(), "some-older-token"); err != nil || got != tokA {
		t.Errorf("Refresh(stale) = %v; want the current token", err)
	}
	if n := e.idp.Stats().Refreshes; n != 1 {
		t.Errorf("Refreshes after Refresh(stale) = %d, want 1", n)
	}

	const n = 20
	var wg sync.WaitGroup
	toks := make([]string, n)
	for i := range n {
		wg.Go(func() {
			tok, err := s.Refresh(t.Context(), tokA)
			if err != nil {
				t.Errorf("Refresh(current) = %v", err)
			}
			toks[i] = tok
		})
	}
	wg.Wait()
	if got := e.idp.Stats().Refreshes; got != 2 {
		t.Errorf("Refreshes after %d concurrent Refresh(current) = %d, want 2", n, got)
	}
	for _, tok := range toks {
		if tok == tokA || tok != toks[0] {
			t.Fatalf("Refresh(current) returned the rejected token or differing tokens")
		}
	}
	e.checkValid(t, toks[0], testUser)
}

func TestForcedRefreshFailsOnTemporaryError(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.seed(), nil)
	tok := mustToken(t, s)
	e.idp.SetFailure(&fake365.Failure{Status: http.StatusServiceUnavailable})
	// The upstream refused tok: handing it out again would not help.
	_, err := s.Refresh(t.Context(), tok)
	var te *TokenError
	if !errors.As(err, &te) || !te.Temporary() {
		t.Errorf("Refresh(rejected) with the IdP failing = %v, want a temporary TokenError", err)
	}
}

func TestMissingRefreshToken(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, TokenSet{}, nil)
	_, err := s.Token(t.Context())
	var te *TokenError
	if !errors.As(err, &te) || !te.NeedsSignIn() || !strings.Contains(te.Hint(), "offline_access") {
		t.Errorf("Token() without a refresh token = %v, want NeedsSignIn with an offline_access hint", err)
	}
}

func TestWrongClientSecret(t *testing.T) {
	e := newEnv(t)
	e.p.ClientSecret = "the-secret-id-not-its-value"
	s := e.source(t, e.seed(), nil)
	_, err := s.Token(t.Context())
	var te *TokenError
	if !errors.As(err, &te) || te.AADSTS != 7000215 || te.NeedsSignIn() || te.Temporary() {
		t.Fatalf("Token() with a wrong secret = %v, want AADSTS7000215, neither sign-in nor temporary", err)
	}
	if !strings.Contains(te.Hint(), "client_secret") {
		t.Errorf("Hint() = %q, want it to name client_secret", te.Hint())
	}
	if strings.Contains(err.Error(), "the-secret-id-not-its-value") {
		t.Errorf("error %q holds the client secret", err)
	}
}

func TestSetTokensReplaces(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.seed(), nil)
	mustToken(t, s)
	e.idp.Revoke(testUser)
	e.clock.Advance(time.Hour)
	if _, err := s.Token(t.Context()); err == nil {
		t.Fatalf("Token() after Revoke = nil error")
	}
	// A new sign-in: backoff and error are reset.
	s.SetTokens(e.seed())
	tok, err := s.Token(t.Context())
	if err != nil {
		t.Fatalf("Token() after SetTokens = %v", err)
	}
	e.checkValid(t, tok, testUser)
	if s.State().LastError != nil {
		t.Errorf("State().LastError = %v after success", s.State().LastError)
	}
}

func TestIdentityFromRefresh(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.seed(), nil)
	mustToken(t, s)
	if got := IdentityFromIDToken(s.Tokens().IDToken); got != testUser {
		t.Errorf("IdentityFromIDToken(refreshed id_token) = %q, want %q", got, testUser)
	}
}

func TestAppSource(t *testing.T) {
	e := newEnv(t)
	s := NewAppSource(e.p, nil)
	s.Now = e.clock.Now

	const n = 20
	var wg sync.WaitGroup
	toks := make([]string, n)
	for i := range n {
		wg.Go(func() {
			tok, err := s.Token(t.Context())
			if err != nil {
				t.Errorf("AppSource.Token() = %v", err)
			}
			toks[i] = tok
		})
	}
	wg.Wait()
	if got := e.idp.Stats().ClientCredentials; got != 1 {
		t.Errorf("ClientCredentials after %d concurrent Token() = %d, want 1", n, got)
	}
	e.checkValid(t, toks[0], "app:"+testClient)

	tok2, err := s.Refresh(t.Context(), toks[0])
	if err != nil || tok2 == toks[0] {
		t.Errorf("AppSource.Refresh(current) = %v; want a new token", err)
	}
	if got := e.idp.Stats().ClientCredentials; got != 2 {
		t.Errorf("ClientCredentials after Refresh = %d, want 2", got)
	}
	e.clock.Advance(31 * time.Minute)
	if tok3 := mustToken(t, s); tok3 == tok2 {
		t.Errorf("AppSource.Token() past half-life = the old token")
	}
	if got := e.idp.Stats().ClientCredentials; got != 3 {
		t.Errorf("ClientCredentials after half-life = %d, want 3", got)
	}
}

// A scope added to the provider after the account signed in (POP in a newer
// version) must not be asked for on refresh: the IdP refuses the whole
// refresh for a scope the user never consented to (AADSTS65001).
func TestRefreshAsksOnlyGrantedScopes(t *testing.T) {
	e := newEnv(t)
	e.p.Scopes = append(slices.Clone(testScopes), "https://outlook.office.com/POP.AccessAsUser.All")
	s := e.source(t, e.seed(), nil)
	tok := mustToken(t, s)
	e.checkValid(t, tok, testUser)

	// A token set that recorded no scopes asks for the provider's, and
	// this grant lacks POP: the IdP must refuse it, or the test above
	// proves nothing.
	bare := TokenSet{RefreshToken: e.idp.GrantRefreshToken(testClient, testUser, testScopes)}
	if _, err := e.source(t, bare, nil).Token(t.Context()); err == nil {
		t.Fatalf("Token() with no recorded scopes = nil error, want the IdP's refusal of the ungranted POP scope")
	}
}
