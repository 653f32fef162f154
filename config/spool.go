package config

import (
	"crypto/tls"
	"path/filepath"
	"time"
)

// Account seals: what the token store's key for an account comes from.
const (
	SealPassword = "password" // the client's local password (Argon2id); the default
	SealService  = "service"  // a key the daemon holds: usable without a client
)

// Spool holds the keys of the file's spool table: the device relay's
// durable queue.
type Spool struct {
	Dir             string        // default state_dir/spool
	Rate            int           // messages per minute per mailbox
	DailyRecipients int           // per mailbox in any 24 hours
	Retry           time.Duration // first retry; doubles up to an hour
	MaxAge          time.Duration // then the message bounces
	LogRetention    time.Duration // delivery log
}

// Tokens holds the keys of the file's tokens table.
type Tokens struct {
	// Keepalive: accounts the daemon can use without a client get a
	// refresh at least this often, so their refresh token never meets
	// the 90-day inactivity expiry.
	Keepalive time.Duration
}

type rawSpool struct {
	Dir             val `toml:"dir"`
	Rate            val `toml:"rate"`
	DailyRecipients val `toml:"daily_recipients"`
	Retry           val `toml:"retry"`
	MaxAge          val `toml:"max_age"`
	LogRetention    val `toml:"log_retention"`
}

type rawTokens struct {
	Keepalive val `toml:"keepalive"`
}

func (c *checker) spool(r *rawSpool, s *Spool, stateDir string) {
	s.Dir = c.path(r.Dir, "spool.dir")
	if s.Dir == "" && stateDir != "" {
		s.Dir = filepath.Join(stateDir, "spool")
	}
	// Exchange Online refuses more than 30 a minute per mailbox; a higher
	// rate is for other upstreams.
	s.Rate = int(c.integer(r.Rate, "spool.rate", 30, 1, 10000))
	s.DailyRecipients = int(c.integer(r.DailyRecipients, "spool.daily_recipients", 10000, 1, 10000000))
	s.Retry = c.duration(r.Retry, "spool.retry", time.Minute)
	s.MaxAge = c.duration(r.MaxAge, "spool.max_age", 120*time.Hour)
	s.LogRetention = c.duration(r.LogRetention, "spool.log_retention", 720*time.Hour)
	if s.Retry > time.Hour && !c.bad["spool.retry"] {
		c.errorf("spool.retry", "%s is longer than the longest retry delay (1h)", s.Retry)
	}
	if s.MaxAge < s.Retry && !c.bad["spool.max_age"] && !c.bad["spool.retry"] {
		c.errorf("spool.max_age", "%s is shorter than spool.retry %s: nothing would be retried", s.MaxAge, s.Retry)
	}
}

func (c *checker) tokens(r *rawTokens, t *Tokens) {
	t.Keepalive = c.duration(r.Keepalive, "tokens.keepalive", 168*time.Hour)
	// Entra ID refresh tokens expire after 90 days without use.
	if t.Keepalive > 80*24*time.Hour && !c.bad["tokens.keepalive"] {
		c.errorf("tokens.keepalive", "%s is too long: refresh tokens expire after 90 days unused; use at most \"1920h\" (80 days)", t.Keepalive)
	}
}

// tlsMinVersion reads a listener's tls_min_version.
func (c *checker) tlsMinVersion(v val, key string) uint16 {
	s := c.str(v, key, "1.2")
	switch s {
	case "1.0":
		return tls.VersionTLS10
	case "1.1":
		return tls.VersionTLS11
	case "1.2":
		return tls.VersionTLS12
	case "1.3":
		return tls.VersionTLS13
	}
	if !c.bad[key] {
		c.errorf(key, "%s is not a TLS version: use \"1.0\", \"1.1\", \"1.2\" or \"1.3\"", q(s))
	}
	return tls.VersionTLS12
}

// legacyTLS checks that a listener below TLS 1.2 serves a listed LAN:
// old devices on networks the admin named, never the default loopback-only
// setup by accident.
func (c *checker) legacyTLS(cfg *Config) {
	lan := len(cfg.Security.AllowPlaintextFrom) > 0 || len(cfg.Devices) > 0
	for _, l := range []struct {
		key string
		v   uint16
	}{{"imap.tls_min_version", cfg.IMAP.TLSMinVersion}, {"smtp.tls_min_version", cfg.SMTP.TLSMinVersion}, {"pop3.tls_min_version", cfg.POP3.TLSMinVersion}} {
		if l.v < tls.VersionTLS12 && !lan && !c.bad[l.key] {
			c.errorf(l.key, "TLS below 1.2 is only for old devices on a listed network: list them in security.allow_plaintext_from or a [[device]] from")
		}
	}
}

// LegacyCipherSuites are the suites a listener with tls_min_version below
// 1.2 adds to Go's defaults: the CBC suites with RSA key exchange that
// TLS 1.0 printers and scanners often offer alone. They are never used
// upstream.
func LegacyCipherSuites() []uint16 {
	var ids []uint16
	for _, s := range tls.CipherSuites() {
		ids = append(ids, s.ID)
	}
	return append(ids,
		tls.TLS_RSA_WITH_AES_128_CBC_SHA,
		tls.TLS_RSA_WITH_AES_256_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA,
		tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA,
	)
}
