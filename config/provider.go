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

	p.Name, _ = c.name(r.Name, k("name"), "required: accounts refer to the provider by it", "'.', '_' and '-'")

	p.Type = c.strDef(r.Type, k("type"), TypeOffice365)
	pre, known := presets[p.Type]
	if !known && !c.bad[k("type")] {
		c.errorf(k("type"), "%s is not a provider type: use office365, outlook, gmail or custom", q(p.Type))
	}
	custom := p.Type == TypeCustom
	p.Cloud = c.cloud(base, r, p.Type, &pre)
	p.Tenant = c.tenant(r.Tenant, k("tenant"), pre.tenant, known)
	p.ClientID = c.clientID(r.ClientID, k("client_id"))
	p.ClientSecret = c.clientSecret(r, base)

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
	p.RedirectURL = c.redirectURL(r.RedirectURL, k("redirect_url"), redirectPort)
	c.graph(base, r, p)
	return p
}

// name reads the name of a provider or a device: required (what it is
// for says why), and a validName whose characters chars lists. ok says
// that the name is valid, so it can be compared with the others.
func (c *checker) name(v val, key, required, chars string) (name string, ok bool) {
	name = c.str(v, key, "")
	switch {
	case c.bad[key]:
	case name == "":
		c.errorf(key, "%s", required)
	case !validName(name):
		c.errorf(key, "%s: use letters, digits, %s (at most 64)", q(name), chars)
	default:
		return name, true
	}
	return name, false
}

// tenant reads the tenant of a provider type that has one (def is the
// type's default tenant, "" for the types without).
func (c *checker) tenant(v val, key, def string, known bool) string {
	switch {
	case def != "":
		t := c.strDef(v, key, def)
		if !validName(t) && !c.bad[key] {
			c.errorf(key, "%s: use the tenant ID, a domain such as contoso.onmicrosoft.com, organizations, common or consumers", q(t))
		}
		return t
	case v.set && known:
		c.errorf(key, "only type office365 and outlook have a tenant")
	}
	return ""
}

func (c *checker) clientID(v val, key string) string {
	id := c.str(v, key, "")
	if id == "" && !c.bad[key] {
		c.errorf(key, "required: the application (client) ID of the app registration")
	} else if strings.ContainsFunc(id, unicode.IsSpace) {
		c.errorf(key, "must not contain spaces")
	}
	return id
}

// clientSecret reads client_secret, or the file client_secret_file names.
// "" means none for both, as in the example config.
func (c *checker) clientSecret(r *rawProvider, base string) string {
	secret := c.str(r.ClientSecret, base+".client_secret", "")
	key := base + ".client_secret_file"
	if !r.ClientSecretFile.set {
		return secret
	}
	path := c.path(r.ClientSecretFile, key)
	switch {
	case c.bad[key] || path == "":
		return secret
	case secret != "":
		c.errorf(key, "conflicts with client_secret: use one of them")
		return secret
	}
	return c.secretFile(key, path)
}

// secretFile reads a client secret from its file: one line.
func (c *checker) secretFile(key, path string) string {
	data, err := readFile(path, maxSecretSize)
	if err != nil {
		c.add(key, "cannot read the client secret", err)
		return ""
	}
	secret := strings.TrimRight(string(data), "\r\n")
	if secret == "" {
		c.errorf(key, "%s is empty", path)
	} else if hasControl(secret) {
		c.errorf(key, "%s holds a control character or several lines", path)
	}
	return secret
}

// redirectURL reads where the identity provider sends the browser back;
// the default is the admin page's callback on port.
func (c *checker) redirectURL(v val, key, port string) string {
	s := c.strDef(v, key, "http://localhost:"+port+"/oauth2/callback")
	if u, err := url.Parse(s); !c.bad[key] &&
		(err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Fragment != "" || u.User != nil) {
		c.errorf(key, "%s is not an absolute http or https URL", q(s))
	}
	return s
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

// presetStr reads a string that a provider type's preset fills in and
// type custom must set (required); emptyOK allows "" otherwise. ok says
// that the value is there to be checked further.
func (c *checker) presetStr(v val, key, def string, required, emptyOK bool) (s string, ok bool) {
	s = c.str(v, key, def)
	switch {
	case c.bad[key]:
	case s != "":
		return s, true
	case required:
		c.errorf(key, "required for type custom")
	case !emptyOK:
		c.errorf(key, "must not be empty")
	}
	return s, false
}

// endpoint reads an identity provider URL: https, or http for loopback so
// that local fakes work.
func (c *checker) endpoint(v val, key, def string, required bool) string {
	s, ok := c.presetStr(v, key, def, required, true)
	if !ok {
		return s
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
	s, ok := c.presetStr(v, key, def, required, false)
	if !ok {
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
