package daemon

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"

	"mailproxy/auth"
	"mailproxy/config"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
	"mailproxy/upstream"
)

// tokenHTTPTimeout bounds one request to an identity provider.
const tokenHTTPTimeout = oauth.RequestTimeout

// OAuthProvider turns a config provider into what package oauth needs.
func OAuthProvider(p *config.Provider) *oauth.Provider {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: p.RootCAs, MinVersion: tls.VersionTLS12}
	return &oauth.Provider{
		Name:          p.Name,
		ClientID:      p.ClientID,
		ClientSecret:  p.ClientSecret,
		AuthURL:       p.AuthURL,
		TokenURL:      p.TokenURL,
		DeviceAuthURL: p.DeviceAuthURL,
		RedirectURL:   p.RedirectURL,
		// Google: access_type=offline and prompt=consent on every sign-in.
		OfflineConsent: p.Type == config.TypeGmail,
		Scopes:         p.Scopes,
		AppScopes:      p.AppScopes,
		HTTPClient:     &http.Client{Transport: tr, Timeout: tokenHTTPTimeout},
		// Graph (send_via = "graph") and HVE: config/graph.go.
		GraphScopes:      p.GraphScopes,
		GraphAppScopes:   p.GraphAppScopes,
		MinTokenLifetime: p.MinTokenLifetime,
	}
}

// UpstreamFor describes a provider's servers for the proxy fronts.
func UpstreamFor(p *config.Provider) *upstream.Upstream {
	return upstream.New(upstreamAddrs(p), &tls.Config{
		RootCAs:    p.RootCAs,
		MinVersion: tls.VersionTLS12,
		// Resumed sessions make each upstream login a round trip
		// cheaper (docs/BENCHMARKS.md).
		ClientSessionCache: tls.NewLRUClientSessionCache(upstreamSessionCache),
	})
}

// upstreamSessionCache is how many TLS sessions per provider are kept for
// resumption: one per upstream host is enough, a few spare are cheap.
const upstreamSessionCache = 16

// OpenStore opens the token store under cfg.StateDir.
func OpenStore(cfg *config.Config) (*store.Store, error) {
	if cfg.StateDir == "" {
		return nil, configErrorf("state_dir is not set and no default could be found")
	}
	st, err := store.Open(filepath.Join(cfg.StateDir, "tokens"))
	if err != nil {
		return nil, fmt.Errorf("open token store: %w", err)
	}
	return st, nil
}

// The token sources are what the logins hand to the fronts; oauth does not
// import auth, so the fit is checked here.
var (
	_ auth.TokenSource = (*oauth.Source)(nil)
	_ auth.TokenSource = (*oauth.AppSource)(nil)
)

// ConfigError is a failure the configuration causes (a listener that needs
// a certificate, no state directory): the command exits with status 2.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

func configErrorf(format string, args ...any) error {
	return &ConfigError{fmt.Errorf(format, args...)}
}

// upstreamAddrs are the provider's servers by the name of the front that
// relays to each.
func upstreamAddrs(p *config.Provider) map[string]string {
	addrs := make(map[string]string, len(frontDefs))
	for _, def := range frontDefs {
		addrs[def.name] = def.upstream(p)
	}
	return addrs
}

// RegisterAccounts makes m know cfg's delegated accounts, each with the
// OAuth provider that provider gives for its config provider;
// client_credentials accounts, which have app token sources of their own,
// are taken out of it. It is the one place accounts reach the token
// manager: the daemon (at start and at each reload) and the commands that
// open the token store use it.
func RegisterAccounts(m *oauth.Manager, cfg *config.Config, provider func(*config.Provider) *oauth.Provider) {
	for _, a := range cfg.Accounts {
		if a.Flow == config.FlowClientCredentials {
			m.RemoveAccount(a.Username)
			continue
		}
		m.SetAccount(oauth.Account{Username: a.Username, Flow: a.Flow, Provider: provider(a.Provider)})
	}
}

// Providers memoizes OAuthProvider: one oauth.Provider (one HTTP client)
// per config provider.
func Providers() func(*config.Provider) *oauth.Provider {
	m := make(map[*config.Provider]*oauth.Provider)
	return func(p *config.Provider) *oauth.Provider {
		if m[p] == nil {
			m[p] = OAuthProvider(p)
		}
		return m[p]
	}
}
