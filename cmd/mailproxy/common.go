package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"mailproxy/config"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
	"mailproxy/proxy"
)

// defaultConfigPath is where serve, login, status and check look when
// -config is not given: $CONFIGURATION_DIRECTORY (systemd) first.
func defaultConfigPath(env *cmdEnv) string {
	if d := env.getenv("CONFIGURATION_DIRECTORY"); d != "" {
		return filepath.Join(d, "mailproxy.toml")
	}
	return "/etc/mailproxy/mailproxy.toml"
}

// configFlag registers -config on fs.
func configFlag(env *cmdEnv, fs *flag.FlagSet) *string {
	return fs.String("config", defaultConfigPath(env), "config `file`")
}

// loadConfig loads and validates the config; its errors exit with status 2.
func loadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

// newLogger returns the logger the config asks for, writing to w.
func newLogger(cfg *config.Config, w io.Writer, debug bool) *slog.Logger {
	level := cfg.Log.Level
	if debug {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == config.LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// tokenHTTPTimeout bounds one request to an identity provider.
const tokenHTTPTimeout = 30 * time.Second

// oauthProvider turns a config provider into what package oauth needs.
func oauthProvider(p *config.Provider) *oauth.Provider {
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
		Scopes:        p.Scopes,
		AppScopes:     p.AppScopes,
		HTTPClient:    &http.Client{Transport: tr, Timeout: tokenHTTPTimeout},
	}
}

// upstream describes a provider's servers for the proxy fronts.
func upstream(p *config.Provider) *proxy.Upstream {
	return &proxy.Upstream{
		IMAPAddr: p.IMAPServer,
		SMTPAddr: p.SMTPServer,
		TLS: &tls.Config{
			RootCAs:    p.RootCAs,
			MinVersion: tls.VersionTLS12,
			// Resumed sessions make each upstream login a round trip
			// cheaper (docs/BENCHMARKS.md).
			ClientSessionCache: tls.NewLRUClientSessionCache(upstreamSessionCache),
		},
	}
}

// upstreamSessionCache is how many TLS sessions per provider are kept for
// resumption: one per upstream host is enough, a few spare are cheap.
const upstreamSessionCache = 16

// openStore opens the token store under cfg.StateDir.
func openStore(cfg *config.Config) (*store.Store, error) {
	if cfg.StateDir == "" {
		return nil, usagef("state_dir is not set and no default could be found")
	}
	st, err := store.Open(filepath.Join(cfg.StateDir, "tokens"))
	if err != nil {
		return nil, fmt.Errorf("open token store: %w", err)
	}
	return st, nil
}

// newManager opens the store and registers every delegated account.
func newManager(cfg *config.Config, logger *slog.Logger) (*oauth.Manager, *store.Store, error) {
	st, err := openStore(cfg)
	if err != nil {
		return nil, nil, err
	}
	m := oauth.NewManager(st, logger)
	providers := make(map[*config.Provider]*oauth.Provider)
	for _, a := range cfg.Accounts {
		if a.Flow == config.FlowClientCredentials {
			continue
		}
		p := providers[a.Provider]
		if p == nil {
			p = oauthProvider(a.Provider)
			providers[a.Provider] = p
		}
		m.SetAccount(oauth.Account{Username: a.Username, Flow: a.Flow, Provider: p})
	}
	return m, st, nil
}

// discardLogger is for commands that print their own output.
func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
