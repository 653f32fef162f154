// Package admin owns mailproxy's local web page on the admin listener: the
// table of accounts with their sign-in state and alerts, signing accounts in
// from the browser (authorization code with PKCE, whose answer comes back to
// /oauth2/callback, or the device code flow) and out, /healthz, and /metrics
// in the Prometheus text format with the counters the proxy fronts report.
//
// The page is server-rendered (html/template), works without JavaScript and
// sends a strict Content-Security-Policy. State changes only on POST with
// the session's CSRF token. With a password hash set, every page but
// /healthz needs a login. Tokens and client secrets never reach a page: a
// fresh token set waits server-side, under a random id bound to the
// session, until the admin chose the local password that seals it.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"mailproxy/oauth"
	"mailproxy/oauth/store"
)

// Timeouts and limits, in one block.
const (
	sessionLifetime  = 12 * time.Hour    // an admin session, from its creation
	maxSessions      = 1000              // the least recently seen is dropped beyond this
	flowLifetime     = oauth.AuthCodeTTL // a started browser sign-in waits this long for its answer
	pendingLifetime  = 15 * time.Minute  // a token set waits this long for its password
	maxFlows         = 64                // started sign-ins and pending token sets, each
	deviceStartLimit = 30 * time.Second  // asking the provider for a device code
	maxFormBytes     = 64 << 10          // body of any POST
	loginFailDelay   = time.Second       // after the first failed admin login; doubles per failure
	loginFailMax     = 16 * time.Second  // ... up to this
	loginFailWindow  = 15 * time.Minute  // failures older than this are forgotten

	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 90 * time.Second // a callback redeems the code (up to 30 s) before it answers
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
)

// AccountInfo is one configured account as the page shows it.
type AccountInfo struct {
	Username string
	Mailbox  string // XOAUTH2 user=; "" means Username
	Provider string // the provider's name
	Flow     string // authcode | device | client_credentials
}

// Listener is the state of one proxy listener, for /healthz.
type Listener struct {
	Name string // imap, imaps, smtp, smtps...
	Addr string
	Up   bool
}

// Options configure a Server. Accounts and Status are required; the page
// is read-only (no sign-in, no sign-out) without Seal, Remove and Provider.
type Options struct {
	// Accounts returns the configured accounts; it is called for every
	// page, so a config reload shows at once.
	Accounts func() []AccountInfo
	// Status returns what the token store and the account's token source
	// know (oauth.Manager.Status). It is not called for app-only accounts.
	Status func(username string) oauth.AccountStatus
	// Seal stores a new token set sealed with the local password, exactly
	// as `mailproxy login` does (oauth.Manager.Seal). The page fills
	// meta.Identity and meta.Flow.
	Seal func(username, password string, ts oauth.TokenSet, meta store.Meta) error
	// Remove deletes the account's token entry (sign out; store.Remove).
	// An error wrapping store.ErrNotSignedIn means there was none.
	Remove func(username string) error
	// Provider returns the account's app registration for the sign-in
	// flows; nil when there is none. It is called for every page render,
	// so it should return a kept value rather than build a new one.
	Provider func(username string) *oauth.Provider
	// RedirectURL is where the identity provider sends the browser back:
	// this listener's /oauth2/callback, e.g.
	// http://localhost:8025/oauth2/callback. "" means the provider's
	// RedirectURL, else the address the browser used to reach the page.
	RedirectURL string
	// PasswordHash, when set (Argon2id PHC string), protects every page but
	// /healthz with a login form; /metrics also accepts HTTP Basic auth
	// with that password (any user name).
	PasswordHash string
	// AccessToken is the secret (LoadAccessToken) that, without
	// PasswordHash, every page but /healthz needs: a link with ?token=
	// is exchanged for a session cookie. /metrics also takes it as a
	// bearer token or Basic password. Required without PasswordHash.
	AccessToken string
	// AllowedHosts returns the host names the page answers to besides
	// localhost, the loopback addresses and the address a connection came
	// in on (config.Config.AllowedHosts); it is called per request, so a
	// reload shows at once. nil means none besides those.
	AllowedHosts func() []string
	// Blocks returns the lockout's active blocks and ClearBlock ends one
	// (auth.Lockout.Blocks, Clear); nil: the page shows none.
	Blocks     func() []LoginBlock
	ClearBlock func(user, addr string) bool
	// SendTest sends a short test message from the account's mailbox to
	// an address through the real upstream path and returns the upstream's
	// reply (daemon.SendTest); password is the account's local password
	// ("" for client_credentials accounts). nil: the account page offers
	// no test message.
	SendTest func(ctx context.Context, username, password, to string) (reply string, err error)
	// Metrics are the counters the fronts report to; nil makes new ones.
	Metrics *Metrics
	// Listeners returns the state of the proxy listeners for /healthz; nil
	// means there is nothing to check.
	Listeners func() []Listener
	// Spool is the device relay's spool for the Spool page, its alerts
	// and /metrics; nil means there is none.
	Spool SpoolView
	// KeepAliveGaps returns the accounts whose tokens the daemon cannot
	// refresh on its own (oauth.Manager.KeepAliveGaps); nil: none shown.
	KeepAliveGaps func() []string
	Logger        *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is the admin page, an http.Handler. Serve it with HTTPServer.
type Server struct {
	opts    Options
	log     *slog.Logger
	metrics *Metrics
	mux     *http.ServeMux

	ctx    context.Context // canceled by Close: ends device polls
	cancel context.CancelFunc
	wg     sync.WaitGroup // device polls

	// Knobs for tests.
	failDelay  time.Duration                                    // first failed-login delay
	deviceWait func(ctx context.Context, d time.Duration) error // between device polls; nil: a timer
	deviceDone func(id string)                                  // after a device poll ended

	loginSlot chan struct{} // one admin password check (64 MiB Argon2id) at a time
	basicKey  [32]byte      // HMAC key of the Basic auth cache
	cop       *http.CrossOriginProtection

	refusalMu sync.Mutex // protects refusals
	refusals  map[string]*refusalState

	mu       sync.Mutex // protects the fields below
	closed   bool
	sessions map[string]*session      // by cookie value
	flows    map[string]*authFlow     // started browser sign-ins, by OAuth state
	devices  map[string]*deviceSignIn // started device sign-ins, by id
	pending  map[string]*pendingSet   // token sets waiting for a password, by id
	fails    map[string]*failures     // failed admin logins, by remote IP
	basicMAC []byte                   // HMAC of the last accepted Basic auth password
}

// New returns the admin page.
func New(opts Options) (*Server, error) {
	if opts.Accounts == nil || opts.Status == nil {
		return nil, errors.New("admin: Options.Accounts and Options.Status are required")
	}
	if opts.PasswordHash == "" && len(opts.AccessToken) < 32 {
		return nil, errors.New("admin: Options.AccessToken (at least 32 characters) is required without Options.PasswordHash")
	}
	if opts.RedirectURL != "" {
		u, err := url.Parse(opts.RedirectURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("admin: redirect URL %q is not an http(s) address", opts.RedirectURL)
		}
	}
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		metrics:   opts.Metrics,
		failDelay: loginFailDelay,
		loginSlot: make(chan struct{}, 1),
		sessions:  make(map[string]*session),
		flows:     make(map[string]*authFlow),
		devices:   make(map[string]*deviceSignIn),
		pending:   make(map[string]*pendingSet),
		fails:     make(map[string]*failures),
		cop:       http.NewCrossOriginProtection(),
		refusals:  make(map[string]*refusalState),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.metrics == nil {
		s.metrics = NewMetrics()
	}
	copy(s.basicKey[:], randomBytes(32))
	s.ctx, s.cancel = context.WithCancel(context.Background())

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.handleIndex)
	mux.HandleFunc("GET /login", s.handleLoginPage)
	mux.HandleFunc("POST /login", s.handleLogin)
	mux.HandleFunc("POST /logout", s.handleLogout)
	mux.HandleFunc("POST /signin", s.handleSignIn)
	mux.HandleFunc("GET /oauth2/callback", s.handleCallback)
	mux.HandleFunc("GET /device/{id}", s.handleDevicePage)
	mux.HandleFunc("POST /device/{id}/cancel", s.handleDeviceCancel)
	mux.HandleFunc("POST /password", s.handlePassword)
	mux.HandleFunc("GET /signout", s.handleSignOutPage)
	mux.HandleFunc("POST /signout", s.handleSignOut)
	mux.HandleFunc("GET /account", s.handleAccount)
	mux.HandleFunc("POST /account/test", s.handleAccountTest)
	mux.HandleFunc("GET /healthz", s.handleHealth)
	mux.HandleFunc("GET /metrics", s.handleMetrics)
	mux.HandleFunc("GET /lockout", s.handleLockout)
	mux.HandleFunc("POST /lockout/clear", s.handleLockoutClear)
	mux.HandleFunc("GET /spool", s.handleSpool)
	mux.HandleFunc("POST /spool/resume", s.handleSpoolResume)
	s.mux = mux
	return s, nil
}

// Metrics returns the counters the fronts should report to.
func (s *Server) Metrics() *Metrics { return s.metrics }

// HTTPServer returns an http.Server serving s with timeouts fit for it.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// Close ends the device sign-ins in progress and forgets every pending
// token set. The handler keeps answering.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for id, d := range s.devices {
		d.cancel()
		delete(s.devices, id)
	}
	clear(s.pending)
	clear(s.flows)
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

func (s *Server) now() time.Time {
	if s.opts.Now != nil {
		return s.opts.Now()
	}
	return time.Now()
}

// ServeHTTP sets the security headers on every answer and routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp(nil))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if r.TLS != nil {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	}
	if !s.guard(w, r) {
		return
	}
	if s.unknownPath(r) {
		s.renderError(w, r, http.StatusNotFound, "Page not found", "There is no page at this address. The accounts are on the start page.")
		return
	}
	s.mux.ServeHTTP(w, r)
}

// csp is the Content-Security-Policy. formTargets are origins forms may
// lead to besides our own: browsers apply form-action to the redirects that
// follow a submission, and "Sign in" redirects to the identity provider.
func csp(formTargets []string) string {
	fa := "'self'"
	for _, o := range formTargets {
		fa += " " + o
	}
	return "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action " + fa +
		"; frame-ancestors 'none'; base-uri 'none'"
}

// origin returns scheme://host of an http(s) address, "" if it is none.
func origin(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// accounts returns the configured accounts sorted by username.
func (s *Server) accounts() []AccountInfo {
	as := s.opts.Accounts()
	out := make([]AccountInfo, len(as))
	copy(out, as)
	sort.SliceStable(out, func(i, j int) bool { return strings.ToLower(out[i].Username) < strings.ToLower(out[j].Username) })
	return out
}

// account finds a configured account, case-insensitively.
func (s *Server) account(username string) (AccountInfo, bool) {
	if username == "" {
		return AccountInfo{}, false
	}
	for _, a := range s.opts.Accounts() {
		if strings.EqualFold(a.Username, username) {
			return a, true
		}
	}
	return AccountInfo{}, false
}

// status returns an account's status; app-only accounts have none to ask.
func (s *Server) status(a AccountInfo) oauth.AccountStatus {
	if a.Flow == FlowClientCredentials {
		return oauth.AccountStatus{Username: strings.ToLower(a.Username), Flow: a.Flow}
	}
	st := s.opts.Status(a.Username)
	if st.Flow == "" {
		st.Flow = a.Flow
	}
	if st.Username == "" {
		st.Username = strings.ToLower(a.Username)
	}
	return st
}

func (s *Server) provider(username string) *oauth.Provider {
	if s.opts.Provider == nil {
		return nil
	}
	return s.opts.Provider(username)
}

// canSignIn reports whether the page can run sign-ins at all.
func (s *Server) canSignIn() bool { return s.opts.Seal != nil && s.opts.Provider != nil }

// handleHealth answers 200 when every listener is up, else 503, with the
// details as JSON.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	type listenerJSON struct {
		Addr string `json:"addr,omitempty"`
		Up   bool   `json:"up"`
	}
	// "degraded" still answers 200: the process is alive and serves what
	// it can; the reasons say what needs an admin.
	body := struct {
		Status    string                  `json:"status"`
		Reasons   []string                `json:"reasons,omitempty"`
		Listeners map[string]listenerJSON `json:"listeners"`
	}{Status: "ok", Listeners: map[string]listenerJSON{}}
	code := http.StatusOK
	if body.Reasons = s.degradedReasons(); len(body.Reasons) > 0 {
		body.Status = "degraded"
	}
	if s.opts.Listeners != nil {
		for _, l := range s.opts.Listeners() {
			body.Listeners[l.Name] = listenerJSON{Addr: l.Addr, Up: l.Up}
			if !l.Up {
				body.Status, code = "unavailable", http.StatusServiceUnavailable
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(body)
}

// handleMetrics writes the Prometheus text format. With a password set it
// needs an admin session or HTTP Basic auth with the admin password.
func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if s.opts.PasswordHash != "" && !s.metricsAllowed(w, r) {
		return
	}
	now := s.now()
	var gauges []AccountGauge
	for _, a := range s.accounts() {
		if a.Flow == FlowClientCredentials {
			continue
		}
		st := s.status(a)
		g := AccountGauge{Username: a.Username, NeedsSignIn: !st.SignedIn || st.NeedsSignIn}
		if st.SignedIn && !st.RefreshObtained.IsZero() {
			g.HasRenewal = true
			g.RenewalSeconds = RenewalIn(st.RefreshObtained, now).Seconds()
		}
		gauges = append(gauges, g)
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	if err := s.metrics.WritePrometheus(w, gauges); err != nil {
		s.log.Debug("write /metrics", "err", err)
	}
	if s.opts.Spool != nil {
		var b strings.Builder
		writeSpoolMetrics(&b, s.opts.Spool.Status(), now)
		io.WriteString(w, b.String())
	}
}

// unknownPath reports whether no route has r's path for any method: the
// mux's plain-text 404 is replaced by the page's own, its 405 kept.
func (s *Server) unknownPath(r *http.Request) bool {
	if _, pattern := s.mux.Handler(r); pattern != "" {
		return false
	}
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "" {
			return false
		}
	}
	return true
}
