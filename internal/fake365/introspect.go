package fake365

import (
	"net/http"
	"strings"
)

// Token introspection (RFC 7662), so that a real server can check the
// IdP's access tokens the way the fake upstreams do: Dovecot's oauth2
// passdb (introspection_mode = post) posts the bearer token here and
// compares the answer's "username" with the SASL user. Entra ID has no such
// endpoint; it exists for tests against real servers only, and like the
// rest of the fake it trusts every caller on loopback.

// IntrospectionURL is the RFC 7662 introspection endpoint of tenant.
func (p *IdP) IntrospectionURL(tenant string) string {
	return p.URL + "/" + tenant + "/oauth2/v2.0/introspect"
}

// introspection is the answer for a token. Fields other than active are
// left out for an inactive token (RFC 7662 section 2.2).
type introspection struct {
	Active    bool   `json:"active"`
	Scope     string `json:"scope,omitempty"`
	ClientID  string `json:"client_id,omitempty"`
	Username  string `json:"username,omitempty"`
	Email     string `json:"email,omitempty"`
	TokenType string `json:"token_type,omitempty"`
	Exp       int64  `json:"exp,omitempty"`
	Iat       int64  `json:"iat,omitempty"`
	Sub       string `json:"sub,omitempty"`
	Aud       string `json:"aud,omitempty"`
	Iss       string `json:"iss,omitempty"`
}

func (p *IdP) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, idpMaxForm)
	if err := r.ParseForm(); err != nil {
		idpWriteJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	token := r.PostForm.Get("token")
	if token == "" {
		idpWriteJSON(w, http.StatusBadRequest, map[string]string{
			"error": "invalid_request", "error_description": "token is missing",
		})
		return
	}
	p.mu.Lock()
	a, found := p.access[token]
	active := found && p.now().Before(a.expiry)
	p.mu.Unlock()
	if !active {
		idpWriteJSON(w, http.StatusOK, introspection{Active: false})
		return
	}
	ans := introspection{
		Active:    true,
		Scope:     a.scope,
		ClientID:  a.clientID,
		Username:  a.subject,
		TokenType: "Bearer",
		Exp:       a.expiry.Unix(),
		Iat:       a.issued.Unix(),
		Sub:       a.subject,
		Aud:       a.audience,
		Iss:       p.issuer(r.PathValue("tenant")),
	}
	if !strings.HasPrefix(a.subject, "app:") {
		ans.Email = a.subject
	}
	idpWriteJSON(w, http.StatusOK, ans)
}
