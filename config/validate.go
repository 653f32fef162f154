package config

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

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

// listeners checks what involves several listen addresses.
func (c *checker) listeners(cfg *Config) {
	type listener struct{ key, addr string }
	mail := []listener{
		{"imap.listen", cfg.IMAP.Listen},
		{"imap.listen_tls", cfg.IMAP.ListenTLS},
		{"smtp.listen", cfg.SMTP.Listen},
		{"smtp.listen_tls", cfg.SMTP.ListenTLS},
		{"pop3.listen", cfg.POP3.Listen},
		{"pop3.listen_tls", cfg.POP3.ListenTLS},
	}
	all := append(mail, listener{"admin.listen", cfg.Admin.Listen})
	if !slices.ContainsFunc(mail, func(l listener) bool { return l.addr != "" }) {
		c.errorf("imap.listen", "every mail listener is off (imap.listen, imap.listen_tls, smtp.listen, smtp.listen_tls, pop3.listen, pop3.listen_tls): set at least one")
	}
	for _, l := range mail {
		if l.addr == "" || c.bad[l.key] {
			continue
		}
		if strings.HasSuffix(l.key, "_tls") {
			if !cfg.TLS.Enabled() {
				c.errorf(l.key, "needs a certificate: set tls.cert_file and tls.key_file, or tls.self_signed = true")
			}
			continue
		}
		// Devices without a credential send no password: a plain SMTP
		// listener off loopback may serve them (clients' AUTH is still
		// refused without TLS outside allow_plaintext_from).
		if l.key == "smtp.listen" && len(deviceNetworks(cfg)) > 0 {
			continue
		}
		if !c.bad["security.allow_plaintext_from"] {
			c.plaintext(l.key, l.addr, cfg.Security.AllowPlaintextFrom)
		}
	}
	c.adminPlaintext(cfg)
	for i, a := range all {
		for _, b := range all[:i] {
			if a.addr == "" || b.addr == "" || c.bad[a.key] || c.bad[b.key] {
				continue
			}
			if sameSocket(a.addr, b.addr) {
				c.errorf(a.key, "%s clashes with %s %s", q(a.addr), b.key, q(b.addr))
			}
		}
	}
}

// plaintext enforces that listeners taking passwords in the clear stay on
// loopback unless security.allow_plaintext_from says otherwise.
func (c *checker) plaintext(key, addr string, allowed []netip.Prefix) {
	kind, ip := classifyHost(addr)
	switch {
	case kind == hostLoopback:
	case kind == hostIP && !containsAddr(allowed, ip):
		c.errorf(key, "%s is not a loopback address and security.allow_plaintext_from does not cover it: passwords would cross the network in plain text; add its network to security.allow_plaintext_from, listen on 127.0.0.1, or use listen_tls", q(addr))
	case kind == hostAny && len(allowed) == 0:
		c.errorf(key, "%s can be reached on every address of this host (or on a name that cannot be checked) and passwords would cross the network in plain text; list the networks allowed to do that in security.allow_plaintext_from, listen on 127.0.0.1, or use listen_tls", q(addr))
	}
}

type hostKind int

const (
	hostLoopback hostKind = iota
	hostIP                // one non-loopback address
	hostAny               // every address, or a name
)

// classifyHost sorts the host of a valid listen address.
func classifyHost(addr string) (hostKind, netip.Addr) {
	host, _, _ := net.SplitHostPort(addr)
	if strings.EqualFold(host, "localhost") {
		return hostLoopback, netip.Addr{}
	}
	ip, err := netip.ParseAddr(host)
	switch {
	case err != nil: // "" or a name
		return hostAny, netip.Addr{}
	case ip.Unmap().IsLoopback():
		return hostLoopback, ip
	case ip.IsUnspecified():
		return hostAny, ip
	}
	return hostIP, ip.Unmap().WithZone("")
}

// sameSocket reports whether two valid listen addresses would fight over a
// port. Port 0 picks a free port, so it never clashes.
func sameSocket(a, b string) bool {
	ha, pa, _ := net.SplitHostPort(a)
	hb, pb, _ := net.SplitHostPort(b)
	na, _ := strconv.Atoi(pa)
	nb, _ := strconv.Atoi(pb)
	if na == 0 || na != nb {
		return false
	}
	wild := func(h string) bool {
		ip, err := netip.ParseAddr(h)
		return h == "" || err == nil && ip.IsUnspecified()
	}
	return wild(ha) || wild(hb) || strings.EqualFold(ha, hb)
}

func (c *checker) providers(rs []rawProvider, cfg *Config) {
	redirectPort := "8025"
	if cfg.Admin.Listen != "" && !c.bad["admin.listen"] {
		_, redirectPort, _ = net.SplitHostPort(cfg.Admin.Listen)
	}
	names := map[string]int{}
	for i := range rs {
		p := c.provider(fmt.Sprintf("provider[%d]", i), &rs[i], redirectPort)
		if j, dup := names[p.Name]; dup && p.Name != "" {
			c.errorf(fmt.Sprintf("provider[%d].name", i), "%s is already the name of provider[%d]", q(p.Name), j)
		} else {
			names[p.Name] = i
		}
		cfg.Providers = append(cfg.Providers, p)
	}
}

func (c *checker) provider(base string, r *rawProvider, redirectPort string) *Provider {
	k := func(name string) string { return base + "." + name }
	p := &Provider{}

	p.Name = c.str(r.Name, k("name"), "")
	switch {
	case c.bad[k("name")]:
	case p.Name == "":
		c.errorf(k("name"), "required: accounts refer to the provider by it")
	case !validName(p.Name):
		c.errorf(k("name"), "%s: use letters, digits, '.', '_' and '-' (at most 64)", q(p.Name))
	}

	p.Type = c.strDef(r.Type, k("type"), TypeOffice365)
	pre, known := presets[p.Type]
	if !known && !c.bad[k("type")] {
		c.errorf(k("type"), "%s is not a provider type: use office365, outlook, gmail or custom", q(p.Type))
	}
	custom := p.Type == TypeCustom
	p.Cloud = c.cloud(base, r, p.Type, &pre)

	switch {
	case pre.tenant != "":
		p.Tenant = c.strDef(r.Tenant, k("tenant"), pre.tenant)
		if !validName(p.Tenant) && !c.bad[k("tenant")] {
			c.errorf(k("tenant"), "%s: use the tenant ID, a domain such as contoso.onmicrosoft.com, organizations, common or consumers", q(p.Tenant))
		}
	case r.Tenant.set && known:
		c.errorf(k("tenant"), "only type office365 and outlook have a tenant")
	}

	p.ClientID = c.str(r.ClientID, k("client_id"), "")
	if p.ClientID == "" && !c.bad[k("client_id")] {
		c.errorf(k("client_id"), "required: the application (client) ID of the app registration")
	} else if strings.ContainsFunc(p.ClientID, unicode.IsSpace) {
		c.errorf(k("client_id"), "must not contain spaces")
	}

	p.ClientSecret = c.str(r.ClientSecret, k("client_secret"), "")
	// "" means none for both, as in the example config.
	if key := k("client_secret_file"); r.ClientSecretFile.set {
		path := c.path(r.ClientSecretFile, key)
		switch {
		case c.bad[key] || path == "":
		case p.ClientSecret != "":
			c.errorf(key, "conflicts with client_secret: use one of them")
		default:
			data, err := readFile(path, maxSecretSize)
			if err != nil {
				c.add(key, "cannot read the client secret", err)
				break
			}
			p.ClientSecret = strings.TrimRight(string(data), "\r\n")
			if p.ClientSecret == "" {
				c.errorf(key, "%s is empty", path)
			} else if hasControl(p.ClientSecret) {
				c.errorf(key, "%s holds a control character or several lines", path)
			}
		}
	}

	p.AuthURL = c.endpoint(r.AuthURL, k("auth_url"), withTenant(pre.authURL, p.Tenant), custom)
	p.TokenURL = c.endpoint(r.TokenURL, k("token_url"), withTenant(pre.tokenURL, p.Tenant), custom)
	p.DeviceAuthURL = c.endpoint(r.DeviceAuthURL, k("device_auth_url"), withTenant(pre.devURL, p.Tenant), false)
	p.Scopes = c.scopes(r.Scopes, k("scopes"), pre.scopes, custom, true)
	p.AppScopes = c.scopes(r.AppScopes, k("app_scopes"), pre.appScopes, false, false)
	p.IMAPServer = c.server(r.IMAPServer, k("imap_server"), pre.imapServer, custom)
	p.SMTPServer = c.server(r.SMTPServer, k("smtp_server"), pre.smtpServer, custom)
	p.POP3Server = c.pop3Server(r.POP3Server, k("pop3_server"), pre.pop3Server)

	p.CAFile = c.path(r.CAFile, k("ca_file"))
	if p.CAFile != "" && !c.bad[k("ca_file")] {
		p.RootCAs = c.roots(k("ca_file"), p.CAFile)
	}

	def := "http://localhost:" + redirectPort + "/oauth2/callback"
	p.RedirectURL = c.strDef(r.RedirectURL, k("redirect_url"), def)
	if u, err := url.Parse(p.RedirectURL); !c.bad[k("redirect_url")] &&
		(err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Fragment != "" || u.User != nil) {
		c.errorf(k("redirect_url"), "%s is not an absolute http or https URL", q(p.RedirectURL))
	}
	c.graph(base, r, p)
	return p
}

// validName accepts provider names and tenants: both end up in URLs, file
// names and log lines.
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isBareKeyByte(s[i]) && s[i] != '.' {
			return false
		}
	}
	return true
}

// endpoint reads an identity provider URL: https, or http for loopback so
// that local fakes work.
func (c *checker) endpoint(v val, key, def string, required bool) string {
	s := c.str(v, key, def)
	if c.bad[key] {
		return s
	}
	if s == "" {
		if required {
			c.errorf(key, "required for type custom")
		}
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil || u.Fragment != "" {
		c.errorf(key, "%s is not an absolute URL", q(s))
	} else if u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackName(u.Hostname())) {
		c.errorf(key, "%s: use https (http only for localhost)", q(s))
	}
	return s
}

func isLoopbackName(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

func (c *checker) scopes(v val, key string, def []string, required, nonEmpty bool) []string {
	s := c.stringList(v, key, def)
	if c.bad[key] {
		return s
	}
	switch {
	case !v.set && required:
		c.errorf(key, "required for type custom")
	case len(s) == 0 && v.set && nonEmpty:
		c.errorf(key, "must not be empty")
	}
	for i, sc := range s {
		if sc == "" || strings.ContainsFunc(sc, unicode.IsSpace) {
			c.errorf(fmt.Sprintf("%s[%d]", key, i), "%s: a scope is one word, without spaces", q(sc))
		}
	}
	return s
}

// server reads an upstream host:port.
func (c *checker) server(v val, key, def string, required bool) string {
	s := c.str(v, key, def)
	if c.bad[key] {
		return s
	}
	if s == "" {
		if required {
			c.errorf(key, "required for type custom")
		} else {
			c.errorf(key, "must not be empty")
		}
		return s
	}
	host, port, err := splitHostPort(s)
	if err == nil && (host == "" || port == 0) {
		err = errors.New("needs a host and a port other than 0")
	}
	if err != nil {
		c.errorf(key, "%s: %v; write host:port, e.g. \"outlook.office365.com:993\"", q(s), err)
	}
	return s
}

// roots loads extra trust anchors on top of the system ones.
func (c *checker) roots(key, path string) *x509.CertPool {
	data, err := readFile(path, maxPEMSize)
	if err != nil {
		c.add(key, "cannot read the CA file", err)
		return nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(data) {
		c.errorf(key, "%s holds no PEM certificate", path)
		return nil
	}
	return pool
}

func (c *checker) accounts(rs []rawAccount, cfg *Config) {
	cfg.byUser = map[string]*Account{}
	index := map[string]int{}
	for i := range rs {
		base := fmt.Sprintf("account[%d]", i)
		a := c.account(base, &rs[i], cfg)
		if a.Username == "" {
			continue
		}
		f := foldUser(a.Username)
		if j, dup := index[f]; dup {
			c.errorf(base+".username", "%s is already account[%d] (usernames are compared case-insensitively)", q(a.Username), j)
			continue
		}
		index[f] = i
		cfg.byUser[f] = a
		cfg.Accounts = append(cfg.Accounts, a)
	}
}

func (c *checker) account(base string, r *rawAccount, cfg *Config) *Account {
	k := func(name string) string { return base + "." + name }
	a := &Account{}

	a.Username = c.str(r.Username, k("username"), "")
	switch {
	case c.bad[k("username")]:
		a.Username = ""
	case a.Username == "":
		c.errorf(k("username"), "required: what the mail client logs in with")
	case strings.TrimSpace(a.Username) != a.Username || len(a.Username) > 256:
		c.errorf(k("username"), "%s: no leading or trailing spaces, at most 256 bytes", q(a.Username))
		a.Username = ""
	}

	switch name := c.str(r.Provider, k("provider"), ""); {
	case c.bad[k("provider")]:
	case name != "":
		if a.Provider = cfg.Provider(name); a.Provider == nil {
			c.errorf(k("provider"), "no [[provider]] is named %s", q(name))
		}
	case len(cfg.Providers) == 1:
		a.Provider = cfg.Providers[0]
	case len(cfg.Providers) == 0:
		c.errorf(k("provider"), "there is no [[provider]] to use")
	default:
		c.errorf(k("provider"), "required when there are several [[provider]] tables")
	}

	a.Mailbox = c.strDef(r.Mailbox, k("mailbox"), a.Username)
	if !c.bad[k("mailbox")] && a.Mailbox != "" {
		at := strings.LastIndexByte(a.Mailbox, '@')
		switch {
		case at <= 0 || at == len(a.Mailbox)-1:
			what := "mailbox"
			if a.Mailbox == a.Username {
				what = "the username (the default mailbox)"
			}
			c.errorf(k("mailbox"), "%s %s is not an email address; set mailbox to the address to open upstream", what, q(a.Mailbox))
		case strings.ContainsFunc(a.Mailbox, unicode.IsSpace):
			c.errorf(k("mailbox"), "%s must not contain spaces", q(a.Mailbox))
		}
	}

	a.Flow = c.strDef(r.Flow, k("flow"), FlowAuthCode)
	switch a.Flow {
	case FlowAuthCode, FlowDevice, FlowClientCredentials:
	default:
		if !c.bad[k("flow")] {
			c.errorf(k("flow"), "%s is not a flow: use authcode, device or client_credentials", q(a.Flow))
		}
	}

	c.accountSeal(r, a, base)
	c.accountGraph(base, r, a)
	a.PasswordHash = c.phc(r.PasswordHash, k("password_hash"))
	if a.Flow == FlowClientCredentials && a.PasswordHash == "" && !c.bad[k("password_hash")] {
		c.errorf(k("password_hash"), "required for flow client_credentials: no sign-in sets a local password; create one with `mailproxy hash-password`")
	}

	p := a.Provider
	if p == nil || c.bad[k("flow")] {
		return a
	}
	pre, known := presets[p.Type]
	switch {
	case !known:
	case a.Flow == FlowDevice && !pre.deviceFlow:
		c.errorf(k("flow"), "provider %s is of type %s, whose device flow cannot grant mail access: use authcode", q(p.Name), p.Type)
	case a.Flow == FlowDevice && p.DeviceAuthURL == "":
		c.errorf(k("flow"), "provider %s has no device_auth_url", q(p.Name))
	case a.Flow == FlowClientCredentials && !pre.appOnlyAllowed:
		c.errorf(k("flow"), "provider %s is of type %s, which has no app-only mail access: use authcode", q(p.Name), p.Type)
	case a.Flow == FlowClientCredentials && p.ClientSecret == "":
		c.errorf(k("flow"), "client_credentials needs provider %s to have client_secret or client_secret_file", q(p.Name))
	case a.Flow == FlowClientCredentials && len(p.AppScopes) == 0:
		c.errorf(k("flow"), "client_credentials needs provider %s to have app_scopes", q(p.Name))
	}
	return a
}

// ---- values ----
