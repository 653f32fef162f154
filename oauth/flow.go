package oauth

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"mailproxy/internal/wait"
)

// Sign-in timing.
const (
	// AuthCodeTTL is how long a started browser sign-in waits for its
	// answer: time to type a password and pass MFA. Entra's authorization
	// codes themselves last 10 minutes.
	AuthCodeTTL = 15 * time.Minute
	// defaultDeviceInterval is the poll interval when the device
	// authorization response names none (RFC 8628 3.2).
	defaultDeviceInterval = 5 * time.Second
	// slowDownStep is added to the poll interval on every slow_down
	// (RFC 8628 3.5).
	slowDownStep = 5 * time.Second
	// defaultDeviceLifetime is assumed when the device authorization
	// response has no expires_in; Entra's device codes last 15 minutes.
	defaultDeviceLifetime = 15 * time.Minute
	// maxPollFailures is how many polls in a row may fail for a temporary
	// reason (network, 5xx) before the device flow gives up.
	maxPollFailures = 5
	// callbackShutdown bounds the wait for the loopback callback page to be
	// written after the answer arrived.
	callbackShutdown = 5 * time.Second
	// callbackReadTimeout bounds reading a request on the loopback listener.
	callbackReadTimeout = 10 * time.Second
)

// Errors of the sign-in flows. They are wrapped with details; use
// errors.Is.
var (
	// ErrStateMismatch: the answer carries another sign-in's state. It is
	// not this sign-in's answer (an old browser tab, or a forged link).
	ErrStateMismatch = errors.New("the answer belongs to another sign-in (state differs)")
	// ErrNoState: the answer has no state, so it cannot be checked.
	ErrNoState = errors.New("the answer has no state parameter")
	// ErrUsed: the sign-in's answer was already redeemed.
	ErrUsed = errors.New("this sign-in was already completed or abandoned")
	// ErrSignInExpired: the sign-in was started too long ago.
	ErrSignInExpired = errors.New("the sign-in was started too long ago")
	// ErrDeviceExpired: the device code expired before anyone approved it.
	ErrDeviceExpired = errors.New("the device code expired before the sign-in was completed")
	// ErrDeclined: the person signing in declined.
	ErrDeclined = errors.New("the sign-in was declined")
	// ErrNotLoopback: the browser flow needs a loopback redirect URL.
	ErrNotLoopback = errors.New("the redirect URL is not a http://localhost address")
)

// randomState returns an unguessable OAuth state.
func randomState() string {
	b := make([]byte, 24)
	rand.Read(b) // never fails since Go 1.24
	return base64.RawURLEncoding.EncodeToString(b)
}

// AuthCode is one started authorization code sign-in with PKCE (S256): the
// state the answer must carry, and the verifier that redeems its code. It
// is shared by `mailproxy login -browser`, `login -manual` and the admin
// page, each of which receives the answer its own way. It is safe for
// concurrent use and redeems at most one answer.
type AuthCode struct {
	// Now is the clock for the tokens' obtained time and for expiry; nil
	// means time.Now. Set it before Exchange.
	Now func() time.Time

	provider    *Provider
	redirectURL string
	state       string
	verifier    string
	created     time.Time

	mu   sync.Mutex // protects used
	used bool
}

// signInOptions are what p needs on every sign-in address beyond the
// defaults: Google sends a refresh token only for access_type=offline, and
// again on a later sign-in only after the consent screen.
func signInOptions(p *Provider) []oauth2.AuthCodeOption {
	if !p.OfflineConsent {
		return nil
	}
	return []oauth2.AuthCodeOption{oauth2.AccessTypeOffline, oauth2.SetAuthURLParam("prompt", "consent")}
}

// NewAuthCode starts a sign-in for p whose answer goes to redirectURL (""
// means p.RedirectURL) and returns the address to open in a browser. The
// address carries a random state, the PKCE S256 challenge, prompt=select_account
// (so that a browser signed in to another account, typically the admin's
// own, asks which one to use) and loginHint when it is not "", and, for a
// provider with OfflineConsent, access_type=offline and prompt=consent
// instead (signInOptions: the one place of that rule). opts are added last
// and may override any of these, e.g. oauth2.SetAuthURLParam("prompt", "login").
func NewAuthCode(p *Provider, redirectURL, loginHint string, opts ...oauth2.AuthCodeOption) (*AuthCode, string) {
	if redirectURL == "" {
		redirectURL = p.RedirectURL
	}
	a := &AuthCode{
		provider:    p,
		redirectURL: redirectURL,
		state:       randomState(),
		verifier:    oauth2.GenerateVerifier(),
		created:     time.Now(),
	}
	cfg := p.Config()
	cfg.RedirectURL = redirectURL
	all := []oauth2.AuthCodeOption{
		oauth2.S256ChallengeOption(a.verifier),
		oauth2.SetAuthURLParam("prompt", "select_account"),
	}
	if loginHint != "" {
		all = append(all, oauth2.SetAuthURLParam("login_hint", loginHint))
	}
	all = append(all, signInOptions(p)...)
	all = append(all, opts...)
	return a, cfg.AuthCodeURL(a.state, all...)
}

// State returns the sign-in's state, the key under which a page keeps it.
func (a *AuthCode) State() string { return a.state }

// RedirectURL returns where the identity provider sends the answer.
func (a *AuthCode) RedirectURL() string { return a.redirectURL }

// Created returns when the sign-in was started (wall clock).
func (a *AuthCode) Created() time.Time { return a.created }

func (a *AuthCode) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Exchange redeems the answer the identity provider sent to the redirect
// URL (its query parameters). The state is checked first: an answer with
// another state (ErrStateMismatch) or none (ErrNoState) is refused and does
// not use up the sign-in. An error answer (the person declined, consent is
// missing...) yields a *TokenError with its hint; so does a failed code
// redemption. It returns the tokens and who signed in (from the id_token;
// "" when the provider sent none).
func (a *AuthCode) Exchange(ctx context.Context, query url.Values) (TokenSet, string, error) {
	state := query.Get("state")
	if state == "" {
		return TokenSet{}, "", fmt.Errorf("sign-in answer: %w", ErrNoState)
	}
	if subtle.ConstantTimeCompare([]byte(state), []byte(a.state)) != 1 {
		return TokenSet{}, "", fmt.Errorf("sign-in answer: %w", ErrStateMismatch)
	}
	a.mu.Lock()
	used := a.used
	a.used = true
	a.mu.Unlock()
	if used {
		return TokenSet{}, "", fmt.Errorf("sign-in answer: %w", ErrUsed)
	}

	if code := query.Get("error"); code != "" {
		return TokenSet{}, "", authorizeError(code, query.Get("error_description"))
	}
	code := query.Get("code")
	if code == "" {
		return TokenSet{}, "", errors.New("sign-in answer: it has neither a code nor an error")
	}

	p := a.provider
	cfg := p.Config()
	cfg.RedirectURL = a.redirectURL
	ctx, cancel := context.WithTimeout(ctx, tokenRequestTimeout)
	defer cancel()
	start := a.now()
	tok, err := cfg.Exchange(p.Context(ctx), code, oauth2.VerifierOption(a.verifier))
	if err != nil {
		return TokenSet{}, "", fmt.Errorf("redeem the authorization code: %w", classify(err))
	}
	ts := TokenSetFrom(tok, start, p.Scopes)
	return ts, IdentityFromIDToken(ts.IDToken), nil
}

// authorizeError turns an error answer of the authorize endpoint into a
// *TokenError (for its hint), wrapped with the provider's description.
func authorizeError(code, desc string) error {
	te := &TokenError{Code: code}
	te.Description, te.AADSTS = parseDescription(desc)
	te.Err = fmt.Errorf("the identity provider answered the sign-in with %s", code)
	msg := "sign-in refused by the identity provider"
	if d := printable(te.Description, 300); d != "" {
		msg += " (" + d + ")"
	}
	if code == "access_denied" {
		return fmt.Errorf("%s: %w: %w", msg, ErrDeclined, te)
	}
	return fmt.Errorf("%s: %w", msg, te)
}

// printable makes text that came through a browser safe to print on a
// terminal or in a log line: no control characters, at most limit runes.
func printable(s string, limit int) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == limit {
			b.WriteString("...")
			break
		}
		if unicode.IsControl(r) {
			r = ' '
		}
		b.WriteRune(r)
		n++
	}
	return strings.TrimSpace(b.String())
}

// ParseCallback reads the answer a person pasted after signing in: the whole
// address from the browser's address bar, or its query string (with or
// without the leading "?"). A bare code is refused: without the state the
// answer cannot be checked.
func ParseCallback(s string) (url.Values, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("parse the sign-in answer: nothing was pasted")
	}
	raw := s
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("parse the sign-in answer: %w", err)
		}
		raw = u.RawQuery
		if raw == "" {
			raw = u.Fragment // response_mode=fragment
		}
	} else if i := strings.IndexByte(s, '?'); i >= 0 {
		raw = s[i+1:]
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return nil, fmt.Errorf("parse the sign-in answer: %w", err)
	}
	if q.Get("state") == "" {
		if q.Get("code") != "" || q.Get("error") != "" {
			return nil, fmt.Errorf("parse the sign-in answer: %w: paste the whole address, which holds both code= and state=", ErrNoState)
		}
		return nil, errors.New("parse the sign-in answer: no code= and state= in it; paste the whole address from the browser's address bar")
	}
	return q, nil
}

// BrowserFlow signs in with the authorization code flow and a one-shot
// listener on the loopback interface that receives the answer
// (`mailproxy login -browser`). Entra ignores the port of http://localhost
// redirect URIs, so the listener takes any free port and works while
// `serve` holds the configured one.
type BrowserFlow struct {
	Provider *Provider
	// RedirectURL is the configured redirect URL (""
	// means Provider.RedirectURL). Its host must be localhost or a
	// loopback address; its path is kept and its port replaced.
	RedirectURL string
	LoginHint   string
	// Open opens the sign-in address in a browser; nil means only print
	// it. Its failure is reported and the flow goes on: the person may
	// open the address by hand.
	Open func(url string) error
	// Out receives the instructions; nil means io.Discard.
	Out io.Writer
	// Now is the clock of the tokens; nil means time.Now.
	Now func() time.Time
	// Options are added to the sign-in address (see NewAuthCode).
	Options []oauth2.AuthCodeOption
}

// Run starts the listener, shows the address (and opens it), waits for the
// answer or ctx, redeems the code and returns the tokens and who signed in.
// An answer with a wrong state is refused on its page and the flow keeps
// waiting for the right one.
func (f *BrowserFlow) Run(ctx context.Context) (TokenSet, string, error) {
	out := f.Out
	if out == nil {
		out = io.Discard
	}
	configured := f.RedirectURL
	if configured == "" {
		configured = f.Provider.RedirectURL
	}
	u, err := url.Parse(configured)
	if err != nil || u.Scheme != "http" || !isLoopback(u.Hostname()) {
		return TokenSet{}, "", fmt.Errorf("browser sign-in with redirect URL %q: %w; register a http://localhost redirect URI for the app and set redirect_url to it, or sign in with -manual or -device", configured, ErrNotLoopback)
	}
	lns, err := listenLoopback(u.Hostname())
	if err != nil {
		return TokenSet{}, "", fmt.Errorf("browser sign-in: %w", err)
	}
	_, port, _ := net.SplitHostPort(lns[0].Addr().String())
	path := u.Path
	if path == "" {
		path = "/"
	}
	redirect := (&url.URL{Scheme: "http", Host: net.JoinHostPort(u.Hostname(), port), Path: path}).String()

	a, authURL := NewAuthCode(f.Provider, redirect, f.LoginHint, f.Options...)
	a.Now = f.Now

	type result struct {
		ts       TokenSet
		identity string
		err      error
	}
	done := make(chan result, 1)
	var once sync.Once
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.URL.Path != path || (q.Get("state") == "" && q.Get("code") == "" && q.Get("error") == "") {
			http.NotFound(w, r) // favicon.ico and the like
			return
		}
		ts, identity, err := a.Exchange(ctx, q)
		if errors.Is(err, ErrStateMismatch) || errors.Is(err, ErrNoState) || errors.Is(err, ErrUsed) {
			callbackPage(w, http.StatusBadRequest, "This is not the answer mailproxy is waiting for",
				"It belongs to another or an earlier sign-in. Use the address mailproxy printed last.")
			return
		}
		if err != nil {
			callbackPage(w, http.StatusOK, "Sign-in failed", "mailproxy could not complete the sign-in: "+err.Error()+". See the terminal for what to do.")
		} else {
			who := identity
			if who == "" {
				who = "your account"
			}
			callbackPage(w, http.StatusOK, "Signed in", "mailproxy received the sign-in of "+who+". You can close this window and return to the terminal.")
		}
		once.Do(func() { done <- result{ts, identity, err} })
	})
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: callbackReadTimeout, ReadTimeout: callbackReadTimeout}
	for _, ln := range lns {
		go srv.Serve(ln)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callbackShutdown)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()

	fmt.Fprintf(out, "Open this address in a browser on this machine and sign in (mailproxy waits for the answer at %s):\n\n  %s\n\n", redirect, authURL)
	if f.Open != nil {
		if err := f.Open(authURL); err != nil {
			fmt.Fprintf(out, "Could not start a browser (%v); open the address above by hand.\n", err)
		}
	}

	select {
	case r := <-done:
		return r.ts, r.identity, r.err
	case <-ctx.Done():
		return TokenSet{}, "", fmt.Errorf("browser sign-in: no answer arrived: %w", ctx.Err())
	}
}

// isLoopback reports whether host is localhost or a loopback address.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// listenLoopback listens on a free port of host. For "localhost" it listens
// on 127.0.0.1 and, when it can, on the same port of ::1: browsers may try
// either.
func listenLoopback(host string) ([]net.Listener, error) {
	if !strings.EqualFold(host, "localhost") {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("listen for the sign-in answer: %w", err)
		}
		return []net.Listener{ln}, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the sign-in answer: %w", err)
	}
	lns := []net.Listener{ln}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	if ln6, err := net.Listen("tcp", net.JoinHostPort("::1", port)); err == nil {
		lns = append(lns, ln6)
	}
	return lns, nil
}

func callbackPage(w http.ResponseWriter, status int, title, text string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<!doctype html>\n<meta charset=\"utf-8\">\n<title>mailproxy: %s</title>\n<h1>%s</h1>\n<p>%s</p>\n",
		html.EscapeString(title), html.EscapeString(title), html.EscapeString(text))
}

// DeviceFlow signs in with the device authorization grant (RFC 8628): the
// person opens an address on any device and types a code, while we poll the
// token endpoint.
type DeviceFlow struct {
	Provider *Provider
	// Now is the clock for the code's expiry and the tokens' obtained
	// time; nil means time.Now.
	Now func() time.Time
	// Wait waits d or until ctx ends, returning ctx's error then; nil
	// means a timer. Tests replace it to poll without waiting.
	Wait func(ctx context.Context, d time.Duration) error
}

// DeviceCode is a started device sign-in: what to show the person.
type DeviceCode struct {
	UserCode        string
	VerificationURI string
	// VerificationURIComplete carries the code too; "" when the provider
	// sends none (Entra does not).
	VerificationURIComplete string
	Expiry                  time.Time     // by the flow's clock
	Interval                time.Duration // between polls, as the provider asked

	deviceCode string
}

// Instructions is the sentence to show the person.
func (dc *DeviceCode) Instructions() string {
	return fmt.Sprintf("To sign in, open %s in a browser (on any device) and enter the code %s", dc.VerificationURI, dc.UserCode)
}

func (f *DeviceFlow) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

func (f *DeviceFlow) wait(ctx context.Context, d time.Duration) error {
	if f.Wait != nil {
		return f.Wait(ctx, d)
	}
	return wait.Sleep(ctx, d)
}

// Start asks the provider for a device code. x/oauth2 drops Entra's
// "message"; the caller shows Instructions instead.
func (f *DeviceFlow) Start(ctx context.Context) (*DeviceCode, error) {
	p := f.Provider
	if p.DeviceAuthURL == "" {
		return nil, fmt.Errorf("start device sign-in: provider %s has no device authorization endpoint", p.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, tokenRequestTimeout)
	defer cancel()
	start := f.now()
	da, err := p.Config().DeviceAuth(p.Context(ctx))
	if err != nil {
		te := classify(err)
		te.Endpoint = "device code endpoint"
		return nil, fmt.Errorf("start device sign-in: %w", te)
	}
	if da.DeviceCode == "" || da.UserCode == "" || da.VerificationURI == "" {
		return nil, errors.New("start device sign-in: the answer lacks device_code, user_code or verification_uri")
	}
	dc := &DeviceCode{
		UserCode:                da.UserCode,
		VerificationURI:         da.VerificationURI,
		VerificationURIComplete: da.VerificationURIComplete,
		Expiry:                  start.Add(defaultDeviceLifetime),
		Interval:                defaultDeviceInterval,
		deviceCode:              da.DeviceCode,
	}
	if !da.Expiry.IsZero() {
		// x/oauth2 turned expires_in into a wall-clock time; move it to
		// our clock.
		dc.Expiry = start.Add(time.Until(da.Expiry))
	}
	if da.Interval > 0 && da.Interval < int64(time.Hour/time.Second) {
		dc.Interval = time.Duration(da.Interval) * time.Second
	}
	return dc, nil
}

// Poll waits for the person to finish the sign-in: it polls the token
// endpoint every dc.Interval, keeps polling on authorization_pending, adds
// 5 seconds to the interval on each slow_down, and rides out a few
// temporary failures. It fails with ErrDeviceExpired when the code expired
// and ErrDeclined when the person declined, both wrapping the *TokenError.
func (f *DeviceFlow) Poll(ctx context.Context, dc *DeviceCode) (TokenSet, string, error) {
	p := f.Provider
	interval := dc.Interval
	if interval <= 0 {
		interval = defaultDeviceInterval
	}
	failures := 0
	for {
		if err := f.wait(ctx, interval); err != nil {
			return TokenSet{}, "", fmt.Errorf("device sign-in: %w", err)
		}
		if !f.now().Before(dc.Expiry) {
			return TokenSet{}, "", fmt.Errorf("device sign-in: %w (codes last %d minutes); run the sign-in again",
				ErrDeviceExpired, int(defaultDeviceLifetime/time.Minute))
		}
		start := f.now()
		tok, err := p.deviceToken(ctx, dc.deviceCode)
		if err == nil {
			ts := TokenSetFrom(tok, start, p.Scopes)
			return ts, IdentityFromIDToken(ts.IDToken), nil
		}
		if ctx.Err() != nil {
			return TokenSet{}, "", fmt.Errorf("device sign-in: %w", ctx.Err())
		}
		te := classify(err)
		switch te.Code {
		case "authorization_pending":
			failures = 0
			continue
		case "slow_down":
			failures = 0
			interval += slowDownStep
			continue
		case "expired_token":
			return TokenSet{}, "", fmt.Errorf("device sign-in: %w; run the sign-in again: %w", ErrDeviceExpired, te)
		case "authorization_declined", "access_denied":
			return TokenSet{}, "", fmt.Errorf("device sign-in: %w at the identity provider: %w", ErrDeclined, te)
		case "bad_verification_code":
			return TokenSet{}, "", fmt.Errorf("device sign-in: the identity provider no longer knows the device code; run the sign-in again: %w", te)
		}
		if te.Temporary() && failures < maxPollFailures {
			failures++
			continue
		}
		return TokenSet{}, "", fmt.Errorf("device sign-in: %w", te)
	}
}

// deviceToken makes one device_code grant request. x/oauth2's
// DeviceAccessToken polls on its own wall-clock ticker and hides the
// individual answers; clientcredentials.Config lets EndpointParams set the
// grant type and sends the client secret in the body, as Entra wants.
func (p *Provider) deviceToken(ctx context.Context, deviceCode string) (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(ctx, tokenRequestTimeout)
	defer cancel()
	cc := &clientcredentials.Config{
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		TokenURL:     p.TokenURL,
		EndpointParams: url.Values{
			"grant_type":  {"urn:ietf:params:oauth:grant-type:device_code"},
			"device_code": {deviceCode},
		},
		AuthStyle: oauth2.AuthStyleInParams,
	}
	return cc.Token(p.Context(ctx))
}

// AADSTS codes that ProbeTokenEndpoint reports as a broken configuration
// even though the answer is about a made-up code's request, with a hint
// where errors.go has none.
var probeFatal = map[int]string{
	90002:   "the tenant was not found: check the provider's tenant (a tenant ID or a verified domain)",
	900023:  "the tenant is not valid: check the provider's tenant",
	90033:   "the tenant is not valid: check the provider's tenant",
	50011:   "",
	700016:  "",
	7000215: "",
	7000222: "",
	7000218: "",
	700025:  "",
	7000112: "",
}

// ProbeTokenEndpoint checks that p's token endpoint is reachable and knows
// the app, without signing anyone in: it redeems a made-up authorization
// code. An OAuth error about the code (invalid_grant...) means the endpoint
// answered and accepted the client: nil. An error about the client
// (invalid_client, unauthorized_client: unknown client_id, wrong secret),
// the tenant or the redirect URI, a non-OAuth answer or no answer at all
// yields an error wrapping the *TokenError (whose Hint says what to do).
func ProbeTokenEndpoint(ctx context.Context, p *Provider) error {
	ctx, cancel := context.WithTimeout(ctx, tokenRequestTimeout)
	defer cancel()
	_, err := p.Config().Exchange(p.Context(ctx), "mailproxy-check-"+randomState())
	if err == nil {
		return errors.New("probe token endpoint: it accepted a made-up authorization code")
	}
	te := classify(err)
	if hint, fatal := probeFatal[te.AADSTS]; fatal {
		if hint != "" {
			return fmt.Errorf("probe token endpoint: %w (%s)", te, hint)
		}
		return fmt.Errorf("probe token endpoint: %w", te)
	}
	if te.Code == "" || te.Code == "invalid_client" || te.Code == "unauthorized_client" {
		return fmt.Errorf("probe token endpoint: %w", te)
	}
	return nil
}
