//go:build !windows

package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/fake365"
)

// writeLeaf writes a certificate for 127.0.0.1 from a fresh CA and returns
// the CA, so a client can check it.
func writeLeaf(t *testing.T, certFile, keyFile string) *fake365.CA {
	t.Helper()
	ca, err := fake365.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.LeafPEM("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return ca
}

// greetingOverTLS dials addr with implicit TLS trusting ca and returns the
// server's greeting line.
func greetingOverTLS(t *testing.T, addr string, ca *fake365.CA) (string, error) {
	t.Helper()
	cfg := ca.ClientTLS()
	cfg.ServerName = "127.0.0.1"
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

func TestServeCertificateReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca1 := writeLeaf(t, certFile, keyFile)
	h := startServeWith(t, func(s string) string {
		s = strings.Replace(s, "[smtp]", "listen_tls = \"127.0.0.1:0\"\n[smtp]", 1)
		return s + "\n[tls]\ncert_file = \"" + certFile + "\"\nkey_file = \"" + keyFile + "\"\n"
	})
	addr := h.d.Addr("imaps").String()
	if g, err := greetingOverTLS(t, addr, ca1); err != nil || !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting over TLS = %q, %v; want * OK", g, err)
	}

	ca2 := writeLeaf(t, certFile, keyFile) // renewed certificate
	if err := h.reload(t, h.cfgText); err != nil {
		t.Fatalf("reload = %v", err)
	}
	if _, err := greetingOverTLS(t, addr, ca1); err == nil {
		t.Errorf("after the reload the old certificate is still served")
	}
	if g, err := greetingOverTLS(t, addr, ca2); err != nil || !strings.HasPrefix(g, "* OK") {
		t.Errorf("greeting with the renewed certificate = %q, %v; want * OK", g, err)
	}
}

func TestServeSelfSigned(t *testing.T) {
	h := startServeWith(t, func(s string) string {
		return s + "\n[tls]\nself_signed = true\n"
	})
	certFile := filepath.Join(h.d.Config().StateDir, "tls", "selfsigned.crt")
	keyFile := filepath.Join(h.d.Config().StateDir, "tls", "selfsigned.key")
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatalf("self-signed key: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("self-signed key mode = %v, want 0600", fi.Mode().Perm())
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	// The log names the fingerprint of exactly the certificate served.
	c, err := net.Dial("tcp", h.d.Addr("imap").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "a STARTTLS\r\n")
	if n, err := c.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "a OK") {
		t.Fatalf("STARTTLS = %q, %v", buf[:n], err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // we compare the fingerprint instead
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake after STARTTLS = %v", err)
	}
	sum := sha256.Sum256(tc.ConnectionState().PeerCertificates[0].Raw)
	if !strings.Contains(h.logs.String(), hex.EncodeToString(sum[:])) {
		t.Errorf("log does not name the served certificate's fingerprint %x", sum)
	}
	if !strings.Contains(string(b), "BEGIN CERTIFICATE") {
		t.Errorf("self-signed certificate file holds no PEM certificate")
	}
}

func TestServeAllowFrom(t *testing.T) {
	h := startServeWith(t, func(s string) string {
		return s + "\n[security]\nallow_from = [\"127.0.0.2/32\"]\n"
	})
	c, err := net.Dial("tcp", h.d.Addr("imap").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read from a refused connection = %v, want EOF", err)
	}
	if len(got) != 0 {
		t.Errorf("a connection from outside allow_from got %q, want nothing", got)
	}
	if !strings.Contains(h.logs.String(), "address not allowed") {
		t.Errorf("refused connection not logged")
	}
}
