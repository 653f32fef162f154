package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
)

// hostnames reads admin.hostnames: host names or IP addresses, no ports.
func (c *checker) hostnames(v val, key string) []string {
	list := c.stringList(v, key, nil)
	out := make([]string, 0, len(list))
	for i, h := range list {
		h = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
		if _, err := netip.ParseAddr(h); err != nil && !validDomain(h) {
			c.errorf(fmt.Sprintf("%s[%d]", key, i), "%s is not a host name or an IP address (give no port and no scheme)", q(list[i]))
			continue
		}
		out = append(out, h)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// adminPlaintext refuses an admin page off loopback without TLS: the admin
// password and the local passwords typed on it would cross the network in
// the clear. A network listed in security.allow_plaintext_from is the
// admin's explicit say-so, as for the mail listeners.
func (c *checker) adminPlaintext(cfg *Config) {
	addr := cfg.Admin.Listen
	if addr == "" || c.bad["admin.listen"] || cfg.TLS.Enabled() || c.bad["security.allow_plaintext_from"] {
		return
	}
	allowed := cfg.Security.AllowPlaintextFrom
	kind, ip := classifyHost(addr)
	switch {
	case kind == hostLoopback:
	case kind == hostIP && !containsAddr(allowed, ip), kind == hostAny && len(allowed) == 0:
		c.errorf("admin.listen", "%s is not a loopback address and there is no certificate: the admin password and the local passwords set on the page would cross the network in plain text; set tls.cert_file and tls.key_file (or tls.self_signed = true), listen on 127.0.0.1, or add its network to security.allow_plaintext_from", q(addr))
	}
}

// AllowedHosts returns the host names (lowercased, no port, IPv6 without
// brackets) the admin page answers to: localhost and the loopback
// addresses, the host of admin.listen unless it is a wildcard, the host of
// every provider's redirect_url, and admin.hostnames. Anything else is a
// name somebody else chose to point at this machine (DNS rebinding).
func (c *Config) AllowedHosts() []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	add := func(h string) {
		h = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
		if h == "" {
			return
		}
		if ip, err := netip.ParseAddr(h); err == nil && ip.IsUnspecified() {
			return
		}
		for _, x := range hosts {
			if x == h {
				return
			}
		}
		hosts = append(hosts, h)
	}
	if host, _, err := net.SplitHostPort(c.Admin.Listen); err == nil {
		add(host)
	}
	for _, p := range c.Providers {
		if u, err := url.Parse(p.RedirectURL); err == nil {
			add(u.Hostname())
		}
	}
	for _, h := range c.Admin.Hostnames {
		add(h)
	}
	return hosts
}

// AdminTLS reports whether the admin page is served over TLS: when there
// is a certificate and admin.listen is not a loopback address.
func (c *Config) AdminTLS() bool {
	kind, _ := classifyHost(c.Admin.Listen)
	return c.TLS.Enabled() && c.Admin.Listen != "" && kind != hostLoopback
}
