package daemon

import (
	"crypto/tls"

	"mailproxy/config"
	"mailproxy/front"
	imapfront "mailproxy/front/imap"
	pop3front "mailproxy/front/pop3"
	smtpfront "mailproxy/front/smtp"
)

// frontDef registers one protocol front with the daemon. Adding a front
// is a package under front/ implementing front.Front, a config block, and
// one line in frontDefs; the daemon binds, reloads, traces and shuts it
// down like the others.
type frontDef struct {
	// name is the front's name: its config block, its listeners (name
	// for the plain one, name+"s" for implicit TLS), its metrics label
	// and the key of its server in upstream.Upstream.Addr.
	name string
	// listen gives the plain and the implicit TLS listen address in cfg;
	// "" for none.
	listen func(cfg *config.Config) (plain, implicitTLS string)
	// upstream gives the address of the provider's server the front
	// relays to.
	upstream func(p *config.Provider) string
	// tlsMin is the lowest TLS version its listeners accept.
	tlsMin func(cfg *config.Config) uint16
	// refusal is written to a plain connection over the connection limit
	// before it is closed.
	refusal string
	// build makes the front from the daemon's first config; tlsConf is
	// the local certificate (nil: none).
	build func(d *Daemon, cfg *config.Config, tlsConf *tls.Config) front.Front
}

// frontDefs are the fronts, in the order they are bound and listed.
var frontDefs = []frontDef{
	{imapfront.Name, func(c *config.Config) (string, string) { return c.IMAP.Listen, c.IMAP.ListenTLS },
		func(p *config.Provider) string { return p.IMAPServer },
		func(c *config.Config) uint16 { return c.IMAP.TLSMinVersion }, imapfront.TooManyConnections, newIMAP},
	{smtpfront.Name, func(c *config.Config) (string, string) { return c.SMTP.Listen, c.SMTP.ListenTLS },
		func(p *config.Provider) string { return p.SMTPServer },
		func(c *config.Config) uint16 { return c.SMTP.TLSMinVersion }, smtpfront.TooManyConnections, newSMTP},
	{pop3front.Name, func(c *config.Config) (string, string) { return c.POP3.Listen, c.POP3.ListenTLS },
		func(p *config.Provider) string { return p.POP3Server },
		func(c *config.Config) uint16 { return c.POP3.TLSMinVersion }, pop3front.TooManyConnections, newPOP3},
}

// frontNames are the registered fronts' names.
func frontNames() []string {
	names := make([]string, len(frontDefs))
	for i, f := range frontDefs {
		names[i] = f.name
	}
	return names
}

func newIMAP(d *Daemon, cfg *config.Config, tlsConf *tls.Config) front.Front {
	d.imap = &imapfront.Server{
		Auth:                  d.accounts,
		TLSConfig:             tlsConf,
		Logger:                d.logger,
		Metrics:               d.metrics,
		PlaintextAllowed:      d.plaintextAllowed,
		IdleTimeout:           cfg.IMAP.IdleTimeout,
		MaxUpstreamPerMailbox: cfg.Security.MaxUpstreamPerMailbox,
		PreAuthTimeout:        cfg.IMAP.PreAuthTimeout,
		UpstreamTimeout:       cfg.Security.UpstreamTimeout,
		MaxLine:               cfg.IMAP.MaxLine,
		MaxLiteral:            cfg.IMAP.MaxLiteral,
		MaxPreAuthConns:       cfg.Security.MaxPreAuthConns,
	}
	return d.imap
}

func newSMTP(d *Daemon, cfg *config.Config, tlsConf *tls.Config) front.Front {
	d.smtp = &smtpfront.Server{
		Auth:             d.accounts,
		TLSConfig:        tlsConf,
		Logger:           d.logger,
		Metrics:          d.metrics,
		PlaintextAllowed: d.plaintextAllowed,
		Domain:           cfg.SMTP.Domain,
		MaxMessageBytes:  cfg.SMTP.MaxMessageBytes, // 0: config.FallbackMaxMessageBytes
		MaxRecipients:    cfg.SMTP.MaxRecipients,
		ReadTimeout:      cfg.SMTP.ReadTimeout,
		WriteTimeout:     cfg.SMTP.WriteTimeout,
		UpstreamTimeout:  cfg.Security.UpstreamTimeout,

		PreAuthTimeout:     cfg.SMTP.PreAuthTimeout,
		MaxPreAuthCommands: cfg.SMTP.MaxPreAuthCommands,
		MaxPreAuthConns:    cfg.Security.MaxPreAuthConns,
		Opener:             d.smtpOpener,
	}
	return d.smtp
}

func newPOP3(d *Daemon, cfg *config.Config, tlsConf *tls.Config) front.Front {
	return &pop3front.Server{
		Auth:                  d.accounts,
		TLSConfig:             tlsConf,
		Logger:                d.logger,
		Metrics:               d.metrics,
		PlaintextAllowed:      d.plaintextAllowed,
		PreAuthTimeout:        cfg.POP3.PreAuthTimeout,
		IdleTimeout:           cfg.POP3.IdleTimeout,
		MaxLine:               cfg.POP3.MaxLine,
		MaxUpstreamPerMailbox: cfg.Security.MaxUpstreamPerMailbox,
		UpstreamTimeout:       cfg.Security.UpstreamTimeout,
	}
}
