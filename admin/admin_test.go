package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"mailproxy/oauth"
)

const (
	carol = "carol@example.com"
	dave  = "dave@example.com"
	erin  = "erin@example.com"
)

// seedStates gives the backend one account in every state.
func seedStates(e *env) {
	now := e.clock.Now()
	e.be.mu.Lock()
	e.be.accounts = append(e.be.accounts,
		AccountInfo{Username: carol, Provider: "contoso", Flow: "authcode"},
		AccountInfo{Username: dave, Provider: "contoso", Flow: "authcode"},
		AccountInfo{Username: erin, Provider: "contoso", Flow: "authcode"},
	)
	e.be.mu.Unlock()
	e.be.setStatus(oauth.AccountStatus{Username: alice, SignedIn: true, Identity: alice, Flow: "authcode",
		AccessExpiry: now.Add(50 * time.Minute), RefreshObtained: now.Add(-2 * time.Hour), LastRefresh: now.Add(-10 * time.Minute)})
	// bob: refresh failed with invalid_grant.
	e.be.setStatus(oauth.AccountStatus{Username: bob, SignedIn: true, Flow: "device", NeedsSignIn: true,
		AccessExpiry: now.Add(-time.Hour), RefreshObtained: now.Add(-30 * 24 * time.Hour),
		LastError: "token endpoint: invalid_grant (AADSTS70008)", Hint: oauth.HintFor("invalid_grant", 70008)})
	// carol: never signed in (the backend's default status).
	// dave: identity provider unreachable.
	e.be.setStatus(oauth.AccountStatus{Username: dave, SignedIn: true, Flow: "authcode",
		AccessExpiry: now.Add(20 * time.Minute), RefreshObtained: now.Add(-24 * time.Hour),
		LastError: "token endpoint: HTTP 503", Hint: "the identity provider is unreachable or failing"})
	// erin: signed in, but idle for 80 days.
	e.be.setStatus(oauth.AccountStatus{Username: erin, SignedIn: true, Flow: "authcode",
		AccessExpiry: now.Add(-79 * 24 * time.Hour), RefreshObtained: now.Add(-80 * 24 * time.Hour)})
}

func TestIndexStates(t *testing.T) {
	e := newEnv(t)
	seedStates(e)
	e.metrics.Session(alice, 1)
	e.metrics.UpstreamResult(alice, "imap", nil)
	e.metrics.Session(alice, 1)
	e.metrics.Session(alice, -1)

	r := e.browser().get("/")
	if r.code != http.StatusOK {
		t.Fatalf("GET / = %d, want 200", r.code)
	}
	want := map[string]string{
		alice:   stateSignedIn,
		bob:     stateNeedsSignIn,
		carol:   stateNeedsSignIn,
		dave:    stateError,
		erin:    stateSignedIn,
		printer: stateAppOnly,
	}
	got := states(r.body)
	for user, w := range want {
		if got[user] != w {
			t.Errorf("state of %s = %q, want %q", user, got[user], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("rows = %v, want %d rows", got, len(want))
	}

	rows := map[string]string{}
	for _, m := range rowRE.FindAllStringSubmatch(r.body, -1) {
		rows[m[1]] = m[2]
	}
	for _, c := range []struct{ user, text string }{
		{alice, "in 49 min"}, // access token expiry: 50 min less the run time
		{alice, "2 hours"},   // refresh token age
		{alice, `<td data-label="Sessions"><div>1</div></td>`}, // sessions open now
		{alice, "less than a minute ago"},                      // last upstream login
		{bob, "AADSTS70008"},                                   // last error
		{bob, "mailproxy login"},                               // its hint
		{dave, "HTTP 503"},
		{printer, "mailbox scans@example.com"},
		{erin, "80 days"},
	} {
		if !strings.Contains(rows[c.user], c.text) {
			t.Errorf("row of %s lacks %q:\n%s", c.user, c.text, rows[c.user])
		}
	}
	// Actions: delegated accounts can sign in (and bob with a code too);
	// the app-only account cannot; only signed-in accounts sign out.
	for _, c := range []struct {
		user, text string
		want       bool
	}{
		{alice, `aria-label="Sign in alice@example.com"`, true},
		{bob, `aria-label="Sign in bob@example.com with a code"`, true},
		{printer, `action="/signin"`, false},
		{alice, `/signout?account=alice%40example.com`, true},
		{carol, `/signout?account=`, false},
	} {
		if got := strings.Contains(rows[c.user], c.text); got != c.want {
			t.Errorf("row of %s contains %q = %v, want %v", c.user, c.text, got, c.want)
		}
	}

	// Banners: accounts needing a sign-in first, then the expiring one.
	banners := bannerRE.FindAllStringSubmatch(r.body, -1)
	var names []string
	for _, b := range banners {
		for _, u := range []string{alice, bob, carol, dave, erin, printer} {
			if strings.Contains(b[2], u) {
				names = append(names, b[1]+":"+u)
			}
		}
	}
	if want := []string{"bad:" + bob, "bad:" + carol, "warn:" + erin}; strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("banners = %v, want %v", names, want)
	}
}

func TestIndexResponsive(t *testing.T) {
	e := newEnv(t)
	body := e.browser().get("/").body
	for _, want := range []string{
		`<meta name="viewport" content="width=device-width, initial-scale=1">`,
		`@media (max-width: 760px)`,
		`data-label="State"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("GET / lacks %q", want)
		}
	}
	for _, banned := range []string{"<script", "<link", "src=", "http-equiv=\"refresh\""} {
		if strings.Contains(body, banned) {
			t.Errorf("GET / contains %q", banned)
		}
	}
}

func TestAccountsReload(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	if _, ok := states(b.get("/").body)[carol]; ok {
		t.Fatalf("carol shown before she was configured")
	}
	e.be.mu.Lock()
	e.be.accounts = append(e.be.accounts, AccountInfo{Username: carol, Provider: "contoso", Flow: "authcode"})
	e.be.mu.Unlock()
	if got := states(b.get("/").body)[carol]; got != stateNeedsSignIn {
		t.Errorf("state of carol after a reload = %q, want %q", got, stateNeedsSignIn)
	}
}

func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	csrf := b.csrf()
	want := map[string]string{
		"Cache-Control":          "no-store",
		"X-Frame-Options":        "DENY",
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
	}
	check := func(what string, r *response) {
		t.Helper()
		for k, v := range want {
			if got := r.header.Get(k); got != v {
				t.Errorf("%s: header %s = %q, want %q", what, k, got, v)
			}
		}
		c := r.header.Get("Content-Security-Policy")
		for _, d := range []string{"default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'", "style-src 'unsafe-inline'"} {
			if !strings.Contains(c, d) {
				t.Errorf("%s: Content-Security-Policy %q lacks %q", what, c, d)
			}
		}
		if strings.Contains(c, "script-src") || strings.Contains(c, "unsafe-eval") {
			t.Errorf("%s: Content-Security-Policy %q allows scripts", what, c)
		}
	}
	for _, p := range []string{"/", "/login", "/healthz", "/metrics", "/device/nope", "/signout?account=" + alice,
		"/oauth2/callback?state=x&code=y", "/no-such-page"} {
		check("GET "+p, b.get(p))
	}
	check("POST /signin without a token", b.post("/signin", url.Values{"account": {alice}}))
	check("POST /signout", b.post("/signout", url.Values{"account": {carol}, "csrf": {csrf}}))
	check("GET /signin", b.get("/signin"))

	// The page with "Sign in" lets forms lead to the identity provider:
	// browsers check form-action on the redirect after the POST.
	idp := origin(e.prov.AuthURL)
	if c := b.get("/").header.Get("Content-Security-Policy"); !strings.Contains(c, "form-action 'self' "+idp+";") {
		t.Errorf("GET / Content-Security-Policy = %q, want form-action 'self' %s", c, idp)
	}
}

func TestCSRF(t *testing.T) {
	e := newEnv(t)
	seedStates(e)
	b := e.browser()
	csrf := b.csrf()
	other := e.browser()
	otherCSRF := other.csrf()

	for _, path := range []string{"/signin", "/signout", "/password", "/logout", "/device/x/cancel"} {
		form := url.Values{"account": {alice}}
		if r := b.post(path, form); r.code != http.StatusForbidden {
			t.Errorf("POST %s without a CSRF token = %d, want 403", path, r.code)
		}
		form.Set("csrf", "wrong")
		if r := b.post(path, form); r.code != http.StatusForbidden {
			t.Errorf("POST %s with a wrong CSRF token = %d, want 403", path, r.code)
		}
		form.Set("csrf", otherCSRF) // another session's token
		if r := b.post(path, form); r.code != http.StatusForbidden {
			t.Errorf("POST %s with another session's CSRF token = %d, want 403", path, r.code)
		}
	}
	// The right token from another site is refused too.
	b.origin = "http://evil.example"
	if r := b.post("/signout", url.Values{"account": {alice}, "csrf": {csrf}}); r.code != http.StatusForbidden {
		t.Errorf("POST /signout from another origin = %d, want 403", r.code)
	}
	b.origin = e.ts.URL
	b.header = http.Header{"Sec-Fetch-Site": {"cross-site"}}
	if r := b.post("/signout", url.Values{"account": {alice}, "csrf": {csrf}}); r.code != http.StatusForbidden {
		t.Errorf("POST /signout with Sec-Fetch-Site: cross-site = %d, want 403", r.code)
	}
	b.header = http.Header{"Sec-Fetch-Site": {"same-site"}}
	if r := b.post("/signout", url.Values{"account": {alice}, "csrf": {csrf}}); r.code != http.StatusForbidden {
		t.Errorf("POST /signout with Sec-Fetch-Site: same-site = %d, want 403", r.code)
	}
	b.header = nil
	// GET never changes state.
	if r := b.get("/signout?account=" + alice + "&csrf=" + csrf); r.code != http.StatusOK || !strings.Contains(r.body, "Sign out alice@example.com") {
		t.Errorf("GET /signout = %d, want the confirmation page", r.code)
	}
	for _, p := range []string{"/signin?account=" + alice + "&csrf=" + csrf, "/password", "/logout"} {
		if r := b.get(p); r.code != http.StatusMethodNotAllowed {
			t.Errorf("GET %s = %d, want 405", p, r.code)
		}
	}
	if got := e.be.removals(); len(got) != 0 {
		t.Fatalf("Remove called by refused requests: %v", got)
	}
	if st := e.be.Status(alice); !st.SignedIn {
		t.Fatalf("alice signed out by a refused request")
	}

	// A post that says nothing of where it comes from is refused: every
	// current browser sends Sec-Fetch-Site or Origin with a form.
	b.origin, b.header = "", nil
	if r := b.post("/signout", url.Values{"account": {alice}, "csrf": {csrf}}); r.code != http.StatusForbidden {
		t.Errorf("POST /signout without Origin and Sec-Fetch-Site = %d, want 403", r.code)
	}
	// Origin: null is what browsers send from a no-referrer page; with
	// Sec-Fetch-Site: same-origin and the token it is accepted.
	b.origin = "null"
	b.header = http.Header{"Sec-Fetch-Site": {"same-origin"}}
	r := b.post("/signout", url.Values{"account": {alice}, "csrf": {csrf}})
	if r.code != http.StatusSeeOther || r.header.Get("Location") != "/" {
		t.Fatalf("POST /signout with the token = %d %q, want 303 to /", r.code, r.header.Get("Location"))
	}
	if got := e.be.removals(); len(got) != 1 || got[0] != alice {
		t.Errorf("Remove calls = %v, want [%s]", got, alice)
	}
	if body := b.get("/").body; !strings.Contains(body, "alice@example.com is signed out") || states(body)[alice] != stateNeedsSignIn {
		t.Errorf("after sign-out the page does not show alice signed out")
	}
	b.origin, b.header = e.ts.URL, nil
	// Signing out an account that has no entry says so.
	r = b.post("/signout", url.Values{"account": {carol}, "csrf": {csrf}})
	if r.code != http.StatusSeeOther || !strings.Contains(b.get("/").body, "carol@example.com was not signed in") {
		t.Errorf("POST /signout of an account without tokens = %d, want 303 and a note", r.code)
	}
	if r := b.post("/signout", url.Values{"account": {printer}, "csrf": {csrf}}); r.code != http.StatusNotFound {
		t.Errorf("POST /signout of the app-only account = %d, want 404", r.code)
	}
}

func TestPasswordMode(t *testing.T) {
	e := newEnv(t, withPassword(adminPassword))
	b := e.browser()

	for _, p := range []string{"/", "/signout?account=" + alice, "/device/x"} {
		r := b.get(p)
		if r.code != http.StatusSeeOther || !strings.HasPrefix(r.header.Get("Location"), "/login?next=") {
			t.Errorf("GET %s without login = %d %q, want 303 to /login", p, r.code, r.header.Get("Location"))
		}
	}
	if r := b.get("/metrics"); r.code != http.StatusUnauthorized || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic ") {
		t.Errorf("GET /metrics without login = %d, want 401 with WWW-Authenticate", r.code)
	}
	if r := b.get("/healthz"); r.code != http.StatusOK {
		t.Errorf("GET /healthz without login = %d, want 200", r.code)
	}
	// The callback needs the sign-in's flow cookie, not a login: without
	// one it is refused anyway.
	if r := b.get("/oauth2/callback?state=x&code=y"); r.code != http.StatusBadRequest {
		t.Errorf("GET /oauth2/callback without login = %d, want 400", r.code)
	}

	login := b.get("/login?next=/signout%3Faccount%3Dalice%40example.com")
	if login.code != http.StatusOK {
		t.Fatalf("GET /login = %d, want 200", login.code)
	}
	csrf := field(t, csrfRE, login.body)
	pre := sessionCookieOf(t, b)

	// POST without the login form's token.
	if r := b.post("/login", url.Values{"password": {adminPassword}}); r.code != http.StatusForbidden {
		t.Errorf("POST /login without a CSRF token = %d, want 403", r.code)
	}
	r := b.post("/login", url.Values{"password": {"wrong"}, "csrf": {csrf}, "next": {"/"}})
	if r.code != http.StatusForbidden || !strings.Contains(r.body, "Wrong password") {
		t.Errorf("POST /login with a wrong password = %d, want 403 and 'Wrong password'", r.code)
	}
	if r := b.get("/"); r.code != http.StatusSeeOther {
		t.Errorf("GET / after a wrong password = %d, want 303 to /login", r.code)
	}
	// Forms other than login need a logged-in session.
	if r := b.post("/signin", url.Values{"account": {alice}, "csrf": {csrf}}); r.code != http.StatusForbidden {
		t.Errorf("POST /signin before login = %d, want 403", r.code)
	}

	r = b.post("/login", url.Values{"password": {adminPassword}, "csrf": {csrf}, "next": {"/signout?account=alice@example.com"}})
	if r.code != http.StatusSeeOther || r.header.Get("Location") != "/signout?account=alice@example.com" {
		t.Fatalf("POST /login = %d %q, want 303 to next", r.code, r.header.Get("Location"))
	}
	c := setCookie(t, r, sessionCookie)
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.Path != "/" {
		t.Errorf("session cookie = %+v, want HttpOnly, SameSite=Strict, not Secure without TLS, Path=/", c)
	}
	if c.Value == pre {
		t.Errorf("session id kept across login, want a new one")
	}
	if r := b.get("/"); r.code != http.StatusOK {
		t.Errorf("GET / after login = %d, want 200", r.code)
	}
	if r := b.get("/metrics"); r.code != http.StatusOK {
		t.Errorf("GET /metrics after login = %d, want 200", r.code)
	}
	body := b.get("/").body
	if !strings.Contains(body, `action="/logout"`) {
		t.Errorf("page after login has no logout button")
	}

	// The old session id is useless.
	old := e.browser()
	old.c.Jar.SetCookies(mustURL(t, e.ts.URL), []*http.Cookie{{Name: sessionCookie, Value: pre}})
	if r := old.get("/"); r.code != http.StatusSeeOther {
		t.Errorf("GET / with the pre-login session id = %d, want 303", r.code)
	}

	// Open redirects are not followed.
	login2 := e.browser()
	csrf2 := field(t, csrfRE, login2.get("/login").body)
	r = login2.post("/login", url.Values{"password": {adminPassword}, "csrf": {csrf2}, "next": {"//evil.example/"}})
	if loc := r.header.Get("Location"); loc != "/" {
		t.Errorf("POST /login with next=//evil.example/ redirects to %q, want /", loc)
	}

	// Log out.
	csrf = field(t, csrfRE, body)
	if r := b.post("/logout", url.Values{"csrf": {csrf}}); r.code != http.StatusSeeOther {
		t.Errorf("POST /logout = %d, want 303", r.code)
	}
	if r := b.get("/"); r.code != http.StatusSeeOther {
		t.Errorf("GET / after logout = %d, want 303", r.code)
	}
	e.log.assertNoSecrets(t, adminPassword, testClientSecret)
}

func TestPasswordModeSessionExpires(t *testing.T) {
	e := newEnv(t, withPassword(adminPassword))
	b := e.browser()
	loginAs(t, b, adminPassword)
	if r := b.get("/"); r.code != http.StatusOK {
		t.Fatalf("GET / after login = %d, want 200", r.code)
	}
	e.clock.Advance(sessionLifetime + time.Minute)
	if r := b.get("/"); r.code != http.StatusSeeOther {
		t.Errorf("GET / after the session lifetime = %d, want 303 to /login", r.code)
	}
}

func TestMetricsBasicAuth(t *testing.T) {
	e := newEnv(t, withPassword(adminPassword))
	get := func(pw string) int {
		req, _ := http.NewRequest(http.MethodGet, e.ts.URL+"/metrics", nil)
		req.SetBasicAuth("prometheus", pw)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET /metrics: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get("wrong"); got != http.StatusUnauthorized {
		t.Errorf("GET /metrics with a wrong Basic password = %d, want 401", got)
	}
	for range 2 { // the second one hits the cache
		if got := get(adminPassword); got != http.StatusOK {
			t.Errorf("GET /metrics with the admin password = %d, want 200", got)
		}
	}
}

func TestLoginDelay(t *testing.T) {
	e := newEnv(t, withPassword(adminPassword))
	e.srv.failDelay = time.Second
	if d := e.srv.loginDelay("192.0.2.1"); d != 0 {
		t.Errorf("loginDelay() before any failure = %v, want 0", d)
	}
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 16 * time.Second} {
		e.srv.loginFailed("192.0.2.1")
		if d := e.srv.loginDelay("192.0.2.1"); d != want {
			t.Errorf("loginDelay() after %d failures = %v, want %v", i+1, d, want)
		}
	}
	if d := e.srv.loginDelay("192.0.2.2"); d != 0 {
		t.Errorf("loginDelay() of another address = %v, want 0", d)
	}
	e.clock.Advance(loginFailWindow + time.Second)
	if d := e.srv.loginDelay("192.0.2.1"); d != 0 {
		t.Errorf("loginDelay() after the window = %v, want 0", d)
	}
}

func TestSecureCookieWithTLS(t *testing.T) {
	e := newEnv(t, withPassword(adminPassword), withTLS())
	b := e.browser()
	r := loginAs(t, b, adminPassword)
	if c := setCookie(t, r, sessionCookie); !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("session cookie over TLS = %+v, want Secure, HttpOnly, SameSite=Strict", c)
	}
	if r.header.Get("Strict-Transport-Security") == "" {
		t.Errorf("no Strict-Transport-Security over TLS")
	}
	// Sign-in's flow cookie is Secure too.
	csrf := field(t, csrfRE, b.get("/").body)
	r = b.post("/signin", url.Values{"account": {alice}, "csrf": {csrf}, "method": {"authcode"}})
	if r.code != http.StatusSeeOther {
		t.Fatalf("POST /signin = %d, want 303:\n%s", r.code, r.body)
	}
	if c := setCookie(t, r, flowCookie); !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != callbackPath {
		t.Errorf("flow cookie over TLS = %+v, want Secure, HttpOnly, SameSite=Lax, Path=%s", c, callbackPath)
	}
}

func loginAs(t *testing.T, b *browser, pw string) *response {
	t.Helper()
	csrf := field(t, csrfRE, b.get("/login").body)
	r := b.post("/login", url.Values{"password": {pw}, "csrf": {csrf}, "next": {"/"}})
	if r.code != http.StatusSeeOther {
		t.Fatalf("POST /login = %d, want 303:\n%s", r.code, r.body)
	}
	return r
}

func setCookie(t *testing.T, r *response, name string) *http.Cookie {
	t.Helper()
	for _, line := range r.header.Values("Set-Cookie") {
		c, err := http.ParseSetCookie(line)
		if err == nil && c.Name == name {
			return c
		}
	}
	t.Fatalf("no Set-Cookie %s in %v", name, r.header.Values("Set-Cookie"))
	return nil
}

func sessionCookieOf(t *testing.T, b *browser) string {
	t.Helper()
	for _, c := range b.c.Jar.Cookies(mustURL(t, b.base)) {
		if c.Name == sessionCookie {
			return c.Value
		}
	}
	t.Fatalf("no session cookie in the jar")
	return ""
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatalf("url.Parse(%q) = %v", s, err)
	}
	return u
}

func TestHealthz(t *testing.T) {
	up := []Listener{{Name: "imap", Addr: "127.0.0.1:1143", Up: true}, {Name: "smtp", Addr: "127.0.0.1:1587", Up: true}}
	var listeners []Listener
	e := newEnv(t, func(_ *env, o *Options) { o.Listeners = func() []Listener { return listeners } })
	b := e.browser()
	for _, u := range []string{alice, bob} {
		e.be.setStatus(oauth.AccountStatus{Username: u, SignedIn: true, Flow: "authcode"})
	}

	listeners = up
	r := b.get("/healthz")
	var got struct {
		Status    string `json:"status"`
		Listeners map[string]struct {
			Addr string `json:"addr"`
			Up   bool   `json:"up"`
		} `json:"listeners"`
	}
	if err := json.Unmarshal([]byte(r.body), &got); err != nil {
		t.Fatalf("GET /healthz body %q: %v", r.body, err)
	}
	if r.code != http.StatusOK || got.Status != "ok" || !got.Listeners["imap"].Up || got.Listeners["smtp"].Addr != "127.0.0.1:1587" {
		t.Errorf("GET /healthz = %d %+v, want 200 ok with both listeners", r.code, got)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET /healthz Content-Type = %q, want application/json", ct)
	}

	listeners = []Listener{up[0], {Name: "smtp", Addr: "127.0.0.1:1587", Up: false}}
	r = b.get("/healthz")
	if r.code != http.StatusServiceUnavailable || !strings.Contains(r.body, `"status": "unavailable"`) {
		t.Errorf("GET /healthz with a listener down = %d %s, want 503 unavailable", r.code, r.body)
	}
}

func TestMetricsText(t *testing.T) {
	e := newEnv(t)
	seedStates(e)
	m := e.metrics
	m.ConnOpened("imap")
	m.ConnOpened("imap")
	m.ConnClosed("imap")
	m.ConnOpened("smtp")
	m.Login("imap", true)
	m.Login("imap", false)
	m.Login("imap", false)
	m.UpstreamAuthFailed("smtp")
	m.Relayed("imap", 100, 2000)
	m.Relayed("imap", 1, 2)
	m.Message(true)
	m.Message(false)
	m.Message(true)
	m.TokenRefresh(true)
	m.TokenRefresh(false)
	m.Session(alice, 1)
	m.UpstreamResult(alice, "imap", nil)
	m.Session(`we"ird\name`+"\n", 1)

	r := e.browser().get("/metrics")
	if r.code != http.StatusOK {
		t.Fatalf("GET /metrics = %d, want 200", r.code)
	}
	if ct := r.header.Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Errorf("GET /metrics Content-Type = %q", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(r.body))
	if err != nil {
		t.Fatalf("TextToMetricFamilies() = %v; body:\n%s", err, r.body)
	}
	value := func(name string, labels ...string) (float64, bool) {
		f := fams[name]
		if f == nil {
			return 0, false
		}
	metrics:
		for _, mt := range f.Metric {
			have := map[string]string{}
			for _, lp := range mt.Label {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			switch {
			case mt.Counter != nil:
				return mt.Counter.GetValue(), true
			case mt.Gauge != nil:
				return mt.Gauge.GetValue(), true
			}
		}
		return 0, false
	}
	now := e.clock.Now()
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"mailproxy_connections_open", []string{"proto", "imap"}, 1},
		{"mailproxy_connections_open", []string{"proto", "smtp"}, 1},
		{"mailproxy_connections_total", []string{"proto", "imap"}, 2},
		{"mailproxy_logins_total", []string{"proto", "imap", "result", "ok"}, 1},
		{"mailproxy_logins_total", []string{"proto", "imap", "result", "failed"}, 2},
		{"mailproxy_logins_total", []string{"proto", "smtp", "result", "ok"}, 0},
		{"mailproxy_upstream_auth_failures_total", []string{"proto", "smtp"}, 1},
		{"mailproxy_relayed_bytes_total", []string{"proto", "imap", "direction", "to_upstream"}, 101},
		{"mailproxy_relayed_bytes_total", []string{"proto", "imap", "direction", "to_client"}, 2002},
		{"mailproxy_messages_total", []string{"result", "submitted"}, 2},
		{"mailproxy_messages_total", []string{"result", "rejected"}, 1},
		{"mailproxy_token_refreshes_total", []string{"result", "ok"}, 1},
		{"mailproxy_token_refreshes_total", []string{"result", "failed"}, 1},
		{"mailproxy_sessions_open", []string{"account", alice}, 1},
		{"mailproxy_sessions_open", []string{"account", `we"ird\name` + "\n"}, 1},
		{"mailproxy_account_needs_signin", []string{"account", alice}, 0},
		{"mailproxy_account_needs_signin", []string{"account", bob}, 1},
		{"mailproxy_account_needs_signin", []string{"account", carol}, 1},
		{"mailproxy_account_needs_signin", []string{"account", erin}, 0},
		// alice's refresh token is 2 hours old: 76 days minus 2 hours left.
		{"mailproxy_refresh_token_renewal_seconds", []string{"account", alice}, (76*24*time.Hour - 2*time.Hour).Seconds()},
		// erin's is 80 days old: 4 days overdue.
		{"mailproxy_refresh_token_renewal_seconds", []string{"account", erin}, (-4 * 24 * time.Hour).Seconds()},
	} {
		got, ok := value(c.name, c.labels...)
		if !ok {
			t.Errorf("%s%v missing", c.name, c.labels)
			continue
		}
		if diff := got - c.want; diff > 5 || diff < -5 { // seconds of test run time
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if _, ok := value("mailproxy_account_needs_signin", "account", printer); ok {
		t.Errorf("app-only account has mailproxy_account_needs_signin")
	}
	if _, ok := value("mailproxy_refresh_token_renewal_seconds", "account", carol); ok {
		t.Errorf("account never signed in has mailproxy_refresh_token_renewal_seconds")
	}
	if v, ok := value("mailproxy_last_upstream_login_timestamp_seconds", "account", alice); !ok || v < float64(now.Unix()-5) {
		t.Errorf("mailproxy_last_upstream_login_timestamp_seconds{alice} = %v, %v, want about %d", v, ok, now.Unix())
	}
	for name, f := range fams {
		if f.GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
	}
}

func TestAlerts(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	got := Alerts([]oauth.AccountStatus{
		{Username: "ok", SignedIn: true, RefreshObtained: now.Add(-75 * day)},
		{Username: "edge", SignedIn: true, RefreshObtained: now.Add(-76 * day)},
		{Username: "late", SignedIn: true, RefreshObtained: now.Add(-95 * day)},
		{Username: "soon", SignedIn: true, RefreshObtained: now.Add(-89 * day)},
		{Username: "revoked", SignedIn: true, NeedsSignIn: true, Hint: "run `mailproxy login`"},
		{Username: "new"},
		{Username: "app", Flow: FlowClientCredentials},
		{Username: "failing", SignedIn: true, LastError: "HTTP 503", RefreshObtained: now.Add(-time.Hour)},
	}, now)
	var kinds []string
	for _, a := range got {
		kinds = append(kinds, a.Kind.String()+":"+a.Username)
	}
	want := []string{"needs-sign-in:new", "needs-sign-in:revoked", "refresh-token-expiring:late",
		"refresh-token-expiring:soon", "refresh-token-expiring:edge"}
	if strings.Join(kinds, " ") != strings.Join(want, " ") {
		t.Fatalf("Alerts() = %v, want %v", kinds, want)
	}
	if m := got[1].Message; !strings.Contains(m, "revoked") || !strings.Contains(m, "mailproxy login") {
		t.Errorf("Alerts() message = %q, want the account and its hint", m)
	}
	if a := got[3]; !a.Deadline.Equal(now.Add(day)) || !strings.Contains(a.Message, "ends in 24 hours") {
		t.Errorf("Alerts() for soon = %+v, want deadline in a day", a)
	}
	if m := got[2].Message; !strings.Contains(m, "ended 5 days ago") {
		t.Errorf("Alerts() for late = %q, want 'ended 5 days ago'", m)
	}
	if d := RenewalIn(now.Add(-10*day), now); d != 66*day {
		t.Errorf("RenewalIn(10 days old) = %v, want %v", d, 66*day)
	}
}

func TestNew(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Errorf("New(Options{}) = nil error, want one")
	}
	be := &backend{statuses: map[string]oauth.AccountStatus{}}
	if _, err := New(Options{Accounts: be.Accounts, Status: be.Status, AccessToken: testAccessToken, RedirectURL: "ftp://x/"}); err == nil {
		t.Errorf("New() with an ftp redirect URL = nil error, want one")
	}
	if _, err := New(Options{Accounts: be.Accounts, Status: be.Status}); err == nil {
		t.Errorf("New() without an access token or a password = nil error, want one")
	}
	// Read-only: no sign-in buttons without Seal/Provider.
	s, err := New(Options{Accounts: func() []AccountInfo { return []AccountInfo{{Username: alice, Flow: "authcode"}} }, Status: be.Status, AccessToken: testAccessToken})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	defer s.Close()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Host = "localhost:8025"
	req.AddCookie(exchange(t, s))
	s.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), `action="/signin"`) {
		t.Errorf("read-only page = %d, has sign-in form: %v", rec.Code, strings.Contains(rec.Body.String(), `action="/signin"`))
	}
}

// Clients that never return the cookie (probes fetching /login) fill the
// session table; the admin's active session survives them.
func TestSessionEviction(t *testing.T) {
	e := newEnv(t, withPassword(adminPassword))
	b := e.browser()
	csrf := b.login(adminPassword)
	for range maxSessions + 10 {
		e.clock.Advance(time.Second)
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/login", nil)
		req.Host = "127.0.0.1"
		e.srv.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("GET /login = %d, want 200", rec.Code)
		}
		if got := rec.Result().Cookies(); len(got) != 1 {
			t.Fatalf("GET /login without a cookie sets %d cookies, want 1", len(got))
		}
		// The admin keeps using the page.
		if b.get("/").code != http.StatusOK {
			t.Fatalf("GET / by the admin failed")
		}
	}
	e.srv.mu.Lock()
	n := len(e.srv.sessions)
	e.srv.mu.Unlock()
	if n > maxSessions {
		t.Errorf("sessions = %d, want at most %d", n, maxSessions)
	}
	if r := b.post("/signout", url.Values{"account": {alice}, "csrf": {csrf}}); r.code != http.StatusSeeOther {
		t.Errorf("admin's form after the flood = %d, want 303 (session kept)", r.code)
	}
}

// /healthz tells the truth while staying a liveness check: accounts that
// need a sign-in, upstreams whose last login failed and unsaved tokens make
// it "degraded" (still 200), with reasons that name no account.
func TestHealthzDegraded(t *testing.T) {
	e := newEnv(t, func(_ *env, o *Options) {
		o.Listeners = func() []Listener { return []Listener{{Name: "imap", Addr: "127.0.0.1:1143", Up: true}} }
	})
	b := e.browser()
	health := func() (int, string, []string) {
		t.Helper()
		r := b.get("/healthz")
		var got struct {
			Status  string   `json:"status"`
			Reasons []string `json:"reasons"`
		}
		if err := json.Unmarshal([]byte(r.body), &got); err != nil {
			t.Fatalf("GET /healthz body %q: %v", r.body, err)
		}
		return r.code, got.Status, got.Reasons
	}
	e.be.setStatus(oauth.AccountStatus{Username: alice, SignedIn: true, Flow: "authcode"})
	e.be.setStatus(oauth.AccountStatus{Username: bob, SignedIn: true, Flow: "device", NeedsSignIn: true})
	code, status, reasons := health()
	if code != http.StatusOK || status != "degraded" || len(reasons) != 1 || !strings.Contains(reasons[0], "1 account needs a sign-in") {
		t.Errorf("GET /healthz with an account needing sign-in = %d %s %q, want 200 degraded naming it", code, status, reasons)
	}
	e.be.setStatus(oauth.AccountStatus{Username: bob, SignedIn: true, Flow: "device"})

	// An SMTP session that never reached upstream says nothing; a failed
	// upstream login does, until the next one succeeds.
	e.metrics.Session(alice, 1)
	if code, status, reasons := health(); code != http.StatusOK || status != "ok" {
		t.Errorf("GET /healthz = %d %s %q, want 200 ok", code, status, reasons)
	}
	e.metrics.UpstreamResult(alice, "smtp", errors.New("cannot reach the mail server: dial upstream smtp.office365.com:587: connection refused"))
	e.metrics.UpstreamResult(printer, "smtp", errors.New("cannot reach the mail server: dial upstream smtp.office365.com:587: connection refused"))
	code, status, reasons = health()
	if code != http.StatusOK || status != "degraded" || len(reasons) != 1 || !strings.Contains(reasons[0], "smtp upstream: the last login of 2 accounts failed: cannot reach the mail server") {
		t.Errorf("GET /healthz with an unreachable upstream = %d %s %q, want 200 degraded with the failure", code, status, reasons)
	}
	if strings.Contains(strings.Join(reasons, " "), alice) {
		t.Errorf("GET /healthz reasons %q name an account; /healthz needs no login", reasons)
	}
	if ups := e.metrics.Upstreams(alice); len(ups) != 1 || ups[0].Proto != "smtp" || !ups[0].LastLogin.IsZero() || !ups[0].Failing() {
		t.Errorf("Upstreams(alice) = %+v, want one failing smtp state without a login", ups)
	}
	if !e.metrics.LastUpstreamLogin(alice).IsZero() {
		t.Errorf("LastUpstreamLogin(alice) = %v after only a local session and a failure, want none", e.metrics.LastUpstreamLogin(alice))
	}
	e.metrics.UpstreamResult(alice, "smtp", nil)
	e.metrics.UpstreamResult(printer, "smtp", nil)
	if code, status, reasons := health(); code != http.StatusOK || status != "ok" {
		t.Errorf("GET /healthz after the upstream recovered = %d %s %q, want 200 ok", code, status, reasons)
	}

	e.be.setStatus(oauth.AccountStatus{Username: alice, SignedIn: true, Flow: "authcode", Unsaved: true})
	if _, status, reasons := health(); status != "degraded" || len(reasons) != 1 || !strings.Contains(reasons[0], "could not be saved") {
		t.Errorf("GET /healthz with unsaved tokens = %s %q, want degraded saying so", status, reasons)
	}
}

// An unknown address gets the page's own 404, and every page links to
// /metrics and /healthz.
func TestNotFoundIsStyled(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	r := b.get("/no/such/page")
	if r.code != http.StatusNotFound || !strings.Contains(r.body, "<h2>Page not found</h2>") || !strings.Contains(r.header.Get("Content-Type"), "text/html") {
		t.Errorf("GET /no/such/page = %d %q, want the styled 404", r.code, r.body)
	}
	if r := b.get("/"); !strings.Contains(r.body, `<a href="/metrics">Metrics</a>`) {
		t.Errorf("the start page does not link to /metrics")
	}
}
