package fake365

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"slices"
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
	server   *httpServer
	closing  chan struct{} // closed by Close: releases hanging requests

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
	p.server = startHTTP(ln, &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: idpReadHeaderTimeout,
		ReadTimeout:       idpReadTimeout,
		IdleTimeout:       idpIdleTimeout,
	})
	return p, nil
}

// Close stops the server, releasing requests held by a hanging Failure.
func (p *IdP) Close() {
	p.server.stop(func() { close(p.closing) })
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

// SetClock replaces time.Now for every expiry decision; nil restores it.
func (p *IdP) SetClock(now func() time.Time) {
	if now == nil {
		now = time.Now
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.now = now
}

// Now returns the IdP's clock.
func (p *IdP) Now() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.now()
}

// Stats returns the counters.
func (p *IdP) Stats() IdPStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

func (p *IdP) issuer(tenant string) string { return p.URL + "/" + tenant + "/v2.0" }

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

func idpTitle(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	if n == 0 {
		return ""
	}
	return string(unicode.ToUpper(r)) + s[n:]
}
