package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"mailproxy/admin"
	"mailproxy/auth"
	"mailproxy/config"
	smtpfront "mailproxy/front/smtp"
	"mailproxy/oauth"
	"mailproxy/smtpclient"
	"mailproxy/spool"
	"mailproxy/submit"
)

// Timings of the device relay's background work.
const (
	controlInterval   = time.Second   // `mailproxy queue` commands are picked up this often
	keepAliveInterval = 6 * time.Hour // accounts are checked for tokens.keepalive this often
	unlockTimeout     = 30 * time.Second
)

// deviceRelay is the daemon's part of the device relay: the spool and its
// workers, the control directory `mailproxy queue` writes to, the
// service-sealed accounts it unlocks, and the keep-alive refreshes. It is
// the SMTP front's Intake.
type deviceRelay struct {
	d       *Daemon
	sp      *spool.Spool
	st      *spool.DirStore
	release func() // the spool directory's lock
	key     *oauth.ServiceKey

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ interface {
	Anonymous(netip.Addr) (submit.Submitter, string)
	Authenticated(*auth.Grant, netip.Addr) submit.Submitter
} = (*deviceRelay)(nil)

// relayNeeded says whether cfg sends anything through the spool.
func relayNeeded(cfg *config.Config) bool {
	if len(cfg.Devices) > 0 {
		return true
	}
	for _, a := range cfg.Accounts {
		if a.Spool {
			return true
		}
	}
	return false
}

// newDeviceRelay opens the spool (nil, nil when the config needs none).
func newDeviceRelay(d *Daemon, cfg *config.Config) (*deviceRelay, error) {
	if !relayNeeded(cfg) {
		return nil, nil
	}
	st, err := spool.OpenDir(cfg.Spool.Dir)
	if err != nil {
		return nil, err
	}
	release, err := st.Lock()
	if err != nil {
		st.Close()
		return nil, err
	}
	r := &deviceRelay{d: d, st: st, release: release}
	for _, a := range cfg.Accounts {
		if a.Seal == config.SealService {
			if r.key, err = oauth.LoadServiceKey(cfg.StateDir, false); err != nil {
				d.logger.Warn("no service key yet: service-sealed accounts need `mailproxy login` first", "err", err)
			}
			break
		}
	}
	r.sp, err = spool.New(st, spool.Options{
		Open:            spool.AccountOpener(r.account),
		Rate:            cfg.Spool.Rate,
		DailyRecipients: cfg.Spool.DailyRecipients,
		Retry:           cfg.Spool.Retry,
		MaxAge:          cfg.Spool.MaxAge,
		LogRetention:    cfg.Spool.LogRetention,
		MaxMessageBytes: d.smtp.MaxMessageBytes,
		Domain:          cfg.SMTP.Domain,
		Logger:          d.logger.With("component", "spool"),
		OnPause: func(p spool.Pause) {
			d.logger.Error("spool paused: the upstream refused the mailbox; fix it, then `mailproxy queue resume`", "mailbox", p.Mailbox, "reply", p.Reason)
		},
	})
	if err != nil {
		release()
		st.Close()
		return nil, err
	}
	return r, nil
}

// config is the daemon's current config.
func (r *deviceRelay) config() *config.Config {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	return r.d.cfg
}

// account gives the workers an account's tokens and upstream.
func (r *deviceRelay) account(ctx context.Context, username string) (*spool.Account, error) {
	cfg := r.config()
	a := cfg.Account(username)
	if a == nil {
		return nil, errors.New("no longer configured")
	}
	up := UpstreamFor(a.Provider)
	open := smtpclient.Opener(smtpclient.Options{Addr: up.AddrOf(smtpfront.Name), TLS: up.TLSFor(up.AddrOf(smtpfront.Name)), Dial: r.d.smtp.Dial, Domain: cfg.SMTP.Domain})
	if a.Flow == config.FlowClientCredentials {
		r.d.mu.Lock()
		src := r.d.apps[strings.ToLower(a.Username)]
		r.d.mu.Unlock()
		if src == nil {
			return nil, errors.New("no app-only token source")
		}
		return r.d.spoolAccount(a, a.Mailbox, src, open), nil
	}
	if a.Seal != config.SealService {
		return nil, fmt.Errorf("seal = %q: the daemon cannot open its tokens without a client", a.Seal)
	}
	if r.key == nil {
		k, err := oauth.LoadServiceKey(cfg.StateDir, false)
		if err != nil {
			return nil, fmt.Errorf("service key: %w (run `mailproxy login %s`)", err, a.Username)
		}
		r.key = k
	}
	src, identity, err := r.d.manager.Open(ctx, a.Username, r.key.Password(a.Username))
	if err != nil {
		return nil, err
	}
	if identity == "" {
		identity = a.Mailbox
	}
	return r.d.spoolAccount(a, identity, src, open), nil
}

// Anonymous implements the SMTP front's Intake: a [[device]] without a
// credential at remote sends into the spool without AUTH.
func (r *deviceRelay) Anonymous(remote netip.Addr) (submit.Submitter, string) {
	dev := r.config().DeviceFrom(remote)
	if dev == nil || dev.Username != "" || dev.Account == nil {
		return nil, ""
	}
	return r.sp.NewSession(spool.Intake{Device: dev.Name, Account: dev.Account.Username, Mailbox: dev.Account.Mailbox,
		EnvelopeFrom: dev.EnvelopeFrom, HeaderFrom: dev.HeaderFrom}), dev.Name
}

// Authenticated implements the SMTP front's Intake: a device that logged
// in with its own credential, and an account with spool = true, spool
// their mail.
func (r *deviceRelay) Authenticated(g *auth.Grant, _ netip.Addr) submit.Submitter {
	cfg := r.config()
	if dev := cfg.Device(g.Username); dev != nil && dev.Account != nil {
		return r.sp.NewSession(spool.Intake{Device: dev.Name, Account: dev.Account.Username, Mailbox: dev.Account.Mailbox,
			EnvelopeFrom: dev.EnvelopeFrom, HeaderFrom: dev.HeaderFrom})
	}
	a := cfg.Account(g.Username)
	if a == nil || !a.Spool {
		return nil
	}
	return r.sp.NewSession(spool.Intake{Account: a.Username, Mailbox: a.Mailbox})
}

// start runs the workers, the control directory and the keep-alive, and
// unlocks the service-sealed accounts so that keep-alive can refresh them.
func (r *deviceRelay) start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.sp.Start()
	cfg := r.config()
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		r.sp.ServeControl(ctx, cfg.Spool.Dir, controlInterval)
	}()
	go func() {
		defer r.wg.Done()
		for _, a := range cfg.Accounts {
			if a.Seal == config.SealService && a.Flow != config.FlowClientCredentials {
				uctx, ucancel := context.WithTimeout(ctx, unlockTimeout)
				if _, err := r.account(uctx, a.Username); err != nil {
					r.d.logger.Warn("service-sealed account not usable yet", "account", a.Username, "err", err)
				}
				ucancel()
			}
		}
		r.d.manager.KeepAlive(ctx, cfg.Tokens.Keepalive, keepAliveInterval)
	}()
}

// shutdown stops the workers after their attempts in flight, bounded by
// ctx; queued messages stay on disk for the next start.
func (r *deviceRelay) shutdown(ctx context.Context) error {
	if r.cancel != nil {
		r.cancel()
	}
	err := r.sp.Shutdown(ctx)
	r.wg.Wait()
	r.release()
	return err
}

// view is the admin page's view of the spool, nil when there is none.
func (r *deviceRelay) view() admin.SpoolView {
	if r == nil {
		return nil
	}
	return r.sp
}

// listenerTLS is the local TLS config of a front: Go's defaults from TLS
// 1.2 up, or, for tls_min_version below 1.2 (old devices on a listed
// network, config checks that), that version with the older cipher suites
// such devices need.
func listenerTLS(base *tls.Config, min uint16) *tls.Config {
	if base == nil {
		return nil
	}
	c := base.Clone()
	c.MinVersion = min
	if min < tls.VersionTLS12 {
		c.CipherSuites = config.LegacyCipherSuites()
	}
	return c
}

// deviceSpecs are the local logins of devices with a credential of their
// own: their password_hash checks the login; their mail always goes
// through the spool (the Intake), so their token source is never asked.
func deviceSpecs(cfg *config.Config) []auth.AccountSpec {
	var out []auth.AccountSpec
	for _, dev := range cfg.Devices {
		if dev.Username == "" || dev.Account == nil {
			continue
		}
		out = append(out, auth.AccountSpec{Username: dev.Username, Mailbox: dev.Account.Mailbox,
			Identity: dev.Account.Mailbox, PasswordHash: dev.PasswordHash, Tokens: spoolOnly{}})
	}
	return out
}

// spoolOnly is the token source of a device login: none.
type spoolOnly struct{}

var errSpoolOnly = errors.New("a device's mail goes through the spool, with its account's tokens")

func (spoolOnly) Token(context.Context) (string, error)           { return "", errSpoolOnly }
func (spoolOnly) Refresh(context.Context, string) (string, error) { return "", errSpoolOnly }

// serviceTokens is the token source of a seal = "service" account for
// its mail clients (which log in against its password_hash): the
// account's Source, opened with the service key at first use.
type serviceTokens struct {
	d        *Daemon
	username string
}

func (s serviceTokens) source(ctx context.Context) (*oauth.Source, error) {
	cfg := s.d.Config()
	key, err := oauth.LoadServiceKey(cfg.StateDir, false)
	if err != nil {
		return nil, fmt.Errorf("service key: %w (run `mailproxy login %s`)", err, s.username)
	}
	src, _, err := s.d.manager.Open(ctx, s.username, key.Password(s.username))
	return src, err
}

func (s serviceTokens) Token(ctx context.Context) (string, error) {
	src, err := s.source(ctx)
	if err != nil {
		return "", err
	}
	return src.Token(ctx)
}

func (s serviceTokens) Refresh(ctx context.Context, rejected string) (string, error) {
	src, err := s.source(ctx)
	if err != nil {
		return "", err
	}
	return src.Refresh(ctx, rejected)
}
