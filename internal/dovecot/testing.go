package dovecot

import (
	"testing"

	"mailproxy/internal/fake365"
)

// New starts a Server for t whose oauth2 passdb asks idp about tokens
// (tenant: the path segment of idp's endpoints) and whose certificate ca
// issued for 127.0.0.1; it is stopped when t ends. Without Dovecot the
// test is skipped, saying what to install.
func New(t testing.TB, ca *fake365.CA, idp *fake365.IdP, tenant string) *Server {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("real-server test skipped: %v", err)
	}
	certPEM, keyPEM, err := ca.LeafPEM("127.0.0.1")
	if err != nil {
		t.Fatalf("LeafPEM(127.0.0.1) = %v", err)
	}
	s, err := Start(t.Context(), Config{
		Dir:              t.TempDir(),
		IntrospectionURL: idp.IntrospectionURL(tenant),
		CertPEM:          certPEM,
		KeyPEM:           keyPEM,
	})
	if err != nil {
		t.Fatalf("dovecot.Start() = %v", err)
	}
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			t.Logf("dovecot log:\n%s", s.Log())
		}
	})
	return s
}
