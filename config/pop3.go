package config

import "time"

// The [pop3] table and provider.pop3_server: the POP3 front and where it
// logs in.

// POP3 holds the keys of the file's pop3 table. An empty listen address
// means that listener is off; both are off unless set.
type POP3 struct {
	Listen         string // plain, STLS when TLS is configured
	ListenTLS      string // implicit TLS (port 995's role)
	PreAuthTimeout time.Duration
	IdleTimeout    time.Duration // >= 10m (RFC 1939's autologout timer)
	MaxLine        int           // bytes of one line before login
	TLSMinVersion  uint16        // tls.VersionTLS10 ... VersionTLS13
}

type rawPOP3 struct {
	Listen         val `toml:"listen"`
	ListenTLS      val `toml:"listen_tls"`
	PreAuthTimeout val `toml:"preauth_timeout"`
	IdleTimeout    val `toml:"idle_timeout"`
	MaxLine        val `toml:"max_line"`
	TLSMinVersion  val `toml:"tls_min_version"`
}

func (c *checker) pop3(r *rawPOP3, p *POP3) {
	p.Listen = c.listen(r.Listen, "pop3.listen", "")
	p.ListenTLS = c.listen(r.ListenTLS, "pop3.listen_tls", "")
	p.PreAuthTimeout = c.duration(r.PreAuthTimeout, "pop3.preauth_timeout", 60*time.Second)
	p.IdleTimeout = c.duration(r.IdleTimeout, "pop3.idle_timeout", 10*time.Minute)
	if p.IdleTimeout < 10*time.Minute && !c.bad["pop3.idle_timeout"] {
		c.errorf("pop3.idle_timeout", "%s is too short: RFC 1939 gives clients at least 10 minutes between commands; use at least \"10m\"", p.IdleTimeout)
	}
	// RFC 2449 asks clients for lines of at most 255 octets, but a PLAIN
	// response with a long password or a LOGIN answer can be longer.
	p.MaxLine = int(c.integer(r.MaxLine, "pop3.max_line", 8192, 512, 1<<20))
	p.TLSMinVersion = c.tlsMinVersion(r.TLSMinVersion, "pop3.tls_min_version")
}

// pop3Server reads provider.pop3_server: host:port like the other servers,
// but "" is allowed and means the provider has no POP3 (custom providers,
// or an admin who wants POP3 logins of its accounts refused).
func (c *checker) pop3Server(v val, key, def string) string {
	if s := c.str(v, key, def); s == "" || c.bad[key] {
		return s
	}
	return c.server(v, key, def, false)
}
