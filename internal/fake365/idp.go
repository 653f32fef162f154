package fake365

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// TokenValidator is what the fake upstreams ask about a bearer token. The IdP
// implements it.
type TokenValidator interface {
	// Validate returns who the token was issued to (a username for
	// delegated tokens, "app:"+clientID for client credentials tokens) and
	// when it expires. ok is false for unknown and expired tokens.
	Validate(token string) (subject string, expiry time.Time, ok bool)
}

// ScopeValidator is implemented by validators that also know what a token
// was issued for. The fake POP3 server asks it, so that a sign-in made
// before the POP scope was among the provider's scopes is refused as
// Exchange Online refuses it.
type ScopeValidator interface {
	HasScope(token, scope string) bool
}

var (
	_ TokenValidator = (*IdP)(nil)
	_ ScopeValidator = (*IdP)(nil)
)

// Client is an app registration.
type Client struct {
	ID     string
	Secret string // "" makes a public client (no secret accepted)
	// RedirectURIs registered for the authorization code flow. For
	// http://localhost and http://127.0.0.1 the port is ignored when
	// matching, as Entra does for native apps.
	RedirectURIs []string
}

// Failure makes the token endpoint answer every request with an error.
type Failure struct {
	Status      int    // HTTP status; 0 means 400
	Code        string // OAuth error; "" means "temporarily_unavailable"
	Description string // should start with "AADSTSnnnn: "; "" means a generic AADSTS50000
	// Hang makes requests block, without an answer, until the client gives
	// up (its request context ends) or the IdP is closed.
	Hang bool
}

// IdPStats counts token endpoint answers (the authorize and device code
// endpoints are not counted).
type IdPStats struct {
	Refreshes         int // successful refresh_token grants
	AuthCodes         int // successful authorization_code grants
	DeviceCodes       int // successful device_code grants
	ClientCredentials int // successful client_credentials grants
	// Errors counts error answers, injected failures included. The device
	// flow's authorization_pending and slow_down are flow control, not
	// errors, and are not counted.
	Errors int
}

// Lifetimes and sizes as Entra has them.
const (
	idpDefaultTokenLifetime  = time.Hour
	idpCodeLifetime          = 10 * time.Minute
	idpDeviceCodeLifetime    = 15 * time.Minute
	idpDefaultDeviceInterval = 5 * time.Second
	idpRefreshLifetime       = 90 * 24 * time.Hour // sliding: each rotation starts anew
	idpIDTokenLifetime       = time.Hour
	// Entra access tokens are long; that matters for SMTP AUTH line limits,
	// so ours are too.
	idpAccessTokenSize = 1500
	idpMaxForm         = 1 << 20
	idpPruneMin        = 1024

	idpReadHeaderTimeout = 5 * time.Second
	idpReadTimeout       = 30 * time.Second
	idpIdleTimeout       = 60 * time.Second
	idpCloseTimeout      = 5 * time.Second
)

// Scopes that are about the sign-in, not a resource. Entra leaves them out
// of the "scope" it echoes for a non-Graph resource.
var idpOIDCScopes = []string{"openid", "profile", "email", "offline_access"}

// IdP is a fake Microsoft Entra ID (v2.0 endpoints) speaking the same wire
// protocol, so real OAuth client code can be tested against it: form-encoded
// token requests with the client credentials in the body (HTTP Basic is
// accepted too), JSON answers, Entra-shaped error bodies.
//
// Errors carry these AADSTS codes (real ones where Entra has one for the
// case; what Entra sends in a few corner cases is undocumented, those are
// marked "chosen"):
//
//	900144  invalid_request        a required parameter is missing
//	9002313 invalid_request        malformed request (chosen for: unparsable form, client_id mismatch)
//	70003   unsupported_grant_type unknown grant_type
//	700016  unauthorized_client    unknown client_id
//	7000218 invalid_client (401)   confidential client sent no secret
//	7000215 invalid_client (401)   wrong client secret
//	700025  invalid_client (401)   public client sent a secret
//	70008   invalid_grant          unknown, expired, rotated or revoked refresh token or code
//	                               (Entra says 50173 for revoked grants; the spec asks for 70008)
//	700082  invalid_grant          refresh token older than 90 days by the IdP clock
//	54005   invalid_grant          authorization code already redeemed
//	70000   invalid_grant          code, refresh token or device code of another client
//	50011   invalid_request        redirect_uri not registered (authorize page, token endpoint)
//	500112  invalid_grant          redirect_uri differs from the one the code was issued for
//	501481  invalid_grant          PKCE code_verifier missing or wrong
//	65001   invalid_grant          refresh asks for a scope that was not granted
//	1002012 invalid_scope          client_credentials scope not ending in /.default
//	28000   invalid_scope          scopes of two resources in one token request
//	70016   authorization_pending  device code not approved yet
//	70016   slow_down              polled faster than the interval (chosen: Entra has no
//	                               code of its own; the client should keep polling)
//	70019   expired_token          device code expired
//	70000   authorization_declined the user declined the device sign-in (chosen)
//	70000   bad_verification_code  unknown or already redeemed device code (chosen)
//	9002325 invalid_request        public client without a PKCE S256 code_challenge (chosen)
//	700054  unsupported_response_type response_type other than code
//	50034   (authorize page)       login_hint names an unknown user
//	50058   (authorize page)       nobody to sign in: no SignInAs, no known login_hint
//
// Refresh tokens are stricter than Entra's: a rotated one stops working at
// once, so a client that forgets to save the new one fails in tests.
//
// The zero IdP is not usable; call NewIdP.
type IdP struct {
	URL string // "http://127.0.0.1:PORT"

	tenantID string // the tid claim and issuer path
	srv      *http.Server
	closing  chan struct{} // closed by Close: releases hanging requests
	served   chan struct{} // closed when Serve returns
	close    sync.Once

	mu              sync.Mutex          // protects every field below
	appRoles        map[string][]string // by audience: the app registration's granted application permissions
	now             func() time.Time
	tokenLifetime   time.Duration
	deviceInterval  time.Duration
	forceSlowDown   int
	deviceBlocked   bool // BlockDeviceFlow
	deviceNoRefresh bool // DeviceWithoutRefreshToken
	failure         *Failure
	signInAs        string
	clients         map[string]Client
	users           map[string]*idpUser    // by lower-cased username
	codes           map[string]*idpCode    // authorization codes, redeemed ones kept until expiry
	devices         map[string]*idpDevice  // by device_code
	userCodes       map[string]*idpDevice  // by user_code
	refresh         map[string]*idpRefresh // live refresh tokens
	access          map[string]idpAccess   // issued access tokens
	accessPruneAt   int
	lastUserCode    string
	stats           IdPStats
}

type idpUser struct {
	name          string // as added: the UPN
	given, family string
	oid           string
}

func (u *idpUser) displayName() string { return strings.TrimSpace(u.given + " " + u.family) }

type idpCode struct {
	clientID          string
	requestedRedirect string // as sent to authorize ("" if omitted); the token request must repeat it
	challenge         string // S256 code_challenge, "" if none
	nonce             string
	scopes            []string
	user              *idpUser
	expires           time.Time
	redeemed          bool
}

type idpDevice struct {
	deviceCode, userCode string
	clientID             string
	scopes               []string
	expires              time.Time
	interval             time.Duration
	lastPoll             time.Time
	user                 *idpUser // set by ApproveDevice
	declined             bool
}

type idpRefresh struct {
	clientID string
	user     *idpUser
	scopes   []string // everything granted; a refresh may ask for a subset
	expires  time.Time
}

type idpAccess struct {
	subject  string
	audience string
	scopes   []string // scp, short names ("Mail.Send"); delegated tokens
	roles    []string // app-only tokens
	expiry   time.Time
	issued   time.Time
	clientID string
	scope    string // the scp claim: short scope names, space-separated
}

// AccessToken is what the IdP knows about an access token it issued, for
// resource servers that check audience and permissions (the fake Graph).
type AccessToken struct {
	Subject  string   // username, or "app:"+clientID
	Audience string   // "https://graph.microsoft.com", "https://outlook.office.com"...
	Scopes   []string // delegated permissions, short names: "Mail.Send"
	Roles    []string // application permissions
	App      bool
	Expiry   time.Time
}

// Resources, as Entra names them in aud.
const (
	GraphResource   = "https://graph.microsoft.com"
	OutlookResource = "https://outlook.office.com"
)

// NewIdP starts a fake Entra ID on 127.0.0.1 with a kernel-chosen port.
func NewIdP() (*IdP, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fake IdP: listen: %w", err)
	}
	p := &IdP{
		URL:            "http://" + ln.Addr().String(),
		tenantID:       idpUUID(),
		closing:        make(chan struct{}),
		served:         make(chan struct{}),
		now:            time.Now,
		tokenLifetime:  idpDefaultTokenLifetime,
		deviceInterval: idpDefaultDeviceInterval,
		clients:        make(map[string]Client),
		users:          make(map[string]*idpUser),
		codes:          make(map[string]*idpCode),
		devices:        make(map[string]*idpDevice),
		userCodes:      make(map[string]*idpDevice),
		refresh:        make(map[string]*idpRefresh),
		access:         make(map[string]idpAccess),
		accessPruneAt:  idpPruneMin,
		appRoles: map[string][]string{
			OutlookResource:                 {"IMAP.AccessAsApp", "SMTP.SendAsApp", "POP.AccessAsApp"},
			"https://outlook.office365.com": {"IMAP.AccessAsApp", "SMTP.SendAsApp", "POP.AccessAsApp"},
			GraphResource:                   {"Mail.Send", "Mail.ReadWrite"},
		},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{tenant}/oauth2/v2.0/authorize", p.handleAuthorize)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", p.handleToken)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/devicecode", p.handleDeviceCode)
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", p.handleOpenIDConfig)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/introspect", p.handleIntrospect)
	mux.HandleFunc("GET /devicelogin", p.handleDeviceLogin)
	mux.HandleFunc("POST /devicelogin", p.handleDeviceLogin)
	// No WriteTimeout: a hanging token request must be able to outlast it.
	p.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: idpReadHeaderTimeout,
		ReadTimeout:       idpReadTimeout,
		IdleTimeout:       idpIdleTimeout,
	}
	go func() {
		defer close(p.served)
		p.srv.Serve(ln)
	}()
	return p, nil
}

// Close stops the server, releasing requests held by a hanging Failure.
func (p *IdP) Close() {
	p.close.Do(func() {
		close(p.closing)
		ctx, cancel := context.WithTimeout(context.Background(), idpCloseTimeout)
		defer cancel()
		if err := p.srv.Shutdown(ctx); err != nil {
			p.srv.Close()
		}
		<-p.served
	})
}

// Endpoints returns the authorize, token and device code URLs for tenant
// (any tenant name or id is accepted: "common", "contoso.onmicrosoft.com").
func (p *IdP) Endpoints(tenant string) (authURL, tokenURL, deviceURL string) {
	base := p.URL + "/" + tenant + "/oauth2/v2.0/"
	return base + "authorize", base + "token", base + "devicecode"
}

// TenantID returns the tenant's GUID, the tid claim of the tokens.
func (p *IdP) TenantID() string { return p.tenantID }

// AddClient registers (or replaces) an app.
func (p *IdP) AddClient(c Client) {
	c.RedirectURIs = slices.Clone(c.RedirectURIs)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clients[c.ID] = c
}

// AddUser adds a user to the directory. Usernames compare case-insensitively
// and keep the spelling of their first AddUser.
func (p *IdP) AddUser(username string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.userLocked(username)
}

// userLocked returns the user, adding it if needed.
func (p *IdP) userLocked(username string) *idpUser {
	key := strings.ToLower(username)
	if u := p.users[key]; u != nil {
		return u
	}
	local, _, _ := strings.Cut(username, "@")
	given, family, _ := strings.Cut(local, ".")
	u := &idpUser{name: username, given: idpTitle(given), family: idpTitle(family), oid: idpUUID()}
	p.users[key] = u
	return u
}

// SignInAs makes the authorize endpoint sign in username (added if unknown)
// without asking, as a browser with a session would. "" stops it.
func (p *IdP) SignInAs(username string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.signInAs = ""
	if username != "" {
		p.signInAs = p.userLocked(username).name
	}
}

// GrantRefreshToken returns a refresh token for username (added if unknown)
// and clientID as if the user had signed in with scopes, for seeding tests
// and the demo.
func (p *IdP) GrantRefreshToken(clientID, username string, scopes []string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.newRefreshLocked(clientID, p.userLocked(username), idpDedupe(scopes))
}

// Revoke kills every refresh token of username, as "revoke sessions" in the
// Entra admin center does. Access tokens stay valid until they expire.
func (p *IdP) Revoke(username string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for tok, rt := range p.refresh {
		if strings.EqualFold(rt.user.name, username) {
			delete(p.refresh, tok)
		}
	}
}

// ApproveDevice signs username (added if unknown) in for the device code
// whose user code is userCode, as the user would at /devicelogin.
func (p *IdP) ApproveDevice(userCode, username string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := p.pendingDeviceLocked(userCode)
	if err != nil {
		return fmt.Errorf("approve device code: %w", err)
	}
	d.user = p.userLocked(username)
	return nil
}

// DeclineDevice makes the device code whose user code is userCode answer
// authorization_declined from now on.
func (p *IdP) DeclineDevice(userCode string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := p.pendingDeviceLocked(userCode)
	if err != nil {
		return fmt.Errorf("decline device code: %w", err)
	}
	d.declined = true
	return nil
}

func (p *IdP) pendingDeviceLocked(userCode string) (*idpDevice, error) {
	d := p.userCodes[strings.ToUpper(strings.TrimSpace(userCode))]
	switch {
	case d == nil:
		return nil, fmt.Errorf("unknown user code %q", userCode)
	case !p.now().Before(d.expires):
		return nil, fmt.Errorf("user code %q expired", userCode)
	case d.user != nil || d.declined:
		return nil, fmt.Errorf("user code %q already answered", userCode)
	}
	return d, nil
}

// LastUserCode returns the user code of the newest device code, "" if none.
func (p *IdP) LastUserCode() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastUserCode
}

// SetDeviceInterval sets the polling interval of device codes issued
// afterwards (default 5s). The answer carries it in whole seconds, rounded
// up; with 0 the IdP never says slow_down unless forced (ForceSlowDown).
// Note that x/oauth2's
// DeviceAccessToken treats an interval of 0 as 5s.
func (p *IdP) SetDeviceInterval(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deviceInterval = max(d, 0)
}

// ForceSlowDown makes the next n device code polls answer slow_down.
func (p *IdP) ForceSlowDown(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forceSlowDown = n
}

// SetTokenLifetime sets the lifetime of access tokens issued afterwards
// (default 1h). expires_in is rounded up to at least 1s, because a client
// reads expires_in 0 as "never expires".
func (p *IdP) SetTokenLifetime(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tokenLifetime = d
}

// SetClock replaces time.Now for every expiry decision; nil restores it.
func (p *IdP) SetClock(now func() time.Time) {
	if now == nil {
		now = time.Now
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.now = now
}

// SetFailure makes the token endpoint answer every request with f; nil
// restores normal service.
func (p *IdP) SetFailure(f *Failure) {
	if f != nil {
		c := *f
		f = &c
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failure = f
}

// Validate implements TokenValidator for the Outlook upstreams (IMAP, SMTP,
// POP3). It looks the token up among those issued and does not trust its
// contents. For a known but expired token it returns the subject and expiry
// with ok false. A token for Microsoft Graph is refused (ok false, no
// subject), as Exchange Online refuses it.
func (p *IdP) Validate(token string) (subject string, expiry time.Time, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, found := p.access[token]
	if !found || a.audience == GraphResource {
		return "", time.Time{}, false
	}
	return a.subject, a.expiry, p.now().Before(a.expiry)
}

// HasScope implements ScopeValidator: it reports whether a delegated token
// carries scope in its scp claim, or an app-only token the application
// permission scope, both compared by short name ("POP.AccessAsUser.All" for
// "https://outlook.office.com/POP.AccessAsUser.All") and case-insensitively,
// as Exchange reads them.
func (p *IdP) HasScope(token, scope string) bool {
	short := scope[strings.LastIndex(scope, "/")+1:]
	p.mu.Lock()
	defer p.mu.Unlock()
	a, found := p.access[token]
	return found && (idpHasScope(a.scopes, short) || idpHasScope(a.roles, short))
}

// Inspect returns what the IdP knows about an access token it issued,
// expired ones included (compare Expiry with the IdP's clock, see Now).
func (p *IdP) Inspect(token string) (AccessToken, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, found := p.access[token]
	if !found {
		return AccessToken{}, false
	}
	return AccessToken{
		Subject:  a.subject,
		Audience: a.audience,
		Scopes:   slices.Clone(a.scopes),
		Roles:    slices.Clone(a.roles),
		App:      strings.HasPrefix(a.subject, "app:"),
		Expiry:   a.expiry,
	}, true
}

// Now returns the IdP's clock.
func (p *IdP) Now() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.now()
}

// SetAppRoles sets the application permissions app-only tokens for
// audience carry (granted and consented in the tenant). Outlook tokens
// carry IMAP/SMTP/POP AccessAsApp, Graph tokens Mail.Send and
// Mail.ReadWrite until changed.
func (p *IdP) SetAppRoles(audience string, roles []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.appRoles[audience] = slices.Clone(roles)
}

// ExpireAccessTokens makes every access token issued so far invalid.
func (p *IdP) ExpireAccessTokens() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.access)
}

// Stats returns the counters.
func (p *IdP) Stats() IdPStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// idpError is an OAuth error answer.
type idpError struct {
	status int
	code   string // OAuth error
	aadsts int
	msg    string // after "AADSTSnnnn: "
}

func idpErr(status int, code string, aadsts int, format string, args ...any) *idpError {
	return &idpError{status: status, code: code, aadsts: aadsts, msg: fmt.Sprintf(format, args...)}
}

func idpMissing(param string) *idpError {
	return idpErr(http.StatusBadRequest, "invalid_request", 900144,
		"The request body must contain the following parameter: '%s'.", param)
}

func idpExpiredGrant() *idpError {
	return idpErr(http.StatusBadRequest, "invalid_grant", 70008,
		"The provided authorization code or refresh token has expired due to inactivity. "+
			"Send a new interactive authorization request for this user and resource.")
}

func idpOtherClientGrant() *idpError {
	return idpErr(http.StatusBadRequest, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
}

func idpMalformed() *idpError {
	return idpErr(http.StatusBadRequest, "invalid_request", 9002313, "Invalid request. Request is malformed or invalid.")
}

// flowControl reports whether the error only tells a device flow client to
// keep polling.
func (e *idpError) flowControl() bool {
	return e.code == "authorization_pending" || e.code == "slow_down"
}

var idpAADSTS = regexp.MustCompile(`^AADSTS(\d+)`)

// writeError sends an Entra-shaped error body: the description ends with
// the trace lines Entra appends, and error_codes repeats the AADSTS number.
func (p *IdP) writeError(w http.ResponseWriter, r *http.Request, e *idpError) {
	desc := e.msg
	if e.aadsts != 0 {
		desc = fmt.Sprintf("AADSTS%d: %s", e.aadsts, e.msg)
	}
	p.mu.Lock()
	now := p.now().UTC()
	p.mu.Unlock()
	trace := idpUUID()
	corr := r.Header.Get("client-request-id")
	if len(corr) != 36 {
		corr = idpUUID()
	}
	ts := now.Format("2006-01-02 15:04:05Z")
	body := struct {
		Error         string `json:"error"`
		Description   string `json:"error_description"`
		Codes         []int  `json:"error_codes,omitempty"`
		Timestamp     string `json:"timestamp"`
		TraceID       string `json:"trace_id"`
		CorrelationID string `json:"correlation_id"`
		URI           string `json:"error_uri,omitempty"`
	}{
		Error:         e.code,
		Description:   fmt.Sprintf("%s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s", desc, trace, corr, ts),
		Timestamp:     ts,
		TraceID:       trace,
		CorrelationID: corr,
	}
	code := e.aadsts
	if code == 0 {
		if m := idpAADSTS.FindStringSubmatch(desc); m != nil {
			code, _ = strconv.Atoi(m[1])
		}
	}
	if code != 0 {
		body.Codes = []int{code}
		body.URI = fmt.Sprintf("https://login.microsoftonline.com/error?code=%d", code)
	}
	if e.status == http.StatusUnauthorized && r.Header.Get("Authorization") != "" {
		w.Header().Set("WWW-Authenticate", `Basic realm="fake365"`)
	}
	idpWriteJSON(w, e.status, body)
}

func idpWriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store, no-cache")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	w.Write(body)
}

type idpTokenResponse struct {
	TokenType    string `json:"token_type"`
	Scope        string `json:"scope,omitempty"` // Entra sends none for client_credentials
	ExpiresIn    int64  `json:"expires_in"`
	ExtExpiresIn int64  `json:"ext_expires_in"`
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
	IDToken      string `json:"id_token,omitempty"`
}

func (p *IdP) handleToken(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	f := p.failure
	if f != nil {
		p.stats.Errors++
	}
	p.mu.Unlock()
	if f != nil {
		if f.Hang {
			select {
			case <-r.Context().Done():
			case <-p.closing:
				// Drop the connection rather than let net/http send an
				// empty 200 answer.
				panic(http.ErrAbortHandler)
			}
			return
		}
		e := &idpError{status: f.Status, code: f.Code, msg: f.Description}
		if e.status == 0 {
			e.status = http.StatusBadRequest
		}
		if e.code == "" {
			e.code = "temporarily_unavailable"
		}
		if e.msg == "" {
			e.aadsts, e.msg = 50000, "There was an error issuing a token or an issue with our sign-in service."
		}
		p.writeError(w, r, e)
		return
	}

	resp, e := p.token(w, r)
	if e != nil {
		if !e.flowControl() {
			p.mu.Lock()
			p.stats.Errors++
			p.mu.Unlock()
		}
		p.writeError(w, r, e)
		return
	}
	idpWriteJSON(w, http.StatusOK, resp)
}

func (p *IdP) token(w http.ResponseWriter, r *http.Request) (*idpTokenResponse, *idpError) {
	r.Body = http.MaxBytesReader(w, r.Body, idpMaxForm)
	// Only the body counts, as at Entra; a form of another content type
	// parses as empty and fails for want of grant_type.
	if err := r.ParseForm(); err != nil {
		return nil, idpMalformed()
	}
	form := r.PostForm
	grant := form.Get("grant_type")
	if grant == "" {
		return nil, idpMissing("grant_type")
	}
	clientID, secret := form.Get("client_id"), form.Get("client_secret")
	if user, pass, ok := r.BasicAuth(); ok {
		// RFC 6749 2.3.1: Basic credentials are form-encoded first.
		u, err1 := url.QueryUnescape(user)
		s, err2 := url.QueryUnescape(pass)
		if err1 != nil || err2 != nil || (clientID != "" && clientID != u) {
			return nil, idpMalformed()
		}
		clientID, secret = u, s
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	client, e := p.authClientLocked(clientID, secret)
	if e != nil {
		return nil, e
	}
	switch grant {
	case "authorization_code":
		return p.authCodeGrantLocked(client, form)
	case "refresh_token":
		return p.refreshGrantLocked(client, form)
	case "urn:ietf:params:oauth:grant-type:device_code":
		return p.deviceGrantLocked(client, form)
	case "client_credentials":
		return p.clientCredentialsGrantLocked(client, form)
	}
	return nil, idpErr(http.StatusBadRequest, "unsupported_grant_type", 70003,
		"The app requested an unsupported grant type '%s'.", grant)
}

func (p *IdP) authClientLocked(id, secret string) (Client, *idpError) {
	if id == "" {
		return Client{}, idpMissing("client_id")
	}
	c, ok := p.clients[id]
	switch {
	case !ok:
		return Client{}, p.unknownClientLocked(id)
	case c.Secret == "" && secret != "":
		return Client{}, idpErr(http.StatusUnauthorized, "invalid_client", 700025,
			"Client is public so neither 'client_assertion' nor 'client_secret' should be presented.")
	case c.Secret != "" && secret == "":
		return Client{}, idpErr(http.StatusUnauthorized, "invalid_client", 7000218,
			"The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
	case c.Secret != "" && subtle.ConstantTimeCompare([]byte(c.Secret), []byte(secret)) != 1:
		return Client{}, idpErr(http.StatusUnauthorized, "invalid_client", 7000215,
			"Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, "+
				"not the client secret ID, for a secret added to app '%s'.", id)
	}
	return c, nil
}

func (p *IdP) unknownClientLocked(id string) *idpError {
	return idpErr(http.StatusBadRequest, "unauthorized_client", 700016,
		"Application with identifier '%s' was not found in the directory '%s'. This can happen if the application "+
			"has not been installed by the administrator of the tenant or consented to by any user in the tenant. "+
			"You may have sent your authentication request to the wrong tenant.", id, p.tenantID)
}

func (p *IdP) authCodeGrantLocked(client Client, form url.Values) (*idpTokenResponse, *idpError) {
	code := form.Get("code")
	if code == "" {
		return nil, idpMissing("code")
	}
	c := p.codes[code]
	switch {
	case c == nil || !p.now().Before(c.expires):
		return nil, idpExpiredGrant()
	case c.redeemed:
		return nil, idpErr(http.StatusBadRequest, "invalid_grant", 54005,
			"OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.")
	case c.clientID != client.ID:
		return nil, idpOtherClientGrant()
	}
	if redirect := form.Get("redirect_uri"); redirect != c.requestedRedirect {
		if redirect != "" && !idpRedirectAllowed(client, redirect) {
			return nil, idpRedirectMismatch(redirect, client.ID)
		}
		return nil, idpErr(http.StatusBadRequest, "invalid_grant", 500112,
			"The reply address '%s' does not match the reply address '%s' provided when requesting Authorization code.",
			redirect, c.requestedRedirect)
	}
	if c.challenge != "" {
		sum := sha256.Sum256([]byte(form.Get("code_verifier")))
		got := base64.RawURLEncoding.EncodeToString(sum[:])
		if subtle.ConstantTimeCompare([]byte(got), []byte(c.challenge)) != 1 {
			return nil, idpErr(http.StatusBadRequest, "invalid_grant", 501481,
				"The Code_Verifier does not match the code_challenge supplied in the authorization request.")
		}
	}
	c.redeemed = true
	p.stats.AuthCodes++
	return p.issueLocked(client.ID, c.user, c.scopes, c.scopes, c.nonce, idpHasScope(c.scopes, "offline_access")), nil
}

func (p *IdP) refreshGrantLocked(client Client, form url.Values) (*idpTokenResponse, *idpError) {
	tok := form.Get("refresh_token")
	if tok == "" {
		return nil, idpMissing("refresh_token")
	}
	rt := p.refresh[tok]
	switch {
	case rt == nil:
		return nil, idpExpiredGrant()
	case rt.clientID != client.ID:
		return nil, idpOtherClientGrant()
	case !p.now().Before(rt.expires):
		return nil, idpErr(http.StatusBadRequest, "invalid_grant", 700082,
			"The refresh token has expired due to inactivity. The token was issued on %s and was inactive for 90.00:00:00.",
			rt.expires.Add(-idpRefreshLifetime).UTC().Format(time.RFC3339))
	}
	scopes := rt.scopes
	if s := form.Get("scope"); s != "" {
		scopes = idpDedupe(strings.Fields(s))
		if e := idpOneResource(scopes); e != nil {
			return nil, e
		}
		for _, sc := range scopes {
			if !idpHasScope(rt.scopes, sc) && !idpHasScope(idpOIDCScopes, sc) {
				return nil, idpErr(http.StatusBadRequest, "invalid_grant", 65001,
					"The user or administrator has not consented to use the application with ID '%s'. "+
						"Send an interactive authorization request for this user and resource.", client.ID)
			}
		}
	}
	// Rotation: the old token dies now, the new one carries the whole grant
	// whatever subset this request asked for.
	delete(p.refresh, tok)
	p.stats.Refreshes++
	resp := p.issueLocked(client.ID, rt.user, scopes, nil, "", false)
	resp.RefreshToken = p.newRefreshLocked(client.ID, rt.user, rt.scopes)
	return resp, nil
}

func (p *IdP) deviceGrantLocked(client Client, form url.Values) (*idpTokenResponse, *idpError) {
	code := form.Get("device_code")
	if code == "" {
		return nil, idpMissing("device_code")
	}
	d := p.devices[code]
	if d == nil {
		return nil, idpErr(http.StatusBadRequest, "bad_verification_code", 70000,
			"The provided device code was not recognized.")
	}
	if d.clientID != client.ID {
		return nil, idpOtherClientGrant()
	}
	now := p.now()
	if !now.Before(d.expires) {
		return nil, idpErr(http.StatusBadRequest, "expired_token", 70019, "Verification code expired.")
	}
	last := d.lastPoll
	d.lastPoll = now
	// Clients poll on a timer and requests take varying time to arrive, so
	// allow some slack before calling a poll early.
	early := d.interval > 0 && !last.IsZero() && now.Sub(last) < d.interval-min(d.interval/2, time.Second)
	if p.forceSlowDown > 0 || early {
		if p.forceSlowDown > 0 {
			p.forceSlowDown--
		}
		return nil, idpErr(http.StatusBadRequest, "slow_down", 70016,
			"OAuth 2.0 device flow error. Polling too frequently; increase the interval by 5 seconds.")
	}
	switch {
	case p.deviceBlocked:
		delete(p.devices, d.deviceCode)
		delete(p.userCodes, d.userCode)
		return nil, idpErr(http.StatusBadRequest, "invalid_grant", 53003,
			"Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.")
	case d.declined:
		return nil, idpErr(http.StatusBadRequest, "authorization_declined", 70000,
			"The end user denied the authorization request.")
	case d.user == nil:
		return nil, idpErr(http.StatusBadRequest, "authorization_pending", 70016,
			"OAuth 2.0 device flow error. Authorization is pending. Continue polling.")
	}
	delete(p.devices, d.deviceCode)
	delete(p.userCodes, d.userCode)
	p.stats.DeviceCodes++
	return p.issueLocked(client.ID, d.user, d.scopes, d.scopes, "", idpHasScope(d.scopes, "offline_access") && !p.deviceNoRefresh), nil
}

func (p *IdP) clientCredentialsGrantLocked(client Client, form url.Values) (*idpTokenResponse, *idpError) {
	if client.Secret == "" {
		return nil, idpErr(http.StatusUnauthorized, "invalid_client", 7000218,
			"The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
	}
	s := form.Get("scope")
	if s == "" {
		return nil, idpMissing("scope")
	}
	scopes := idpDedupe(strings.Fields(s))
	if e := idpOneResource(scopes); e != nil {
		return nil, e
	}
	for _, sc := range scopes {
		if !strings.HasSuffix(sc, "/.default") {
			return nil, idpErr(http.StatusBadRequest, "invalid_scope", 1002012,
				"The provided value for scope %s is not valid. Client credential flows must have a scope value "+
					"with /.default suffixed to the resource identifier (application ID URI).", sc)
		}
	}
	p.stats.ClientCredentials++
	return p.issueLocked(client.ID, nil, scopes, nil, "", false), nil
}

// issueLocked makes an access token for scopes (user nil: an app token), an
// id_token when openid is among them, and a refresh token carrying
// refreshScopes when withRefresh.
func (p *IdP) issueLocked(clientID string, user *idpUser, scopes, refreshScopes []string, nonce string, withRefresh bool) *idpTokenResponse {
	// One access token is for one resource: a grant that consented to
	// several (at authorize) yields a token for the first, as at Entra.
	var resource []string
	for _, s := range scopes {
		if !idpHasScope(idpOIDCScopes, s) && (len(resource) == 0 || idpResourceOf(s) == idpResourceOf(resource[0])) {
			resource = append(resource, s)
		}
	}
	echo := resource
	if len(echo) == 0 {
		echo = scopes
	}
	if user == nil {
		echo = nil
	}
	at, lifetime := p.newAccessLocked(clientID, user, resource)
	secs := max(int64((lifetime+time.Second-1)/time.Second), 1)
	resp := &idpTokenResponse{
		TokenType:    "Bearer",
		Scope:        strings.Join(echo, " "),
		ExpiresIn:    secs,
		ExtExpiresIn: secs,
		AccessToken:  at,
	}
	if user != nil && idpHasScope(scopes, "openid") {
		resp.IDToken = p.idTokenLocked(clientID, user, nonce)
	}
	if user != nil && withRefresh {
		resp.RefreshToken = p.newRefreshLocked(clientID, user, refreshScopes)
	}
	return resp
}

func (p *IdP) newRefreshLocked(clientID string, user *idpUser, scopes []string) string {
	tok := "1.A" + idpRandText(600)
	p.refresh[tok] = &idpRefresh{clientID: clientID, user: user, scopes: scopes, expires: p.now().Add(idpRefreshLifetime)}
	return tok
}

// idpAccessClaims are those of an Entra v1.0 access token for Exchange Online,
// so the token looks and weighs like one. Nobody reads them: Validate looks
// tokens up.
type idpAccessClaims struct {
	Aud            string   `json:"aud"`
	Iss            string   `json:"iss"`
	Iat            int64    `json:"iat"`
	Nbf            int64    `json:"nbf"`
	Exp            int64    `json:"exp"`
	Acr            string   `json:"acr,omitempty"`
	Aio            string   `json:"aio"`
	Amr            []string `json:"amr,omitempty"`
	AppDisplayName string   `json:"app_displayname"`
	AppID          string   `json:"appid"`
	AppIDAcr       string   `json:"appidacr"`
	FamilyName     string   `json:"family_name,omitempty"`
	GivenName      string   `json:"given_name,omitempty"`
	IPAddr         string   `json:"ipaddr"`
	Name           string   `json:"name,omitempty"`
	OID            string   `json:"oid"`
	RH             string   `json:"rh"`
	Roles          []string `json:"roles,omitempty"`
	Scp            string   `json:"scp,omitempty"`
	Sub            string   `json:"sub"`
	TID            string   `json:"tid"`
	UniqueName     string   `json:"unique_name,omitempty"`
	UPN            string   `json:"upn,omitempty"`
	UTI            string   `json:"uti"`
	Ver            string   `json:"ver"`
	JTI            string   `json:"jti"`
}

func (p *IdP) newAccessLocked(clientID string, user *idpUser, resource []string) (string, time.Duration) {
	now := p.now()
	lifetime := p.tokenLifetime
	exp := now.Add(lifetime)
	c := idpAccessClaims{
		Aud:            idpAudience(resource),
		Iss:            "https://sts.windows.net/" + p.tenantID + "/",
		Iat:            now.Unix(),
		Nbf:            now.Unix(),
		Exp:            exp.Unix(),
		AppDisplayName: "mailproxy",
		AppID:          clientID,
		AppIDAcr:       "0",
		IPAddr:         "127.0.0.1",
		RH:             "0.A" + idpRandText(60) + ".",
		TID:            p.tenantID,
		UTI:            idpRandText(22),
		Ver:            "1.0",
		JTI:            idpUUID(),
	}
	var subject string
	if user == nil {
		subject = "app:" + clientID
		c.AppIDAcr = "1"
		c.OID = idpUUID()
		c.Sub = c.OID
		c.Roles = slices.Clone(p.appRoles[c.Aud])
	} else {
		subject = user.name
		c.Acr, c.Amr = "1", []string{"pwd"}
		c.FamilyName, c.GivenName, c.Name = user.family, user.given, user.displayName()
		c.OID, c.Sub = user.oid, idpPairwise(user.oid, clientID)
		c.UniqueName, c.UPN = user.name, user.name
		short := make([]string, len(resource))
		for i, s := range resource {
			short[i] = s[strings.LastIndex(s, "/")+1:]
		}
		c.Scp = strings.Join(short, " ")
	}
	header := idpSegment(map[string]string{"typ": "JWT", "nonce": idpRandText(43), "alg": "RS256", "x5t": "fake365", "kid": "fake365"})
	sig := idpRandText(342) // an RS256 signature is 256 bytes
	payload := idpSegment(c)
	// Pad through aio (an opaque blob in real tokens too); base64 turns 3
	// bytes into 4.
	if pad := (idpAccessTokenSize-len(header)-len(sig)-2-len(payload))*3/4 - 1; pad > 0 {
		c.Aio = idpRandText(pad)
		payload = idpSegment(c)
	}
	tok := header + "." + payload + "." + sig
	a := idpAccess{subject: subject, audience: c.Aud, expiry: exp, roles: c.Roles, issued: now, clientID: clientID, scope: c.Scp}
	if c.Scp != "" {
		a.scopes = strings.Fields(c.Scp)
	}
	p.access[tok] = a
	p.pruneAccessLocked(now)
	return tok, lifetime
}

// pruneAccessLocked drops long-expired access tokens once there are many, so
// a long demo run does not grow without bound.
func (p *IdP) pruneAccessLocked(now time.Time) {
	if len(p.access) < p.accessPruneAt {
		return
	}
	for tok, a := range p.access {
		if now.Sub(a.expiry) > time.Hour {
			delete(p.access, tok)
		}
	}
	p.accessPruneAt = max(idpPruneMin, 2*len(p.access))
}

// idTokenLocked makes an id_token. Its signature is random bytes: clients
// need not verify an id_token they got straight from the token endpoint
// over TLS (OpenID Connect Core 3.1.3.7), and ours do not.
func (p *IdP) idTokenLocked(clientID string, user *idpUser, nonce string) string {
	now := p.now()
	claims := struct {
		Aud               string `json:"aud"`
		Iss               string `json:"iss"`
		Iat               int64  `json:"iat"`
		Nbf               int64  `json:"nbf"`
		Exp               int64  `json:"exp"`
		Aio               string `json:"aio"`
		Name              string `json:"name"`
		Nonce             string `json:"nonce,omitempty"`
		OID               string `json:"oid"`
		PreferredUsername string `json:"preferred_username"`
		RH                string `json:"rh"`
		Sub               string `json:"sub"`
		TID               string `json:"tid"`
		UTI               string `json:"uti"`
		Ver               string `json:"ver"`
	}{
		Aud:               clientID,
		Iss:               p.issuer(p.tenantID),
		Iat:               now.Unix(),
		Nbf:               now.Unix(),
		Exp:               now.Add(idpIDTokenLifetime).Unix(),
		Aio:               idpRandText(120),
		Name:              user.displayName(),
		Nonce:             nonce,
		OID:               user.oid,
		PreferredUsername: user.name,
		RH:                "0.A" + idpRandText(60) + ".",
		Sub:               idpPairwise(user.oid, clientID),
		TID:               p.tenantID,
		UTI:               idpRandText(22),
		Ver:               "2.0",
	}
	header := idpSegment(map[string]string{"typ": "JWT", "alg": "RS256", "kid": "fake365"})
	return header + "." + idpSegment(claims) + "." + idpRandText(342)
}

func (p *IdP) issuer(tenant string) string { return p.URL + "/" + tenant + "/v2.0" }

func (p *IdP) handleDeviceCode(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, idpMaxForm)
	if err := r.ParseForm(); err != nil {
		p.writeError(w, r, idpMalformed())
		return
	}
	clientID, scope := r.PostForm.Get("client_id"), r.PostForm.Get("scope")
	userCode, deviceCode := idpUserCode(), "DAQABIQEAAAD"+idpRandText(320)

	p.mu.Lock()
	var e *idpError
	switch _, known := p.clients[clientID]; {
	case clientID == "":
		e = idpMissing("client_id")
	case !known:
		e = p.unknownClientLocked(clientID)
	case scope == "":
		e = idpMissing("scope")
	}
	if e != nil {
		p.mu.Unlock()
		p.writeError(w, r, e)
		return
	}
	now := p.now()
	for p.userCodes[userCode] != nil {
		userCode = idpUserCode()
	}
	d := &idpDevice{
		deviceCode: deviceCode,
		userCode:   userCode,
		clientID:   clientID,
		scopes:     idpDedupe(strings.Fields(scope)),
		expires:    now.Add(idpDeviceCodeLifetime),
		interval:   p.deviceInterval,
	}
	if len(p.devices) >= idpPruneMin {
		for k, old := range p.devices {
			if !now.Before(old.expires) {
				delete(p.devices, k)
				delete(p.userCodes, old.userCode)
			}
		}
	}
	p.devices[deviceCode] = d
	p.userCodes[userCode] = d
	p.lastUserCode = userCode
	p.mu.Unlock()

	verify := p.URL + "/devicelogin"
	idpWriteJSON(w, http.StatusOK, struct {
		UserCode        string `json:"user_code"`
		DeviceCode      string `json:"device_code"`
		VerificationURI string `json:"verification_uri"`
		ExpiresIn       int64  `json:"expires_in"`
		Interval        int64  `json:"interval"`
		Message         string `json:"message"`
	}{
		UserCode:        userCode,
		DeviceCode:      deviceCode,
		VerificationURI: verify,
		ExpiresIn:       int64(idpDeviceCodeLifetime / time.Second),
		Interval:        int64((d.interval + time.Second - 1) / time.Second),
		Message: fmt.Sprintf("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.",
			verify, userCode),
	})
}

// handleAuthorize signs the user in without a page: SignInAs's user, else
// the login_hint's if known. Errors about the client or the redirect URI are
// shown as a page (Entra never redirects to an unverified URI); the others
// go back to the redirect URI.
func (p *IdP) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	clientID := q.Get("client_id")
	code := "1.A" + idpRandText(480)

	p.mu.Lock()
	defer p.mu.Unlock()
	client, known := p.clients[clientID]
	if clientID == "" {
		idpErrorPage(w, idpMissing("client_id"))
		return
	}
	if !known {
		idpErrorPage(w, p.unknownClientLocked(clientID))
		return
	}
	requested := q.Get("redirect_uri")
	redirect := requested
	if redirect == "" && len(client.RedirectURIs) == 1 {
		redirect = client.RedirectURIs[0]
	}
	if redirect == "" || !idpRedirectAllowed(client, redirect) {
		idpErrorPage(w, idpRedirectMismatch(redirect, clientID))
		return
	}
	back, err := url.Parse(redirect)
	if err != nil {
		idpErrorPage(w, idpRedirectMismatch(redirect, clientID))
		return
	}
	reply := back.Query()
	if s := q.Get("state"); s != "" {
		reply.Set("state", s)
	}
	fail := func(e *idpError) {
		reply.Set("error", e.code)
		reply.Set("error_description", fmt.Sprintf("AADSTS%d: %s", e.aadsts, e.msg))
		back.RawQuery = reply.Encode()
		w.Header().Set("Location", back.String())
		w.WriteHeader(http.StatusFound)
	}

	if rt := q.Get("response_type"); rt != "code" {
		fail(idpErr(http.StatusBadRequest, "unsupported_response_type", 700054,
			"response_type '%s' is not enabled for the application.", rt))
		return
	}
	scope := q.Get("scope")
	if scope == "" {
		fail(idpMissing("scope"))
		return
	}
	challenge, method := q.Get("code_challenge"), q.Get("code_challenge_method")
	switch {
	case challenge != "" && method != "S256":
		fail(idpErr(http.StatusBadRequest, "invalid_request", 9002325,
			"Proof Key for Code Exchange: code_challenge_method must be S256 (got '%s').", method))
		return
	case challenge == "" && client.Secret == "":
		fail(idpErr(http.StatusBadRequest, "invalid_request", 9002325,
			"Proof Key for Code Exchange is required for this public client."))
		return
	case challenge != "" && len(challenge) != 43:
		fail(idpErr(http.StatusBadRequest, "invalid_request", 9002325,
			"Proof Key for Code Exchange: code_challenge is not a base64url SHA-256 hash."))
		return
	}

	var user *idpUser
	if p.signInAs != "" {
		user = p.users[strings.ToLower(p.signInAs)]
	} else if hint := q.Get("login_hint"); hint != "" {
		if user = p.users[strings.ToLower(hint)]; user == nil {
			idpErrorPage(w, idpErr(http.StatusBadRequest, "invalid_request", 50034,
				"The user account %s does not exist in the %s directory.", hint, p.tenantID))
			return
		}
	}
	if user == nil {
		idpErrorPage(w, idpErr(http.StatusBadRequest, "login_required", 50058,
			"A silent sign-in request was sent but no user is signed in. (fake365: call SignInAs or send a known login_hint.)"))
		return
	}

	now := p.now()
	if len(p.codes) >= idpPruneMin {
		for k, c := range p.codes {
			if !now.Before(c.expires) {
				delete(p.codes, k)
			}
		}
	}
	p.codes[code] = &idpCode{
		clientID:          clientID,
		requestedRedirect: requested,
		challenge:         challenge,
		nonce:             q.Get("nonce"),
		scopes:            idpDedupe(strings.Fields(scope)),
		user:              user,
		expires:           now.Add(idpCodeLifetime),
	}
	reply.Set("code", code)
	reply.Set("session_state", idpUUID())
	back.RawQuery = reply.Encode()
	w.Header().Set("Location", back.String())
	w.WriteHeader(http.StatusFound)
}

func idpRedirectMismatch(redirect, clientID string) *idpError {
	return idpErr(http.StatusBadRequest, "invalid_request", 50011,
		"The redirect URI '%s' specified in the request does not match the redirect URIs configured for the "+
			"application '%s'. Make sure the redirect URI sent in the request matches one added to your application "+
			"in the Azure portal.", redirect, clientID)
}

func idpErrorPage(w http.ResponseWriter, e *idpError) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(e.status)
	fmt.Fprintf(w, "<!doctype html>\n<title>Sign in to your account</title>\n<h1>Sorry, but we’re having trouble signing you in.</h1>\n<p>AADSTS%d: %s</p>\n",
		e.aadsts, html.EscapeString(e.msg))
}

// idpRedirectAllowed reports whether uri is registered for c. Entra ignores
// the port of http://localhost and http://127.0.0.1 redirect URIs, because
// native apps listen on whatever port is free.
func idpRedirectAllowed(c Client, uri string) bool {
	req, err := url.Parse(uri)
	if err != nil {
		return false
	}
	loopback := req.Scheme == "http" && (req.Hostname() == "localhost" || req.Hostname() == "127.0.0.1")
	for _, reg := range c.RedirectURIs {
		if reg == uri {
			return true
		}
		if !loopback {
			continue
		}
		r, err := url.Parse(reg)
		if err == nil && r.Scheme == "http" && r.Hostname() == req.Hostname() &&
			strings.TrimSuffix(r.Path, "/") == strings.TrimSuffix(req.Path, "/") &&
			r.RawQuery == req.RawQuery && req.Fragment == "" {
			return true
		}
	}
	return false
}

func (p *IdP) handleOpenIDConfig(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	issTenant := p.tenantID
	switch strings.ToLower(tenant) {
	case "common", "organizations", "consumers":
		issTenant = "{tenantid}"
	}
	authURL, tokenURL, deviceURL := p.Endpoints(tenant)
	idpWriteJSON(w, http.StatusOK, map[string]any{
		"issuer":                                p.issuer(issTenant),
		"authorization_endpoint":                authURL,
		"token_endpoint":                        tokenURL,
		"device_authorization_endpoint":         deviceURL,
		"jwks_uri":                              p.URL + "/" + tenant + "/discovery/v2.0/keys",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"response_modes_supported":              []string{"query", "fragment", "form_post"},
		"scopes_supported":                      idpOIDCScopes,
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"request_uri_parameter_supported":       false,
		"tenant_region_scope":                   "EU",
	})
}

// handleDeviceLogin is a bare page where a person can approve a device code
// by hand (the demo); tests call ApproveDevice.
func (p *IdP) handleDeviceLogin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, idpMaxForm)
		code, user := r.PostFormValue("code"), r.PostFormValue("username")
		if user == "" {
			p.mu.Lock()
			user = p.signInAs
			p.mu.Unlock()
		}
		if user == "" {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, "<!doctype html>\n<p>Enter a username.</p>\n")
			return
		}
		if err := p.ApproveDevice(code, user); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, "<!doctype html>\n<p>%s</p>\n", html.EscapeString(err.Error()))
			return
		}
		fmt.Fprintf(w, "<!doctype html>\n<p>%s is signed in. You may close this window.</p>\n", html.EscapeString(user))
		return
	}
	p.mu.Lock()
	user := p.signInAs
	p.mu.Unlock()
	fmt.Fprintf(w, `<!doctype html>
<title>Enter code</title>
<h1>Enter code</h1>
<form method="post">
<p><label>Code <input name="code" autofocus></label></p>
<p><label>Sign in as <input name="username" value="%s"></label></p>
<p><button>Next</button></p>
</form>
`, html.EscapeString(user))
}

// idpAudience is the resource of the first resource scope, as Entra derives
// aud (Graph for a bare permission name); Exchange Online when there is none.
func idpAudience(resource []string) string {
	if len(resource) == 0 {
		return OutlookResource
	}
	if u, err := url.Parse(resource[0]); err == nil && u.Scheme != "" && u.Host != "" {
		return u.Scheme + "://" + u.Host
	}
	return GraphResource
}

// idpResourceOf names the resource a scope belongs to: its URL's origin;
// Graph for a bare permission name, as Entra reads "Mail.Send". Exchange
// Online answers to two identifier URIs.
func idpResourceOf(scope string) string {
	u, err := url.Parse(scope)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return GraphResource
	}
	origin := strings.ToLower(u.Scheme + "://" + u.Host)
	if origin == "https://outlook.office365.com" {
		return OutlookResource
	}
	return origin
}

// idpOneResource refuses a token request naming scopes of two resources.
func idpOneResource(scopes []string) *idpError {
	first := ""
	for _, s := range scopes {
		if idpHasScope(idpOIDCScopes, s) {
			continue
		}
		r := idpResourceOf(s)
		if first == "" {
			first = r
		} else if r != first {
			return idpErr(http.StatusBadRequest, "invalid_scope", 28000,
				"Provided value for the input parameter scope is not valid because it contains more than one resource. Scope %s is not valid.",
				strings.Join(scopes, " "))
		}
	}
	return nil
}

func idpHasScope(scopes []string, s string) bool {
	return slices.ContainsFunc(scopes, func(x string) bool { return strings.EqualFold(x, s) })
}

func idpDedupe(scopes []string) []string {
	var out []string
	for _, s := range scopes {
		if !idpHasScope(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func idpSegment(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("fake365: encode token segment: %v", err)) // only fixed struct types get here
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// idpRandText returns n random base64url characters.
func idpRandText(n int) string {
	b := make([]byte, (n*3+3)/4)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}

func idpUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// idpUserCode returns a code like "BCDF-GHJK", without vowels or look-alikes.
func idpUserCode() string {
	const alphabet = "BCDFGHJKLMNPQRSTVWXZ"
	var b [8]byte
	rand.Read(b[:])
	out := make([]byte, 0, 9)
	for i, c := range b {
		if i == 4 {
			out = append(out, '-')
		}
		out = append(out, alphabet[int(c)%len(alphabet)])
	}
	return string(out)
}

// idpPairwise is the sub claim: stable per user and app, like Entra's.
func idpPairwise(oid, clientID string) string {
	sum := sha256.Sum256([]byte(oid + "\x00" + clientID))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func idpTitle(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	if n == 0 {
		return ""
	}
	return string(unicode.ToUpper(r)) + s[n:]
}
