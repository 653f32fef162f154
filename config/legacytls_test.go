package config

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// selfSigned makes an RSA certificate: RSA key exchange needs one.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mfp-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment}
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}

// A TLS 1.0 device that offers only RSA key exchange with AES-CBC (an
// old MFP) gets through a listener with tls_min_version "1.0" and
// LegacyCipherSuites, and not through Go's defaults.
func TestLegacyCipherSuitesServeTLS10Device(t *testing.T) {
	cert := selfSigned(t)
	device := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10,
		CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA}}
	handshake := func(srv *tls.Config) (uint16, error) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		errc := make(chan error, 1)
		go func() { errc <- tls.Server(a, srv).Handshake() }()
		c := tls.Client(b, device)
		err := c.Handshake()
		if err != nil {
			a.Close()
			<-errc
			return 0, err
		}
		return c.ConnectionState().Version, <-errc
	}
	legacy := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS10, CipherSuites: LegacyCipherSuites()}
	if v, err := handshake(legacy); err != nil || v != tls.VersionTLS10 {
		t.Errorf("TLS 1.0 device against the legacy listener: version %x, %v", v, err)
	}
	if _, err := handshake(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}); err == nil {
		t.Error("the TLS 1.0 device got through a TLS 1.2 listener")
	}
}
