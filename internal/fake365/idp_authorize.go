package fake365

import (
	"fmt"
	"html"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The authorization code flow's first leg (the authorize endpoint, which
// signs in without a page) and the OpenID configuration document.

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
