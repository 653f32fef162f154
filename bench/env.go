package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"mailproxy/auth"
	"mailproxy/oauth"
)

// benchPassword is the local password of every proxy account.
const benchPassword = "correct horse battery staple"

// Usernames the legacy clients log in to the proxy with.
const proxyUser = "bench"

func fetchUser(i int) string { return "fetch" + strconv.Itoa(i+1) }

// stepTimeout bounds each network step of a client.
const stepTimeout = 5 * time.Minute

// env is the upstream process and what the clients need to talk to it
// directly and through a proxy.
type env struct {
	o         options
	up        *child
	upInfo    upstreamHello
	clientTLS *tls.Config // trusts the fake CA; ServerName 127.0.0.1
	token     string      // access token for benchUser, for direct clients
	hash      string      // Argon2id hash of benchPassword, real cost
	logDir    string
	tmpDir    string // removed at close, if we made it

	mu      sync.Mutex // protects running
	running []*proxyProc
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.o.progress, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func newEnv(ctx context.Context, o options) (*env, error) {
	e := &env{o: o}
	if n := raiseNoFile(wantNoFile); n < wantNoFile {
		e.logf("RLIMIT_NOFILE is %d (wanted %d); large idle counts may fail", n, wantNoFile)
	}
	if o.proxyLogDir != "" {
		e.logDir = o.proxyLogDir
	} else {
		dir, err := os.MkdirTemp("", "mailproxy-bench-")
		if err != nil {
			return nil, err
		}
		e.logDir, e.tmpDir = dir, dir
	}

	mailboxes := 0
	if o.runs("fetch") || o.runs("stall") {
		mailboxes = max(o.fetchClients, o.stallClients)
	}
	e.logf("starting the upstream, IMAP by %s (%d mailboxes of %d MiB)", o.upstream, mailboxes, o.fetchSize>>20)
	args := []string{
		"-fetch-size", strconv.FormatInt(o.fetchSize, 10),
		"-fetch-mailboxes", strconv.Itoa(mailboxes),
		"-link-mibps", strconv.FormatFloat(o.linkMiBps, 'f', -1, 64),
	}
	if o.upstream == upstreamDovecot {
		args = append(args, "-dovecot")
	}
	up, err := startChild("upstream", args, nil, &e.upInfo)
	if err != nil {
		e.close()
		return nil, err
	}
	e.up = up
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(e.upInfo.CAPEM)) {
		e.close()
		return nil, errors.New("upstream sent no CA certificate")
	}
	e.clientTLS = &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}

	// The direct clients' access token, from the fake IdP like any client.
	rt, err := e.up.call("rt")
	if err != nil {
		e.close()
		return nil, err
	}
	src := oauth.NewSource(&oauth.Provider{
		ClientID:   benchClientID,
		TokenURL:   e.upInfo.TokenURL,
		Scopes:     benchScopes,
		HTTPClient: &http.Client{Timeout: 30 * time.Second},
	}, oauth.TokenSet{RefreshToken: rt, Scopes: benchScopes}, nil, nil)
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	e.token, err = src.Token(tctx)
	cancel()
	if err != nil {
		e.close()
		return nil, fmt.Errorf("get the direct clients' access token: %w", err)
	}
	if e.hash, err = auth.HashPassword(benchPassword); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	e.mu.Lock()
	running := e.running
	e.running = nil
	e.mu.Unlock()
	for _, p := range running {
		p.stop()
	}
	if e.up != nil {
		if err := e.up.stop(); err != nil {
			e.logf("%v", err)
		}
	}
	if e.tmpDir != "" {
		os.RemoveAll(e.tmpDir)
	}
}

// proxyProc is a running proxy process.
type proxyProc struct {
	*child
	hello proxyHello
	name  string
	e     *env
}

// startProxy starts a fresh proxy process with every account configured.
// profile asks for the CPU profile (the main proxy only).
func (e *env) startProxy(name string, profile bool) (*proxyProc, error) {
	var args []string
	if profile && e.o.cpuProfile != "" {
		args = append(args, "-cpuprofile", e.o.cpuProfile)
	}
	if profile && e.o.memProfile != "" {
		args = append(args, "-memprofile", e.o.memProfile+"."+name)
	}
	rt, err := e.up.call("rt")
	if err != nil {
		return nil, err
	}
	cfg := proxyConfig{
		IMAPUpstream:  e.upInfo.IMAP,
		SMTPUpstream:  e.upInfo.SMTP,
		CAPEM:         e.upInfo.CAPEM,
		TokenURL:      e.upInfo.TokenURL,
		RefreshToken:  rt,
		LogFile:       filepath.Join(e.logDir, "proxy-"+name+".log"),
		SMTPPrototype: e.o.smtpPrototype,
		Accounts: []proxyAccount{{
			Username: proxyUser, Mailbox: benchUser, Identity: benchUser, PasswordHash: e.hash,
		}},
	}
	for i := range e.upInfo.Mailboxes {
		cfg.Accounts = append(cfg.Accounts, proxyAccount{
			Username: fetchUser(i), Mailbox: e.upInfo.MailboxNames[i], Identity: benchUser, PasswordHash: e.hash,
		})
	}
	p := &proxyProc{name: name, e: e}
	c, err := startChild("proxy", args, cfg, &p.hello)
	if err != nil {
		return nil, err
	}
	p.child = c
	e.mu.Lock()
	e.running = append(e.running, p)
	e.mu.Unlock()
	e.logf("proxy %q started, pid %d, log %s", name, p.pid, cfg.LogFile)
	return p, nil
}

// stop ends the proxy process.
func (p *proxyProc) stop() {
	e := p.e
	e.mu.Lock()
	for i, q := range e.running {
		if q == p {
			e.running = append(e.running[:i], e.running[i+1:]...)
			break
		}
	}
	e.mu.Unlock()
	if err := p.child.stop(); err != nil {
		e.logf("%v", err)
	}
}

// rss is the proxy's resident set size in bytes.
func (p *proxyProc) rss() (int64, error) {
	kb, err := rssKiB(p.pid)
	return kb << 10, err
}

// settle runs the Go GC in the proxy and returns the memory to the OS.
func (p *proxyProc) settle() error {
	_, err := p.call("gc")
	return err
}

func (p *proxyProc) stats() (proxyStats, error) {
	var s proxyStats
	err := p.callJSON("stats", &s)
	return s, err
}

// warm logs in to each account once through the proxy, so that the
// password cache holds the accounts and the token source has a token:
// what every later login finds in a proxy that has been running a while.
func (e *env) warm(ctx context.Context, p *proxyProc, users ...string) error {
	for _, u := range users {
		c, err := e.dialProxied(ctx, p, u)
		if err != nil {
			return fmt.Errorf("warm-up login of %s: %w", u, err)
		}
		c.logout()
	}
	return nil
}

// dialDirect opens an authenticated IMAP session straight to the upstream
// as mailbox.
func (e *env) dialDirect(ctx context.Context, mailbox string) (*imapClient, error) {
	c, err := dialIMAP(ctx, e.upInfo.IMAP, e.clientTLS, imapReadBuf)
	if err != nil {
		return nil, err
	}
	if err := c.loginXOAuth2(mailbox, e.token); err != nil {
		c.close()
		return nil, fmt.Errorf("direct XOAUTH2 login as %s: %w", mailbox, err)
	}
	return c, nil
}

// dialProxied opens an authenticated IMAP session through p as user.
func (e *env) dialProxied(ctx context.Context, p *proxyProc, user string) (*imapClient, error) {
	return e.dialProxiedBuf(ctx, p, user, imapReadBuf)
}

// dialProxiedBuf is dialProxied with a client read buffer of bufSize.
func (e *env) dialProxiedBuf(ctx context.Context, p *proxyProc, user string, bufSize int) (*imapClient, error) {
	c, err := dialIMAP(ctx, p.hello.IMAP, nil, bufSize)
	if err != nil {
		return nil, err
	}
	if err := c.login(user, benchPassword); err != nil {
		c.close()
		return nil, fmt.Errorf("proxied LOGIN as %s: %w", user, err)
	}
	return c, nil
}

// mode is how a client reaches the upstream.
type mode int

const (
	direct mode = iota
	proxied
	// prototype is the pass-through SMTP experiment (smtpproto.go).
	prototype
)

func (m mode) String() string {
	switch m {
	case direct:
		return "direct"
	case proxied:
		return "proxied"
	}
	return "prototype"
}

// rotate returns modes rotated by r: each mode goes first in turn.
func rotate(modes []mode, r int) []mode {
	k := r % len(modes)
	return append(append([]mode(nil), modes[k:]...), modes[:k]...)
}

// order alternates which mode goes first in round r (ABBA), so that drift
// over the run does not favour one mode.
func order(r int) [2]mode {
	if r%2 == 0 {
		return [2]mode{direct, proxied}
	}
	return [2]mode{proxied, direct}
}
