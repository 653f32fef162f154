package config

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// checker turns a raw config into a Config, collecting every error it can.
type checker struct {
	dir  string   // relative paths are resolved against it
	loc  *located // key lines; nil when unknown
	errs []*Error
	bad  map[string]bool // keys already reported, so derived checks stay quiet
}

func (c *checker) errorf(key, format string, args ...any) {
	c.add(key, fmt.Sprintf(format, args...), nil)
}

func (c *checker) add(key, msg string, err error) {
	c.bad[key] = true
	c.errs = append(c.errs, &Error{Key: key, Line: c.loc.line(key), Msg: msg, Err: err})
}

func (c *checker) run(data []byte) *Config {
	var raw rawConfig
	md, err := decode(data, &raw)
	var pe toml.ParseError
	switch {
	case errors.As(err, &pe):
		c.syntax(pe)
		return nil
	case err != nil:
		c.loc = locate(string(data), md.Keys())
		c.shape(data, err)
		return nil
	}
	c.loc = locate(string(data), md.Keys())
	c.unknownKeys(&md)
	return c.config(&raw)
}

func decode(data []byte, v any) (md toml.MetaData, err error) {
	defer func() {
		// The value is not shown: it may quote the file.
		if recover() != nil {
			err = errors.New("the TOML decoder failed on this file")
		}
	}()
	return toml.NewDecoder(bytes.NewReader(data)).Decode(v)
}

// secretKeys hold values that no message may show.
func isSecretKey(key string) bool {
	i := strings.LastIndexByte(key, '.')
	switch key[i+1:] {
	case "client_secret", "password_hash":
		return true
	}
	return false
}

func (c *checker) syntax(pe toml.ParseError) {
	msg := pe.Message
	if isSecretKey(pe.LastKey) {
		// Lexer messages can quote the offending text.
		msg = "invalid value (not shown: this key holds a secret)"
	}
	c.errs = append(c.errs, &Error{Line: pe.Position.Line, Key: pe.LastKey, Msg: "TOML syntax: " + msg})
}

// shape explains a decoder failure, which only happens when a section has
// the wrong shape ("imap = 1", "[account]" instead of "[[account]]").
func (c *checker) shape(data []byte, err error) {
	n := len(c.errs)
	var m map[string]any
	if _, e := decode(data, &m); e == nil {
		for _, s := range tableSections {
			if v, ok := m[s]; ok {
				if _, ok := v.(map[string]any); !ok {
					c.errorf(s, "must be a table: write [%s] with its keys on the lines below", s)
				}
			}
		}
		for _, s := range arraySections {
			switch v := m[s].(type) {
			case nil, []map[string]any:
			case map[string]any:
				c.errorf(s, "write [[%s]] with double brackets: it is an array of tables", s)
			case []any:
				for i, e := range v {
					if _, ok := e.(map[string]any); !ok {
						c.errorf(fmt.Sprintf("%s[%d]", s, i), "must be a table, not %s", tomlType(e))
					}
				}
			default:
				c.errorf(s, "must be an array of tables: write [[%s]]", s)
			}
		}
	}
	if len(c.errs) == n {
		c.add("", "decode TOML", err)
	}
}

func (c *checker) unknownKeys(md *toml.MetaData) {
	undecoded := map[string]bool{}
	for _, k := range md.Undecoded() {
		undecoded[k.String()] = true
	}
	for j, k := range md.Keys() {
		name := k.String()
		if c.loc != nil {
			name = c.loc.names[j]
		}
		last := k[len(k)-1]
		table := ""
		if len(k) > 1 {
			table = strings.ToLower(k[len(k)-2])
		}
		if undecoded[k.String()] {
			if hasUndecodedParent(k, undecoded) {
				continue // reported with its parent
			}
			msg := "unknown key"
			if s := suggest(table, last); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			c.errorf(name, "%s", msg)
			continue
		}
		// The decoder matches struct fields case-insensitively; the key
		// names are a contract, so insist on their spelling.
		if lower := strings.ToLower(last); lower != last && isKnown(table, lower) {
			c.errorf(name, "key names are lower case: write %q", lower)
		}
	}
}

func hasUndecodedParent(k toml.Key, undecoded map[string]bool) bool {
	for i := 1; i < len(k); i++ {
		if undecoded[k[:i].String()] {
			return true
		}
	}
	return false
}

func (c *checker) config(r *rawConfig) *Config {
	cfg := &Config{}
	cfg.StateDir = c.stateDir(r.StateDir)
	cfg.ShutdownTimeout = c.duration(r.ShutdownTimeout, "shutdown_timeout", 30*time.Second)
	c.tls(&r.TLS, &cfg.TLS)
	c.imap(&r.IMAP, &cfg.IMAP)
	c.smtp(&r.SMTP, &cfg.SMTP)
	c.pop3(&r.POP3, &cfg.POP3)
	c.admin(&r.Admin, &cfg.Admin)
	c.security(&r.Security, &cfg.Security)
	c.log(&r.Log, &cfg.Log)
	c.providers(r.Providers, cfg)
	c.accounts(r.Accounts, cfg)
	graphSignInScopes(cfg)
	c.spool(&r.Spool, &cfg.Spool, cfg.StateDir)
	c.tokens(&r.Tokens, &cfg.Tokens)
	c.devices(r.Devices, cfg)
	c.listeners(cfg) // after devices: their networks count for smtp.listen
	c.legacyTLS(cfg)
	return cfg
}

// ---- sections ----

func (c *checker) stateDir(v val) string {
	if v.set {
		s := c.path(v, "state_dir")
		if s == "" && !c.bad["state_dir"] {
			c.errorf("state_dir", "must not be empty")
		}
		return s
	}
	d, err := defaultStateDir()
	if err != nil {
		c.add("state_dir", "no default, set state_dir", err)
	}
	return d
}

func (c *checker) tls(r *rawTLS, t *TLS) {
	t.CertFile = c.path(r.CertFile, "tls.cert_file")
	t.KeyFile = c.path(r.KeyFile, "tls.key_file")
	t.SelfSigned = c.boolean(r.SelfSigned, "tls.self_signed", false)
	switch {
	case t.CertFile != "" && t.SelfSigned:
		c.errorf("tls.self_signed", "conflicts with tls.cert_file: use a certificate or a self-signed one, not both")
	case t.CertFile != "" && t.KeyFile == "":
		c.errorf("tls.key_file", "required when tls.cert_file is set")
	case t.CertFile == "" && t.KeyFile != "":
		c.errorf("tls.cert_file", "required when tls.key_file is set")
	case t.CertFile != "":
		cert, err := readFile(t.CertFile, maxPEMSize)
		if err != nil {
			c.add("tls.cert_file", "cannot read the certificate", err)
			return
		}
		key, err := readFile(t.KeyFile, maxPEMSize)
		if err != nil {
			c.add("tls.key_file", "cannot read the private key", err)
			return
		}
		if _, err := tls.X509KeyPair(cert, key); err != nil {
			c.add("tls.cert_file", "cannot use the certificate with tls.key_file", err)
		}
	}
}

func (c *checker) imap(r *rawIMAP, m *IMAP) {
	m.Listen = c.listen(r.Listen, "imap.listen", "127.0.0.1:1143")
	m.ListenTLS = c.listen(r.ListenTLS, "imap.listen_tls", "")
	m.PreAuthTimeout = c.duration(r.PreAuthTimeout, "imap.preauth_timeout", 60*time.Second)
	m.IdleTimeout = c.duration(r.IdleTimeout, "imap.idle_timeout", 30*time.Minute)
	if m.IdleTimeout < 29*time.Minute {
		c.errorf("imap.idle_timeout", "%s is too short: RFC 2177 lets clients stay in IDLE for 29 minutes; use at least \"29m\"", m.IdleTimeout)
	}
	// RFC 3501 needs room for 1000-byte lines; a bound is the point, so
	// keep it well under a megabyte.
	m.MaxLine = int(c.integer(r.MaxLine, "imap.max_line", 65536, 1000, 1<<20))
	m.MaxLiteral = int(c.integer(r.MaxLiteral, "imap.max_literal", 65536, 256, 1<<20))
	m.TLSMinVersion = c.tlsMinVersion(r.TLSMinVersion, "imap.tls_min_version")
}

func (c *checker) smtp(r *rawSMTP, s *SMTP) {
	s.Listen = c.listen(r.Listen, "smtp.listen", "127.0.0.1:1587")
	s.ListenTLS = c.listen(r.ListenTLS, "smtp.listen_tls", "")
	s.Domain = c.str(r.Domain, "smtp.domain", "")
	if s.Domain == "" {
		s.Domain = defaultDomain()
	} else if !validDomain(s.Domain) && !c.bad["smtp.domain"] {
		c.errorf("smtp.domain", "%s is not a host name", q(s.Domain))
	}
	s.MaxMessageBytes = c.integer(r.MaxMessageBytes, "smtp.max_message_bytes", 0, 0, 1<<31)
	s.MaxRecipients = int(c.integer(r.MaxRecipients, "smtp.max_recipients", 500, 1, 100000))
	s.ReadTimeout = c.duration(r.ReadTimeout, "smtp.read_timeout", 10*time.Minute)
	s.WriteTimeout = c.duration(r.WriteTimeout, "smtp.write_timeout", time.Minute)
	s.PreAuthTimeout = c.duration(r.PreAuthTimeout, "smtp.preauth_timeout", 60*time.Second)
	s.MaxPreAuthCommands = int(c.integer(r.MaxPreAuthCmds, "smtp.max_preauth_commands", 30, 5, 10000))
	s.TLSMinVersion = c.tlsMinVersion(r.TLSMinVersion, "smtp.tls_min_version")
}

func defaultDomain() string {
	if h, err := os.Hostname(); err == nil && validDomain(h) {
		return h
	}
	return "localhost"
}

func validDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") { // address literal
		_, err := netip.ParseAddr(strings.TrimPrefix(s[1:len(s)-1], "IPv6:"))
		return err == nil
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if !isBareKeyByte(label[i]) || label[i] == '_' {
				return false
			}
		}
	}
	return true
}

func (c *checker) admin(r *rawAdmin, a *Admin) {
	a.Listen = c.listen(r.Listen, "admin.listen", "127.0.0.1:8025")
	a.PasswordHash = c.phc(r.PasswordHash, "admin.password_hash")
	a.Hostnames = c.hostnames(r.Hostnames, "admin.hostnames")
	if a.Listen == "" || c.bad["admin.listen"] || c.bad["admin.password_hash"] {
		return
	}
	if kind, _ := classifyHost(a.Listen); kind != hostLoopback && a.PasswordHash == "" {
		c.errorf("admin.password_hash", "required because admin.listen %s is not a loopback address: the page signs accounts in; create one with `mailproxy hash-password`", q(a.Listen))
	}
}

func (c *checker) security(r *rawSecurity, s *Security) {
	s.AllowFrom = c.prefixes(r.AllowFrom, "security.allow_from", []string{"127.0.0.0/8", "::1/128"})
	if len(s.AllowFrom) == 0 && !c.bad["security.allow_from"] {
		c.errorf("security.allow_from", "is empty, so nobody could connect; remove the key for the default (loopback only)")
	}
	s.AllowPlaintextFrom = c.prefixes(r.AllowPlaintextFrom, "security.allow_plaintext_from", nil)
	s.MaxConnections = int(c.integer(r.MaxConnections, "security.max_connections", 1000, 1, 1<<20))
	s.MaxConnectionsPerIP = int(c.integer(r.MaxConnectionsPerIP, "security.max_connections_per_ip", 50, 1, 1<<20))
	s.UpstreamTimeout = c.duration(r.UpstreamTimeout, "security.upstream_timeout", 30*time.Second)
	s.LockoutFailures = int(c.integer(r.LockoutFailures, "security.lockout_failures", 5, 0, 1000))
	s.LockoutWindow = c.duration(r.LockoutWindow, "security.lockout_window", 15*time.Minute)
	s.LockoutDuration = c.duration(r.LockoutDuration, "security.lockout_duration", 15*time.Minute)
	s.LockoutAddrFailures = int(c.integer(r.LockoutAddrFailures, "security.lockout_address_failures", 4*int64(max(s.LockoutFailures, 1)), 1, 100000))
	if s.LockoutAddrFailures < s.LockoutFailures && !c.bad["security.lockout_address_failures"] {
		c.errorf("security.lockout_address_failures", "%d is below security.lockout_failures (%d): one username's failures would block the whole address first", s.LockoutAddrFailures, s.LockoutFailures)
	}
	s.MaxPreAuthConns = int(c.integer(r.MaxPreAuthConns, "security.max_preauth_connections", 200, 1, 1<<20))
	s.MaxUpstreamPerMailbox = int(c.integer(r.MaxUpstreamPerMailbox, "security.max_upstream_per_mailbox", 16, 1, 1000))
}

func (c *checker) log(r *rawLog, l *Log) {
	l.Format = c.str(r.Format, "log.format", LogText)
	if l.Format != LogText && l.Format != LogJSON && !c.bad["log.format"] {
		c.errorf("log.format", "%s is not a log format: use \"text\" or \"json\"", q(l.Format))
	}
	level := c.str(r.Level, "log.level", "info")
	switch level {
	case "debug":
		l.Level = slog.LevelDebug
	case "info":
		l.Level = slog.LevelInfo
	case "warn":
		l.Level = slog.LevelWarn
	case "error":
		l.Level = slog.LevelError
	default:
		if !c.bad["log.level"] {
			c.errorf("log.level", "%s is not a log level: use debug, info, warn or error", q(level))
		}
	}
	l.File = c.path(r.File, "log.file")
}
