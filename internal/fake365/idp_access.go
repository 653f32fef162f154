package fake365

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Access and ID tokens: issuing them (Entra-sized, Entra-shaped claims) and
// answering the resource servers that check them.

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

// SetTokenLifetime sets the lifetime of access tokens issued afterwards
// (default 1h). expires_in is rounded up to at least 1s, because a client
// reads expires_in 0 as "never expires".
func (p *IdP) SetTokenLifetime(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tokenLifetime = d
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

func idpSegment(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("fake365: encode token segment: %v", err)) // only fixed struct types get here
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// idpPairwise is the sub claim: stable per user and app, like Entra's.
func idpPairwise(oid, clientID string) string {
	sum := sha256.Sum256([]byte(oid + "\x00" + clientID))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
