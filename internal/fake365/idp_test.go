package fake365_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"mailproxy/internal/fake365"
)

const (
	idpTestTenant  = "contoso.onmicrosoft.com"
	idpTestUser    = "alice@contoso.com"
	idpTestIMAP    = "https://outlook.office.com/IMAP.AccessAsUser.All"
	idpTestSMTP    = "https://outlook.office.com/SMTP.Send"
	idpTestPublic  = "11111111-1111-1111-1111-111111111111"
	idpTestWebApp  = "22222222-2222-2222-2222-222222222222"
	idpTestSecret  = "not-a-real-secret"
	idpTestWebBack = "https://app.example/oauth2/callback"
	idpTestDevice  = "urn:ietf:params:oauth:grant-type:device_code"
)

// idpHarness is an IdP with a public client (loopback redirect, as the
// mailproxy CLI registers it) and a confidential one.
type idpHarness struct {
	t      *testing.T
	idp    *fake365.IdP
	public *oauth2.Config // redirect port differs from the registered one on purpose
	web    *oauth2.Config
	token  string // token endpoint URL
	device string // device code endpoint URL
}

func newIdPHarness(t *testing.T) *idpHarness {
	t.Helper()
	idp, err := fake365.NewIdP()
	if err != nil {
		t.Fatalf("NewIdP() = %v", err)
	}
	t.Cleanup(idp.Close)
	idp.AddClient(fake365.Client{ID: idpTestPublic, RedirectURIs: []string{"http://localhost/callback"}})
	idp.AddClient(fake365.Client{ID: idpTestWebApp, Secret: idpTestSecret, RedirectURIs: []string{idpTestWebBack}})
	idp.AddUser(idpTestUser)
	idp.SignInAs(idpTestUser)
	authURL, tokenURL, deviceURL := idp.Endpoints(idpTestTenant)
	ep := oauth2.Endpoint{AuthURL: authURL, TokenURL: tokenURL, DeviceAuthURL: deviceURL, AuthStyle: oauth2.AuthStyleInParams}
	scopes := []string{idpTestIMAP, idpTestSMTP, "offline_access", "openid"}
	return &idpHarness{
		t:      t,
		idp:    idp,
		public: &oauth2.Config{ClientID: idpTestPublic, Endpoint: ep, Scopes: scopes, RedirectURL: "http://localhost:53682/callback"},
		web: &oauth2.Config{ClientID: idpTestWebApp, ClientSecret: idpTestSecret, Endpoint: ep, Scopes: scopes,
			RedirectURL: idpTestWebBack},
		token:  tokenURL,
		device: deviceURL,
	}
}

var idpNoRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// authorize opens the authorize URL like a browser and returns the
// redirect's query.
func (h *idpHarness) authorize(authURL string) (status int, location url.Values, body string) {
	h.t.Helper()
	resp, err := idpNoRedirect.Get(authURL)
	if err != nil {
		h.t.Fatalf("GET authorize: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusFound {
		return resp.StatusCode, nil, string(b)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		h.t.Fatalf("authorize Location %q: %v", resp.Header.Get("Location"), err)
	}
	return resp.StatusCode, loc.Query(), string(b)
}

// code runs the authorize step for cfg with PKCE and returns the code.
func (h *idpHarness) code(cfg *oauth2.Config, verifier string) string {
	h.t.Helper()
	status, q, body := h.authorize(cfg.AuthCodeURL("st4te", oauth2.S256ChallengeOption(verifier)))
	if status != http.StatusFound {
		h.t.Fatalf("authorize = %d %q, want 302", status, body)
	}
	if q.Get("state") != "st4te" || q.Get("code") == "" || q.Get("error") != "" {
		h.t.Fatalf("authorize redirect query = %v, want code and state st4te", q)
	}
	return q.Get("code")
}

// signIn runs the whole authorization code flow for cfg.
func (h *idpHarness) signIn(cfg *oauth2.Config) *oauth2.Token {
	h.t.Helper()
	v := oauth2.GenerateVerifier()
	tok, err := cfg.Exchange(h.t.Context(), h.code(cfg, v), oauth2.VerifierOption(v))
	if err != nil {
		h.t.Fatalf("Exchange() = %v", err)
	}
	return tok
}

func (h *idpHarness) refresh(cfg *oauth2.Config, rt string) (*oauth2.Token, error) {
	return cfg.TokenSource(h.t.Context(), &oauth2.Token{RefreshToken: rt}).Token()
}

// post sends a raw form to url and decodes the JSON answer.
func (h *idpHarness) post(u string, form url.Values) (int, map[string]any, http.Header) {
	h.t.Helper()
	resp, err := http.PostForm(u, form)
	if err != nil {
		h.t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		h.t.Fatalf("POST %s: decode answer: %v", u, err)
	}
	return resp.StatusCode, m, resp.Header
}

// poll polls the token endpoint once for a device code.
func (h *idpHarness) poll(deviceCode string) (int, map[string]any) {
	h.t.Helper()
	status, m, _ := h.post(h.token, url.Values{"client_id": {idpTestPublic}, "grant_type": {idpTestDevice}, "device_code": {deviceCode}})
	return status, m
}

func wantRetrieveError(t *testing.T, call string, err error, code, aadsts string) *oauth2.RetrieveError {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("%s = %v, want *oauth2.RetrieveError %s %s", call, err, code, aadsts)
	}
	if re.ErrorCode != code || !strings.HasPrefix(re.ErrorDescription, aadsts+": ") {
		t.Fatalf("%s = %q %q, want %s and a description starting %q", call, re.ErrorCode, re.ErrorDescription, code, aadsts+": ")
	}
	return re
}

func wantErrorBody(t *testing.T, call string, m map[string]any, code string, aadsts int) {
	t.Helper()
	desc, _ := m["error_description"].(string)
	codes, _ := m["error_codes"].([]any)
	if m["error"] != code || len(codes) != 1 || codes[0] != float64(aadsts) ||
		!strings.HasPrefix(desc, fmt.Sprintf("AADSTS%d: ", aadsts)) {
		t.Fatalf("%s = %v, want error %s with AADSTS%d", call, m, code, aadsts)
	}
}

// jwtClaims decodes the payload of a JWT-shaped token.
func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts, want 3", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("decode token payload: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("parse token payload: %v", err)
	}
	return m
}

// idpClock is a settable clock for SetClock.
type idpClock struct {
	mu sync.Mutex
	t  time.Time
}

func newIdPClock(h *idpHarness) *idpClock {
	c := &idpClock{t: time.Now()}
	h.idp.SetClock(c.Now)
	return c
}

func (c *idpClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *idpClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestIdPAuthCodePKCE(t *testing.T) {
	h := newIdPHarness(t)
	tok := h.signIn(h.public)

	if tok.TokenType != "Bearer" || tok.RefreshToken == "" {
		t.Errorf("Exchange() token type %q, refresh token %q, want Bearer and a refresh token", tok.TokenType, tok.RefreshToken)
	}
	if n := len(tok.AccessToken); n < 1400 || n > 1600 {
		t.Errorf("len(access token) = %d, want about 1500", n)
	}
	if d := time.Until(tok.Expiry); d < 59*time.Minute || d > time.Hour {
		t.Errorf("token expires in %v, want about 1h", d)
	}
	if got, want := tok.Extra("scope"), idpTestIMAP+" "+idpTestSMTP; got != want {
		t.Errorf("scope = %q, want %q", got, want)
	}
	sub, exp, ok := h.idp.Validate(tok.AccessToken)
	if sub != idpTestUser || !ok || exp.Before(time.Now().Add(59*time.Minute)) {
		t.Errorf("Validate(access token) = %q, %v, %v, want %q, in 1h, true", sub, exp, ok, idpTestUser)
	}
	at := jwtClaims(t, tok.AccessToken)
	if at["aud"] != "https://outlook.office.com" || at["upn"] != idpTestUser || at["scp"] != "IMAP.AccessAsUser.All SMTP.Send" || at["jti"] == "" {
		t.Errorf("access token claims = %v, want aud outlook, upn, scp, jti", at)
	}

	idt, _ := tok.Extra("id_token").(string)
	if idt == "" {
		t.Fatalf("Extra(id_token) = %q, want an id_token", idt)
	}
	c := jwtClaims(t, idt)
	iss := h.idp.URL + "/" + h.idp.TenantID() + "/v2.0"
	if c["aud"] != idpTestPublic || c["preferred_username"] != idpTestUser || c["iss"] != iss ||
		c["tid"] != h.idp.TenantID() || c["oid"] == "" || c["name"] != "Alice" {
		t.Errorf("id_token claims = %v, want aud %s, preferred_username %s, iss %s", c, idpTestPublic, idpTestUser, iss)
	}
	if got := h.idp.Stats(); got != (fake365.IdPStats{AuthCodes: 1}) {
		t.Errorf("Stats() = %+v, want AuthCodes 1", got)
	}
}

func TestIdPTokenResponseShape(t *testing.T) {
	h := newIdPHarness(t)
	rt := h.idp.GrantRefreshToken(idpTestPublic, idpTestUser, []string{idpTestIMAP, "offline_access"})
	status, m, hdr := h.post(h.token, url.Values{"client_id": {idpTestPublic}, "grant_type": {"refresh_token"}, "refresh_token": {rt}})
	if status != http.StatusOK {
		t.Fatalf("refresh = %d %v, want 200", status, m)
	}
	if _, ok := m["expires_in"].(float64); !ok || m["ext_expires_in"] == nil || m["token_type"] != "Bearer" {
		t.Errorf("refresh answer = %v, want numeric expires_in, ext_expires_in, token_type Bearer", m)
	}
	if _, ok := m["id_token"]; ok {
		t.Errorf("refresh answer has an id_token without openid: %v", m)
	}
	if cc := hdr.Get("Cache-Control"); !strings.Contains(cc, "no-store") {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}

	status, m, _ = h.post(h.token, url.Values{"client_id": {idpTestPublic}, "grant_type": {"refresh_token"}, "refresh_token": {rt}})
	wantErrorBody(t, "refresh with rotated token", m, "invalid_grant", 70008)
	desc := m["error_description"].(string)
	re := regexp.MustCompile(`\r\nTrace ID: [0-9a-f-]{36}\r\nCorrelation ID: [0-9a-f-]{36}\r\nTimestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$`)
	if status != http.StatusBadRequest || !re.MatchString(desc) || m["trace_id"] == nil || m["correlation_id"] == nil || m["timestamp"] == nil {
		t.Errorf("error answer = %d %q, want 400 with Entra's trace lines and fields", status, m)
	}

	for _, tc := range []struct {
		name   string
		form   url.Values
		status int
		code   string
		aadsts int
	}{
		{"no grant_type", url.Values{"client_id": {idpTestPublic}}, 400, "invalid_request", 900144},
		{"no client_id", url.Values{"grant_type": {"refresh_token"}}, 400, "invalid_request", 900144},
		{"unknown client", url.Values{"client_id": {"nobody"}, "grant_type": {"refresh_token"}}, 400, "unauthorized_client", 700016},
		{"unknown grant", url.Values{"client_id": {idpTestPublic}, "grant_type": {"password"}}, 400, "unsupported_grant_type", 70003},
		{"public with secret", url.Values{"client_id": {idpTestPublic}, "client_secret": {"x"}, "grant_type": {"refresh_token"}}, 401, "invalid_client", 700025},
		{"confidential without secret", url.Values{"client_id": {idpTestWebApp}, "grant_type": {"refresh_token"}}, 401, "invalid_client", 7000218},
		{"wrong secret", url.Values{"client_id": {idpTestWebApp}, "client_secret": {"wrong"}, "grant_type": {"refresh_token"}}, 401, "invalid_client", 7000215},
		{"no refresh_token", url.Values{"client_id": {idpTestPublic}, "grant_type": {"refresh_token"}}, 400, "invalid_request", 900144},
	} {
		status, m, _ := h.post(h.token, tc.form)
		if status != tc.status {
			t.Errorf("%s: status = %d, want %d", tc.name, status, tc.status)
		}
		wantErrorBody(t, tc.name, m, tc.code, tc.aadsts)
	}
	if got := h.idp.Stats(); got.Errors != 9 || got.Refreshes != 1 {
		t.Errorf("Stats() = %+v, want Errors 9, Refreshes 1", got)
	}
}

func TestIdPAuthCodeWrongVerifier(t *testing.T) {
	h := newIdPHarness(t)
	v := oauth2.GenerateVerifier()
	code := h.code(h.public, v)
	_, err := h.public.Exchange(t.Context(), code, oauth2.VerifierOption(oauth2.GenerateVerifier()))
	wantRetrieveError(t, "Exchange(wrong verifier)", err, "invalid_grant", "AADSTS501481")
	_, err = h.public.Exchange(t.Context(), code)
	wantRetrieveError(t, "Exchange(no verifier)", err, "invalid_grant", "AADSTS501481")
	if _, err := h.public.Exchange(t.Context(), code, oauth2.VerifierOption(v)); err != nil {
		t.Errorf("Exchange(right verifier) after failures = %v, want success", err)
	}
}

func TestIdPAuthCodeReuse(t *testing.T) {
	h := newIdPHarness(t)
	v := oauth2.GenerateVerifier()
	code := h.code(h.public, v)
	if _, err := h.public.Exchange(t.Context(), code, oauth2.VerifierOption(v)); err != nil {
		t.Fatalf("Exchange() = %v", err)
	}
	_, err := h.public.Exchange(t.Context(), code, oauth2.VerifierOption(v))
	wantRetrieveError(t, "Exchange(reused code)", err, "invalid_grant", "AADSTS54005")

	_, err = h.public.Exchange(t.Context(), "1.Anonsense", oauth2.VerifierOption(v))
	wantRetrieveError(t, "Exchange(unknown code)", err, "invalid_grant", "AADSTS70008")

	clock := newIdPClock(h)
	code = h.code(h.public, v)
	clock.Add(10*time.Minute + time.Second)
	_, err = h.public.Exchange(t.Context(), code, oauth2.VerifierOption(v))
	wantRetrieveError(t, "Exchange(code after 10 minutes)", err, "invalid_grant", "AADSTS70008")

	// A code belongs to the client it was issued to.
	h.idp.SetClock(nil)
	code = h.code(h.public, v)
	other := *h.web
	other.RedirectURL = h.public.RedirectURL
	_, err = other.Exchange(t.Context(), code, oauth2.VerifierOption(v))
	wantRetrieveError(t, "Exchange(code of another client)", err, "invalid_grant", "AADSTS70000")
}

func TestIdPRedirectURI(t *testing.T) {
	h := newIdPHarness(t)
	v := oauth2.GenerateVerifier()

	bad := *h.public
	bad.RedirectURL = "http://evil.example/callback"
	status, q, body := h.authorize(bad.AuthCodeURL("s", oauth2.S256ChallengeOption(v)))
	if status != http.StatusBadRequest || q != nil || !strings.Contains(body, "AADSTS50011") {
		t.Errorf("authorize(unregistered redirect) = %d %v %q, want a 400 page naming AADSTS50011", status, q, body)
	}
	otherPath := *h.public
	otherPath.RedirectURL = "http://localhost:8080/elsewhere"
	if status, _, _ := h.authorize(otherPath.AuthCodeURL("s", oauth2.S256ChallengeOption(v))); status != http.StatusBadRequest {
		t.Errorf("authorize(localhost, other path) = %d, want 400", status)
	}
	ip := *h.public
	ip.RedirectURL = "http://127.0.0.1:9999/callback"
	if status, _, _ := h.authorize(ip.AuthCodeURL("s", oauth2.S256ChallengeOption(v))); status != http.StatusBadRequest {
		t.Errorf("authorize(127.0.0.1 while localhost is registered) = %d, want 400", status)
	}

	// The token request must repeat the redirect URI of the authorize request.
	code := h.code(h.public, v)
	other := *h.public
	other.RedirectURL = "http://localhost:1/callback"
	_, err := other.Exchange(t.Context(), code, oauth2.VerifierOption(v))
	wantRetrieveError(t, "Exchange(other redirect)", err, "invalid_grant", "AADSTS500112")
	_, err = bad.Exchange(t.Context(), code, oauth2.VerifierOption(v))
	wantRetrieveError(t, "Exchange(unregistered redirect)", err, "invalid_request", "AADSTS50011")
	if _, err := h.public.Exchange(t.Context(), code, oauth2.VerifierOption(v)); err != nil {
		t.Errorf("Exchange(same redirect) = %v, want success", err)
	}
}

func TestIdPAuthorizeErrors(t *testing.T) {
	h := newIdPHarness(t)
	v := oauth2.GenerateVerifier()

	status, q, _ := h.authorize(h.public.AuthCodeURL("st"))
	if status != http.StatusFound || q.Get("error") != "invalid_request" || q.Get("state") != "st" || q.Get("code") != "" {
		t.Errorf("authorize(public, no PKCE) = %d %v, want redirect with invalid_request and state", status, q)
	}
	status, q, _ = h.authorize(h.public.AuthCodeURL("st", oauth2.SetAuthURLParam("code_challenge", strings.Repeat("a", 43))))
	if status != http.StatusFound || q.Get("error") != "invalid_request" {
		t.Errorf("authorize(plain PKCE method) = %d %v, want redirect with invalid_request", status, q)
	}
	status, q, _ = h.authorize(h.public.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("response_type", "token")))
	if status != http.StatusFound || q.Get("error") != "unsupported_response_type" {
		t.Errorf("authorize(response_type token) = %d %v, want redirect with unsupported_response_type", status, q)
	}
	// A confidential client may skip PKCE.
	status, q, _ = h.authorize(h.web.AuthCodeURL("st"))
	if status != http.StatusFound || q.Get("code") == "" {
		t.Errorf("authorize(confidential, no PKCE) = %d %v, want a code", status, q)
	}
	unknown := *h.public
	unknown.ClientID = "nobody"
	if status, _, body := h.authorize(unknown.AuthCodeURL("st")); status != http.StatusBadRequest || !strings.Contains(body, "AADSTS700016") {
		t.Errorf("authorize(unknown client) = %d %q, want a 400 page naming AADSTS700016", status, body)
	}

	h.idp.SignInAs("")
	if status, _, body := h.authorize(h.public.AuthCodeURL("st", oauth2.S256ChallengeOption(v))); status != http.StatusBadRequest || !strings.Contains(body, "AADSTS50058") {
		t.Errorf("authorize(nobody signed in) = %d %q, want a 400 page naming AADSTS50058", status, body)
	}
	if status, _, body := h.authorize(h.public.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("login_hint", "bob@contoso.com"))); status != http.StatusBadRequest || !strings.Contains(body, "AADSTS50034") {
		t.Errorf("authorize(unknown login_hint) = %d %q, want a 400 page naming AADSTS50034", status, body)
	}
	h.idp.AddUser("Bob.Jones@contoso.com")
	status, q, _ = h.authorize(h.public.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("login_hint", "bob.jones@contoso.com")))
	if status != http.StatusFound || q.Get("code") == "" {
		t.Fatalf("authorize(known login_hint) = %d %v, want a code", status, q)
	}
	tok, err := h.public.Exchange(t.Context(), q.Get("code"), oauth2.VerifierOption(v))
	if err != nil {
		t.Fatalf("Exchange() = %v", err)
	}
	if sub, _, _ := h.idp.Validate(tok.AccessToken); sub != "Bob.Jones@contoso.com" {
		t.Errorf("Validate(login_hint token) subject = %q, want %q", sub, "Bob.Jones@contoso.com")
	}
	if name := jwtClaims(t, tok.Extra("id_token").(string))["name"]; name != "Bob Jones" {
		t.Errorf("id_token name = %q, want %q", name, "Bob Jones")
	}
}

func TestIdPNoOfflineAccess(t *testing.T) {
	h := newIdPHarness(t)
	cfg := *h.public
	cfg.Scopes = []string{idpTestIMAP}
	tok := h.signIn(&cfg)
	if tok.RefreshToken != "" || tok.Extra("id_token") != nil {
		t.Errorf("Exchange(without offline_access, openid) refresh %q id_token %v, want neither", tok.RefreshToken, tok.Extra("id_token"))
	}
}

func TestIdPConfidentialClient(t *testing.T) {
	h := newIdPHarness(t)
	tok := h.signIn(h.web)
	if tok.RefreshToken == "" {
		t.Fatalf("Exchange(confidential) refresh token = %q, want one", tok.RefreshToken)
	}
	wrong := *h.web
	wrong.ClientSecret = "wrong"
	_, err := h.refresh(&wrong, tok.RefreshToken)
	re := wantRetrieveError(t, "refresh(wrong secret)", err, "invalid_client", "AADSTS7000215")
	if re.Response.StatusCode != http.StatusUnauthorized {
		t.Errorf("refresh(wrong secret) status = %d, want 401", re.Response.StatusCode)
	}
	// HTTP Basic works as well.
	basic := *h.web
	basic.Endpoint.AuthStyle = oauth2.AuthStyleInHeader
	if _, err := h.refresh(&basic, tok.RefreshToken); err != nil {
		t.Errorf("refresh(Basic auth) = %v, want success", err)
	}
}

func TestIdPRefreshRotation(t *testing.T) {
	h := newIdPHarness(t)
	first := h.signIn(h.public)

	second, err := h.refresh(h.public, first.RefreshToken)
	if err != nil {
		t.Fatalf("refresh() = %v", err)
	}
	if second.RefreshToken == "" || second.RefreshToken == first.RefreshToken || second.AccessToken == first.AccessToken {
		t.Fatalf("refresh() did not rotate: refresh token unchanged or empty")
	}
	if second.Extra("id_token") == nil {
		t.Errorf("refresh() has no id_token, want one (openid was granted)")
	}
	if sub, _, ok := h.idp.Validate(second.AccessToken); sub != idpTestUser || !ok {
		t.Errorf("Validate(refreshed token) = %q, %v, want %q, true", sub, ok, idpTestUser)
	}

	_, err = h.refresh(h.public, first.RefreshToken)
	wantRetrieveError(t, "refresh(rotated token)", err, "invalid_grant", "AADSTS70008")

	// A subset of the grant may be asked for; the new refresh token still
	// carries everything.
	status, m, _ := h.post(h.token, url.Values{"client_id": {idpTestPublic}, "grant_type": {"refresh_token"},
		"refresh_token": {second.RefreshToken}, "scope": {idpTestSMTP + " offline_access"}})
	if status != http.StatusOK || m["scope"] != idpTestSMTP {
		t.Fatalf("refresh(subset) = %d %v, want scope %q", status, m, idpTestSMTP)
	}
	third := m["refresh_token"].(string)
	status, m, _ = h.post(h.token, url.Values{"client_id": {idpTestPublic}, "grant_type": {"refresh_token"},
		"refresh_token": {third}, "scope": {"https://outlook.office.com/POP.AccessAsUser.All"}})
	if status != http.StatusBadRequest {
		t.Errorf("refresh(ungranted scope) status = %d, want 400", status)
	}
	wantErrorBody(t, "refresh(ungranted scope)", m, "invalid_grant", 65001)
	fourth, err := h.refresh(h.public, third)
	if err != nil {
		t.Fatalf("refresh(after subset) = %v", err)
	}
	if got := fourth.Extra("scope"); got != idpTestIMAP+" "+idpTestSMTP {
		t.Errorf("refresh(after subset) scope = %q, want the whole grant", got)
	}

	_, err = h.refresh(h.web, fourth.RefreshToken)
	wantRetrieveError(t, "refresh(other client)", err, "invalid_grant", "AADSTS70000")

	if got := h.idp.Stats(); got.Refreshes != 3 || got.Errors != 3 {
		t.Errorf("Stats() = %+v, want Refreshes 3, Errors 3", got)
	}
}

func TestIdPRefreshExpiry(t *testing.T) {
	h := newIdPHarness(t)
	clock := newIdPClock(h)
	rt := h.idp.GrantRefreshToken(idpTestPublic, idpTestUser, []string{idpTestIMAP, "offline_access"})
	clock.Add(89 * 24 * time.Hour)
	tok, err := h.refresh(h.public, rt)
	if err != nil {
		t.Fatalf("refresh(after 89 days) = %v", err)
	}
	clock.Add(91 * 24 * time.Hour)
	_, err = h.refresh(h.public, tok.RefreshToken)
	wantRetrieveError(t, "refresh(after 91 idle days)", err, "invalid_grant", "AADSTS700082")
}

func TestIdPRevoke(t *testing.T) {
	h := newIdPHarness(t)
	h.idp.AddUser("bob@contoso.com")
	alice := h.idp.GrantRefreshToken(idpTestPublic, idpTestUser, []string{idpTestIMAP, "offline_access"})
	alice2 := h.signIn(h.public)
	bob := h.idp.GrantRefreshToken(idpTestPublic, "bob@contoso.com", []string{idpTestIMAP, "offline_access"})

	h.idp.Revoke("ALICE@contoso.com")
	for _, rt := range []string{alice, alice2.RefreshToken} {
		_, err := h.refresh(h.public, rt)
		wantRetrieveError(t, "refresh(revoked)", err, "invalid_grant", "AADSTS70008")
	}
	if _, _, ok := h.idp.Validate(alice2.AccessToken); !ok {
		t.Errorf("Validate(access token after Revoke) ok = false, want true (access tokens live on)")
	}
	if _, err := h.refresh(h.public, bob); err != nil {
		t.Errorf("refresh(other user's token) = %v, want success", err)
	}
}

var idpUserCodeRE = regexp.MustCompile(`^[A-Z]{4}-[A-Z]{4}$`)

func TestIdPDeviceFlow(t *testing.T) {
	t.Parallel() // x/oauth2 polls once a second at best
	h := newIdPHarness(t)
	h.idp.SetDeviceInterval(time.Second)
	cfg := *h.public
	cfg.RedirectURL = ""
	da, err := cfg.DeviceAuth(t.Context())
	if err != nil {
		t.Fatalf("DeviceAuth() = %v", err)
	}
	if !idpUserCodeRE.MatchString(da.UserCode) || da.UserCode != h.idp.LastUserCode() ||
		da.VerificationURI != h.idp.URL+"/devicelogin" || da.Interval != 1 || da.DeviceCode == "" {
		t.Errorf("DeviceAuth() = %+v, want user code like ABCD-EFGH (LastUserCode %q), URI /devicelogin, interval 1",
			da, h.idp.LastUserCode())
	}
	if d := time.Until(da.Expiry); d < 14*time.Minute || d > 15*time.Minute {
		t.Errorf("DeviceAuth() expires in %v, want 15 minutes", d)
	}

	status, m := h.poll(da.DeviceCode)
	if status != http.StatusBadRequest {
		t.Errorf("poll before approval status = %d, want 400", status)
	}
	wantErrorBody(t, "poll before approval", m, "authorization_pending", 70016)

	if err := h.idp.ApproveDevice(da.UserCode, idpTestUser); err != nil {
		t.Fatalf("ApproveDevice(%q) = %v", da.UserCode, err)
	}
	if err := h.idp.ApproveDevice(da.UserCode, idpTestUser); err == nil {
		t.Errorf("ApproveDevice(%q) twice = nil, want an error", da.UserCode)
	}
	tok, err := cfg.DeviceAccessToken(t.Context(), da)
	if err != nil {
		t.Fatalf("DeviceAccessToken() = %v", err)
	}
	if sub, _, ok := h.idp.Validate(tok.AccessToken); sub != idpTestUser || !ok || tok.RefreshToken == "" {
		t.Errorf("device token: Validate = %q, %v; refresh token %q; want %q, true, non-empty", sub, ok, tok.RefreshToken, idpTestUser)
	}
	status, m = h.poll(da.DeviceCode)
	if status != http.StatusBadRequest || m["error"] != "bad_verification_code" {
		t.Errorf("poll after redemption = %d %v, want bad_verification_code", status, m)
	}
	if got := h.idp.Stats(); got.DeviceCodes != 1 || got.Errors != 1 {
		t.Errorf("Stats() = %+v, want DeviceCodes 1, Errors 1 (pending is not an error)", got)
	}
}

func TestIdPDeviceCodeAnswer(t *testing.T) {
	h := newIdPHarness(t)
	status, m, _ := h.post(h.device, url.Values{"client_id": {idpTestPublic}, "scope": {idpTestIMAP + " offline_access"}})
	if status != http.StatusOK {
		t.Fatalf("devicecode = %d %v, want 200", status, m)
	}
	want := fmt.Sprintf("To sign in, use a web browser to open the page %s/devicelogin and enter the code %s to authenticate.",
		h.idp.URL, m["user_code"])
	if m["message"] != want || m["expires_in"] != float64(900) || m["interval"] != float64(5) {
		t.Errorf("devicecode = %v, want message %q, expires_in 900, interval 5", m, want)
	}
	status, m, _ = h.post(h.device, url.Values{"client_id": {"nobody"}, "scope": {idpTestIMAP}})
	if status != http.StatusBadRequest {
		t.Errorf("devicecode(unknown client) status = %d, want 400", status)
	}
	wantErrorBody(t, "devicecode(unknown client)", m, "unauthorized_client", 700016)
	_, m, _ = h.post(h.device, url.Values{"client_id": {idpTestPublic}})
	wantErrorBody(t, "devicecode(no scope)", m, "invalid_request", 900144)

	resp, err := http.Get(h.idp.URL + "/devicelogin")
	if err != nil {
		t.Fatalf("GET /devicelogin: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /devicelogin = %d, want 200", resp.StatusCode)
	}
}

func (h *idpHarness) deviceCode() (deviceCode, userCode string) {
	h.t.Helper()
	status, m, _ := h.post(h.device, url.Values{"client_id": {idpTestPublic}, "scope": {idpTestIMAP + " offline_access"}})
	if status != http.StatusOK {
		h.t.Fatalf("devicecode = %d %v, want 200", status, m)
	}
	return m["device_code"].(string), m["user_code"].(string)
}

func TestIdPDeviceSlowDown(t *testing.T) {
	h := newIdPHarness(t)
	h.idp.SetDeviceInterval(0)
	dc, _ := h.deviceCode()
	h.idp.ForceSlowDown(2)
	for i, want := range []string{"slow_down", "slow_down", "authorization_pending", "authorization_pending"} {
		if _, m := h.poll(dc); m["error"] != want {
			t.Errorf("poll %d = %v, want %s", i, m["error"], want)
		}
	}

	// Polling faster than the interval, by the IdP's clock.
	clock := newIdPClock(h)
	h.idp.SetDeviceInterval(5 * time.Second)
	dc, uc := h.deviceCode()
	if _, m := h.poll(dc); m["error"] != "authorization_pending" {
		t.Errorf("first poll = %v, want authorization_pending", m["error"])
	}
	clock.Add(time.Second)
	if _, m := h.poll(dc); m["error"] != "slow_down" {
		t.Errorf("poll 1s later = %v, want slow_down", m["error"])
	}
	clock.Add(5 * time.Second)
	if err := h.idp.ApproveDevice(uc, idpTestUser); err != nil {
		t.Fatalf("ApproveDevice() = %v", err)
	}
	if status, m := h.poll(dc); status != http.StatusOK || m["access_token"] == nil {
		t.Errorf("poll 5s later after approval = %d %v, want a token", status, m)
	}
	if got := h.idp.Stats(); got.Errors != 0 || got.DeviceCodes != 1 {
		t.Errorf("Stats() = %+v, want Errors 0, DeviceCodes 1", got)
	}
}

func TestIdPDeviceExpiredAndDeclined(t *testing.T) {
	h := newIdPHarness(t)
	h.idp.SetDeviceInterval(0)
	clock := newIdPClock(h)
	dc, uc := h.deviceCode()
	clock.Add(15*time.Minute + time.Second)
	_, m := h.poll(dc)
	wantErrorBody(t, "poll after 15 minutes", m, "expired_token", 70019)
	if err := h.idp.ApproveDevice(uc, idpTestUser); err == nil {
		t.Errorf("ApproveDevice(expired %q) = nil, want an error", uc)
	}

	dc, uc = h.deviceCode()
	if err := h.idp.DeclineDevice(uc); err != nil {
		t.Fatalf("DeclineDevice(%q) = %v", uc, err)
	}
	_, m = h.poll(dc)
	wantErrorBody(t, "poll after decline", m, "authorization_declined", 70000)
	if err := h.idp.ApproveDevice("ZZZZ-ZZZZ", idpTestUser); err == nil {
		t.Errorf("ApproveDevice(unknown code) = nil, want an error")
	}
}

func TestIdPClientCredentials(t *testing.T) {
	h := newIdPHarness(t)
	_, tokenURL, _ := h.idp.Endpoints(idpTestTenant)
	cc := clientcredentials.Config{ClientID: idpTestWebApp, ClientSecret: idpTestSecret, TokenURL: tokenURL,
		Scopes: []string{"https://outlook.office365.com/.default"}, AuthStyle: oauth2.AuthStyleInParams}
	tok, err := cc.Token(t.Context())
	if err != nil {
		t.Fatalf("client credentials Token() = %v", err)
	}
	if tok.RefreshToken != "" || tok.Extra("id_token") != nil || tok.Extra("scope") != nil {
		t.Errorf("client credentials token has refresh token %q / id_token / scope, want none (as Entra)", tok.RefreshToken)
	}
	if sub, _, ok := h.idp.Validate(tok.AccessToken); sub != "app:"+idpTestWebApp || !ok {
		t.Errorf("Validate(app token) = %q, %v, want %q, true", sub, ok, "app:"+idpTestWebApp)
	}
	if aud := jwtClaims(t, tok.AccessToken)["aud"]; aud != "https://outlook.office365.com" {
		t.Errorf("app token aud = %v, want https://outlook.office365.com", aud)
	}

	bad := cc
	bad.Scopes = []string{idpTestIMAP}
	_, err = bad.Token(t.Context())
	wantRetrieveError(t, "Token(delegated scope)", err, "invalid_scope", "AADSTS1002012")
	public := cc
	public.ClientID, public.ClientSecret = idpTestPublic, ""
	_, err = public.Token(t.Context())
	wantRetrieveError(t, "Token(public client)", err, "invalid_client", "AADSTS7000218")
	if got := h.idp.Stats(); got.ClientCredentials != 1 || got.Errors != 2 {
		t.Errorf("Stats() = %+v, want ClientCredentials 1, Errors 2", got)
	}
}

func TestIdPValidate(t *testing.T) {
	h := newIdPHarness(t)
	clock := newIdPClock(h)
	h.idp.SetTokenLifetime(10 * time.Minute)
	tok := h.signIn(h.public)
	if d := time.Until(tok.Expiry); d < 9*time.Minute || d > 10*time.Minute {
		t.Errorf("token expires in %v, want 10m after SetTokenLifetime", d)
	}
	sub, exp, ok := h.idp.Validate(tok.AccessToken)
	if sub != idpTestUser || !ok || !exp.Equal(clock.Now().Add(10*time.Minute)) {
		t.Errorf("Validate() = %q, %v, %v, want %q, clock+10m, true", sub, exp, ok, idpTestUser)
	}
	clock.Add(10 * time.Minute)
	if sub, _, ok := h.idp.Validate(tok.AccessToken); ok || sub != idpTestUser {
		t.Errorf("Validate(expired) = %q, %v, want %q, false", sub, ok, idpTestUser)
	}
	if sub, _, ok := h.idp.Validate("eyJ0eXAi.bogus.token"); ok || sub != "" {
		t.Errorf("Validate(unknown) = %q, %v, want \"\", false", sub, ok)
	}

	h.idp.SetTokenLifetime(time.Millisecond)
	tok = h.signIn(h.public)
	if tok.Expiry.IsZero() {
		t.Errorf("token with 1ms lifetime has no expiry, want expires_in >= 1")
	}
}

func TestIdPExpireAccessTokens(t *testing.T) {
	h := newIdPHarness(t)
	tok := h.signIn(h.public)
	h.idp.ExpireAccessTokens()
	if _, _, ok := h.idp.Validate(tok.AccessToken); ok {
		t.Errorf("Validate() after ExpireAccessTokens ok = true, want false")
	}
	fresh, err := h.refresh(h.public, tok.RefreshToken)
	if err != nil {
		t.Fatalf("refresh() = %v", err)
	}
	if _, _, ok := h.idp.Validate(fresh.AccessToken); !ok {
		t.Errorf("Validate(token issued after ExpireAccessTokens) ok = false, want true")
	}
}

func TestIdPFailure(t *testing.T) {
	h := newIdPHarness(t)
	rt := h.idp.GrantRefreshToken(idpTestPublic, idpTestUser, []string{idpTestIMAP, "offline_access"})
	h.idp.SetFailure(&fake365.Failure{Status: http.StatusInternalServerError, Code: "temporarily_unavailable",
		Description: "AADSTS50001: The service is down."})
	_, err := h.refresh(h.public, rt)
	re := wantRetrieveError(t, "refresh(failing IdP)", err, "temporarily_unavailable", "AADSTS50001")
	if re.Response.StatusCode != http.StatusInternalServerError {
		t.Errorf("refresh(failing IdP) status = %d, want 500", re.Response.StatusCode)
	}
	h.idp.SetFailure(nil)
	if _, err := h.refresh(h.public, rt); err != nil {
		t.Errorf("refresh() after SetFailure(nil) = %v, want success (the failure must not consume the token)", err)
	}
	if got := h.idp.Stats(); got.Errors != 1 || got.Refreshes != 1 {
		t.Errorf("Stats() = %+v, want Errors 1, Refreshes 1", got)
	}
}

func TestIdPFailureHang(t *testing.T) {
	h := newIdPHarness(t)
	rt := h.idp.GrantRefreshToken(idpTestPublic, idpTestUser, []string{idpTestIMAP, "offline_access"})
	h.idp.SetFailure(&fake365.Failure{Hang: true})

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := h.public.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("refresh(hanging IdP) = %v, want context.DeadlineExceeded", err)
	}

	// Close releases a request that would otherwise hang forever.
	done := make(chan error, 1)
	go func() {
		_, err := h.refresh(h.public, rt)
		done <- err
	}()
	for h.idp.Stats().Errors < 2 { // wait until the request is inside the IdP
		select {
		case err := <-done:
			t.Fatalf("refresh(hanging IdP) returned early: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	h.idp.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("refresh(hanging IdP, then Close) = nil, want an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("refresh(hanging IdP) still blocked 10s after Close")
	}
}

func TestIdPConcurrentRefresh(t *testing.T) {
	h := newIdPHarness(t)
	const chains, steps = 16, 8
	var wg sync.WaitGroup
	errs := make(chan error, chains*steps)
	for i := range chains {
		rt := h.idp.GrantRefreshToken(idpTestPublic, fmt.Sprintf("user%d@contoso.com", i), []string{idpTestIMAP, "offline_access"})
		wg.Go(func() {
			for range steps {
				tok, err := h.refresh(h.public, rt)
				if err != nil {
					errs <- err
					return
				}
				if _, _, ok := h.idp.Validate(tok.AccessToken); !ok {
					errs <- fmt.Errorf("Validate(fresh token) ok = false")
				}
				rt = tok.RefreshToken
				h.idp.Stats()
			}
		})
	}
	// Many racing on one refresh token: exactly one wins.
	shared := h.idp.GrantRefreshToken(idpTestPublic, idpTestUser, []string{idpTestIMAP, "offline_access"})
	var mu sync.Mutex
	wins := 0
	for range chains {
		wg.Go(func() {
			if _, err := h.refresh(h.public, shared); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent refresh: %v", err)
	}
	if wins != 1 {
		t.Errorf("racing refreshes of one token: %d succeeded, want 1", wins)
	}
	if got := h.idp.Stats(); got.Refreshes != chains*steps+1 || got.Errors != chains-1 {
		t.Errorf("Stats() = %+v, want Refreshes %d, Errors %d", got, chains*steps+1, chains-1)
	}
}

func TestIdPOpenIDConfiguration(t *testing.T) {
	h := newIdPHarness(t)
	resp, err := http.Get(h.idp.URL + "/" + idpTestTenant + "/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatalf("GET openid-configuration: %v", err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("decode openid-configuration: %v", err)
	}
	authURL, tokenURL, deviceURL := h.idp.Endpoints(idpTestTenant)
	if m["authorization_endpoint"] != authURL || m["token_endpoint"] != tokenURL || m["device_authorization_endpoint"] != deviceURL ||
		m["issuer"] != h.idp.URL+"/"+h.idp.TenantID()+"/v2.0" {
		t.Errorf("openid-configuration = %v, want the IdP's endpoints and issuer", m)
	}
}
