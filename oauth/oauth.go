// Package oauth owns mailproxy's OAuth 2.0 side: the per-account token
// sources (refresh ahead of expiry, single flight, rotated refresh tokens
// persisted before they are relied on), the client credentials source, the
// classification of token endpoint errors with an AADSTS hint for the admin,
// and the Manager that opens password-sealed token entries from oauth/store
// for the local logins (auth.VaultOf(Manager.Open)). It imports nothing of
// the protocol side: its errors are recognised by behaviour.
package oauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"mailproxy/oauth/store"
)

// RequestTimeout bounds one request to an identity provider's token or
// device code endpoint; login and check tell the person they may wait this
// long.
const RequestTimeout = 30 * time.Second

// Timing. Entra access tokens live 60-90 minutes.
const (
	// tokenRequestTimeout bounds one request to the token endpoint.
	tokenRequestTimeout = RequestTimeout
	// refreshMargin is how much life a token must have left when its
	// lifetime is unknown; otherwise a token is refreshed at half-life.
	refreshMargin = 30 * time.Minute
	// minUsable is the life a token must have left to be handed out
	// while the identity provider is failing.
	minUsable = time.Minute
	// A caller whose token still has aheadUsable of life waits at most
	// aheadWait for a refresh ahead of expiry, then gets the current token
	// while the refresh goes on: a slow or hanging identity provider must
	// not delay logins that do not need it.
	aheadUsable = 10 * time.Minute
	aheadWait   = 2 * time.Second
	// defaultLifetime is assumed when the token endpoint omits expires_in.
	defaultLifetime = time.Hour
	// After a failed refresh no new attempt is made before the backoff
	// (doubling from minBackoff to maxBackoff) has passed; callers get the
	// current token while it is usable, else the last error.
	minBackoff = 5 * time.Second
	maxBackoff = 5 * time.Minute
	// signInBackoff: after an error that needs a person (invalid_grant),
	// retrying sooner only adds noise at the identity provider.
	signInBackoff = 5 * time.Minute
	// warnEvery rate-limits "serving the current token" warnings.
	warnEvery = time.Minute
)

// Provider is one app registration at an identity provider, as main builds
// it from the config.
type Provider struct {
	Name          string
	ClientID      string
	ClientSecret  string // "" for a public client
	AuthURL       string
	TokenURL      string
	DeviceAuthURL string
	RedirectURL   string
	Scopes        []string // delegated: IMAP/SMTP scopes, offline_access, openid... (and GraphScopes)
	AppScopes     []string // client credentials: https://outlook.office365.com/.default
	// GraphScopes are the delegated Microsoft Graph scopes (send_via =
	// "graph"). They are part of Scopes, so consent is asked at sign-in,
	// and redeemed with the same refresh token by the account's Graph
	// source; the Outlook refresh leaves them out, since one token request
	// may name one resource only (AADSTS28000).
	GraphScopes []string
	// GraphAppScopes are the client credentials scopes for Graph:
	// https://graph.microsoft.com/.default.
	GraphAppScopes []string
	// MinTokenLifetime: an access token is handed out only with at least
	// this much life left (High Volume Email refuses tokens about 8
	// minutes before they expire). 0: no minimum beyond the usual
	// refresh at half-life.
	MinTokenLifetime time.Duration
	// OfflineConsent: the provider sends a refresh token only for
	// access_type=offline, and again on a later sign-in only after the
	// consent screen (Google). NewAuthCode then asks for both, for every
	// sign-in: the CLI's and the admin page's.
	OfflineConsent bool
	HTTPClient     *http.Client
}

// outlookScopes are the scopes of the refresh for the Outlook resource:
// Scopes without GraphScopes.
func (p *Provider) outlookScopes() []string {
	if len(p.GraphScopes) == 0 {
		return p.Scopes
	}
	out := make([]string, 0, len(p.Scopes))
	for _, s := range p.Scopes {
		if !slices.Contains(p.GraphScopes, s) {
			out = append(out, s)
		}
	}
	return out
}

// refreshScopes is what a refresh of a delegated account asks for: the
// provider's Outlook scopes that the account was granted at its sign-in.
// Asking for a scope the user never consented to fails the whole refresh
// (AADSTS65001), so a scope added to the provider later (POP.AccessAsUser.All
// in a new version) must not break the IMAP and SMTP of accounts signed in
// before it: they get it at their next sign-in. granted is empty for token
// sets that recorded no scopes; they ask for the provider's.
func (p *Provider) refreshScopes(granted []string) []string {
	want := p.outlookScopes()
	if len(granted) == 0 {
		return want
	}
	out := make([]string, 0, len(want))
	for _, s := range want {
		if slices.ContainsFunc(granted, func(g string) bool { return strings.EqualFold(g, s) }) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return want
	}
	return out
}

// Config returns the x/oauth2 configuration for the delegated flows. Client
// credentials go in the request body (AuthStyleInParams), as Entra wants.
func (p *Provider) Config() *oauth2.Config {
	return &oauth2.Config{
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		Endpoint: oauth2.Endpoint{
			AuthURL:       p.AuthURL,
			TokenURL:      p.TokenURL,
			DeviceAuthURL: p.DeviceAuthURL,
			AuthStyle:     oauth2.AuthStyleInParams,
		},
		RedirectURL: p.RedirectURL,
		Scopes:      p.Scopes,
	}
}

// Context returns ctx carrying p.HTTPClient for x/oauth2.
func (p *Provider) Context(ctx context.Context) context.Context {
	if p.HTTPClient != nil {
		return context.WithValue(ctx, oauth2.HTTPClient, p.HTTPClient)
	}
	return ctx
}

// refresh redeems a refresh token. x/oauth2's own refresher sends no scope,
// which the Microsoft identity platform needs on refresh
// (golang/oauth2#540); clientcredentials.Config sends the scopes and lets
// EndpointParams override grant_type, so it serves for the refresh grant
// too. When the response carries no refresh token, x/oauth2 keeps rt.
func (p *Provider) refresh(ctx context.Context, rt string, scopes []string) (*oauth2.Token, error) {
	cc := &clientcredentials.Config{
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		TokenURL:     p.TokenURL,
		Scopes:       scopes,
		EndpointParams: url.Values{
			"grant_type":    {"refresh_token"},
			"refresh_token": {rt},
		},
		AuthStyle: oauth2.AuthStyleInParams,
	}
	return cc.Token(p.Context(ctx))
}

// appToken runs the client credentials grant for scopes.
func (p *Provider) appToken(ctx context.Context, scopes []string) (*oauth2.Token, error) {
	cc := &clientcredentials.Config{
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		TokenURL:     p.TokenURL,
		Scopes:       scopes,
		AuthStyle:    oauth2.AuthStyleInParams,
	}
	return cc.Token(p.Context(ctx))
}

// TokenSet is an account's tokens; it is what the store seals.
type TokenSet = store.Secret

// TokenSetFrom converts a token endpoint answer. obtained is when the
// request was sent: the expiry is counted from it (not from x/oauth2's
// wall clock) so that refresh-ahead uses one clock. requested are the scopes
// asked for, kept when the answer does not echo them.
func TokenSetFrom(tok *oauth2.Token, obtained time.Time, requested []string) TokenSet {
	ts := TokenSet{
		AccessToken:  tok.AccessToken,
		RefreshToken: tok.RefreshToken,
		Obtained:     obtained,
		Scopes:       requested,
	}
	secs := tok.ExpiresIn
	if secs == 0 {
		switch v := tok.Extra("expires_in").(type) {
		case float64:
			secs = int64(v)
		case int64:
			secs = v
		case string:
			secs, _ = json.Number(v).Int64()
		}
	}
	switch {
	case secs > 0:
		ts.Expiry = obtained.Add(time.Duration(secs) * time.Second)
	case !tok.Expiry.IsZero():
		ts.Expiry = tok.Expiry
	default:
		ts.Expiry = obtained.Add(defaultLifetime)
	}
	if s, ok := tok.Extra("id_token").(string); ok {
		ts.IDToken = s
	}
	if s, ok := tok.Extra("scope").(string); ok && strings.TrimSpace(s) != "" {
		ts.Scopes = strings.Fields(s)
	}
	return ts
}

// IdentityFromIDToken returns who signed in according to an OpenID Connect
// id_token: preferred_username, else upn, else email; "" if there is none.
// The signature is not checked: the token came straight from the token
// endpoint over TLS in answer to our own request, and it only names the
// XOAUTH2 user, which the mail server checks against the access token.
func IdentityFromIDToken(idToken string) string {
	parts := strings.Split(idToken, ".")
	if len(parts) < 2 {
		return ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return ""
	}
	var claims struct {
		PreferredUsername string `json:"preferred_username"`
		UPN               string `json:"upn"`
		Email             string `json:"email"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return ""
	}
	for _, s := range []string{claims.PreferredUsername, claims.UPN, claims.Email} {
		if s != "" {
			return s
		}
	}
	return ""
}
