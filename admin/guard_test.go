package admin

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailproxy/oauth"
)

// Every route the page has, with a request that would act if it got
// through.
var routes = []struct{ method, path string }{
	{"GET", "/"},
	{"GET", "/login"},
	{"GET", "/signout?account=" + alice},
	{"GET", "/device/x"},
	{"GET", "/metrics"},
	{"GET", "/healthz"},
	{"GET", "/oauth2/callback?state=x&code=y"},
	{"POST", "/login"},
	{"POST", "/logout"},
	{"POST", "/signin"},
	{"POST", "/device/x/cancel"},
	{"POST", "/password"},
	{"POST", "/signout"},
}

func (b *browser) send(method, path string, form url.Values) *response {
	b.t.Helper()
	if method == http.MethodPost {
		return b.post(path, form)
	}
	return b.get(path)
}

// DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1
// sends "Host: evil.example". Every route answers 421 and nothing of the
// page, before the token or the form's CSRF token are even looked at.
func TestForgedHostEveryRoute(t *testing.T) {
	e := newEnv(t)
	e.be.setStatus(signedIn(alice))
	b := e.browser()
	csrf := b.csrf()
	for _, host := range []string{"evil.example", "evil.example:" + mustURL(t, e.ts.URL).Port(), "localhost.evil.example", "127.0.0.1.nip.io", ""} {
		b.host = host
		if host == "" {
			b.host = " " // an empty Host header is no name either
		}
		b.origin = "http://" + host
		for _, rt := range routes {
			r := b.send(rt.method, rt.path, url.Values{"account": {alice}, "csrf": {csrf}, "password": {"x"}, "id": {"x"}})
			if host == "" && r.code == http.StatusBadRequest {
				continue // net/http refused it before us
			}
			if r.code != http.StatusMisdirectedRequest || strings.Contains(r.body, alice) || strings.Contains(r.body, "<form") {
				t.Errorf("%s %s with Host %q = %d, want 421 and no page:\n%.300s", rt.method, rt.path, host, r.code, r.body)
			}
		}
	}
	if got := e.be.removals(); len(got) != 0 {
		t.Errorf("Remove called through a forged Host: %v", got)
	}
}

// The names the page does answer to.
func TestAllowedHosts(t *testing.T) {
	e := newEnv(t, func(_ *env, o *Options) {
		o.AllowedHosts = func() []string { return []string{"mailproxy.lan"} }
	})
	port := mustURL(t, e.ts.URL).Port()
	for _, host := range []string{"localhost:" + port, "LOCALHOST", "127.0.0.1:" + port, "[::1]:" + port, "mailproxy.lan:" + port, "MailProxy.LAN.", "127.0.0.2"} {
		b := e.anonymous()
		b.host = host
		if r := b.get("/?token=" + url.QueryEscape(testAccessToken)); r.code != http.StatusSeeOther {
			t.Errorf("GET /?token= with Host %q = %d, want 303", host, r.code)
		}
		if r := b.get("/"); r.code != http.StatusOK {
			t.Errorf("GET / with Host %q = %d, want 200", host, r.code)
		}
	}
	b := e.browser()
	b.host = "other.lan"
	if r := b.get("/"); r.code != http.StatusMisdirectedRequest {
		t.Errorf("GET / with Host other.lan = %d, want 421", r.code)
	}
}

// A state-changing request with an allowed Host must show that it comes
// from this page; a forged Origin is refused on every POST route.
func TestForgedOriginEveryRoute(t *testing.T) {
	e := newEnv(t)
	e.be.setStatus(signedIn(alice))
	b := e.browser()
	csrf := b.csrf()
	for _, c := range []struct {
		origin string
		header http.Header
	}{
		{"http://evil.example", nil},
		{"http://localhost.evil.example", nil},
		{"null", nil},
		{"", nil},
		{e.ts.URL, http.Header{"Sec-Fetch-Site": {"cross-site"}}},
		{"", http.Header{"Sec-Fetch-Site": {"same-site"}}},
	} {
		b.origin, b.header = c.origin, c.header
		for _, rt := range routes {
			if rt.method != http.MethodPost {
				continue
			}
			r := b.post(rt.path, url.Values{"account": {alice}, "csrf": {csrf}, "password": {"pw-long-enough"}, "password2": {"pw-long-enough"}, "id": {"x"}})
			if r.code != http.StatusForbidden {
				t.Errorf("POST %s with Origin %q, headers %v = %d, want 403", rt.path, c.origin, c.header, r.code)
			}
		}
	}
	if got := e.be.removals(); len(got) != 0 {
		t.Errorf("Remove called through a forged Origin: %v", got)
	}
}

// Without an admin password, a local client that has not got the access
// token (any local user, any process) sees nothing and changes nothing.
func TestNoAccessTokenEveryRoute(t *testing.T) {
	e := newEnv(t)
	e.be.setStatus(signedIn(alice))
	b := e.anonymous()
	for _, rt := range routes {
		r := b.send(rt.method, rt.path, url.Values{"account": {alice}, "csrf": {"x"}, "id": {"x"}})
		switch rt.path {
		case "/healthz":
			if r.code != http.StatusOK {
				t.Errorf("GET /healthz without the token = %d, want 200", r.code)
			}
		case "/oauth2/callback?state=x&code=y":
			if r.code != http.StatusBadRequest {
				t.Errorf("GET /oauth2/callback of no sign-in = %d, want 400", r.code)
			}
		default:
			if r.code != http.StatusUnauthorized || strings.Contains(r.body, alice) || !strings.Contains(r.body, "mailproxy admin-url") {
				t.Errorf("%s %s without the token = %d, want 401 naming `mailproxy admin-url` and no account:\n%.300s", rt.method, rt.path, r.code, r.body)
			}
		}
	}
	if r := b.get("/?token=not-the-token"); r.code != http.StatusForbidden || sessionCookieSet(r) {
		t.Errorf("GET /?token=wrong = %d (cookie set %v), want 403 and no session", r.code, sessionCookieSet(r))
	}
	// The link: a session cookie, and the token leaves the address bar.
	r := b.get("/signout?account=" + url.QueryEscape(alice) + "&token=" + url.QueryEscape(testAccessToken))
	if r.code != http.StatusSeeOther || strings.Contains(r.header.Get("Location"), "token") || !strings.HasPrefix(r.header.Get("Location"), "/signout?account=") {
		t.Fatalf("GET with ?token= = %d to %q, want 303 to the same page without the token", r.code, r.header.Get("Location"))
	}
	c := setCookie(t, r, sessionCookie)
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure {
		t.Errorf("session cookie = %+v, want HttpOnly, SameSite=Strict, not Secure over http", c)
	}
	if r := b.get("/"); r.code != http.StatusOK || !strings.Contains(r.body, alice) {
		t.Errorf("GET / after the link = %d, want 200 with the accounts", r.code)
	}
	if got := e.be.removals(); len(got) != 0 {
		t.Errorf("Remove called without the token: %v", got)
	}
}

func sessionCookieSet(r *response) bool {
	for _, v := range r.header.Values("Set-Cookie") {
		if strings.HasPrefix(v, sessionCookie+"=") {
			return true
		}
	}
	return false
}

// Under TLS the session cookie is Secure.
func TestAccessTokenCookieSecureUnderTLS(t *testing.T) {
	e := newEnv(t, withTLS())
	r := e.anonymous().get("/?token=" + url.QueryEscape(testAccessToken))
	if c := setCookie(t, r, sessionCookie); !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("session cookie under TLS = %+v, want Secure, HttpOnly, SameSite=Strict", c)
	}
}

// /metrics takes the access token or the admin password as a bearer token
// or a Basic password.
func TestMetricsCredentials(t *testing.T) {
	for _, pw := range []string{"", adminPassword} {
		var opts []envOption
		if pw != "" {
			opts = append(opts, withPassword(pw), func(_ *env, o *Options) { o.AccessToken = testAccessToken })
		}
		e := newEnv(t, opts...)
		good := []string{testAccessToken}
		if pw != "" {
			good = append(good, pw)
		}
		for _, secret := range good {
			for _, auth := range []func(*http.Request){
				func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+secret) },
				func(r *http.Request) { r.SetBasicAuth("prometheus", secret) },
			} {
				b := e.anonymous()
				req, _ := http.NewRequest(http.MethodGet, e.ts.URL+"/metrics", nil)
				auth(req)
				if r := b.do(req); r.code != http.StatusOK || !strings.Contains(r.body, "mailproxy_") {
					t.Errorf("/metrics (password set %v) with a good credential = %d, want 200 and counters", pw != "", r.code)
				}
			}
		}
		b := e.anonymous()
		req, _ := http.NewRequest(http.MethodGet, e.ts.URL+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer wrong")
		if r := b.do(req); r.code != http.StatusUnauthorized {
			t.Errorf("/metrics (password set %v) with a wrong bearer token = %d, want 401", pw != "", r.code)
		}
	}
}

func TestLoadAccessToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	tok, err := LoadAccessToken(dir)
	if err != nil || len(tok) < 32 {
		t.Fatalf("LoadAccessToken() = %q, %v; want a long token", tok, err)
	}
	fi, err := os.Stat(filepath.Join(dir, AccessTokenFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, mode %v; want 0600", err, fi.Mode())
	}
	again, err := LoadAccessToken(dir)
	if err != nil || again != tok {
		t.Errorf("LoadAccessToken() again = %q, %v; want the same token", again, err)
	}
	if err := os.Chmod(filepath.Join(dir, AccessTokenFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAccessToken(dir); err == nil || !strings.Contains(err.Error(), "other users") {
		t.Errorf("LoadAccessToken(mode 0644) = %v, want a refusal", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("state dir holds %d files, want only the token (no temporary files left)", len(ents))
	}
}

func TestAccessURL(t *testing.T) {
	for _, c := range []struct {
		listen string
		tls    bool
		want   string
	}{
		{"127.0.0.1:8025", false, "http://localhost:8025/?token=T"},
		{"[::1]:9000", false, "http://localhost:9000/?token=T"},
		{"0.0.0.0:8025", true, "https://localhost:8025/?token=T"},
		{"192.168.1.5:8025", true, "https://192.168.1.5:8025/?token=T"},
		{"[fd00::1]:8025", true, "https://[fd00::1]:8025/?token=T"},
	} {
		if got := AccessURL(c.listen, c.tls, "T"); got != c.want {
			t.Errorf("AccessURL(%q, %v) = %q, want %q", c.listen, c.tls, got, c.want)
		}
	}
}

func signedIn(user string) oauth.AccountStatus {
	return oauth.AccountStatus{Username: user, SignedIn: true, Identity: user, Flow: "authcode"}
}
