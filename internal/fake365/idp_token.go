package fake365

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The token endpoint: client authentication and the authorization code,
// refresh token and client credentials grants (the device code grant is in
// idp_device.go), and refresh tokens.

type idpRefresh struct {
	clientID string
	user     *idpUser
	scopes   []string // everything granted; a refresh may ask for a subset
	expires  time.Time
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

func (p *IdP) newRefreshLocked(clientID string, user *idpUser, scopes []string) string {
	tok := "1.A" + idpRandText(600)
	p.refresh[tok] = &idpRefresh{clientID: clientID, user: user, scopes: scopes, expires: p.now().Add(idpRefreshLifetime)}
	return tok
}
