package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"unicode"
)

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
