package oauth

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
)

const testRedirect = "http://localhost:8025/oauth2/callback"

// authorize opens authURL at the fake IdP like a browser would, without
// following the redirect back, and returns the answer's query.
func authorize(t *testing.T, authURL string) url.Values {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(authURL)
	if err != nil {
		t.Fatalf("GET authorize = %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("GET authorize status = %d, want 302", resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatalf("authorize Location %q: %v", resp.Header.Get("Location"), err)
	}
	return loc.Query()
}

func TestAuthCodeURL(t *testing.T) {
	e := newEnv(t)
	a, authURL := NewAuthCode(e.p, "", "shared@contoso.com")
	u, err := url.Parse(authURL)
	if err != nil {
		t.Fatalf("url.Parse(%q) = %v", authURL, err)
	}
	q := u.Query()
	want := map[string]string{
		"response_type":         "code",
		"client_id":             testClient,
		"redirect_uri":          testRedirect,
		"state":                 a.State(),
		"code_challenge_method": "S256",
		"code_challenge":        oauth2.S256ChallengeFromVerifier(a.verifier),
		"prompt":                "select_account",
		"login_hint":            "shared@contoso.com",
	}
	for k, v := range want {
		if got := q.Get(k); got != v {
			t.Errorf("auth URL %s = %q, want %q", k, got, v)
		}
	}
	if !slices.Contains(strings.Fields(q.Get("scope")), "openid") {
		t.Errorf("auth URL scope = %q, want openid among them", q.Get("scope"))
	}
	if len(a.State()) < 32 || len(a.verifier) < 43 {
		t.Errorf("state, verifier lengths = %d, %d; want >= 32, >= 43", len(a.State()), len(a.verifier))
	}
	b, _ := NewAuthCode(e.p, "", "", oauth2.SetAuthURLParam("prompt", "login"))
	if b.State() == a.State() || b.verifier == a.verifier {
		t.Errorf("two sign-ins share state or verifier")
	}
	_, u2 := NewAuthCode(e.p, "", "", oauth2.SetAuthURLParam("prompt", "login"))
	if q2, _ := url.Parse(u2); q2.Query().Get("prompt") != "login" || q2.Query().Has("login_hint") {
		t.Errorf("auth URL with override = %s; want prompt=login and no login_hint", u2)
	}
}

func TestAuthCodeExchange(t *testing.T) {
	e := newEnv(t)
	e.idp.SignInAs(testUser)
	a, authURL := NewAuthCode(e.p, testRedirect, testUser)
	a.Now = e.clock.Now
	q := authorize(t, authURL)

	ts, identity, err := a.Exchange(t.Context(), q)
	if err != nil {
		t.Fatalf("Exchange() = %v", err)
	}
	if identity != testUser {
		t.Errorf("Exchange() identity = %q, want %q", identity, testUser)
	}
	if ts.RefreshToken == "" || ts.IDToken == "" {
		t.Errorf("Exchange() refresh token or id_token missing")
	}
	if want := e.clock.Now().Add(time.Hour); !ts.Expiry.Equal(want) {
		t.Errorf("Exchange() expiry = %v, want %v", ts.Expiry, want)
	}
	e.checkValid(t, ts.AccessToken, testUser)
	if got := e.idp.Stats().AuthCodes; got != 1 {
		t.Errorf("IdP AuthCodes = %d, want 1", got)
	}
	if _, _, err := a.Exchange(t.Context(), q); !errors.Is(err, ErrUsed) {
		t.Errorf("second Exchange() = %v, want ErrUsed", err)
	}
}

func TestAuthCodeWrongState(t *testing.T) {
	e := newEnv(t)
	e.idp.SignInAs(testUser)
	a, authURL := NewAuthCode(e.p, testRedirect, "")
	q := authorize(t, authURL)

	forged := url.Values{"code": {q.Get("code")}, "state": {"not-" + q.Get("state")}}
	if _, _, err := a.Exchange(t.Context(), forged); !errors.Is(err, ErrStateMismatch) {
		t.Errorf("Exchange(wrong state) = %v, want ErrStateMismatch", err)
	}
	if _, _, err := a.Exchange(t.Context(), url.Values{"code": {q.Get("code")}}); !errors.Is(err, ErrNoState) {
		t.Errorf("Exchange(no state) = %v, want ErrNoState", err)
	}
	if got := e.idp.Stats(); got.AuthCodes != 0 || got.Errors != 0 {
		t.Errorf("IdP stats after refused answers = %+v; want no code redeemed", got)
	}
	// Refused answers do not use up the sign-in.
	if _, _, err := a.Exchange(t.Context(), q); err != nil {
		t.Errorf("Exchange(right state) after refused ones = %v", err)
	}
}

func TestAuthCodePKCEVerifierChecked(t *testing.T) {
	e := newEnv(t)
	e.idp.SignInAs(testUser)
	a, authURL := NewAuthCode(e.p, testRedirect, "")
	q := authorize(t, authURL)
	a.verifier = oauth2.GenerateVerifier() // not the one the challenge was made from
	_, _, err := a.Exchange(t.Context(), q)
	var te *TokenError
	if !errors.As(err, &te) || te.AADSTS != 501481 || te.Hint() == "" {
		t.Errorf("Exchange(wrong verifier) = %v; want a TokenError AADSTS501481 with a hint", err)
	}
}

func TestAuthCodeErrorAnswer(t *testing.T) {
	e := newEnv(t)
	a, _ := NewAuthCode(e.p, testRedirect, "")
	q := url.Values{
		"state":             {a.State()},
		"error":             {"access_denied"},
		"error_description": {"AADSTS65004: User declined to consent to access the app.\r\nTrace ID: x"},
	}
	_, _, err := a.Exchange(t.Context(), q)
	var te *TokenError
	if !errors.Is(err, ErrDeclined) || !errors.As(err, &te) || te.AADSTS != 65004 || te.Hint() == "" {
		t.Fatalf("Exchange(access_denied) = %v; want ErrDeclined and a TokenError AADSTS65004 with a hint", err)
	}
	if !strings.Contains(err.Error(), "User declined") || strings.ContainsAny(err.Error(), "\r\n") {
		t.Errorf("Exchange(access_denied) error = %q; want the description's first line, no line breaks", err)
	}

	b, _ := NewAuthCode(e.p, testRedirect, "")
	q = url.Values{"state": {b.State()}, "error": {"invalid_request"}, "error_description": {"AADSTS50011: The redirect URI ..."}}
	if _, _, err := b.Exchange(t.Context(), q); !errors.As(err, &te) || te.AADSTS != 50011 || errors.Is(err, ErrDeclined) {
		t.Errorf("Exchange(AADSTS50011) = %v; want a TokenError AADSTS50011", err)
	}
}

func TestParseCallback(t *testing.T) {
	tests := []struct {
		in        string
		wantCode  string
		wantError string // substring; "" = no error
	}{
		{"http://localhost:8025/oauth2/callback?code=abc&state=xyz&session_state=1", "abc", ""},
		{"  http://localhost/oauth2/callback?code=abc&state=xyz\n", "abc", ""},
		{"code=abc&state=xyz", "abc", ""},
		{"?code=abc&state=xyz", "abc", ""},
		{"/oauth2/callback?code=abc&state=xyz", "abc", ""},
		{"http://localhost/cb#code=abc&state=xyz", "abc", ""},
		{"http://localhost/cb?error=access_denied&state=xyz", "", ""},
		{"abc", "", "no code= and state="},
		{"code=abc", "", "state"},
		{"http://localhost/cb?code=abc", "", "state"},
		{"", "", "nothing was pasted"},
	}
	for _, tt := range tests {
		q, err := ParseCallback(tt.in)
		switch {
		case tt.wantError == "" && err != nil:
			t.Errorf("ParseCallback(%q) = %v, want no error", tt.in, err)
		case tt.wantError != "" && (err == nil || !strings.Contains(err.Error(), tt.wantError)):
			t.Errorf("ParseCallback(%q) = %v, want an error containing %q", tt.in, err, tt.wantError)
		case err == nil && (q.Get("code") != tt.wantCode || q.Get("state") != "xyz"):
			t.Errorf("ParseCallback(%q) = %v, want code %q and state xyz", tt.in, q, tt.wantCode)
		}
	}
}

// browser follows the sign-in address to the fake IdP and back to the
// loopback listener, like a browser with a signed-in session.
type browser struct {
	t     *testing.T
	mu    sync.Mutex // protects pages
	pages []string
	first func(authURL string) // runs before following authURL
}

func (b *browser) open(authURL string) error {
	if b.first != nil {
		b.first(authURL)
	}
	resp, err := http.Get(authURL)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	b.mu.Lock()
	b.pages = append(b.pages, string(body))
	b.mu.Unlock()
	return err
}

func TestBrowserFlow(t *testing.T) {
	e := newEnv(t)
	e.idp.SignInAs(testUser)
	var out strings.Builder
	var forgedStatus int
	b := &browser{t: t, first: func(authURL string) {
		// An answer with a foreign state is refused and the flow waits on.
		u, _ := url.Parse(authURL)
		redirect := u.Query().Get("redirect_uri")
		resp, err := http.Get(redirect + "?code=forged&state=forged")
		if err != nil {
			t.Errorf("GET %s = %v", redirect, err)
			return
		}
		resp.Body.Close()
		forgedStatus = resp.StatusCode
	}}
	f := &BrowserFlow{Provider: e.p, RedirectURL: testRedirect, LoginHint: testUser, Open: b.open, Out: &out, Now: e.clock.Now}
	ts, identity, err := f.Run(t.Context())
	if err != nil {
		t.Fatalf("BrowserFlow.Run() = %v", err)
	}
	if identity != testUser {
		t.Errorf("BrowserFlow.Run() identity = %q, want %q", identity, testUser)
	}
	e.checkValid(t, ts.AccessToken, testUser)
	if forgedStatus != http.StatusBadRequest {
		t.Errorf("forged answer status = %d, want 400", forgedStatus)
	}
	if len(b.pages) != 1 || !strings.Contains(b.pages[0], "Signed in") {
		t.Errorf("callback pages = %q, want one saying Signed in", b.pages)
	}
	if !strings.Contains(out.String(), "http://localhost:") || !strings.Contains(out.String(), "/oauth2/callback") {
		t.Errorf("instructions = %q, want the loopback redirect address", out.String())
	}
	if strings.Contains(out.String(), ":8025/") {
		t.Errorf("instructions = %q; the listener must not use the configured port", out.String())
	}
}

func TestBrowserFlowOpenFails(t *testing.T) {
	e := newEnv(t)
	e.idp.SignInAs(testUser)
	var out strings.Builder
	ctx, cancel := context.WithCancel(t.Context())
	f := &BrowserFlow{Provider: e.p, Out: &out, Open: func(string) error {
		cancel() // nobody will open the address
		return errors.New("no display")
	}}
	_, _, err := f.Run(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("BrowserFlow.Run() = %v, want context.Canceled", err)
	}
	if !strings.Contains(out.String(), "no display") || !strings.Contains(out.String(), "by hand") {
		t.Errorf("instructions = %q, want the opener's failure and to open by hand", out.String())
	}
}

func TestBrowserFlowNotLoopback(t *testing.T) {
	e := newEnv(t)
	f := &BrowserFlow{Provider: e.p, RedirectURL: "https://mail.example.com/oauth2/callback"}
	if _, _, err := f.Run(t.Context()); !errors.Is(err, ErrNotLoopback) {
		t.Errorf("BrowserFlow.Run(https redirect) = %v, want ErrNotLoopback", err)
	}
}

// deviceEnv drives a device flow: Wait advances the flow's clock (and the
// IdP's, unless idpClock is separate) and runs hook with the call number.
type deviceEnv struct {
	*env
	flow  *DeviceFlow
	waits []time.Duration
	hook  func(n int, dc *DeviceCode)
	dc    *DeviceCode
}

func newDeviceEnv(t *testing.T) *deviceEnv {
	t.Helper()
	d := &deviceEnv{env: newEnv(t)}
	d.flow = &DeviceFlow{Provider: d.p, Now: d.clock.Now, Wait: func(ctx context.Context, dur time.Duration) error {
		d.waits = append(d.waits, dur)
		d.clock.Advance(dur)
		if d.hook != nil {
			d.hook(len(d.waits), d.dc)
		}
		return ctx.Err()
	}}
	return d
}

func (d *deviceEnv) run(t *testing.T) (TokenSet, string, error) {
	t.Helper()
	dc, err := d.flow.Start(t.Context())
	if err != nil {
		t.Fatalf("DeviceFlow.Start() = %v", err)
	}
	d.dc = dc
	return d.flow.Poll(t.Context(), dc)
}

func (d *deviceEnv) approveAt(t *testing.T, call int) {
	d.hook = func(n int, dc *DeviceCode) {
		if n == call {
			if err := d.idp.ApproveDevice(dc.UserCode, testUser); err != nil {
				t.Errorf("ApproveDevice(%q) = %v", dc.UserCode, err)
			}
		}
	}
}

func TestDeviceFlow(t *testing.T) {
	d := newDeviceEnv(t)
	d.approveAt(t, 2)
	ts, identity, err := d.run(t)
	if err != nil {
		t.Fatalf("DeviceFlow.Poll() = %v", err)
	}
	if identity != testUser || ts.RefreshToken == "" {
		t.Errorf("DeviceFlow.Poll() identity = %q, refresh token %t; want %q, true", identity, ts.RefreshToken != "", testUser)
	}
	d.checkValid(t, ts.AccessToken, testUser)
	if want := []time.Duration{5 * time.Second, 5 * time.Second}; !slices.Equal(d.waits, want) {
		t.Errorf("poll waits = %v, want %v", d.waits, want)
	}
	if want := d.clock.Now().Add(15*time.Minute - 10*time.Second); !d.dc.Expiry.Equal(want) {
		// Start ran 10s of fake time ago; x/oauth2's wall-clock conversion
		// may lose a moment.
		if diff := d.dc.Expiry.Sub(want); diff > time.Second || diff < -time.Second {
			t.Errorf("DeviceCode.Expiry = %v, want about %v", d.dc.Expiry, want)
		}
	}
	if got := d.dc.Instructions(); !strings.Contains(got, d.dc.UserCode) || !strings.Contains(got, "/devicelogin") {
		t.Errorf("Instructions() = %q, want the code and the address", got)
	}
}

func TestDeviceFlowSlowDown(t *testing.T) {
	d := newDeviceEnv(t)
	d.idp.ForceSlowDown(2)
	d.approveAt(t, 3)
	if _, _, err := d.run(t); err != nil {
		t.Fatalf("DeviceFlow.Poll() = %v", err)
	}
	if want := []time.Duration{5 * time.Second, 10 * time.Second, 15 * time.Second}; !slices.Equal(d.waits, want) {
		t.Errorf("poll waits = %v, want %v (+5s per slow_down)", d.waits, want)
	}
}

func TestDeviceFlowExpiredAtIdP(t *testing.T) {
	d := newDeviceEnv(t)
	idpClock := testutil.NewClock()
	d.idp.SetClock(idpClock.Now)
	d.hook = func(n int, _ *DeviceCode) {
		idpClock.Advance(5 * time.Second)
		if n == 2 {
			idpClock.Advance(16 * time.Minute) // only the IdP's clock jumps
		}
	}
	_, _, err := d.run(t)
	var te *TokenError
	if !errors.Is(err, ErrDeviceExpired) || !errors.As(err, &te) || te.Code != "expired_token" {
		t.Errorf("DeviceFlow.Poll() = %v; want ErrDeviceExpired wrapping expired_token", err)
	}
	if len(d.waits) != 2 {
		t.Errorf("polls = %d, want 2", len(d.waits))
	}
}

func TestDeviceFlowExpiredLocally(t *testing.T) {
	d := newDeviceEnv(t)
	d.hook = func(n int, _ *DeviceCode) {
		if n == 3 {
			d.clock.Advance(15 * time.Minute)
		}
	}
	_, _, err := d.run(t)
	if !errors.Is(err, ErrDeviceExpired) {
		t.Errorf("DeviceFlow.Poll() = %v, want ErrDeviceExpired", err)
	}
	if got := d.idp.Stats().Errors; got != 0 {
		t.Errorf("IdP errors = %d, want 0: no poll after the code expired", got)
	}
}

func TestDeviceFlowDeclined(t *testing.T) {
	d := newDeviceEnv(t)
	d.hook = func(n int, dc *DeviceCode) {
		if n == 1 {
			if err := d.idp.DeclineDevice(dc.UserCode); err != nil {
				t.Errorf("DeclineDevice() = %v", err)
			}
		}
	}
	_, _, err := d.run(t)
	var te *TokenError
	if !errors.Is(err, ErrDeclined) || !errors.As(err, &te) || te.Code != "authorization_declined" {
		t.Errorf("DeviceFlow.Poll() = %v; want ErrDeclined wrapping authorization_declined", err)
	}
}

func TestDeviceFlowRidesOutTemporaryFailures(t *testing.T) {
	d := newDeviceEnv(t)
	d.idp.SetFailure(&fake365.Failure{Status: http.StatusServiceUnavailable})
	d.hook = func(n int, dc *DeviceCode) {
		if n == 3 {
			d.idp.SetFailure(nil)
			if err := d.idp.ApproveDevice(dc.UserCode, testUser); err != nil {
				t.Errorf("ApproveDevice() = %v", err)
			}
		}
	}
	if _, _, err := d.run(t); err != nil {
		t.Fatalf("DeviceFlow.Poll() = %v, want success after the IdP recovered", err)
	}

	d2 := newDeviceEnv(t)
	dc, err := d2.flow.Start(t.Context())
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	d2.idp.SetFailure(&fake365.Failure{Status: http.StatusServiceUnavailable})
	_, _, err = d2.flow.Poll(t.Context(), dc)
	var te *TokenError
	if !errors.As(err, &te) || !te.Temporary() || len(d2.waits) != maxPollFailures+1 {
		t.Errorf("Poll() with the IdP down = %v after %d polls; want a temporary TokenError after %d", err, len(d2.waits), maxPollFailures+1)
	}
}

func TestDeviceFlowCanceled(t *testing.T) {
	d := newDeviceEnv(t)
	ctx, cancel := context.WithCancel(t.Context())
	dc, err := d.flow.Start(ctx)
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	d.hook = func(n int, _ *DeviceCode) {
		if n == 2 {
			cancel()
		}
	}
	if _, _, err := d.flow.Poll(ctx, dc); !errors.Is(err, context.Canceled) {
		t.Errorf("Poll() after cancel = %v, want context.Canceled", err)
	}
}

func TestDeviceFlowNoEndpoint(t *testing.T) {
	e := newEnv(t)
	p := *e.p
	p.DeviceAuthURL = ""
	if _, err := (&DeviceFlow{Provider: &p}).Start(t.Context()); err == nil {
		t.Errorf("Start() without device endpoint = nil, want an error")
	}
	p.DeviceAuthURL = e.idp.URL + "/nope"
	if _, err := (&DeviceFlow{Provider: &p}).Start(t.Context()); err == nil {
		t.Errorf("Start() against a 404 = nil, want an error")
	}
}

func TestProbeTokenEndpoint(t *testing.T) {
	e := newEnv(t)
	if err := ProbeTokenEndpoint(t.Context(), e.p); err != nil {
		t.Errorf("ProbeTokenEndpoint() = %v, want nil", err)
	}
	if got := e.idp.Stats().AuthCodes; got != 0 {
		t.Errorf("IdP AuthCodes = %d after a probe, want 0", got)
	}

	tests := []struct {
		name   string
		modify func(p *Provider)
		aadsts int
	}{
		{"wrong secret", func(p *Provider) { p.ClientSecret = "wrong" }, 7000215},
		{"unknown client", func(p *Provider) { p.ClientID = "nobody" }, 700016},
		{"not an OAuth endpoint", func(p *Provider) { p.TokenURL = e.idp.URL + "/nope" }, 0},
		{"nothing listening", func(p *Provider) { p.TokenURL = "http://127.0.0.1:1/token" }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := *e.p
			tt.modify(&p)
			err := ProbeTokenEndpoint(t.Context(), &p)
			var te *TokenError
			if !errors.As(err, &te) || te.AADSTS != tt.aadsts {
				t.Errorf("ProbeTokenEndpoint() = %v; want a TokenError with AADSTS%d", err, tt.aadsts)
			}
			if err != nil && strings.Contains(err.Error(), "wrong") {
				t.Errorf("ProbeTokenEndpoint() = %q quotes the client secret", err)
			}
		})
	}
}

func TestAuthCodeURLOfflineConsent(t *testing.T) {
	e := newEnv(t)
	for _, offline := range []bool{false, true} {
		p := *e.p
		p.OfflineConsent = offline
		_, authURL := NewAuthCode(&p, "", "")
		u, err := url.Parse(authURL)
		if err != nil {
			t.Fatalf("url.Parse(%q) = %v", authURL, err)
		}
		wantType, wantPrompt := "", "select_account"
		if offline {
			wantType, wantPrompt = "offline", "consent"
		}
		if q := u.Query(); q.Get("access_type") != wantType || q.Get("prompt") != wantPrompt {
			t.Errorf("OfflineConsent %v: access_type %q, prompt %q; want %q, %q", offline, q.Get("access_type"), q.Get("prompt"), wantType, wantPrompt)
		}
	}
}
