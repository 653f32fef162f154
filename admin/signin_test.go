package admin

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// startSignIn posts "Sign in" for account and returns the redirect to the
// identity provider.
func startSignIn(t *testing.T, b *browser, account string) string {
	t.Helper()
	r := b.post("/signin", url.Values{"account": {account}, "csrf": {b.csrf()}, "method": {"authcode"}})
	if r.code != http.StatusSeeOther {
		t.Fatalf("POST /signin = %d, want 303:\n%s", r.code, r.body)
	}
	return r.header.Get("Location")
}

func TestAuthCodeSignIn(t *testing.T) {
	e := newEnv(t)
	e.idp.SignInAs(alice)
	b := e.browser()

	// POST sign-in => 303 to the IdP, with PKCE and the callback on the
	// address the browser used.
	loc := startSignIn(t, b, alice)
	u := mustURL(t, loc)
	authURL := mustURL(t, e.prov.AuthURL)
	q := u.Query()
	if u.Host != authURL.Host || u.Path != authURL.Path {
		t.Fatalf("POST /signin redirects to %s, want the IdP's authorize endpoint %s", loc, e.prov.AuthURL)
	}
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("state") == "" {
		t.Errorf("authorize request %v lacks PKCE S256 or state", q)
	}
	if got, want := q.Get("redirect_uri"), e.ts.URL+"/oauth2/callback"; got != want {
		t.Errorf("redirect_uri = %q, want %q", got, want)
	}
	if q.Get("login_hint") != alice {
		t.Errorf("login_hint = %q, want %q", q.Get("login_hint"), alice)
	}

	// The IdP redirects back to /oauth2/callback, which shows the password
	// form.
	b.follow = true
	r := b.get(loc)
	if r.code != http.StatusOK || r.url.Path != "/oauth2/callback" {
		t.Fatalf("after the IdP: %d at %s, want 200 at /oauth2/callback:\n%s", r.code, r.url, r.body)
	}
	callback := r.url.String()
	id, csrf := field(t, idRE, r.body), field(t, csrfRE, r.body)
	if !strings.Contains(r.body, "Signed in as <strong>"+alice) {
		t.Errorf("password page does not say who signed in:\n%s", r.body)
	}
	b.follow = false

	// Mismatched, empty and short passwords are refused; the sign-in
	// keeps waiting.
	for _, c := range []struct{ pw, pw2, want string }{
		{"one", "two", "The two passwords differ"},
		{"", "", "Enter a password"},
		{"123456789", "123456789", "use at least 10"},
	} {
		r := b.post("/password", url.Values{"id": {id}, "csrf": {csrf}, "password": {c.pw}, "password2": {c.pw2}})
		if r.code != http.StatusUnprocessableEntity || !strings.Contains(r.body, c.want) {
			t.Errorf("POST /password %q/%q = %d, want 422 %q", c.pw, c.pw2, r.code, c.want)
		}
	}
	if len(e.be.sealCalls()) != 0 {
		t.Fatalf("Seal called for refused passwords")
	}
	// Another browser cannot use the id, even with its own valid token.
	other := e.browser()
	if r := other.post("/password", url.Values{"id": {id}, "csrf": {other.csrf()}, "password": {"x"}, "password2": {"x"}}); r.code != http.StatusNotFound {
		t.Errorf("POST /password from another session = %d, want 404", r.code)
	}

	const localPW = "local-password-DO-NOT-SHOW-93b1"
	r = b.post("/password", url.Values{"id": {id}, "csrf": {csrf}, "password": {localPW}, "password2": {localPW}})
	if r.code != http.StatusSeeOther || r.header.Get("Location") != "/" {
		t.Fatalf("POST /password = %d %q, want 303 to /:\n%s", r.code, r.header.Get("Location"), r.body)
	}
	seals := e.be.sealCalls()
	if len(seals) != 1 {
		t.Fatalf("Seal calls = %d, want 1", len(seals))
	}
	sc := seals[0]
	if sc.username != alice || sc.password != localPW || sc.meta.Identity != alice || sc.meta.Flow != "authcode" {
		t.Errorf("Seal(%q, %q, meta %+v), want (%q, the password, identity %q, flow authcode)", sc.username, sc.password, sc.meta, alice, alice)
	}
	if sub, _, ok := e.idp.Validate(sc.ts.AccessToken); !ok || sub != alice {
		t.Errorf("sealed access token: IdP Validate() = %q, %v, want %q, true", sub, ok, alice)
	}
	if sc.ts.RefreshToken == "" || sc.ts.Expiry.IsZero() {
		t.Errorf("sealed token set has no refresh token or expiry")
	}
	page := b.get("/")
	if got := states(page.body)[alice]; got != stateSignedIn {
		t.Errorf("state of alice after sign-in = %q, want %q", got, stateSignedIn)
	}
	if !strings.Contains(page.body, "alice@example.com is signed in") {
		t.Errorf("no confirmation on the page after sign-in")
	}
	// The id is used up.
	if r := b.post("/password", url.Values{"id": {id}, "csrf": {csrf}, "password": {"x"}, "password2": {"x"}}); r.code != http.StatusNotFound {
		t.Errorf("second POST /password = %d, want 404", r.code)
	}
	// The answer cannot be replayed.
	if r := b.get(callback); r.code != http.StatusBadRequest || strings.Contains(r.body, `name="id"`) {
		t.Errorf("replayed callback = %d, want 400 without a password form", r.code)
	}

	e.log.assertNoSecrets(t, sc.ts.AccessToken, sc.ts.RefreshToken, sc.ts.IDToken, testClientSecret, localPW)
}

func TestCallbackRefusals(t *testing.T) {
	e := newEnv(t)
	e.idp.SignInAs(alice)
	b := e.browser()

	// A state nobody started.
	if r := b.get("/oauth2/callback?state=forged&code=abc"); r.code != http.StatusBadRequest || !strings.Contains(r.body, "Unknown sign-in") {
		t.Errorf("callback with an unknown state = %d, want 400 Unknown sign-in", r.code)
	}
	if r := b.get("/oauth2/callback?code=abc"); r.code != http.StatusBadRequest {
		t.Errorf("callback without state = %d, want 400", r.code)
	}

	// The right state in another browser (no flow cookie): refused, and
	// the sign-in is used up.
	loc := startSignIn(t, b, alice)
	answer := idpAnswer(t, e, loc)
	other := e.browser()
	if r := other.get(answer); r.code != http.StatusForbidden || !strings.Contains(r.body, "Wrong browser") {
		t.Errorf("callback in another browser = %d, want 403 Wrong browser:\n%s", r.code, r.body)
	}
	if r := b.get(answer); r.code != http.StatusBadRequest {
		t.Errorf("callback after a refused attempt = %d, want 400", r.code)
	}

	// A modified state is unknown.
	loc = startSignIn(t, b, alice)
	answer = idpAnswer(t, e, loc)
	au := mustURL(t, answer)
	aq := au.Query()
	aq.Set("state", aq.Get("state")+"x")
	au.RawQuery = aq.Encode()
	if r := b.get(au.String()); r.code != http.StatusBadRequest {
		t.Errorf("callback with a modified state = %d, want 400", r.code)
	}

	// Expired.
	loc = startSignIn(t, b, alice)
	answer = idpAnswer(t, e, loc)
	e.clock.Advance(flowLifetime + time.Second)
	if r := b.get(answer); r.code != http.StatusBadRequest || !strings.Contains(r.body, "expired") {
		t.Errorf("callback after the flow lifetime = %d, want 400 expired", r.code)
	}
	if n := len(e.be.sealCalls()); n != 0 {
		t.Errorf("Seal calls = %d, want 0", n)
	}
}

// idpAnswer follows the redirect to the IdP and returns where it sends the
// browser back, without going there.
func idpAnswer(t *testing.T, e *env, loc string) string {
	t.Helper()
	b := e.browser()
	r := b.get(loc)
	if r.code != http.StatusFound {
		t.Fatalf("GET IdP authorize = %d, want 302:\n%s", r.code, r.body)
	}
	return r.header.Get("Location")
}

func TestCallbackErrorAnswer(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	loc := startSignIn(t, b, alice)
	state := mustURL(t, loc).Query().Get("state")
	r := b.get("/oauth2/callback?" + url.Values{"state": {state}, "error": {"consent_required"},
		"error_description": {"AADSTS65001: The user or administrator has not consented <b>now</b>."}}.Encode())
	if r.code != http.StatusBadGateway || !strings.Contains(r.body, "did not complete") {
		t.Fatalf("callback with an error answer = %d, want 502 and 'did not complete':\n%s", r.code, r.body)
	}
	if !strings.Contains(r.body, "admin consent") { // the AADSTS65001 hint
		t.Errorf("error page lacks the hint for AADSTS65001:\n%s", r.body)
	}
	if strings.Contains(r.body, "<b>now</b>") {
		t.Errorf("error description from the URL rendered unescaped")
	}
}

func TestSignInWrongHost(t *testing.T) {
	e := newEnv(t, func(_ *env, o *Options) { o.RedirectURL = "http://localhost:8025/oauth2/callback" })
	b := e.browser()
	r := b.post("/signin", url.Values{"account": {alice}, "csrf": {b.csrf()}, "method": {"authcode"}})
	if r.code != http.StatusConflict || !strings.Contains(r.body, "http://localhost:8025/") {
		t.Errorf("POST /signin on another host than the redirect URL = %d, want 409 naming http://localhost:8025/:\n%s", r.code, r.body)
	}
}

func TestSignInRefusals(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	csrf := b.csrf()
	if r := b.post("/signin", url.Values{"account": {printer}, "csrf": {csrf}}); r.code != http.StatusBadRequest {
		t.Errorf("POST /signin for the app-only account = %d, want 400", r.code)
	}
	if r := b.post("/signin", url.Values{"account": {"nobody@example.com"}, "csrf": {csrf}}); r.code != http.StatusNotFound {
		t.Errorf("POST /signin for an unknown account = %d, want 404", r.code)
	}
}

func TestSealFailure(t *testing.T) {
	e := newEnv(t)
	e.idp.SignInAs(alice)
	e.be.sealErr = errors.New("seal tokens: disk full")
	b := e.browser()
	loc := startSignIn(t, b, alice)
	b.follow = true
	r := b.get(loc)
	b.follow = false
	id, csrf := field(t, idRE, r.body), field(t, csrfRE, r.body)
	r = b.post("/password", url.Values{"id": {id}, "csrf": {csrf}, "password": {"pw-long-enough"}, "password2": {"pw-long-enough"}})
	if r.code != http.StatusInternalServerError || !strings.Contains(r.body, "could not be stored") {
		t.Fatalf("POST /password when Seal fails = %d, want 500 'could not be stored'", r.code)
	}
	// The sign-in still waits: a retry works once the store is fixed.
	e.be.mu.Lock()
	e.be.sealErr = nil
	e.be.mu.Unlock()
	if r := b.post("/password", url.Values{"id": {id}, "csrf": {csrf}, "password": {"pw-long-enough"}, "password2": {"pw-long-enough"}}); r.code != http.StatusSeeOther {
		t.Errorf("POST /password retry = %d, want 303", r.code)
	}
}

func TestDeviceSignIn(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	r := b.post("/signin", url.Values{"account": {bob}, "csrf": {b.csrf()}, "method": {"device"}})
	if r.code != http.StatusSeeOther || !strings.HasPrefix(r.header.Get("Location"), "/device/") {
		t.Fatalf("POST /signin method=device = %d %q, want 303 to /device/...:\n%s", r.code, r.header.Get("Location"), r.body)
	}
	devicePage := r.header.Get("Location")
	code := e.idp.LastUserCode()
	r = b.get(devicePage)
	if r.code != http.StatusOK || !strings.Contains(r.body, code) || !strings.Contains(r.body, e.idp.URL+"/devicelogin") {
		t.Fatalf("device page = %d, want the user code %q and the verification address:\n%s", r.code, code, r.body)
	}
	if !strings.Contains(r.body, `<meta http-equiv="refresh" content="3">`) {
		t.Errorf("device page does not refresh itself")
	}
	if other := e.browser(); other.get(devicePage).code != http.StatusNotFound {
		t.Errorf("device page in another browser: want 404")
	}

	if err := e.idp.ApproveDevice(code, bob); err != nil {
		t.Fatalf("ApproveDevice() = %v", err)
	}
	e.waitDevice()
	r = b.get(devicePage)
	if r.code != http.StatusOK || strings.Contains(r.body, "http-equiv") {
		t.Fatalf("device page after approval = %d, want the password form without refresh:\n%s", r.code, r.body)
	}
	id, csrf := field(t, idRE, r.body), field(t, csrfRE, r.body)
	const localPW = "device-pw-DO-NOT-SHOW"
	if r := b.post("/password", url.Values{"id": {id}, "csrf": {csrf}, "password": {localPW}, "password2": {localPW}}); r.code != http.StatusSeeOther {
		t.Fatalf("POST /password = %d, want 303:\n%s", r.code, r.body)
	}
	seals := e.be.sealCalls()
	if len(seals) != 1 || seals[0].username != bob || seals[0].meta.Flow != "device" || seals[0].meta.Identity != bob {
		t.Fatalf("Seal calls = %+v, want one for %s with flow device", seals, bob)
	}
	if sub, _, ok := e.idp.Validate(seals[0].ts.AccessToken); !ok || sub != bob {
		t.Errorf("sealed access token: IdP Validate() = %q, %v, want %q", sub, ok, bob)
	}
	if got := states(b.get("/").body)[bob]; got != stateSignedIn {
		t.Errorf("state of bob = %q, want %q", got, stateSignedIn)
	}
	// The device page is done with.
	if r := b.get(devicePage); r.code != http.StatusSeeOther {
		t.Errorf("device page after the password was set = %d, want 303 to /", r.code)
	}
	e.log.assertNoSecrets(t, seals[0].ts.AccessToken, seals[0].ts.RefreshToken, testClientSecret, localPW)
}

func TestDeviceDeclinedAndCanceled(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	csrf := b.csrf()
	r := b.post("/signin", url.Values{"account": {bob}, "csrf": {csrf}, "method": {"device"}})
	devicePage := r.header.Get("Location")
	if err := e.idp.DeclineDevice(e.idp.LastUserCode()); err != nil {
		t.Fatalf("DeclineDevice() = %v", err)
	}
	e.waitDevice()
	if r := b.get(devicePage); !strings.Contains(r.body, "did not complete") || !strings.Contains(r.body, "declined") {
		t.Errorf("device page after decline = %d, want the failure:\n%s", r.code, r.body)
	}

	r = b.post("/signin", url.Values{"account": {bob}, "csrf": {csrf}, "method": {"device"}})
	devicePage = r.header.Get("Location")
	if r := b.post(devicePage+"/cancel", url.Values{"csrf": {csrf}}); r.code != http.StatusSeeOther {
		t.Errorf("POST cancel = %d, want 303", r.code)
	}
	e.waitDevice()
	if r := b.get(devicePage); r.code != http.StatusNotFound {
		t.Errorf("device page after cancel = %d, want 404", r.code)
	}
	if n := len(e.be.sealCalls()); n != 0 {
		t.Errorf("Seal calls = %d, want 0", n)
	}
}

// Close ends the polls in progress.
func TestCloseEndsDevicePolls(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	if r := b.post("/signin", url.Values{"account": {bob}, "csrf": {b.csrf()}, "method": {"device"}}); r.code != http.StatusSeeOther {
		t.Fatalf("POST /signin = %d, want 303", r.code)
	}
	e.srv.Close() // returns only when the poll goroutine is gone
	e.waitDevice()
}

// A tenant that blocks the device flow, or a device sign-in without a
// refresh token: the page says so plainly and offers the browser sign-in
// right there.
func TestDeviceRefusedOffersBrowser(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(e *env)
		want  string
	}{
		{"conditional access", func(e *env) { e.idp.BlockDeviceFlow(true) }, "Conditional Access"},
		{"no refresh token", func(e *env) { e.idp.DeviceWithoutRefreshToken(true) }, "gave no refresh token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			tc.setup(e)
			b := e.browser()
			r := b.post("/signin", url.Values{"account": {bob}, "csrf": {b.csrf()}, "method": {"device"}})
			devicePage := r.header.Get("Location")
			if err := e.idp.ApproveDevice(e.idp.LastUserCode(), bob); err != nil {
				t.Fatalf("ApproveDevice() = %v", err)
			}
			e.waitDevice()
			r = b.get(devicePage)
			if !strings.Contains(r.body, tc.want) || !strings.Contains(r.body, `aria-label="Sign in `+bob+` with the browser"`) ||
				!strings.Contains(r.body, `name="method" value="authcode"`) {
				t.Errorf("device page after the refusal = %d, want %q and a browser sign-in button:\n%s", r.code, tc.want, r.body)
			}
			if n := len(e.be.sealCalls()); n != 0 {
				t.Errorf("Seal calls = %d, want 0: a sign-in without a refresh token is not stored", n)
			}
		})
	}
}

// A Google provider (OfflineConsent) gets access_type=offline and
// prompt=consent from the admin page as from the CLI: one rule, in
// oauth.NewAuthCode.
func TestSignInOfflineConsent(t *testing.T) {
	e := newEnv(t)
	e.prov.OfflineConsent = true
	q := mustURL(t, startSignIn(t, e.browser(), alice)).Query()
	if q.Get("access_type") != "offline" || q.Get("prompt") != "consent" {
		t.Errorf("sign-in address for an OfflineConsent provider: access_type %q, prompt %q; want offline, consent", q.Get("access_type"), q.Get("prompt"))
	}
}

// A full table of sign-ins drops the one that expires first.
func TestOldestKey(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := map[string]*pendingSet{}
	for i, k := range []string{"c", "a", "d", "b"} {
		m[k] = &pendingSet{expires: base.Add(time.Duration([]int{3, 5, 1, 4}[i]) * time.Minute)}
	}
	expires := func(p *pendingSet) time.Time { return p.expires }
	for range 20 { // map order varies between runs of the loop
		if got := oldestKey(m, expires); got != "d" {
			t.Fatalf("oldestKey = %q, want \"d\" (expires first)", got)
		}
	}
	if got := oldestKey(map[string]*pendingSet{}, expires); got != "" {
		t.Errorf("oldestKey of an empty table = %q, want \"\"", got)
	}
}
