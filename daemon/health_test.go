package daemon

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailproxy/admin"
	"mailproxy/config"
)

// The health state is saved where `mailproxy status` reads it, 0600, with
// each account's upstream state and recent errors; only after Start, and
// marked stopped by the last write.
func TestHealthSavedForStatus(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Config{StateDir: dir, Accounts: []*config.Account{{Username: "alice@x", Provider: &config.Provider{}}, {Username: "bob@x", Provider: &config.Provider{}}}}
	d := &Daemon{cfg: cfg, logger: slog.New(slog.DiscardHandler), metrics: admin.NewMetrics("imap", "smtp")}
	d.saveHealth(false)
	if st, err := ReadHealth(dir); st != nil || err != nil {
		t.Fatalf("ReadHealth() before Start = %+v, %v; want nothing saved", st, err)
	}
	d.startHealth()
	st, err := ReadHealth(dir)
	if err != nil || st == nil || st.PID != os.Getpid() || st.Started.IsZero() || !st.Stopped.IsZero() || len(st.Accounts) != 2 {
		t.Fatalf("ReadHealth() after start = %+v, %v; want this process, running, two accounts", st, err)
	}
	d.metrics.UpstreamResult("alice@x", "imap", errors.New("cannot reach the mail server: dial tcp 192.0.2.1:993: connect: connection refused"))
	d.metrics.UpstreamResult("alice@x", "smtp", nil)
	d.saveHealth(true)
	st, err = ReadHealth(dir)
	if err != nil || st.Stopped.IsZero() {
		t.Fatalf("ReadHealth() after the last write = %+v, %v; want stopped set", st, err)
	}
	a := st.Accounts[0]
	if a.Username != "alice@x" || len(a.Upstreams) != 2 || a.Upstreams[0].Proto != "imap" || !a.Upstreams[0].Failing() ||
		!strings.Contains(a.Upstreams[0].LastError, "connection refused") || a.Upstreams[1].LastLogin.IsZero() ||
		len(a.Recent) != 1 || a.Recent[0].Proto != "imap" {
		t.Errorf("alice's health = %+v, want imap failing, smtp logged in, one recent error", a)
	}
	if len(st.Accounts[1].Upstreams) != 0 {
		t.Errorf("bob's health = %+v, want none", st.Accounts[1])
	}
	fi, err := os.Stat(filepath.Join(dir, HealthFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v, mode %v; want 0600", HealthFile, err, fi.Mode().Perm())
	}
}
