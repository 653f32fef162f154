package fake365_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"testing"

	"mailproxy/internal/fake365"
)

func newTestCA(t *testing.T) *fake365.CA {
	t.Helper()
	ca, err := fake365.NewCA()
	if err != nil {
		t.Fatalf("NewCA() = %v", err)
	}
	return ca
}

// caHandshake runs one TLS handshake on 127.0.0.1 between server and client
// configurations and returns the client's error.
func caHandshake(t *testing.T, server, client *tls.Config, serverName string) error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatalf("tls.Listen() = %v", err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.(*tls.Conn).HandshakeContext(t.Context())
	}()
	client = client.Clone()
	client.ServerName = serverName
	c, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err != nil {
		return err
	}
	return c.Close()
}

func TestCAHandshake(t *testing.T) {
	ca := newTestCA(t)
	server, err := ca.ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS() = %v", err)
	}
	if server.MinVersion != tls.VersionTLS12 || ca.ClientTLS().MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion = %x / %x, want TLS 1.2", server.MinVersion, ca.ClientTLS().MinVersion)
	}
	for _, name := range []string{"127.0.0.1", "localhost"} {
		if err := caHandshake(t, server, ca.ClientTLS(), name); err != nil {
			t.Errorf("handshake as %q = %v, want success", name, err)
		}
	}

	var unknown x509.UnknownAuthorityError
	if err := caHandshake(t, server, newTestCA(t).ClientTLS(), "127.0.0.1"); !errors.As(err, &unknown) {
		t.Errorf("handshake trusting another CA = %v, want x509.UnknownAuthorityError", err)
	}

	named, err := ca.ServerTLS("mail.example")
	if err != nil {
		t.Fatalf("ServerTLS(mail.example) = %v", err)
	}
	var invalid x509.HostnameError
	if err := caHandshake(t, named, ca.ClientTLS(), "127.0.0.1"); !errors.As(err, &invalid) {
		t.Errorf("handshake with 127.0.0.1 against a mail.example certificate = %v, want x509.HostnameError", err)
	}
	if err := caHandshake(t, named, ca.ClientTLS(), "mail.example"); err != nil {
		t.Errorf("handshake as mail.example = %v, want success", err)
	}
}

func TestCAPEM(t *testing.T) {
	ca := newTestCA(t)
	block, _ := pem.Decode(ca.CertPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("CertPEM does not hold a CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !cert.IsCA {
		t.Fatalf("parse CertPEM = %v (IsCA %v), want a CA certificate", err, cert != nil && cert.IsCA)
	}
	certPEM, keyPEM, err := ca.LeafPEM("127.0.0.1", "[::1]", "mail.example")
	if err != nil {
		t.Fatalf("LeafPEM() = %v", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("tls.X509KeyPair(LeafPEM()) = %v", err)
	}
	leaf := pair.Leaf
	if len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[1].Equal(net.IPv6loopback) || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "mail.example" {
		t.Errorf("LeafPEM SANs = %v %v, want IPs 127.0.0.1 ::1 and DNS mail.example", leaf.IPAddresses, leaf.DNSNames)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool, DNSName: "mail.example"}); err != nil {
		t.Errorf("leaf.Verify(CA pool) = %v, want success", err)
	}
}
