package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"mailproxy/internal/testutil"
	"net"
	"strings"
	"testing"
	"time"
)

// serveTLS accepts connections on ln and runs a TLS handshake with cfg on
// each, then echoes one line. Handshake errors go to errc (if not nil).
func serveTLS(t *testing.T, ln net.Listener, cfg *tls.Config, errc chan<- error) {
	t.Helper()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				err := tc.Handshake()
				if errc != nil {
					errc <- err
				}
				if err != nil {
					return
				}
				io.Copy(tc, tc)
			}()
		}
	}()
}

func TestDialTLS(t *testing.T) {
	cert := testutil.NewCert(t, "127.0.0.1", "localhost")
	ln := testutil.Listen(t)
	serveTLS(t, ln, cert.ServerConfig(), nil)
	_, port, _ := net.SplitHostPort(ln.Addr().String())

	for _, addr := range []string{ln.Addr().String(), net.JoinHostPort("localhost", port)} {
		t.Run(addr, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := DialTLS(ctx, nil, addr, cert.ClientConfig())
			if err != nil {
				t.Fatalf("DialTLS(%q) = %v, want success", addr, err)
			}
			defer c.Close()
			st := c.ConnectionState()
			host, _, _ := net.SplitHostPort(addr)
			if net.ParseIP(host) != nil {
				host = "" // no SNI for addresses; the IP SAN was checked
			}
			if st.ServerName != host || !st.HandshakeComplete || st.Version < tls.VersionTLS12 {
				t.Errorf("DialTLS(%q) state: ServerName %q, complete %v, version %x; want %q, true, >= TLS 1.2",
					addr, st.ServerName, st.HandshakeComplete, st.Version, host)
			}
			if _, err := c.Write([]byte("ping\n")); err != nil {
				t.Fatalf("Write: %v", err)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping\n" {
				t.Errorf("echo = %q, %v, want %q", buf, err, "ping\n")
			}
		})
	}
}

func TestDialTLSUsesDialer(t *testing.T) {
	cert := testutil.NewCert(t, "mail.example.test")
	ln := testutil.Listen(t)
	serveTLS(t, ln, cert.ServerConfig(), nil)
	var gotNetwork, gotAddr string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		gotNetwork, gotAddr = network, addr
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ln.Addr().String()) // "DNS" for the fake host
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := DialTLS(ctx, dial, "mail.example.test:993", cert.ClientConfig())
	if err != nil {
		t.Fatalf("DialTLS(mail.example.test:993) = %v, want success through the dialer", err)
	}
	c.Close()
	if gotNetwork != "tcp" || gotAddr != "mail.example.test:993" {
		t.Errorf("dialer called with (%q, %q), want (tcp, mail.example.test:993)", gotNetwork, gotAddr)
	}
}

func TestDialTLSKeepsBaseServerNameAndBase(t *testing.T) {
	cert := testutil.NewCert(t, "imap.example.test")
	ln := testutil.Listen(t)
	serveTLS(t, ln, cert.ServerConfig(), nil)
	base := cert.ClientConfig()
	base.ServerName = "imap.example.test"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := DialTLS(ctx, nil, ln.Addr().String(), base)
	if err != nil {
		t.Fatalf("DialTLS(%s) with base ServerName = %v, want success", ln.Addr(), err)
	}
	c.Close()
	if base.MinVersion != 0 || base.ServerName != "imap.example.test" {
		t.Errorf("DialTLS modified base: MinVersion %x, ServerName %q", base.MinVersion, base.ServerName)
	}
}

func TestDialTLSErrors(t *testing.T) {
	cert := testutil.NewCert(t, "127.0.0.1")
	other := testutil.NewCert(t, "127.0.0.1")

	// A server that accepts and then says nothing: the handshake must end
	// with ctx.
	silent := testutil.Listen(t)
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()

	untrusted := testutil.Listen(t)
	serveTLS(t, untrusted, other.ServerConfig(), nil)

	// The certificate names only localhost: dialing the address must fail,
	// which shows the host of addr is what gets verified.
	wrongName := testutil.Listen(t)
	localhostOnly := testutil.NewCert(t, "localhost")
	serveTLS(t, wrongName, localhostOnly.ServerConfig(), nil)

	old := testutil.Listen(t)
	oldCfg := cert.ServerConfig()
	oldCfg.MinVersion, oldCfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	serveTLS(t, old, oldCfg, nil)

	closed := testutil.Listen(t)
	closedAddr := closed.Addr().String()
	closed.Close()

	tests := []struct {
		name    string
		addr    string
		timeout time.Duration
		prefix  string
		is      error
	}{
		{"connection refused", closedAddr, 10 * time.Second, "dial " + closedAddr + ": ", nil},
		{"no port", "127.0.0.1", 10 * time.Second, "dial 127.0.0.1: ", nil},
		{"silent server", silent.Addr().String(), 200 * time.Millisecond, "TLS handshake with " + silent.Addr().String() + ": ", context.DeadlineExceeded},
		{"untrusted certificate", untrusted.Addr().String(), 10 * time.Second, "TLS handshake with " + untrusted.Addr().String() + ": ", nil},
		{"name mismatch", wrongName.Addr().String(), 10 * time.Second, "TLS handshake with " + wrongName.Addr().String() + ": ", nil},
		{"TLS 1.1 only", old.Addr().String(), 10 * time.Second, "TLS handshake with " + old.Addr().String() + ": ", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tt.timeout)
			defer cancel()
			roots := cert.ClientConfig()
			if tt.name == "name mismatch" {
				roots = localhostOnly.ClientConfig()
			}
			c, err := DialTLS(ctx, nil, tt.addr, roots)
			if err == nil {
				c.Close()
				t.Fatalf("DialTLS(%q) = success, want an error", tt.addr)
			}
			if !strings.HasPrefix(err.Error(), tt.prefix) {
				t.Errorf("DialTLS(%q) = %q, want prefix %q", tt.addr, err, tt.prefix)
			}
			var hostErr x509.HostnameError
			if tt.name == "name mismatch" && !errors.As(err, &hostErr) {
				t.Errorf("DialTLS(%q) = %v, want an x509.HostnameError", tt.addr, err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("DialTLS(%q) = %v, want errors.Is %v", tt.addr, err, tt.is)
			}
		})
	}
}

func TestTLSFor(t *testing.T) {
	cert := testutil.NewCert(t, "127.0.0.1")
	base := cert.ClientConfig()
	tests := []struct {
		name       string
		u          *Upstream
		addr       string
		serverName string
	}{
		{"host and port", &Upstream{TLS: base}, "smtp.office365.com:587", "smtp.office365.com"},
		{"IPv6", &Upstream{TLS: base}, "[::1]:465", "::1"},
		{"no port", &Upstream{TLS: base}, "smtp.example.test", "smtp.example.test"},
		{"nil TLS", &Upstream{}, "outlook.office365.com:993", "outlook.office365.com"},
		{"nil upstream", nil, "outlook.office365.com:993", "outlook.office365.com"},
		{"base ServerName wins", &Upstream{TLS: &tls.Config{ServerName: "fixed.example"}}, "x:1", "fixed.example"},
	}
	for _, tt := range tests {
		got := tt.u.TLSFor(tt.addr)
		if got == nil {
			t.Fatalf("%s: TLSFor(%q) = nil", tt.name, tt.addr)
		}
		if got.ServerName != tt.serverName || got.MinVersion != tls.VersionTLS12 {
			t.Errorf("%s: TLSFor(%q) = ServerName %q, MinVersion %x, want %q, %x",
				tt.name, tt.addr, got.ServerName, got.MinVersion, tt.serverName, tls.VersionTLS12)
		}
		if tt.u != nil && tt.u.TLS != nil && got == tt.u.TLS {
			t.Errorf("%s: TLSFor(%q) returned u.TLS itself, want a clone", tt.name, tt.addr)
		}
		if tt.u != nil && tt.u.TLS == base && got.RootCAs != base.RootCAs {
			t.Errorf("%s: TLSFor(%q) lost RootCAs", tt.name, tt.addr)
		}
	}
	if base.ServerName != "" || base.MinVersion != 0 {
		t.Errorf("TLSFor modified u.TLS: ServerName %q, MinVersion %x", base.ServerName, base.MinVersion)
	}
	keep := (&Upstream{TLS: &tls.Config{MinVersion: tls.VersionTLS13}}).TLSFor("h:1")
	if keep.MinVersion != tls.VersionTLS13 {
		t.Errorf("TLSFor with MinVersion TLS 1.3 = %x, want it kept", keep.MinVersion)
	}
}

// An Upstream from New builds each address's TLS configuration once: every
// TLSFor returns it, and DialTLS uses it without another clone.
func TestNewBuildsTLSOncePerAddress(t *testing.T) {
	cert := testutil.NewCert(t, "127.0.0.1")
	ln := testutil.Listen(t)
	serveTLS(t, ln, cert.ServerConfig(), nil)
	base := cert.ClientConfig()
	addr := ln.Addr().String()
	u := New(map[string]string{"imap": addr, "smtp": "smtp.example.test:587"}, base)
	a := u.TLSFor(addr)
	if b := u.TLSFor(addr); a != b || a == base {
		t.Fatalf("TLSFor(%q) twice = %p, %p (base %p), want one configuration, not the base", addr, a, b, base)
	}
	if s := u.TLSFor("smtp.example.test:587"); s == a || s.ServerName != "smtp.example.test" || !s.DynamicRecordSizingDisabled {
		t.Errorf("TLSFor(smtp) = %p ServerName %q, dynamic records off %v; want its own, for its host, off", s, s.ServerName, s.DynamicRecordSizingDisabled)
	}
	if got := dialConfig(a, addr); got != a {
		t.Errorf("dialConfig(TLSFor(addr)) = %p, want %p: no clone per dial", got, a)
	}
	if got := dialConfig(base, addr); got == base || got.MinVersion < tls.VersionTLS12 {
		t.Errorf("dialConfig(base) = %p, MinVersion %x; want a strict clone", got, got.MinVersion)
	}
	// A copy with other roots does not use what was built for the old.
	c := *u
	c.TLS = &tls.Config{ServerName: "other.example"}
	if got := c.TLSFor(addr); got == a || got.ServerName != "other.example" {
		t.Errorf("TLSFor on a copy with another TLS = %p ServerName %q, want one built from it", got, got.ServerName)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := DialTLS(ctx, nil, addr, a)
	if err != nil {
		t.Fatalf("DialTLS with TLSFor's configuration = %v", err)
	}
	conn.Close()
}
