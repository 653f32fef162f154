package config

import (
	"slices"
	"testing"
)

// An admin page off loopback is fine with a certificate or when the admin
// allowed plain text from its network.
func TestAdminOffLoopbackAccepted(t *testing.T) {
	for _, extra := range []string{
		"[tls]\nself_signed = true\n",
		"[security]\nallow_plaintext_from = [\"192.168.1.0/24\"]\n",
	} {
		cfg := mustParse(t, extra+"[admin]\nlisten = \"192.168.1.10:8025\"\npassword_hash = \""+testHash+"\"\n", "")
		if cfg.Admin.Listen != "192.168.1.10:8025" {
			t.Errorf("admin.listen = %q", cfg.Admin.Listen)
		}
	}
}

func TestAllowedHosts(t *testing.T) {
	cfg := mustParse(t, provider+`redirect_url = "https://Proxy.Example.org/oauth2/callback"
[tls]
self_signed = true
[admin]
listen = "[fd00::5]:8025"
password_hash = "`+testHash+`"
hostnames = ["MailProxy.lan", "[fd00::6]", "10.1.2.3"]
`, "")
	want := []string{"localhost", "127.0.0.1", "::1", "fd00::5", "proxy.example.org", "mailproxy.lan", "fd00::6", "10.1.2.3"}
	if got := cfg.AllowedHosts(); !slices.Equal(got, want) {
		t.Errorf("AllowedHosts() = %q, want %q", got, want)
	}
	// A wildcard listen address names no host.
	cfg = mustParse(t, "[tls]\nself_signed = true\n[admin]\nlisten = \"0.0.0.0:8025\"\npassword_hash = \""+testHash+"\"\n", "")
	if got, want := cfg.AllowedHosts(), []string{"localhost", "127.0.0.1", "::1"}; !slices.Equal(got, want) {
		t.Errorf("AllowedHosts(0.0.0.0) = %q, want %q", got, want)
	}
}
