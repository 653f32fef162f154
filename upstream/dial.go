package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"

	"mailproxy/relay"
)

// Dialer opens a network connection, like (*net.Dialer).DialContext. It is a
// field of the fronts so that tests can swap it; nil means a zero net.Dialer.
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// DialTLS connects to addr ("host:port") with implicit TLS: it dials with
// dial (nil: a zero net.Dialer) and completes the handshake, both under ctx.
// cfg is used as it is when it is already a configuration for an upstream
// (ServerName set, at least TLS 1.2: what TLSFor returns, built once per
// provider); otherwise the TLS configuration is a clone of cfg (nil: system
// roots) made so, with ServerName set to addr's host. Errors name the step
// and addr: "dial HOST:PORT: ..." or "TLS handshake with HOST:PORT: ...".
func DialTLS(ctx context.Context, dial Dialer, addr string, cfg *tls.Config) (*tls.Conn, error) {
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	// UnderTLS lets the relay gather the upstream's TLS records (Dovecot
	// writes 4 KiB ones) into large writes to the client.
	conn := tls.Client(relay.UnderTLS(raw), dialConfig(cfg, addr))
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	return conn, nil
}

// dialConfig is the configuration DialTLS uses: cfg itself when it is
// ready for an upstream, else one built from it.
func dialConfig(cfg *tls.Config, addr string) *tls.Config {
	if cfg != nil && cfg.ServerName != "" && cfg.MinVersion >= tls.VersionTLS12 {
		return cfg
	}
	return tlsConfigFor(cfg, addr)
}

// New returns the Upstream for a provider's servers at addr (by front
// name) reached with tlsCfg, with the TLS configuration for each address
// built here, once, rather than on every dial.
func New(addr map[string]string, tlsCfg *tls.Config) *Upstream {
	u := &Upstream{Addr: addr, TLS: tlsCfg, tlsBase: tlsCfg, tlsByAddr: make(map[string]*tls.Config, len(addr))}
	for _, a := range addr {
		if a != "" {
			u.tlsByAddr[a] = tlsConfigFor(tlsCfg, a)
		}
	}
	return u
}

// TLSFor returns the TLS client configuration for a connection to addr
// ("host:port"): u.TLS (nil: system roots) with ServerName set to addr's
// host (unless u.TLS sets one), at least TLS 1.2 and full-size records
// from the first byte. For the addresses an Upstream from New was made
// with it is the one built then; otherwise (an Upstream written as a
// literal, another address) it is built on the call. It never returns nil,
// and the result is shared: callers must not modify it (Clone it first).
func (u *Upstream) TLSFor(addr string) *tls.Config {
	var base *tls.Config
	if u != nil {
		if cfg := u.tlsByAddr[addr]; cfg != nil && u.TLS == u.tlsBase {
			return cfg
		}
		base = u.TLS
	}
	return tlsConfigFor(base, addr)
}

// tlsConfigFor clones base and makes it strict enough for an upstream.
// InsecureSkipVerify is left alone: config never sets it, and tests that
// need another trust root set RootCAs instead.
func tlsConfigFor(base *tls.Config, addr string) *tls.Config {
	var cfg *tls.Config
	if base != nil {
		cfg = base.Clone()
	} else {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]") // no port: all host
		}
		cfg.ServerName = host
	}
	if cfg.MinVersion < tls.VersionTLS12 {
		cfg.MinVersion = tls.VersionTLS12
	}
	// Full-size records from the first message on: small first records
	// help a browser render early, not a mail submission or an APPEND.
	cfg.DynamicRecordSizingDisabled = true
	return cfg
}

// ImplicitTLS reports whether an SMTP server address is implicit TLS
// (port 465, RFC 8314) rather than STARTTLS. The one place that rule lives.
func ImplicitTLS(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "465"
}
