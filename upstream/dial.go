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
// The TLS configuration is a clone of base (nil: system roots) with
// ServerName set to addr's host unless base sets one, and at least TLS 1.2.
// Errors name the step and addr: "dial HOST:PORT: ..." or
// "TLS handshake with HOST:PORT: ...".
func DialTLS(ctx context.Context, dial Dialer, addr string, base *tls.Config) (*tls.Conn, error) {
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
	conn := tls.Client(relay.UnderTLS(raw), tlsConfigFor(base, addr))
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	return conn, nil
}

// TLSFor returns the TLS client configuration for a connection to addr
// ("host:port"): a clone of u.TLS with ServerName set to addr's host (unless
// u.TLS sets one) and at least TLS 1.2. It never returns nil; the result is
// the caller's to modify.
func (u *Upstream) TLSFor(addr string) *tls.Config {
	var base *tls.Config
	if u != nil {
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
	return cfg
}

// ImplicitTLS reports whether an SMTP server address is implicit TLS
// (port 465, RFC 8314) rather than STARTTLS. The one place that rule lives.
func ImplicitTLS(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "465"
}
