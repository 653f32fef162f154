package config

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

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
