// Package daemon is the running mailproxy shared by serve and demo: it binds
// the listeners, wires the accounts to their token sources, serves the
// fronts and the admin page, applies a reloaded config and shuts down in
// order.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mailproxy/admin"
	"mailproxy/auth"
	"mailproxy/config"
	"mailproxy/front"
	imapfront "mailproxy/front/imap"
	smtpfront "mailproxy/front/smtp"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
	"mailproxy/relay"
	"mailproxy/upstream"
)

// Daemon is a running mailproxy: the listeners, the fronts and the account
// table built from one config. serve and demo both use it.
type Daemon struct {
	logger   *slog.Logger
	store    *store.Store
	manager  *oauth.Manager
	accounts *auth.Accounts
	fronts   []front.Front // one per frontDefs entry, in its order
	frontTLS []*tls.Config // each front's local TLS config (nil: no certificate)
	// imap and smtp are two of fronts, typed, for wiring that is theirs
	// alone (the spool is the SMTP front's intake).
	imap    *imapfront.Server
	smtp    *smtpfront.Server
	certs   *certHolder
	metrics *admin.Metrics
	graphs  *graphSenders      // accounts that send through Microsoft Graph
	limiter *front.ConnLimiter // connections, total and per address, across listeners
	lockout *auth.Lockout      // nil: off
	admin   *admin.Server
	adminHS *http.Server
	relay   *deviceRelay // the spool; nil when nothing is spooled
	// adminToken is the admin page's access token (state_dir/admin-token).
	adminToken string
	blocksMu   sync.Mutex    // serializes writes of state_dir/lockout.json
	health     healthSaver   // state_dir/health.json (health.go)
	failed     chan error    // a listener died
	stop       chan struct{} // closed at shutdown
	stopOnce   sync.Once

	mu        sync.Mutex // protects the fields below
	cfg       *config.Config
	providers map[string]*oauth.Provider  // by lowercased username
	apps      map[string]*oauth.AppSource // client_credentials sources by lowercased username
	// listeners are the bound listeners by name ("imap", "imaps", "smtp",
	// "smtps", "admin").
	listeners map[string]*boundListener
	wg        sync.WaitGroup // one per served listener
}

// New builds the daemon for cfg without binding anything: Start or Run
// does that.
func New(cfg *config.Config, logger *slog.Logger) (*Daemon, error) {
	st, err := OpenStore(cfg)
	if err != nil {
		return nil, err
	}
	m := oauth.NewManager(st, logger)
	d := &Daemon{
		logger:    logger,
		store:     st,
		manager:   m,
		cfg:       cfg,
		failed:    make(chan error, 4),
		stop:      make(chan struct{}),
		listeners: make(map[string]*boundListener),
		apps:      make(map[string]*oauth.AppSource),
		metrics:   admin.NewMetrics(frontNames()...),
		graphs:    newGraphSenders(logger.With("via", "graph")),
	}
	m.OnRefresh = func(_ string, ok bool) { d.metrics.TokenRefresh(ok) }
	d.accounts = auth.NewAccounts(nil, auth.VaultOf(m.Open))
	d.applyAccounts(cfg)
	if cfg.TLS.Enabled() {
		d.certs, err = newCertHolder(cfg, logger)
		if err != nil {
			return nil, err
		}
	}
	var tlsConf *tls.Config
	if d.certs != nil {
		tlsConf = d.certs.config()
	}
	d.limiter = front.NewConnLimiter(cfg.Security.MaxConnections, cfg.Security.MaxConnectionsPerIP)
	d.lockout = d.newLockout(cfg)
	d.accounts.SetLockout(d.lockout)
	for _, def := range frontDefs {
		ftls := listenerTLS(tlsConf, def.tlsMin(cfg))
		d.fronts = append(d.fronts, def.build(d, cfg, ftls))
		d.frontTLS = append(d.frontTLS, ftls)
	}
	if d.relay, err = newDeviceRelay(d, cfg); err != nil {
		return nil, err
	}
	if d.relay != nil {
		d.smtp.Intake = d.relay
	}
	if cfg.Admin.Listen != "" {
		if d.adminToken, err = admin.LoadAccessToken(cfg.StateDir); err != nil {
			return nil, err
		}
		d.admin, err = admin.New(admin.Options{
			Accounts:     d.adminAccounts,
			Status:       m.Status,
			Seal:         m.Seal,
			Remove:       st.Remove,
			Provider:     d.provider,
			PasswordHash: cfg.Admin.PasswordHash,
			AccessToken:  d.adminToken,
			AllowedHosts: d.adminHosts,
			Blocks:       d.adminBlocks,
			ClearBlock:   d.adminClearBlock,
			Metrics:      d.metrics,
			Listeners:    d.adminListeners,
			Spool:        d.relay.view(),
			SendTest:     d.SendTest,
			KeepAliveGaps: func() []string {
				if d.relay == nil {
					return nil
				}
				return m.KeepAliveGaps()
			},
			Logger: logger.With("listener", "admin"),
		})
		if err != nil {
			return nil, fmt.Errorf("admin page: %w", err)
		}
		d.adminHS = d.admin.HTTPServer()
		d.adminHS.ErrorLog = slog.NewLogLogger(logger.Handler(), slog.LevelWarn)
	}
	return d, nil
}

// adminHosts are the host names the admin page answers to; they follow
// reloads.
func (d *Daemon) adminHosts() []string {
	d.mu.Lock()
	cfg := d.cfg
	d.mu.Unlock()
	return cfg.AllowedHosts()
}

// Metrics are the counters the fronts report to (the admin page, /metrics,
// /healthz).
func (d *Daemon) Metrics() *admin.Metrics { return d.metrics }

// AdminURL is the link that opens the admin page: with its access token
// when there is no admin password. "" when the page is off or not bound.
// It holds a secret: print it for the person at the terminal, never log it.
func (d *Daemon) AdminURL() string {
	a := d.Addr("admin")
	if d.admin == nil || a == nil {
		return ""
	}
	d.mu.Lock()
	cfg := d.cfg
	d.mu.Unlock()
	tok := d.adminToken
	if cfg.Admin.PasswordHash != "" {
		tok = ""
	}
	return admin.AccessURL(a.String(), cfg.AdminTLS(), tok)
}

// adminAccounts lists the configured accounts for the admin page.
func (d *Daemon) adminAccounts() []admin.AccountInfo {
	d.mu.Lock()
	cfg := d.cfg
	d.mu.Unlock()
	out := make([]admin.AccountInfo, 0, len(cfg.Accounts))
	for _, a := range cfg.Accounts {
		out = append(out, admin.AccountInfo{Username: a.Username, Mailbox: a.Mailbox, Provider: a.Provider.Name, Flow: a.Flow})
	}
	return out
}

// adminListeners reports every configured listener for /healthz.
func (d *Daemon) adminListeners() []admin.Listener {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []admin.Listener
	for _, s := range d.listenerSpecs(d.cfg) {
		if s.addr == "" {
			continue
		}
		l := admin.Listener{Name: s.name, Addr: s.addr}
		if b := d.listeners[s.name]; b != nil {
			l.Addr, l.Up = b.ln.Addr().String(), true
		}
		out = append(out, l)
	}
	return out
}

// applyAccounts makes cfg's accounts the live ones: delegated accounts are
// registered with the vault (the encrypted store) and get their tokens when
// they log in; client_credentials accounts keep one app token source each
// across reloads. Accounts that left the config refuse new logins; their
// open sessions go on.
func (d *Daemon) applyAccounts(cfg *config.Config) {
	providers := make(map[*config.Provider]*oauth.Provider)
	ups := make(map[*config.Provider]*upstream.Upstream)
	byUser := make(map[string]*oauth.Provider, len(cfg.Accounts))
	d.mu.Lock()
	oldApps := d.apps
	d.mu.Unlock()
	apps := make(map[string]*oauth.AppSource)
	specs := make([]auth.AccountSpec, 0, len(cfg.Accounts))
	for _, a := range cfg.Accounts {
		p, up := providers[a.Provider], ups[a.Provider]
		if p == nil {
			p, up = OAuthProvider(a.Provider), UpstreamFor(a.Provider)
			providers[a.Provider], ups[a.Provider] = p, up
		}
		key := strings.ToLower(a.Username)
		byUser[key] = p
		spec := auth.AccountSpec{
			Username:     a.Username,
			Mailbox:      a.Mailbox,
			PasswordHash: a.PasswordHash,
			Upstream:     up,
		}
		if a.Flow == config.FlowClientCredentials {
			src := oldApps[key]
			if src == nil {
				src = oauth.NewAppSource(p, d.logger.With("account", a.Username))
				src.OnRefresh = d.metrics.TokenRefresh
			} else {
				src.SetProvider(p)
			}
			apps[key] = src
			spec.Identity = a.Mailbox
			spec.Tokens = src
		} else if a.Seal == config.SealService && a.PasswordHash != "" {
			// Mail clients of a service-sealed account log in against
			// its password_hash; the tokens open with the service key.
			spec.Tokens = serviceTokens{d: d, username: a.Username}
		}
		specs = append(specs, spec)
	}
	specs = append(specs, deviceSpecs(cfg)...)
	RegisterAccounts(d.manager, cfg, func(p *config.Provider) *oauth.Provider { return providers[p] })
	d.mu.Lock()
	old := d.cfg
	d.apps = apps
	d.providers = byUser
	d.mu.Unlock()
	if old != cfg {
		for _, a := range old.Accounts {
			if cfg.Account(a.Username) == nil {
				d.manager.RemoveAccount(a.Username)
			}
		}
	}
	d.accounts.Replace(specs)
}

// provider returns the OAuth provider of a configured delegated account.
func (d *Daemon) provider(username string) *oauth.Provider {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.providers[strings.ToLower(username)]
}

// listenerSpec is one configured listener.
type listenerSpec struct {
	name, addr string
	block      string      // the config block that sets it
	implicit   bool        // implicit TLS
	refusal    string      // written to a connection over the limit
	tls        *tls.Config // the front's local TLS config; nil: the certificate's defaults
	serve      func(net.Listener) error
}

func (d *Daemon) listenerSpecs(cfg *config.Config) []listenerSpec {
	var specs []listenerSpec
	for i, def := range frontDefs {
		plain, implicit := def.listen(cfg)
		f := d.fronts[i]
		specs = append(specs,
			listenerSpec{name: def.name, addr: plain, block: def.name, refusal: def.refusal, tls: d.frontTLS[i], serve: f.Serve},
			// implicit TLS: nothing can be said before the handshake
			listenerSpec{name: def.name + "s", addr: implicit, block: def.name, implicit: true, tls: d.frontTLS[i], serve: f.Serve})
	}
	admin := listenerSpec{name: "admin", block: "admin"}
	if d.admin != nil {
		// An admin page turned on or off needs a restart; its address
		// follows reloads like the others.
		admin.addr, admin.serve = cfg.Admin.Listen, d.adminHS.Serve
	}
	return append(specs, admin)
}

// ListenerNames are the names of every listener the daemon may bind, in
// order: each front's plain and implicit TLS one, then "admin".
func (d *Daemon) ListenerNames() []string {
	var names []string
	for _, def := range frontDefs {
		names = append(names, def.name, def.name+"s")
	}
	return append(names, "admin")
}

// boundListener is a listener being served; closing is set before the
// daemon closes it on purpose, so its Serve error is not a failure.
type boundListener struct {
	addr    string // as configured
	ln      net.Listener
	closing atomic.Bool
}

// Start binds every configured listener and serves them.
func (d *Daemon) Start() error {
	d.mu.Lock()
	cfg := d.cfg
	d.mu.Unlock()
	for _, s := range d.listenerSpecs(cfg) {
		if s.addr == "" {
			continue
		}
		if err := d.bind(s); err != nil {
			d.closeListeners()
			return err
		}
	}
	if u := d.AdminURL(); u != "" && cfg.Admin.PasswordHash == "" {
		// The link holds the access token: it is printed by admin-url
		// (and the demo's banner), never logged.
		d.logger.Info("admin page: open the link that `mailproxy admin-url` prints; it carries the access token kept in state_dir",
			"url", admin.AccessURL(d.Addr("admin").String(), cfg.AdminTLS(), ""), "token_file", filepath.Join(cfg.StateDir, admin.AccessTokenFile))
	}
	d.startHealth()
	d.wg.Go(d.alertLoop)
	d.wg.Go(d.healthLoop)
	if d.relay != nil {
		d.relay.start()
	}
	return nil
}

// alertInterval is how often accounts that need attention are logged:
// often enough to be seen, rarely enough not to drown the log.
const alertInterval = time.Hour

// alertLoop logs accounts that need a new sign-in or whose refresh token
// nears its end, at start and then once per alertInterval.
func (d *Daemon) alertLoop() {
	t := time.NewTicker(alertInterval)
	defer t.Stop()
	for {
		d.logAlerts()
		select {
		case <-t.C:
		case <-d.stop:
			return
		}
	}
}

func (d *Daemon) logAlerts() {
	var statuses []oauth.AccountStatus
	for _, a := range d.adminAccounts() {
		if a.Flow != config.FlowClientCredentials {
			statuses = append(statuses, d.manager.Status(a.Username))
		}
	}
	for _, al := range admin.Alerts(statuses, time.Now()) {
		d.logger.Warn("account needs attention", "account", al.Username, "alert", al.Message)
	}
}

// ListenError is a listener that could not be bound, such as a port that
// another program holds (errors.Is(err, syscall.EADDRINUSE)).
type ListenError struct {
	Listener string // "imap", "imaps", "smtp", "smtps", "admin"
	Addr     string // as configured
	Err      error
}

func (e *ListenError) Error() string {
	return fmt.Sprintf("listen %s on %s: %v", e.Listener, e.Addr, e.Err)
}

func (e *ListenError) Unwrap() error { return e.Err }

// bind listens on s.addr and serves it, replacing a listener of the same
// name (which is closed only after the new one is up).
func (d *Daemon) bind(s listenerSpec) error {
	if s.implicit && d.certs == nil {
		return configErrorf("%s.listen_tls needs [tls] cert_file/key_file or self_signed", s.block)
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return &ListenError{Listener: s.name, Addr: s.addr, Err: err}
	}
	admin := s.name == "admin"
	// The admin page asks for its own password off loopback, and sends it
	// only over TLS when there is a certificate.
	ln = &filterListener{Listener: ln, allow: d.allowFunc(!s.implicit && !admin), logger: d.logger.With("listener", s.name)}
	if !admin {
		ln = d.limiter.Listener(ln, s.refusal, d.logger.With("listener", s.name))
	}
	if ap, err := netip.ParseAddrPort(ln.Addr().String()); s.implicit || (admin && d.certs != nil && err == nil && !ap.Addr().IsLoopback()) { // config.Config.AdminTLS
		cfg := s.tls
		if cfg == nil {
			cfg = d.certs.config()
		}
		if s.name == "imap" {
			// Relayed sessions: TLS records to and from the client are
			// gathered (relay.UnderTLS).
			ln = relay.UnderTLSListener(ln)
		}
		ln = tls.NewListener(ln, cfg)
	}
	b := &boundListener{addr: s.addr, ln: ln}
	d.mu.Lock()
	old := d.listeners[s.name]
	d.listeners[s.name] = b
	d.mu.Unlock()
	if old != nil {
		old.closing.Store(true)
		old.ln.Close()
	}
	d.logger.Info("listening", "listener", s.name, "addr", ln.Addr().String())
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		err := s.serve(ln)
		if b.closing.Load() || errors.Is(err, front.ErrServerClosed) || errors.Is(err, http.ErrServerClosed) {
			return
		}
		d.failed <- fmt.Errorf("%s listener: %w", s.name, err)
	}()
	return nil
}

// unbind stops listening on the named listener; its sessions go on.
func (d *Daemon) unbind(name string) {
	d.mu.Lock()
	old := d.listeners[name]
	delete(d.listeners, name)
	d.mu.Unlock()
	if old != nil {
		old.closing.Store(true)
		old.ln.Close()
		d.logger.Info("stopped listening", "listener", name, "addr", old.addr)
	}
}

// allowFunc decides at accept whether a remote address may connect: it must
// be in security.allow_from and, on a listener where passwords travel in the
// clear, in allow_plaintext_from (loopback always is) unless local TLS is
// configured: then the client may connect, and the fronts refuse its
// password until it has used STARTTLS.
func (d *Daemon) allowFunc(plain bool) func(netip.Addr) bool {
	return func(ip netip.Addr) bool {
		d.mu.Lock()
		sec := d.cfg.Security
		d.mu.Unlock()
		if !sec.AllowedFrom(ip) {
			return false
		}
		if plain && d.certs == nil && !sec.PlaintextAllowedFrom(ip) {
			// A device without a credential sends no password.
			d.mu.Lock()
			dev := d.cfg.DeviceFrom(ip)
			d.mu.Unlock()
			return dev != nil && dev.Username == ""
		}
		return true
	}
}

// plaintextAllowed says whether ip may send a password without TLS.
func (d *Daemon) plaintextAllowed(ip netip.Addr) bool {
	d.mu.Lock()
	sec := d.cfg.Security
	d.mu.Unlock()
	return sec.PlaintextAllowedFrom(ip)
}

// Addr returns the bound address of the named listener, nil when it is
// not listening (for the demo banner and tests).
func (d *Daemon) Addr(name string) net.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	if b := d.listeners[name]; b != nil {
		return b.ln.Addr()
	}
	return nil
}

func (d *Daemon) closeListeners() {
	d.mu.Lock()
	names := make([]string, 0, len(d.listeners))
	for name := range d.listeners {
		names = append(names, name)
	}
	d.mu.Unlock()
	for _, name := range names {
		d.unbind(name)
	}
}

// Reload applies a new config to the running daemon: accounts, providers,
// allow lists, connection limits, lockout settings, listen addresses and
// the certificate change at once; live sessions are kept. Timeouts and
// size limits take effect at the next start.
func (d *Daemon) Reload(cfg *config.Config) {
	d.applyAccounts(cfg)
	d.graphs.forget(cfg)
	d.mu.Lock()
	old := d.cfg
	d.cfg = cfg
	d.mu.Unlock()
	d.limiter.SetLimits(cfg.Security.MaxConnections, cfg.Security.MaxConnectionsPerIP)
	if o, n := old.Security, cfg.Security; o.LockoutFailures != n.LockoutFailures || o.LockoutWindow != n.LockoutWindow ||
		o.LockoutDuration != n.LockoutDuration || o.LockoutAddrFailures != n.LockoutAddrFailures {
		// Only on change: a new Lockout forgets the failures counted so far.
		lo := d.newLockout(cfg)
		d.mu.Lock()
		d.lockout = lo
		d.mu.Unlock()
		d.accounts.SetLockout(lo)
		d.saveBlocks()
	}
	oldSpecs := d.listenerSpecs(old)
	for i, s := range d.listenerSpecs(cfg) {
		if s.addr == oldSpecs[i].addr {
			continue
		}
		if s.addr == "" {
			d.unbind(s.name)
			continue
		}
		if err := d.bind(s); err != nil {
			d.logger.Error("reload: keeping the old listener", "listener", s.name, "err", err)
		}
	}
	if d.certs != nil {
		if err := d.certs.reload(); err != nil {
			d.logger.Error("reload: keeping the old certificate", "err", err)
		}
	}
	d.logger.Info("config reloaded", "accounts", len(cfg.Accounts))
}

// Shutdown stops accepting, lets sessions finish until ctx is done, then
// closes what is left.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.stopOnce.Do(func() { close(d.stop) })
	d.closeListeners()
	if d.adminHS != nil {
		d.adminHS.Shutdown(ctx)
		d.admin.Close()
	}
	// Every front drains at once, within the same deadline.
	var wg sync.WaitGroup
	errs := make([]error, len(d.fronts))
	for i, f := range d.fronts {
		wg.Go(func() { errs[i] = f.Shutdown(ctx) })
	}
	wg.Wait()
	for _, f := range d.fronts {
		f.Close()
	}
	// After the SMTP front: nothing more comes in; queued mail stays on
	// disk for the next start.
	if d.relay != nil {
		if err := d.relay.shutdown(ctx); err != nil {
			d.logger.Warn("spool shutdown", "err", err)
		}
	}
	d.wg.Wait()
	// What the sessions last saw, for status after serve stopped.
	d.saveHealth(true)
	// Rotated tokens a failed save left in memory get one last chance.
	for _, u := range d.manager.Flush() {
		d.logger.Error("rotated tokens could not be saved: the account will need a new sign-in", "account", u)
	}
	if err := errors.Join(errs...); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// filterListener closes connections from addresses the config does not
// allow, before a byte is read.
type filterListener struct {
	net.Listener
	allow  func(netip.Addr) bool
	logger *slog.Logger
}

func (l *filterListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ap, perr := netip.ParseAddrPort(c.RemoteAddr().String())
		if perr == nil && l.allow(ap.Addr().Unmap()) {
			return c, nil
		}
		l.logger.Warn("connection refused: address not allowed", "remote", c.RemoteAddr().String())
		c.Close()
	}
}

// certHolder serves the local certificate and reloads it on SIGHUP.
type certHolder struct {
	certFile, keyFile string
	mu                sync.RWMutex // protects cert
	cert              *tls.Certificate
}

func newCertHolder(cfg *config.Config, logger *slog.Logger) (*certHolder, error) {
	h := &certHolder{certFile: cfg.TLS.CertFile, keyFile: cfg.TLS.KeyFile}
	if cfg.TLS.SelfSigned && h.certFile == "" {
		var err error
		h.certFile, h.keyFile, err = selfSigned(cfg.StateDir, logger)
		if err != nil {
			return nil, err
		}
	}
	if err := h.reload(); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *certHolder) reload() error {
	c, err := tls.LoadX509KeyPair(h.certFile, h.keyFile)
	if err != nil {
		return fmt.Errorf("load certificate %s: %w", h.certFile, err)
	}
	h.mu.Lock()
	h.cert = &c
	h.mu.Unlock()
	return nil
}

func (h *certHolder) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			h.mu.RLock()
			defer h.mu.RUnlock()
			return h.cert, nil
		},
	}
}

// SetTrace logs protocol traces of both fronts to logger, with every
// credential and token replaced by a marker. Call it before Start.
func (d *Daemon) SetTrace(logger *slog.Logger) {
	for i, def := range frontDefs {
		d.fronts[i].SetTrace(logger.With("trace", def.name))
	}
}

// Manager is the token manager of the delegated accounts.
func (d *Daemon) Manager() *oauth.Manager { return d.manager }

// Store is the token store.
func (d *Daemon) Store() *store.Store { return d.store }

// Config is the config in use (the last one reloaded).
func (d *Daemon) Config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}
