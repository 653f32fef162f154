package config

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"
)

func TestPOP3Defaults(t *testing.T) {
	cfg := mustParse(t, provider, "")
	want := POP3{PreAuthTimeout: 60 * time.Second, IdleTimeout: 10 * time.Minute, MaxLine: 8192, TLSMinVersion: tls.VersionTLS12}
	if cfg.POP3 != want {
		t.Errorf("POP3 = %+v, want %+v (off unless set)", cfg.POP3, want)
	}
}

func TestPOP3Keys(t *testing.T) {
	cfg := mustParse(t, provider+`
pop3_server = "127.0.0.1:10995"
[pop3]
listen = "127.0.0.1:1110"
listen_tls = "127.0.0.1:1995"
preauth_timeout = "30s"
idle_timeout = "15m"
max_line = 2048
tls_min_version = "1.3"
[tls]
self_signed = true
`, "")
	want := POP3{Listen: "127.0.0.1:1110", ListenTLS: "127.0.0.1:1995", PreAuthTimeout: 30 * time.Second, IdleTimeout: 15 * time.Minute, MaxLine: 2048, TLSMinVersion: tls.VersionTLS13}
	if cfg.POP3 != want {
		t.Errorf("POP3 = %+v, want %+v", cfg.POP3, want)
	}
	if got := cfg.Providers[0].POP3Server; got != "127.0.0.1:10995" {
		t.Errorf("pop3_server = %q, want the override", got)
	}
	off := mustParse(t, provider+"pop3_server = \"\"\n", "")
	if got := off.Providers[0].POP3Server; got != "" {
		t.Errorf("pop3_server = \"\" gives %q, want \"\" (no POP3)", got)
	}
	custom := mustParse(t, `[[provider]]
name = "c"
type = "custom"
client_id = "x"
auth_url = "https://idp.example/auth"
token_url = "https://idp.example/token"
scopes = ["mail"]
imap_server = "imap.example:993"
smtp_server = "smtp.example:587"
`, "")
	if got := custom.Providers[0].POP3Server; got != "" {
		t.Errorf("custom provider without pop3_server: POP3Server = %q, want \"\"", got)
	}
}

func TestPOP3Errors(t *testing.T) {
	for _, tc := range []struct{ conf, key, msg string }{
		{"[pop3]\nlisten = \"192.0.2.1:110\"\n", "pop3.listen", "not a loopback address"},
		{"[pop3]\nlisten = \"0.0.0.0:110\"\n", "pop3.listen", "every address"},
		{"[pop3]\nlisten_tls = \"127.0.0.1:995\"\n", "pop3.listen_tls", "needs a certificate"},
		{"[pop3]\nidle_timeout = \"5m\"\n", "pop3.idle_timeout", "RFC 1939"},
		{"[pop3]\nidle_timeout = 600\n", "pop3.idle_timeout", ""},
		{"[pop3]\nmax_line = 100\n", "pop3.max_line", ""},
		{"pop3_server = \"pop.example\"\n", "provider[0].pop3_server", "host:port"},
		{"[pop3]\nlisten = \"127.0.0.1:1143\"\n", "pop3.listen", "clashes with imap.listen"},
		{"[pop3]\nlistn = \"127.0.0.1:1110\"\n", "pop3.listn", `did you mean "listen"`},
		{"pop3 = 1\n" + provider, "pop3", "must be a table"},
	} {
		conf := tc.conf
		if !strings.Contains(conf, "[[provider]]") {
			conf = provider + conf
		}
		err := parseErr(t, conf)
		if !strings.Contains(err, tc.key) || !strings.Contains(err, tc.msg) {
			t.Errorf("config %q: error %q, want it to name %s and say %q", tc.conf, err, tc.key, tc.msg)
		}
	}
	// allow_plaintext_from covers a LAN POP3 listener as it does IMAP's.
	mustParse(t, provider+"[pop3]\nlisten = \"192.0.2.1:110\"\n[security]\nallow_plaintext_from = [\"192.0.2.0/24\"]\n", "")
}

// parseErr returns the error text of a config that must not parse.
func parseErr(t *testing.T, data string) string {
	t.Helper()
	_, err := Parse([]byte(data), "")
	if err == nil {
		t.Fatalf("Parse(%q) = nil error, want one", data)
	}
	return err.Error()
}
