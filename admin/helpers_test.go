package admin

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"

	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
)

const (
	testTimeout      = 20 * time.Second
	testClientID     = "admin-test-client"
	testClientSecret = "client-secret-DO-NOT-SHOW-7f3a9c"
	adminPassword    = "admin-pass-DO-NOT-SHOW-51e2"
	testAccessToken  = "access-token-DO-NOT-SHOW-0123456789abcdef"

	alice   = "alice@example.com"
	bob     = "bob@example.com"
	printer = "printer@example.com"
)

var testScopes = []string{
	"https://outlook.office.com/IMAP.AccessAsUser.All",
	"https://outlook.office.com/SMTP.Send",
	"offline_access", "openid", "profile",
}

// backend stands in for the daemon: the account list, the statuses, and
// records of Seal and Remove.
type backend struct {
	mu       sync.Mutex // protects the fields below
	accounts []AccountInfo
	statuses map[string]oauth.AccountStatus // by lower-cased username
	seals    []sealCall
	removed  []string
	sealErr  error
}

type sealCall struct {
	username, password string
	ts                 oauth.TokenSet
	meta               store.Meta
}

func (b *backend) Accounts() []AccountInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]AccountInfo(nil), b.accounts...)
}

func (b *backend) Status(username string) oauth.AccountStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	if st, ok := b.statuses[strings.ToLower(username)]; ok {
		return st
	}
	return oauth.AccountStatus{Username: strings.ToLower(username), NeedsSignIn: true, Hint: "not signed in"}
}

func (b *backend) setStatus(st oauth.AccountStatus) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.statuses[strings.ToLower(st.Username)] = st
}

func (b *backend) Seal(username, password string, ts oauth.TokenSet, meta store.Meta) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sealErr != nil {
		return b.sealErr
	}
	b.seals = append(b.seals, sealCall{username, password, ts, meta})
	b.statuses[strings.ToLower(username)] = oauth.AccountStatus{
		Username: strings.ToLower(username), SignedIn: true, Identity: meta.Identity, Flow: meta.Flow,
		AccessExpiry: ts.Expiry, RefreshObtained: ts.Obtained,
	}
	return nil
}

func (b *backend) Remove(username string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.statuses[strings.ToLower(username)]; !ok {
		return fmt.Errorf("remove tokens for %q: %w", username, store.ErrNotSignedIn)
	}
	b.removed = append(b.removed, username)
	delete(b.statuses, strings.ToLower(username))
	return nil
}

func (b *backend) sealCalls() []sealCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]sealCall(nil), b.seals...)
}

func (b *backend) removals() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.removed...)
}

// bodyLog keeps every response body and Location header the server sent,
// to check that no secret ever left it.
type bodyLog struct {
	mu     sync.Mutex
	bodies []string
}

func (l *bodyLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &captureWriter{ResponseWriter: w}
		h.ServeHTTP(cw, r)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.bodies = append(l.bodies, r.Method+" "+r.URL.Path+"\n"+w.Header().Get("Location")+"\n"+cw.buf.String())
	})
}

// assertNoSecrets fails when any body holds one of secrets.
func (l *bodyLog) assertNoSecrets(t *testing.T, secrets ...string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.bodies) == 0 {
		t.Fatalf("no responses recorded")
	}
	for _, b := range l.bodies {
		for _, s := range secrets {
			if s == "" {
				t.Fatalf("assertNoSecrets: empty secret given")
			}
			if strings.Contains(b, s) {
				first, _, _ := strings.Cut(b, "\n")
				t.Errorf("response to %s contains a secret (%.12s...)", first, s)
			}
		}
	}
}

type captureWriter struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (w *captureWriter) Write(b []byte) (int, error) {
	w.buf.Write(b)
	return w.ResponseWriter.Write(b)
}

// env is an admin Server over a backend, with the fake IdP behind its
// provider, served by httptest.
type env struct {
	t       *testing.T
	idp     *fake365.IdP
	prov    *oauth.Provider
	be      *backend
	metrics *Metrics
	clock   *testutil.Clock
	srv     *Server
	ts      *httptest.Server
	log     *bodyLog
	devices chan string // ids of device polls that ended
	tls     bool        // serve over TLS
	opts    Options     // what srv was made with
}

type envOption func(*env, *Options)

func withPassword(pw string) envOption {
	return func(_ *env, o *Options) { o.PasswordHash = cheapHash(pw) }
}

func withTLS() envOption { return func(e *env, _ *Options) { e.tls = true } }

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, clock: testutil.NewWallClock(), log: &bodyLog{}, metrics: NewMetrics(), devices: make(chan string, 16)}
	var err error
	if e.idp, err = fake365.NewIdP(); err != nil {
		t.Fatalf("NewIdP() = %v", err)
	}
	t.Cleanup(e.idp.Close)
	e.idp.AddClient(fake365.Client{ID: testClientID, Secret: testClientSecret, RedirectURIs: []string{"http://127.0.0.1/oauth2/callback"}})
	e.idp.AddUser(alice)
	e.idp.AddUser(bob)
	e.idp.SetDeviceInterval(0)
	authURL, tokenURL, deviceURL := e.idp.Endpoints("common")
	e.prov = &oauth.Provider{
		Name: "contoso", ClientID: testClientID, ClientSecret: testClientSecret,
		AuthURL: authURL, TokenURL: tokenURL, DeviceAuthURL: deviceURL, Scopes: testScopes,
	}
	e.be = &backend{
		accounts: []AccountInfo{
			{Username: alice, Provider: "contoso", Flow: "authcode"},
			{Username: bob, Provider: "contoso", Flow: "device"},
			{Username: printer, Mailbox: "scans@example.com", Provider: "contoso", Flow: FlowClientCredentials},
		},
		statuses: make(map[string]oauth.AccountStatus),
	}
	o := Options{
		Accounts: e.be.Accounts,
		Status:   e.be.Status,
		Seal:     e.be.Seal,
		Remove:   e.be.Remove,
		Provider: func(string) *oauth.Provider { return e.prov },
		Metrics:  e.metrics,
		Logger:   slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:      e.clock.Now,
	}
	for _, opt := range opts {
		opt(e, &o)
	}
	if o.PasswordHash == "" && o.AccessToken == "" {
		o.AccessToken = testAccessToken
	}
	e.opts = o
	if e.srv, err = New(o); err != nil {
		t.Fatalf("New() = %v", err)
	}
	e.srv.failDelay = 0
	e.srv.deviceWait = func(ctx context.Context, _ time.Duration) error {
		tm := time.NewTimer(2 * time.Millisecond)
		defer tm.Stop()
		select {
		case <-tm.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	e.srv.deviceDone = func(id string) { e.devices <- id }
	t.Cleanup(func() { e.srv.Close() })
	if e.tls {
		e.ts = httptest.NewTLSServer(e.log.wrap(e.srv))
	} else {
		e.ts = httptest.NewServer(e.log.wrap(e.srv))
	}
	t.Cleanup(e.ts.Close)
	// Whatever a test did, no answer held the client secret or the admin
	// password.
	t.Cleanup(func() {
		e.log.mu.Lock()
		n := len(e.log.bodies)
		e.log.mu.Unlock()
		if n > 0 {
			e.log.assertNoSecrets(t, testClientSecret, adminPassword, testAccessToken)
		}
	})
	return e
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// cheapHash is an Argon2id PHC string with tiny parameters, so that tests
// do not pay 64 MiB per check.
func cheapHash(pw string) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	key := argon2.IDKey([]byte(pw), salt, 1, 64, 1, 32)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=19$m=64,t=1,p=1$%s$%s", b64.EncodeToString(salt), b64.EncodeToString(key))
}

// browser is an HTTP client with a cookie jar, like a browser. It does not
// follow redirects unless follow is set.
type browser struct {
	t      *testing.T
	c      *http.Client
	base   string
	follow bool
	origin string      // Origin header of POSTs; "" sends none
	header http.Header // more headers for every request
	host   string      // Host header; "" means the server's address
}

// browser returns a browser that, when the page has no password, opened
// the access token's link first, as an admin does.
func (e *env) browser() *browser {
	e.t.Helper()
	b := e.anonymous()
	if e.opts.PasswordHash == "" {
		r := b.get("/?token=" + url.QueryEscape(e.opts.AccessToken))
		if r.code != http.StatusSeeOther || r.header.Get("Location") != "/" {
			e.t.Fatalf("GET /?token= = %d (Location %q), want 303 to /", r.code, r.header.Get("Location"))
		}
	}
	return b
}

// anonymous returns a browser that has not seen the access token.
func (e *env) anonymous() *browser {
	e.t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		e.t.Fatalf("cookiejar.New() = %v", err)
	}
	b := &browser{t: e.t, base: e.ts.URL, origin: e.ts.URL}
	c := e.ts.Client()
	b.c = &http.Client{Transport: c.Transport, Jar: jar, Timeout: testTimeout}
	b.c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if b.follow {
			return nil
		}
		return http.ErrUseLastResponse
	}
	return b
}

type response struct {
	code   int
	body   string
	header http.Header
	url    *url.URL // after redirects
}

func (b *browser) do(req *http.Request) *response {
	b.t.Helper()
	for k, v := range b.header {
		req.Header[k] = v
	}
	if b.host != "" {
		req.Host = b.host
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}
	return &response{code: resp.StatusCode, body: string(body), header: resp.Header, url: resp.Request.URL}
}

func (b *browser) url(path string) string {
	if strings.HasPrefix(path, "http") {
		return path
	}
	return b.base + path
}

func (b *browser) get(path string) *response {
	b.t.Helper()
	req, err := http.NewRequest(http.MethodGet, b.url(path), nil)
	if err != nil {
		b.t.Fatalf("NewRequest(GET %s) = %v", path, err)
	}
	return b.do(req)
}

func (b *browser) post(path string, form url.Values) *response {
	b.t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.url(path), strings.NewReader(form.Encode()))
	if err != nil {
		b.t.Fatalf("NewRequest(POST %s) = %v", path, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if b.origin != "" {
		req.Header.Set("Origin", b.origin)
	}
	return b.do(req)
}

var (
	csrfRE   = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	idRE     = regexp.MustCompile(`name="id" value="([^"]+)"`)
	stateRE  = regexp.MustCompile(`data-state="([^"]+)"`)
	rowRE    = regexp.MustCompile(`(?s)<tr id="account-([^"]+)">(.*?)</tr>`)
	bannerRE = regexp.MustCompile(`<p class="banner (\w+)" role="alert">(.*?)</p>`)
)

// field returns the first submatch of re in body, failing the test if none.
func field(t *testing.T, re *regexp.Regexp, body string) string {
	t.Helper()
	m := re.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in page:\n%s", re, body)
	}
	return m[1]
}

// csrf loads / and returns the session's CSRF token.
func (b *browser) csrf() string {
	b.t.Helper()
	r := b.get("/")
	if r.code != http.StatusOK {
		b.t.Fatalf("GET / = %d, want 200:\n%s", r.code, r.body)
	}
	return field(b.t, csrfRE, r.body)
}

// states returns the state shown for each account row of an index page.
func states(body string) map[string]string {
	m := make(map[string]string)
	for _, row := range rowRE.FindAllStringSubmatch(body, -1) {
		if s := stateRE.FindStringSubmatch(row[2]); s != nil {
			m[row[1]] = s[1]
		}
	}
	return m
}

// waitDevice waits for the device poll to end.
func (e *env) waitDevice() string {
	e.t.Helper()
	select {
	case id := <-e.devices:
		return id
	case <-time.After(testTimeout):
		e.t.Fatalf("device sign-in poll did not end")
		return ""
	}
}

// login logs b in with the admin password and returns the new session's
// CSRF token.
func (b *browser) login(password string) string {
	b.t.Helper()
	page := b.get("/login")
	if page.code != http.StatusOK {
		b.t.Fatalf("GET /login = %d, want 200", page.code)
	}
	r := b.post("/login", url.Values{"password": {password}, "csrf": {field(b.t, csrfRE, page.body)}, "next": {"/"}})
	if r.code != http.StatusSeeOther {
		b.t.Fatalf("POST /login = %d, want 303", r.code)
	}
	return b.csrf()
}

// exchange presents testAccessToken to s and returns the session cookie
// it answers with.
func exchange(t *testing.T, s *Server) *http.Cookie {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/?token="+url.QueryEscape(testAccessToken), nil)
	req.Host = "localhost:8025"
	s.ServeHTTP(rec, req)
	for _, c := range rec.Result().Cookies() {
		if c.Name == sessionCookie {
			return c
		}
	}
	t.Fatalf("GET /?token= = %d without a session cookie", rec.Code)
	return nil
}
