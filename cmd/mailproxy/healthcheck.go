package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// healthcheckTimeout bounds the whole request: a container runtime runs
// the check every few seconds.
const healthcheckTimeout = 5 * time.Second

// runHealthcheck asks the running daemon's admin listener for /healthz and
// exits 0 only on 200: the HEALTHCHECK of a container with no curl in it.
func runHealthcheck(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "healthcheck")
	cfgPath := configFlag(env, fs)
	url := fs.String("url", "", "check this `URL` instead of the config's admin.listen, e.g. http://127.0.0.1:8025/healthz")
	fs.Usage = func() {
		fmt.Fprint(env.stderr, `usage: mailproxy healthcheck [-config FILE] [-url URL]

Asks the running daemon's /healthz (on admin.listen, or URL) and exits 0
when it answers 200, 1 otherwise. It is the container image's HEALTHCHECK,
for an image that has no curl.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("healthcheck takes no arguments")
	}
	target, tlsOn := *url, false
	if target == "" {
		cfg, err := loadConfig(env, *cfgPath)
		if err != nil {
			return err
		}
		if cfg.Admin.Listen == "" {
			return usagef("admin.listen is off: there is no /healthz to ask (set admin.listen, or -url)")
		}
		host, port, err := net.SplitHostPort(cfg.Admin.Listen)
		if err != nil {
			return usagef("admin.listen %q: %v", cfg.Admin.Listen, err)
		}
		ip, err := netip.ParseAddr(host)
		// The daemon serves the page over TLS off loopback when it has a
		// certificate; ask it on loopback either way.
		tlsOn = cfg.TLS.Enabled() && (err != nil || !ip.IsLoopback())
		if host == "" || err != nil || ip.IsUnspecified() || !ip.IsLoopback() {
			host = "127.0.0.1"
		}
		scheme := "http"
		if tlsOn {
			scheme = "https"
		}
		target = scheme + "://" + net.JoinHostPort(host, port) + "/healthz"
	}
	ctx, cancel := context.WithTimeout(ctx, healthcheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return usagef("-url: %v", err)
	}
	tr := &http.Transport{Proxy: nil}
	if tlsOn {
		// Our own process on loopback, asked for its liveness only: no
		// secret is sent, and the certificate names the LAN address.
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", target, resp.Status, body)
	}
	fmt.Fprintf(env.stdout, "ok: %s\n", target)
	return nil
}
