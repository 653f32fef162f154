package config

import (
	"crypto/tls"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const deviceBase = provider + `
[security]
allow_from = ["127.0.0.0/8", "192.168.1.0/24"]
[[account]]
username = "scanner@contoso.com"
seal = "service"
[[account]]
username = "alice@contoso.com"
`

func TestDevices(t *testing.T) {
	cfg := mustParse(t, deviceBase+`
[smtp]
listen = "0.0.0.0:1587"
tls_min_version = "1.0"
[[device]]
name = "mfp-floor2"
from = ["192.168.1.50", "192.168.1.0/28"]
account = "scanner@contoso.com"
[[device]]
name = "erp"
from = ["192.168.1.60/32"]
account = "Scanner@Contoso.com"
envelope_from = "keep"
header_from = "account"
username = "erp"
password_hash = "`+testHash+`"
[spool]
rate = 20
retry = "2m"
[tokens]
keepalive = "72h"
`, "")
	if len(cfg.Devices) != 2 {
		t.Fatalf("devices = %d, want 2", len(cfg.Devices))
	}
	d := cfg.Devices[0]
	if d.Name != "mfp-floor2" || d.Account.Username != "scanner@contoso.com" || d.EnvelopeFrom != RepairAccount || d.HeaderFrom != RepairFix {
		t.Errorf("device[0] = %+v, want defaults envelope_from account, header_from fix", d)
	}
	if e := cfg.Devices[1]; e.EnvelopeFrom != RepairKeep || e.HeaderFrom != RepairAccount || e.Username != "erp" {
		t.Errorf("device[1] = %+v", e)
	}
	if got := cfg.DeviceFrom(netip.MustParseAddr("192.168.1.60")); got != cfg.Devices[1] {
		t.Errorf("DeviceFrom(.60) = %v, want erp", got)
	}
	if got := cfg.DeviceFrom(netip.MustParseAddr("::ffff:192.168.1.5")); got != cfg.Devices[0] {
		t.Errorf("DeviceFrom(.5 as v4-mapped) = %v, want mfp-floor2", got)
	}
	if got := cfg.DeviceFrom(netip.MustParseAddr("192.168.1.200")); got != nil {
		t.Errorf("DeviceFrom(.200) = %v, want none (outside from)", got)
	}
	if got := cfg.Device("ERP"); got != cfg.Devices[1] {
		t.Errorf("Device(ERP) = %v", got)
	}
	if cfg.SMTP.TLSMinVersion != tls.VersionTLS10 || cfg.IMAP.TLSMinVersion != tls.VersionTLS12 {
		t.Errorf("tls_min_version = %x/%x", cfg.SMTP.TLSMinVersion, cfg.IMAP.TLSMinVersion)
	}
	if cfg.Spool.Rate != 20 || cfg.Spool.Retry != 2*time.Minute || cfg.Tokens.Keepalive != 72*time.Hour {
		t.Errorf("spool %+v tokens %+v", cfg.Spool, cfg.Tokens)
	}
	if a := cfg.Account("scanner@contoso.com"); a.Seal != SealService || cfg.Account("alice@contoso.com").Seal != SealPassword {
		t.Errorf("seals = %q, %q", a.Seal, cfg.Account("alice@contoso.com").Seal)
	}
	if !strings.Contains(d.String(), "mfp") || strings.Contains(cfg.Devices[1].String(), "argon") {
		t.Error("Device.String shows more than the name")
	}
}

func TestDeviceErrors(t *testing.T) {
	for _, tt := range []struct{ name, data, key, msg string }{
		{"password-sealed account", deviceBase + "[[device]]\nname = \"d\"\nfrom = [\"192.168.1.5\"]\naccount = \"alice@contoso.com\" # <-", "device[0].account", `seal = "service"`},
		{"unknown account", deviceBase + "[[device]]\nname = \"d\"\nfrom = [\"192.168.1.5\"]\naccount = \"bob@contoso.com\" # <-", "device[0].account", "no [[account]]"},
		{"no account", deviceBase + "[[device]] # <-\nname = \"d\"\nfrom = [\"192.168.1.5\"]", "device[0].account", "required"},
		{"no from", deviceBase + "[[device]] # <-\nname = \"d\"\naccount = \"scanner@contoso.com\"", "device[0].from", "required"},
		{"from outside allow_from", deviceBase + "[[device]]\nname = \"d\"\nfrom = [\"10.0.0.5\"] # <-\naccount = \"scanner@contoso.com\"", "device[0].from[0]", "allow_from"},
		{"bad name", deviceBase + "[[device]]\nname = \"floor 2\" # <-\nfrom = [\"192.168.1.5\"]\naccount = \"scanner@contoso.com\"", "device[0].name", "letters"},
		{"duplicate name", deviceBase + "[[device]]\nname = \"d\"\nfrom = [\"192.168.1.5\"]\naccount = \"scanner@contoso.com\"\n[[device]]\nname = \"d\" # <-\nfrom = [\"192.168.1.6\"]\naccount = \"scanner@contoso.com\"", "device[1].name", "device[0]"},
		{"bad envelope_from", deviceBase + "[[device]]\nname = \"d\"\nfrom = [\"192.168.1.5\"]\naccount = \"scanner@contoso.com\"\nenvelope_from = \"fix\" # <-", "device[0].envelope_from", "keep"},
		{"bad header_from", deviceBase + "[[device]]\nname = \"d\"\nfrom = [\"192.168.1.5\"]\naccount = \"scanner@contoso.com\"\nheader_from = \"rewrite\" # <-", "device[0].header_from", "fix"},
		{"username without hash", deviceBase + "[[device]] # <-\nname = \"d\"\nfrom = [\"192.168.1.5\"]\naccount = \"scanner@contoso.com\"\nusername = \"d\"", "device[0].password_hash", "required"},
		{"username is an account", deviceBase + "[[device]]\nname = \"d\"\nfrom = [\"192.168.1.5\"]\naccount = \"scanner@contoso.com\"\nusername = \"alice@contoso.com\" # <-\npassword_hash = \"" + testHash + "\"", "device[0].username", "[[account]]"},
		{"bad seal", deviceBase + "[[account]]\nusername = \"x@contoso.com\"\nseal = \"vault\" # <-", "account[2].seal", "service"},
		{"spool not bool", deviceBase + "[[account]]\nusername = \"x@contoso.com\"\nspool = \"yes\" # <-", "account[2].spool", "true or false"},
		{"old TLS on loopback only", "[smtp]\ntls_min_version = \"1.0\" # <-", "smtp.tls_min_version", "listed network"},
		{"bad TLS version", "[imap]\ntls_min_version = \"SSLv3\" # <-", "imap.tls_min_version", "1.2"},
		{"keepalive too long", "[tokens]\nkeepalive = \"2400h\" # <-", "tokens.keepalive", "90 days"},
		{"retry too long", "[spool]\nretry = \"2h\" # <-", "spool.retry", "1h"},
		{"rate zero", "[spool]\nrate = 0 # <-", "spool.rate", "out of range"},
		{"max_age bare", "[spool]\nmax_age = 5 # <-", "spool.max_age", "unit"},
		{"unknown spool key", "[spool]\nrat = 5 # <-", "spool.rat", `"rate"`},
		{"device not an array", "[device] # <-\nname = \"d\"", "device", "[[device]]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.data), "")
			var found *Error
			for _, e := range configErrors(err) {
				if e.Key == tt.key {
					found = e
				}
			}
			if found == nil {
				t.Fatalf("Parse = %v, want an error naming %s", err, tt.key)
			}
			if !strings.Contains(found.Error(), tt.msg) {
				t.Errorf("error %q, want it to contain %q", found, tt.msg)
			}
			if want := markerLine(tt.data); found.Line != want {
				t.Errorf("error %q: line %d, want %d", found, found.Line, want)
			}
		})
	}
}

// A plain SMTP listener on the LAN is fine for devices without a credential.
func TestDeviceListenerOffLoopback(t *testing.T) {
	base := deviceBase + "[smtp]\nlisten = \"192.168.1.10:1587\"\n"
	if _, err := Parse([]byte(base), ""); err == nil {
		t.Fatal("a LAN plain listener without devices or allow_plaintext_from parsed")
	}
	mustParse(t, base+"[[device]]\nname = \"d\"\nfrom = [\"192.168.1.5\"]\naccount = \"scanner@contoso.com\"\n", "")
}
