package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

const testStateDir = "/var/lib/mailproxy-test"

func TestMain(m *testing.M) {
	// Defaults must not depend on the account running the tests.
	os.Setenv("STATE_DIRECTORY", testStateDir)
	os.Exit(m.Run())
}

// A valid PHC string of the shape auth.HashPassword produces.
const testHash = "$argon2id$v=19$m=65536,t=3,p=2$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"

const provider = `
[[provider]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
`

func mustParse(t *testing.T, data, dir string) *Config {
	t.Helper()
	cfg, err := Parse([]byte(data), dir)
	if err != nil {
		if len(data) > 300 {
			data = data[:300] + "..."
		}
		t.Fatalf("Parse(%q) = %v, want no error", data, err)
	}
	return cfg
}

// configErrors returns every *Error in err.
func configErrors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		var e *Error
		switch x := err.(type) {
		case nil:
		case interface{ Unwrap() []error }:
			for _, e := range x.Unwrap() {
				walk(e)
			}
		default:
			if errors.As(err, &e) {
				out = append(out, e)
			}
		}
	}
	walk(err)
	return out
}

// markerLine is the line of data holding "# <-", or 0.
func markerLine(data string) int {
	for i, l := range strings.Split(data, "\n") {
		if strings.Contains(l, "# <-") {
			return i + 1
		}
	}
	return 0
}

func TestExampleConfig(t *testing.T) {
	cfg, err := Load("../config.example.toml")
	if err != nil {
		t.Fatalf("Load(config.example.toml) = %v, want no error", err)
	}
	if len(cfg.Providers) != 1 || len(cfg.Accounts) != 2 {
		t.Fatalf("Load(config.example.toml): %d providers, %d accounts, want 1, 2", len(cfg.Providers), len(cfg.Accounts))
	}
	p := cfg.Providers[0]
	if want := "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"; p.TokenURL != want {
		t.Errorf("example provider TokenURL = %q, want %q", p.TokenURL, want)
	}
	alice, sales := cfg.Account("alice@contoso.com"), cfg.Account("SALES")
	if alice == nil || alice.Mailbox != "alice@contoso.com" || alice.Flow != FlowAuthCode || alice.Provider != p {
		t.Errorf("example account alice = %+v, want mailbox = username, authcode, provider contoso", alice)
	}
	if sales == nil || sales.Mailbox != "sales@contoso.com" || sales.Flow != FlowDevice {
		t.Errorf("example account sales = %+v, want mailbox sales@contoso.com, device", sales)
	}
	// The commented client_credentials example must be valid once uncommented.
	data, err := os.ReadFile("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(data), `client_secret = ""`, `client_secret = "placeholder"`, 1)
	_, printer, _ := strings.Cut(text, "# [[account]]")
	printer = strings.Replace(printer, `"$argon2id$v=19$m=65536,t=3,p=2$...$..."`, `"`+testHash+`"`, 1)
	text += "\n[[account]]\n"
	for _, l := range strings.Split(printer, "\n") {
		text += strings.TrimPrefix(l, "# ") + "\n"
	}
	cfg = mustParse(t, text, "")
	if a := cfg.Account("scanner"); a == nil || a.Flow != FlowClientCredentials {
		t.Errorf("uncommented example scanner account = %+v, want client_credentials", a)
	}
}

func TestDefaults(t *testing.T) {
	cfg := mustParse(t, "", "")
	want := &Config{
		StateDir:        testStateDir,
		ShutdownTimeout: 30 * time.Second,
		IMAP: IMAP{Listen: "127.0.0.1:1143", PreAuthTimeout: time.Minute, IdleTimeout: 30 * time.Minute,
			MaxLine: 65536, MaxLiteral: 65536, TLSMinVersion: tls.VersionTLS12},
		SMTP: SMTP{Listen: "127.0.0.1:1587", Domain: defaultDomain(), MaxRecipients: 500,
			ReadTimeout: 10 * time.Minute, WriteTimeout: time.Minute, TLSMinVersion: tls.VersionTLS12,
			PreAuthTimeout: time.Minute, MaxPreAuthCommands: 30},
		POP3:  POP3{PreAuthTimeout: time.Minute, IdleTimeout: 10 * time.Minute, MaxLine: 8192, TLSMinVersion: tls.VersionTLS12},
		Admin: Admin{Listen: "127.0.0.1:8025"},
		Security: Security{
			AllowFrom:      []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
			MaxConnections: 1000, MaxConnectionsPerIP: 50, UpstreamTimeout: 30 * time.Second,
			LockoutFailures: 5, LockoutWindow: 15 * time.Minute, LockoutDuration: 15 * time.Minute, LockoutAddrFailures: 20, MaxPreAuthConns: 200,
			MaxUpstreamPerMailbox: 16,
		},
		Log: Log{Format: LogText, Level: slog.LevelInfo},
		Spool: Spool{Dir: filepath.Join(testStateDir, "spool"), Rate: 30, DailyRecipients: 10000,
			Retry: time.Minute, MaxAge: 120 * time.Hour, LogRetention: 720 * time.Hour},
		Tokens: Tokens{Keepalive: 168 * time.Hour},
		byUser: map[string]*Account{},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Parse(\"\") = %+v, want %+v", cfg, want)
	}
}

func TestStateDirDefault(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Unix rules")
	}
	tests := []struct{ stateDirectory, xdg, home, want string }{
		{"/run/a:/run/b", "/x", "/h", "/run/a"},
		{"", "/x", "/h", "/x/mailproxy"},
		{"", "relative", "/h", "/h/.local/state/mailproxy"},
		{"", "", "/h", "/h/.local/state/mailproxy"},
	}
	for _, tt := range tests {
		t.Setenv("STATE_DIRECTORY", tt.stateDirectory)
		t.Setenv("XDG_STATE_HOME", tt.xdg)
		t.Setenv("HOME", tt.home)
		if got := mustParse(t, "", "").StateDir; got != tt.want {
			t.Errorf("StateDir with STATE_DIRECTORY=%q XDG_STATE_HOME=%q HOME=%q = %q, want %q",
				tt.stateDirectory, tt.xdg, tt.home, got, tt.want)
		}
	}
}

func TestInvalid(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	certFile, _ := writeCA(t, dir)

	tests := []struct {
		name, data, key, msg string
	}{
		{"unknown top-level key", "colour = 1 # <-", "colour", "unknown key"},
		{"typo suggests", "[imap]\nlisten_tsl = \"\" # <-", "imap.listen_tsl", `did you mean "listen_tls"`},
		{"unknown table", "[imapp] # <-\nlisten = \"\"", "imapp", `did you mean "imap"`},
		{"upper case key", "[IMAP] # <-\n", "IMAP", `write "imap"`},
		{"unknown key in account", provider + "[[account]]\nusername = \"a@x.org\"\n[[account]]\nusername = \"b@x.org\"\ncolour = \"red\" # <-", "account[1].colour", "unknown key"},
		{"bare integer duration", "[security]\nupstream_timeout = 30 # <-", "security.upstream_timeout", `"30s"`},
		{"negative duration", "shutdown_timeout = \"-5s\" # <-", "shutdown_timeout", "positive"},
		{"zero duration", "[smtp]\nread_timeout = \"0s\" # <-", "smtp.read_timeout", "positive"},
		{"unparsable duration", "[imap]\npreauth_timeout = \"a minute\" # <-", "imap.preauth_timeout", `"30s"`},
		{"duration wrong type", "[security]\nlockout_window = true # <-", "security.lockout_window", "boolean"},
		{"idle timeout short", "[imap]\nidle_timeout = \"10m\" # <-", "imap.idle_timeout", "29m"},
		{"bad CIDR", "[security]\nallow_from = [\"127.0.0.1\", \"10.0.0.0/33\"] # <-", "security.allow_from[1]", "10.0.0.0/33"},
		{"zone in allow list", "[security]\nallow_plaintext_from = [\"fe80::1%eth0\"] # <-", "security.allow_plaintext_from[0]", "zone"},
		{"allow list not strings", "[security]\nallow_from = [1] # <-", "security.allow_from[0]", "integer"},
		{"allow_from empty", "[security]\nallow_from = [] # <-", "security.allow_from", "nobody"},
		{"integer wrong type", "[security]\nmax_connections = \"10\" # <-", "security.max_connections", "string"},
		{"integer out of range", "[imap]\nmax_line = 10 # <-", "imap.max_line", "out of range"},
		{"bool wrong type", "[tls]\nself_signed = \"yes\" # <-", "tls.self_signed", "true or false"},
		{"bad flow", provider + "[[account]]\nusername = \"a@x.org\"\nflow = \"password\" # <-", "account[0].flow", `"password"`},
		{"unknown provider", provider + "[[account]]\nusername = \"a@x.org\"\nprovider = \"fabrikam\" # <-", "account[0].provider", "fabrikam"},
		{"no provider at all", "[[account]] # <-\nusername = \"a@x.org\"", "account[0].provider", "no [[provider]]"},
		{"provider ambiguous", provider + strings.Replace(provider, "contoso", "fabrikam", 1) + "[[account]] # <-\nusername = \"a@x.org\"", "account[0].provider", "several"},
		{"duplicate username", provider + "[[account]]\nusername = \"a@x.org\"\n[[account]]\nusername = \"A@X.org\" # <-", "account[1].username", "account[0]"},
		{"missing username", provider + "[[account]] # <-\nmailbox = \"a@x.org\"", "account[0].username", "required"},
		{"mailbox not an address", provider + "[[account]] # <-\nusername = \"printer\"", "account[0].mailbox", "email address"},
		{"client_credentials without password_hash", provider + "client_secret = \"x\"\n[[account]] # <-\nusername = \"a@x.org\"\nflow = \"client_credentials\"", "account[0].password_hash", "required"},
		{"client_credentials without secret", provider + "[[account]]\nusername = \"a@x.org\"\nflow = \"client_credentials\" # <-\npassword_hash = \"" + testHash + "\"", "account[0].flow", "client_secret"},
		{"bad password_hash", provider + "[[account]]\nusername = \"a@x.org\"\npassword_hash = \"$2y$10$abc\" # <-", "account[0].password_hash", "argon2id"},
		{"gmail device flow", "[[provider]]\nname = \"g\"\ntype = \"gmail\"\nclient_id = \"x\"\n[[account]]\nusername = \"a@gmail.com\"\nflow = \"device\" # <-", "account[0].flow", "authcode"},
		{"gmail client_credentials", "[[provider]]\nname = \"g\"\ntype = \"gmail\"\nclient_id = \"x\"\nclient_secret = \"s\"\n[[account]]\nusername = \"a@gmail.com\"\nflow = \"client_credentials\" # <-\npassword_hash = \"" + testHash + "\"", "account[0].flow", "app-only"},
		{"gmail tenant", "[[provider]]\nname = \"g\"\ntype = \"gmail\"\nclient_id = \"x\"\ntenant = \"t\" # <-", "provider[0].tenant", "office365"},
		{"bad tenant", "[[provider]]\nname = \"m\"\nclient_id = \"x\"\ntenant = \"a/b\" # <-", "provider[0].tenant", "tenant ID"},
		{"device flow without URL", "[[provider]]\nname = \"c\"\ntype = \"custom\"\nclient_id = \"x\"\nauth_url = \"https://idp/a\"\ntoken_url = \"https://idp/t\"\nscopes = [\"mail\"]\nimap_server = \"imap:993\"\nsmtp_server = \"smtp:587\"\n[[account]]\nusername = \"a@x.org\"\nflow = \"device\" # <-", "account[0].flow", "device_auth_url"},
		{"plaintext listener on wildcard", "[imap]\nlisten = \"0.0.0.0:1143\" # <-", "imap.listen", "allow_plaintext_from"},
		{"plaintext listener on empty host", "[smtp]\nlisten = \":1587\" # <-", "smtp.listen", "allow_plaintext_from"},
		{"plaintext listener on a name", "[smtp]\nlisten = \"mail.example.org:1587\" # <-", "smtp.listen", "allow_plaintext_from"},
		{"plaintext listener not covered", "[security]\nallow_plaintext_from = [\"10.0.0.0/8\"]\n[smtp]\nlisten = \"192.168.1.10:1587\" # <-", "smtp.listen", "does not cover"},
		{"listen_tls without certificate", "[imap]\nlisten_tls = \"127.0.0.1:1993\" # <-", "imap.listen_tls", "certificate"},
		{"listen not host:port", "[imap]\nlisten = \"1143\" # <-", "imap.listen", "host:port"},
		{"listen named port", "[imap]\nlisten = \"127.0.0.1:imap\" # <-", "imap.listen", "number"},
		{"listeners clash", "[smtp]\nlisten = \"127.0.0.1:1143\" # <-", "smtp.listen", "imap.listen"},
		{"wildcard clash", "[tls]\nself_signed = true\n[admin]\nlisten = \"[::]:1587\" # <-\npassword_hash = \"" + testHash + "\"", "admin.listen", "smtp.listen"},
		{"admin on a LAN address without TLS", "[admin]\nlisten = \"192.168.1.10:8025\" # <-\npassword_hash = \"" + testHash + "\"", "admin.listen", "tls.self_signed"},
		{"admin on every address without TLS", "[admin]\nlisten = \":8025\" # <-\npassword_hash = \"" + testHash + "\"", "admin.listen", "plain text"},
		{"admin LAN not covered", "[security]\nallow_plaintext_from = [\"10.0.0.0/8\"]\n[admin]\nlisten = \"192.168.1.10:8025\" # <-\npassword_hash = \"" + testHash + "\"", "admin.listen", "allow_plaintext_from"},
		{"admin hostname with port", "[admin]\nhostnames = [\"proxy.lan:8025\"] # <-", "admin.hostnames[0]", "no port"},
		{"all listeners off", "[imap]\nlisten = \"\" # <-\n[smtp]\nlisten = \"\"", "imap.listen", "at least one"},
		{"admin off loopback without password", "[admin] # <-\nlisten = \"0.0.0.0:8025\"", "admin.password_hash", "loopback"},
		{"admin password_hash malformed", "[admin]\npassword_hash = \"$argon2id$v=19$m=1,t=1,p=1$AAAA$AAAA\" # <-", "admin.password_hash", "argon2id"},
		// A salt over auth's 64 bytes: the login check could never use it,
		// so the config check refuses it (one parser, auth/phc).
		{"admin password_hash with a 100-byte salt", "[admin]\npassword_hash = \"$argon2id$v=19$m=65536,t=3,p=2$c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzcw$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA\" # <-", "admin.password_hash", "salt must be 8 to 64 bytes"},
		{"cert without key", "[tls] # <-\ncert_file = \"c.pem\"", "tls.key_file", "tls.cert_file"},
		{"key without cert", "[tls] # <-\nkey_file = \"k.pem\"", "tls.cert_file", "tls.key_file"},
		{"cert and self_signed", "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nself_signed = true # <-", "tls.self_signed", "cert_file"},
		{"cert unreadable", "[tls]\ncert_file = \"missing.pem\" # <-\nkey_file = \"k.pem\"", "tls.cert_file", "cannot read"},
		{"key does not match", "[tls]\ncert_file = \"" + certFile + "\" # <-\nkey_file = \"" + notPEM + "\"", "tls.cert_file", "tls.key_file"},
		{"secret and secret file", provider + "client_secret = \"a\"\nclient_secret_file = \"s.txt\" # <-", "provider[0].client_secret_file", "client_secret"},
		{"secret file missing", provider + "client_secret_file = \"missing.txt\" # <-", "provider[0].client_secret_file", "cannot read"},
		{"secret file is a directory", provider + "client_secret_file = \".\" # <-", "provider[0].client_secret_file", "regular file"},
		{"ca_file unreadable", provider + "ca_file = \"missing.pem\" # <-", "provider[0].ca_file", "cannot read"},
		{"ca_file without certificates", provider + "ca_file = \"not.pem\" # <-", "provider[0].ca_file", "no PEM"},
		{"provider without name", "[[provider]] # <-\nclient_id = \"x\"", "provider[0].name", "required"},
		{"provider bad name", "[[provider]]\nname = \"a b\" # <-\nclient_id = \"x\"", "provider[0].name", "letters"},
		{"provider without client_id", "[[provider]] # <-\nname = \"x\"", "provider[0].client_id", "required"},
		{"duplicate provider", provider + strings.Replace(provider, `name = "contoso"`, `name = "contoso" # <-`, 1), "provider[1].name", "provider[0]"},
		{"bad provider type", "[[provider]]\nname = \"x\"\nclient_id = \"x\"\ntype = \"yahoo\" # <-", "provider[0].type", "yahoo"},
		{"custom needs token_url", "[[provider]] # <-\nname = \"x\"\nclient_id = \"x\"\ntype = \"custom\"", "provider[0].token_url", "custom"},
		{"custom needs scopes", "[[provider]] # <-\nname = \"x\"\nclient_id = \"x\"\ntype = \"custom\"", "provider[0].scopes", "custom"},
		{"http endpoint off loopback", provider + "token_url = \"http://idp.example.org/token\" # <-", "provider[0].token_url", "https"},
		{"endpoint not a URL", provider + "auth_url = \"login\" # <-", "provider[0].auth_url", "absolute"},
		{"scopes wrong type", provider + "scopes = \"a b\" # <-", "provider[0].scopes", "array"},
		{"scope with space", provider + "scopes = [\"a b\"] # <-", "provider[0].scopes[0]", "one word"},
		{"scopes empty", provider + "scopes = [] # <-", "provider[0].scopes", "empty"},
		{"server without port", provider + "imap_server = \"imap.example.org\" # <-", "provider[0].imap_server", "host:port"},
		{"redirect_url bad", provider + "redirect_url = \"localhost/cb\" # <-", "provider[0].redirect_url", "absolute"},
		{"log level", "[log]\nlevel = \"verbose\" # <-", "log.level", "debug"},
		{"log format", "[log]\nformat = \"xml\" # <-", "log.format", "json"},
		{"domain", "[smtp]\ndomain = \"mail server\" # <-", "smtp.domain", "host name"},
		{"control character", "[imap]\nlisten = \"127.0.0.1:1143\\n\" # <-", "imap.listen", "control"},
		{"empty state_dir", "state_dir = \"\" # <-", "state_dir", "empty"},
		{"section not a table", "imap = 1 # <-", "imap", "[imap]"},
		{"account not an array", "[account] # <-\nusername = \"a@x.org\"", "account", "[[account]]"},
		{"syntax error", "[imap]\nlisten = \"127.0.0.1:1143 # <-\n", "imap.listen", "TOML syntax"},
		{"duplicate key", "[imap]\nlisten = \"\"\nlisten = \"\" # <-", "imap.listen", "already"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.data), dir)
			if err == nil {
				t.Fatalf("Parse(%q) = nil error, want one naming %s", tt.data, tt.key)
			}
			var found *Error
			for _, e := range configErrors(err) {
				if e.Key == tt.key {
					found = e
					break
				}
			}
			if found == nil {
				t.Fatalf("Parse(%q) = %v, want an error naming %s", tt.data, err, tt.key)
			}
			if !strings.Contains(found.Error(), tt.msg) {
				t.Errorf("Parse(%q) error = %q, want it to contain %q", tt.data, found, tt.msg)
			}
			if want := markerLine(tt.data); found.Line != want {
				t.Errorf("Parse(%q) error %q: Line = %d, want %d", tt.data, found, found.Line, want)
			}
		})
	}
}

func TestSeveralErrors(t *testing.T) {
	data := "shutdown_timeout = 5\n[imap]\nidle_timeout = \"1m\"\n" + provider + "[[account]]\nusername = \"a@x.org\"\nflow = \"magic\"\n"
	_, err := Parse([]byte(data), "")
	var keys []string
	for _, e := range configErrors(err) {
		keys = append(keys, e.Key)
	}
	want := []string{"shutdown_timeout", "imap.idle_timeout", "account[0].flow"}
	if !slices.Equal(keys, want) {
		t.Errorf("Parse(three mistakes) error keys = %q, want %q (error: %v)", keys, want, err)
	}
	if n := strings.Count(err.Error(), "\n"); n != 2 {
		t.Errorf("Parse(three mistakes) error has %d newlines, want 2: %q", n, err)
	}
}

func TestLoadErrorNamesFileAndLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mailproxy.toml")
	if err := os.WriteFile(path, []byte("\n[imap]\nidle_timeout = 600\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	want := path + ":3: imap.idle_timeout: "
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Load(%s) = %v, want an error starting %q", path, err, want)
	}
	if _, err := Load(filepath.Join(dir, "missing.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want os.ErrNotExist", err)
	}
}

func TestPresets(t *testing.T) {
	ms := "https://login.microsoftonline.com/"
	tests := []struct {
		typ, tenant                  string
		authURL, tokenURL, deviceURL string
		scope0, imap, smtp, pop3     string
		appScopes                    int
	}{
		{"office365", "organizations", ms + "organizations/oauth2/v2.0/authorize", ms + "organizations/oauth2/v2.0/token", ms + "organizations/oauth2/v2.0/devicecode",
			"https://outlook.office.com/IMAP.AccessAsUser.All", "outlook.office365.com:993", "smtp.office365.com:587", "outlook.office365.com:995", 1},
		{"outlook", "consumers", ms + "consumers/oauth2/v2.0/authorize", ms + "consumers/oauth2/v2.0/token", ms + "consumers/oauth2/v2.0/devicecode",
			"https://outlook.office.com/IMAP.AccessAsUser.All", "outlook.office365.com:993", "smtp-mail.outlook.com:587", "outlook.office365.com:995", 1},
		{"gmail", "", "https://accounts.google.com/o/oauth2/v2/auth", "https://oauth2.googleapis.com/token", "https://oauth2.googleapis.com/device/code",
			"https://mail.google.com/", "imap.gmail.com:993", "smtp.gmail.com:587", "pop.gmail.com:995", 0},
	}
	for _, tt := range tests {
		cfg := mustParse(t, fmt.Sprintf("[[provider]]\nname = \"p\"\ntype = %q\nclient_id = \"id\"\n", tt.typ), "")
		p := cfg.Providers[0]
		got := []string{p.Tenant, p.AuthURL, p.TokenURL, p.DeviceAuthURL, p.Scopes[0], p.IMAPServer, p.SMTPServer, p.POP3Server, p.RedirectURL}
		want := []string{tt.tenant, tt.authURL, tt.tokenURL, tt.deviceURL, tt.scope0, tt.imap, tt.smtp, tt.pop3, "http://localhost:8025/oauth2/callback"}
		if !slices.Equal(got, want) || len(p.AppScopes) != tt.appScopes || p.RootCAs != nil {
			t.Errorf("preset %s = %q, %d app scopes, RootCAs %v; want %q, %d, nil", tt.typ, got, len(p.AppScopes), p.RootCAs, want, tt.appScopes)
		}
	}
	p := mustParse(t, provider, "").Providers[0]
	wantScopes := []string{"https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send",
		"https://outlook.office.com/POP.AccessAsUser.All", "offline_access", "openid"}
	if !slices.Equal(p.Scopes, wantScopes) || !slices.Equal(p.AppScopes, []string{"https://outlook.office365.com/.default"}) {
		t.Errorf("office365 scopes = %q, app scopes %q; want %q, [https://outlook.office365.com/.default]", p.Scopes, p.AppScopes, wantScopes)
	}
	if want := "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"; p.AuthURL != want {
		t.Errorf("office365 with tenant: AuthURL = %q, want %q", p.AuthURL, want)
	}
	// Presets are copied, not shared.
	p.Scopes[0] = "changed"
	if p2 := mustParse(t, provider, "").Providers[0]; p2.Scopes[0] == "changed" {
		t.Errorf("changing one Config's Scopes changed the preset")
	}
}

func TestOverridesWin(t *testing.T) {
	cfg := mustParse(t, provider+`
auth_url = "http://127.0.0.1:9999/t/authorize"
token_url = "http://localhost:9999/t/token"
device_auth_url = ""
scopes = ["a", "b"]
app_scopes = ["c"]
imap_server = "127.0.0.1:10993"
smtp_server = "[::1]:10465"
pop3_server = "127.0.0.1:10995"
redirect_url = "https://proxy.example.org/cb"
[admin]
listen = "127.0.0.1:9000"
`, "")
	p := cfg.Providers[0]
	got := []string{p.AuthURL, p.TokenURL, p.DeviceAuthURL, p.IMAPServer, p.SMTPServer, p.POP3Server, p.RedirectURL}
	want := []string{"http://127.0.0.1:9999/t/authorize", "http://localhost:9999/t/token", "", "127.0.0.1:10993", "[::1]:10465", "127.0.0.1:10995", "https://proxy.example.org/cb"}
	if !slices.Equal(got, want) || !slices.Equal(p.Scopes, []string{"a", "b"}) || !slices.Equal(p.AppScopes, []string{"c"}) {
		t.Errorf("overridden provider = %q %q %q, want %q [a b] [c]", got, p.Scopes, p.AppScopes, want)
	}
}

func TestRedirectURLDefault(t *testing.T) {
	for admin, want := range map[string]string{
		`listen = "127.0.0.1:9000"`: "http://localhost:9000/oauth2/callback",
		`listen = ""`:               "http://localhost:8025/oauth2/callback",
	} {
		cfg := mustParse(t, provider+"[admin]\n"+admin+"\n", "")
		if got := cfg.Providers[0].RedirectURL; got != want {
			t.Errorf("RedirectURL with admin %s = %q, want %q", admin, got, want)
		}
	}
}

func TestSecretFile(t *testing.T) {
	dir := t.TempDir()
	for _, content := range []string{"s3cr3t~value\n", "s3cr3t~value\r\n", "s3cr3t~value"} {
		if err := os.WriteFile(filepath.Join(dir, "secret"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := mustParse(t, provider+"client_secret = \"\"\nclient_secret_file = \"secret\"\nca_file = \"\"\n", dir)
		if got := cfg.Providers[0].ClientSecret; got != "s3cr3t~value" {
			t.Errorf("ClientSecret from file %q = %q, want %q", content, got, "s3cr3t~value")
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "empty"), []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse([]byte(provider+"client_secret_file = \"empty\"\n"), dir); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("Parse(empty secret file) = %v, want an error saying it is empty", err)
	}
}

func TestErrorsNeverShowSecrets(t *testing.T) {
	const secret = "TopSecretValue"
	dir := t.TempDir()
	for name, content := range map[string]string{
		"multi":   secret + "\nsecond line\n",
		"control": secret + "\x00\n",
		"ok":      secret + "\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	hashLike := "$argon2id$v=19$m=65536,t=3,p=2$" + secret + "$" + secret
	tests := []string{
		provider + "client_secret_file = \"multi\"\n",
		provider + "client_secret_file = \"control\"\n",
		provider + "client_secret_file = \"ok\"\n[[account]]\nusername = \"x\"\nflow = \"client_credentials\"\n",
		provider + "client_secret = \"" + secret + "\\u0001\"\n",
		provider + "client_secret = \"" + secret + "\"\nclient_secret_file = \"ok\"\n",
		provider + "client_secret = " + secret + "\n",          // not quoted: a syntax error
		provider + "client_secret = \"" + secret + "\n",        // unterminated
		provider + "client_secret = '''" + secret + "\n",       // unterminated multi-line
		provider + "client_secret = [\"" + secret + "\", 1]\n", // wrong type
		"[admin]\npassword_hash = \"" + hashLike + "\"\n",
		provider + "[[account]]\nusername = \"a@x.org\"\npassword_hash = \"" + secret + "\"\n",
		"[admin]\npassword_hash = " + secret + "\n",
	}
	for _, data := range tests {
		_, err := Parse([]byte(data), dir)
		if err == nil {
			t.Errorf("Parse(%q) = nil error, want one", data)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("Parse(%q) = %q, which shows the secret", data, err)
		}
	}
	// Printing a Provider shows its name only.
	cfg := mustParse(t, provider+"client_secret_file = \"ok\"\n", dir)
	p := cfg.Providers[0]
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%v %+v %#v %s", *p, p, p, p)} {
		if strings.Contains(s, secret) {
			t.Errorf("fmt of Provider = %q, which shows the secret", s)
		}
	}
}

func TestRelativePaths(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "etc"), 0o700); err != nil {
		t.Fatal(err)
	}
	caFile, _ := writeCA(t, filepath.Join(dir, "etc"))
	if err := os.WriteFile(filepath.Join(dir, "etc", "secret"), []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := "state_dir = \"state\"\n" + provider + "client_secret_file = \"etc/secret\"\nca_file = \"etc/" + filepath.Base(caFile) + "\"\n"
	path := filepath.Join(dir, "mailproxy.toml")
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s) = %v", path, err)
	}
	if want := filepath.Join(dir, "state"); cfg.StateDir != want {
		t.Errorf("StateDir = %q, want %q", cfg.StateDir, want)
	}
	if cfg.Providers[0].CAFile != caFile || cfg.Providers[0].ClientSecret != "x" {
		t.Errorf("CAFile, ClientSecret = %q, %q, want %q, %q", cfg.Providers[0].CAFile, cfg.Providers[0].ClientSecret, caFile, "x")
	}
}

func TestCAFile(t *testing.T) {
	dir := t.TempDir()
	caFile, _ := writeCA(t, dir)
	data, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	cfg := mustParse(t, provider+"ca_file = \""+caFile+"\"\n", "")
	pool := cfg.Providers[0].RootCAs
	if pool == nil {
		t.Fatalf("RootCAs = nil with ca_file set")
	}
	if _, err := ca.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("CA from ca_file does not verify against RootCAs: %v", err)
	}
}

func TestTLSCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeCA(t, dir)
	cfg := mustParse(t, "[tls]\ncert_file = \"ca.pem\"\nkey_file = \"ca.key\"\n[imap]\nlisten_tls = \"127.0.0.1:0\"\n", dir)
	if cfg.TLS.CertFile != certFile || cfg.TLS.KeyFile != keyFile || !cfg.TLS.Enabled() {
		t.Errorf("TLS = %+v, want %s, %s, enabled", cfg.TLS, certFile, keyFile)
	}
	cfg = mustParse(t, "[tls]\nself_signed = true\n[smtp]\nlisten_tls = \"127.0.0.1:0\"\n", dir)
	if !cfg.TLS.Enabled() {
		t.Errorf("TLS with self_signed: Enabled() = false, want true")
	}
}

func TestListenAndAllowLists(t *testing.T) {
	cfg := mustParse(t, `
[imap]
listen = "0.0.0.0:1143"
[smtp]
listen = "192.168.1.10:1587"
[admin]
listen = "[::1]:0"
[security]
allow_from = ["192.168.1.7", "2001:db8::1", "10.1.2.3/8", "::ffff:172.16.0.0/108"]
allow_plaintext_from = ["192.168.1.0/24"]
`, "")
	s := cfg.Security
	want := []string{"192.168.1.7/32", "2001:db8::1/128", "10.0.0.0/8", "172.16.0.0/12"}
	var got []string
	for _, p := range s.AllowFrom {
		got = append(got, p.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("AllowFrom = %q, want %q", got, want)
	}
	for addr, want := range map[string][2]bool{ // AllowedFrom, PlaintextAllowedFrom
		"192.168.1.7":         {true, true},
		"::ffff:192.168.1.7":  {true, true},
		"10.9.9.9":            {true, false},
		"172.16.5.5":          {true, false},
		"127.0.0.1":           {false, true},
		"::1":                 {false, true},
		"192.168.2.1":         {false, false},
		"2001:db8::1":         {true, false},
		"fe80::1%eth0":        {false, false},
		"::ffff:192.168.1.99": {false, true},
	} {
		ip := netip.MustParseAddr(addr)
		if got := [2]bool{s.AllowedFrom(ip), s.PlaintextAllowedFrom(ip)}; got != want {
			t.Errorf("AllowedFrom, PlaintextAllowedFrom(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestLookup(t *testing.T) {
	cfg := mustParse(t, provider+"[[account]]\nusername = \"Alice@Contoso.com\"\n", "")
	a := cfg.Account("alice@CONTOSO.COM")
	if a == nil || a.Username != "Alice@Contoso.com" || a.Mailbox != "Alice@Contoso.com" {
		t.Errorf("Account(alice@CONTOSO.COM) = %+v, want the Alice@Contoso.com account", a)
	}
	if a := cfg.Account("bob@contoso.com"); a != nil {
		t.Errorf("Account(bob@contoso.com) = %+v, want nil", a)
	}
	if p := cfg.Provider("contoso"); p == nil || p != a.Provider {
		t.Errorf("Provider(contoso) = %v, want the account's provider", p)
	}
	built := &Config{Accounts: []*Account{{Username: "Bob@x.org"}}}
	if a := built.Account("bob@X.ORG"); a != built.Accounts[0] {
		t.Errorf("Account(bob@X.ORG) on a Config built in code = %+v, want Bob@x.org", a)
	}
}

func TestSyntaxErrorLine(t *testing.T) {
	_, err := Parse([]byte("[imap]\nlisten = \"127.0.0.1:1143\"\n\nmax_line = 12x\n"), "")
	errs := configErrors(err)
	if len(errs) != 1 || errs[0].Line != 4 || !strings.Contains(errs[0].Msg, "TOML syntax") {
		t.Errorf("Parse(syntax error on line 4) = %v, want one TOML syntax error on line 4", err)
	}
}

func TestLocate(t *testing.T) {
	data := "\ufeff# comment\n" +
		"a = \"\"\"\nx\n\"\"\"\"\" # 2-4, extra quotes before the end\n" +
		"b.\"c.d\" = 'x' # 5\n" +
		"\"e\\u0041\" = [ # 6\n  1,\n  { f = { g = 1 } }, # 8\n  [2, {h = 3}], # 9\n]\n" +
		"[t] # 11\n" +
		"i = '''\n''' # 12-13\n" +
		"[[arr]] # 14\n" +
		"j = 1\r\n" + // 15
		"[[arr]] # 16\n" +
		"j = { k = 1,\n  l = 2 } # 17-18\n" +
		"[arr.sub] # 19\n" +
		"m = 1979-05-27 07:32:00Z # 20\n"
	var m map[string]any
	md, err := toml.Decode(data, &m)
	if err != nil {
		t.Fatalf("toml.Decode = %v", err)
	}
	loc := locate(data, md.Keys())
	if loc == nil {
		t.Fatalf("locate = nil, want lines for keys %q", md.Keys())
	}
	for name, want := range map[string]int{
		"a": 2, `b."c.d"`: 5, "eA": 6, "eA[1]": 8, "eA[1].f.g": 8, "eA[2][1].h": 9,
		"t": 11, "t.i": 12, "arr[0]": 14, "arr[0].j": 15, "arr[1]": 16, "arr[1].j.l": 18,
		"arr[1].sub": 19, "arr[1].sub.m": 20, "arr[1].sub.nothere": 19,
	} {
		if got := loc.line(name); got != want {
			t.Errorf("locate: line(%s) = %d, want %d", name, got, want)
		}
	}
}

// writeCA writes a self-signed CA certificate and its key to dir/ca.pem and
// dir/ca.key.
func writeCA(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	ca, key := newCA(t)
	certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mailproxy test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

var tlsVersions = map[uint16]string{tls.VersionTLS10: "1.0", tls.VersionTLS11: "1.1", tls.VersionTLS12: "1.2", tls.VersionTLS13: "1.3"}

// render writes cfg back as TOML, every value explicit.
func render(cfg *Config) []byte {
	levels := map[slog.Level]string{slog.LevelDebug: "debug", slog.LevelInfo: "info", slog.LevelWarn: "warn", slog.LevelError: "error"}
	prefixes := func(ps []netip.Prefix) []string {
		out := []string{}
		for _, p := range ps {
			out = append(out, p.String())
		}
		return out
	}
	tlsTable := map[string]any{"self_signed": cfg.TLS.SelfSigned}
	if cfg.TLS.CertFile != "" {
		tlsTable["cert_file"], tlsTable["key_file"] = cfg.TLS.CertFile, cfg.TLS.KeyFile
	}
	m := map[string]any{
		"state_dir":        cfg.StateDir,
		"shutdown_timeout": cfg.ShutdownTimeout.String(),
		"imap": map[string]any{
			"listen": cfg.IMAP.Listen, "listen_tls": cfg.IMAP.ListenTLS,
			"preauth_timeout": cfg.IMAP.PreAuthTimeout.String(), "idle_timeout": cfg.IMAP.IdleTimeout.String(),
			"max_line": cfg.IMAP.MaxLine, "max_literal": cfg.IMAP.MaxLiteral,
			"tls_min_version": tlsVersions[cfg.IMAP.TLSMinVersion],
		},
		"smtp": map[string]any{
			"listen": cfg.SMTP.Listen, "listen_tls": cfg.SMTP.ListenTLS, "domain": cfg.SMTP.Domain,
			"max_message_bytes": cfg.SMTP.MaxMessageBytes, "max_recipients": cfg.SMTP.MaxRecipients,
			"read_timeout": cfg.SMTP.ReadTimeout.String(), "write_timeout": cfg.SMTP.WriteTimeout.String(),
			"tls_min_version": tlsVersions[cfg.SMTP.TLSMinVersion],
		},
		"spool": map[string]any{
			"dir": cfg.Spool.Dir, "rate": cfg.Spool.Rate, "daily_recipients": cfg.Spool.DailyRecipients,
			"retry": cfg.Spool.Retry.String(), "max_age": cfg.Spool.MaxAge.String(),
			"log_retention": cfg.Spool.LogRetention.String(),
		},
		"tokens": map[string]any{"keepalive": cfg.Tokens.Keepalive.String()},
		"tls":    tlsTable,
		"admin":  map[string]any{"listen": cfg.Admin.Listen, "password_hash": cfg.Admin.PasswordHash},
		"security": map[string]any{
			"allow_from": prefixes(cfg.Security.AllowFrom), "allow_plaintext_from": prefixes(cfg.Security.AllowPlaintextFrom),
			"max_connections": cfg.Security.MaxConnections, "max_connections_per_ip": cfg.Security.MaxConnectionsPerIP,
			"upstream_timeout": cfg.Security.UpstreamTimeout.String(), "lockout_failures": cfg.Security.LockoutFailures,
			"lockout_window": cfg.Security.LockoutWindow.String(), "lockout_duration": cfg.Security.LockoutDuration.String(),
			"lockout_address_failures": cfg.Security.LockoutAddrFailures,
			"max_upstream_per_mailbox": cfg.Security.MaxUpstreamPerMailbox,
		},
		"log": map[string]any{"format": cfg.Log.Format, "level": levels[cfg.Log.Level], "file": cfg.Log.File},
	}
	var providers, accounts []map[string]any
	for _, p := range cfg.Providers {
		pm := map[string]any{
			"name": p.Name, "type": p.Type, "client_id": p.ClientID, "client_secret": p.ClientSecret,
			"auth_url": p.AuthURL, "token_url": p.TokenURL, "device_auth_url": p.DeviceAuthURL,
			"scopes": append([]string{}, p.Scopes...), "app_scopes": append([]string{}, p.AppScopes...),
			"imap_server": p.IMAPServer, "smtp_server": p.SMTPServer, "redirect_url": p.RedirectURL,
		}
		if p.Tenant != "" {
			pm["tenant"] = p.Tenant
		}
		if p.CAFile != "" {
			pm["ca_file"] = p.CAFile
		}
		if p.Cloud != "" {
			pm["cloud"] = p.Cloud
		}
		if p.GraphURL != "" {
			pm["graph_url"] = p.GraphURL
		}
		pm["send_via"], pm["save_to_sent_items"] = p.SendVia, p.SaveToSentItems
		providers = append(providers, pm)
	}
	for _, a := range cfg.Accounts {
		accounts = append(accounts, map[string]any{
			"username": a.Username, "provider": a.Provider.Name, "mailbox": a.Mailbox,
			"flow": a.Flow, "password_hash": a.PasswordHash, "seal": a.Seal, "spool": a.Spool,
			"send_via": a.SendVia, "save_to_sent_items": a.SaveToSentItems,
		})
	}
	var devices []map[string]any
	for _, d := range cfg.Devices {
		dm := map[string]any{"name": d.Name, "from": prefixes(d.From), "envelope_from": d.EnvelopeFrom,
			"header_from": d.HeaderFrom, "username": d.Username, "password_hash": d.PasswordHash}
		if d.Account != nil {
			dm["account"] = d.Account.Username
		}
		devices = append(devices, dm)
	}
	if devices != nil {
		m["device"] = devices
	}
	if providers != nil {
		m["provider"] = providers
	}
	if accounts != nil {
		m["account"] = accounts
	}
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(m); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// comparable drops what DeepEqual cannot compare (certificate pools hold
// functions).
func withoutPools(cfg *Config) *Config {
	for _, p := range cfg.Providers {
		p.RootCAs = nil
	}
	return cfg
}

func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("../config.example.toml")
	if err != nil {
		f.Fatal(err)
	}
	dir := f.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("s3cret\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	f.Add(string(example))
	f.Add("")
	f.Add(provider + "client_secret_file = \"secret\"\n[[account]]\nusername = \"p@x.org\"\nflow = \"client_credentials\"\npassword_hash = \"" + testHash + "\"\n")
	f.Add("[imap]\nlisten = \"0.0.0.0:1143\"\n[security]\nallow_plaintext_from = [\"10.0.0.0/8\", \"::1\"]\n")
	f.Add("shutdown_timeout = 30\n[imap]\nidle_timeout = \"1m\"\n")
	f.Add("[[provider]]\nname = \"c\"\ntype = \"custom\"\nclient_id = \"x\"\nauth_url = \"http://127.0.0.1:1/a\"\ntoken_url = \"http://127.0.0.1:1/t\"\nscopes = [\"s\"]\nimap_server = \"127.0.0.1:2\"\nsmtp_server = \"127.0.0.1:3\"\n")
	f.Add("provider = [{name = \"a\", client_id = \"b\"}]\naccount = [{username = \"u@x.org\", colour = 1}]\n")
	f.Add("[imap\nlisten = ")
	f.Add("a = \"\"\"\nb\n\"\"\"\n[[account]]\n'x.y' = { z = [1, {w = 2}] }\n")
	f.Add("[account]\nusername = 1\n[IMAP]\nListen = \"\"\n")
	f.Fuzz(func(t *testing.T, data string) {
		cfg, err := Parse([]byte(data), dir)
		if err != nil {
			lines := strings.Count(data, "\n") + 1
			for _, e := range configErrors(err) {
				if e.Line < 0 || e.Line > lines || e.Msg == "" {
					t.Errorf("Parse(%q): error %q has line %d of %d or no message", data, e, e.Line, lines)
				}
			}
			if len(configErrors(err)) == 0 {
				t.Errorf("Parse(%q) = %v, holding no *Error", data, err)
			}
			return
		}
		// The scanner must read every document the decoder accepts.
		var m map[string]any
		if md, err := toml.Decode(data, &m); err == nil && locate(data, md.Keys()) == nil {
			t.Errorf("locate(%q) = nil, want lines", data)
		}
		again, err := Parse([]byte(data), dir)
		if err != nil || !reflect.DeepEqual(withoutPools(cfg), withoutPools(again)) {
			t.Fatalf("Parse(%q) twice: %+v, then %+v, %v", data, cfg, again, err)
		}
		out := render(cfg)
		round, err := Parse(out, dir)
		if err != nil {
			t.Fatalf("Parse(%q) = ok, but Parse(its rendering %q) = %v", data, out, err)
		}
		if !reflect.DeepEqual(cfg, withoutPools(round)) {
			t.Fatalf("Parse(%q) = %+v, but its rendering parses as %+v", data, cfg, round)
		}
	})
}
