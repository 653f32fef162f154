package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func runAdminURLCmd(t *testing.T, cfg string) (int, string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mailproxy.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	env := &cmdEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	code := run(t.Context(), env, []string{"admin-url", "-config", path})
	return code, out.String(), errb.String()
}

// admin-url prints the link with the access token it keeps in state_dir
// (the same token every time, in a 0600 file), or the bare address when
// the page has a password.
func TestAdminURL(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	cfg := "state_dir = \"" + state + "\"\n[admin]\nlisten = \"127.0.0.1:9025\"\n"
	code, out, errOut := runAdminURLCmd(t, cfg)
	link := regexp.MustCompile(`^http://localhost:9025/\?token=[A-Za-z0-9_-]{40,}\n$`)
	if code != exitOK || !link.MatchString(out) {
		t.Fatalf("admin-url = exit %d, stdout %q, stderr %q; want a localhost link with a token", code, out, errOut)
	}
	fi, err := os.Stat(filepath.Join(state, "admin-token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state_dir/admin-token: %v (mode %v), want a 0600 file", err, fi.Mode())
	}
	if _, again, _ := runAdminURLCmd(t, cfg); again != out {
		t.Errorf("admin-url again = %q, want the same link %q", again, out)
	}

	code, out, _ = runAdminURLCmd(t, cfg+"password_hash = \"$argon2id$v=19$m=65536,t=3,p=2$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA\"\n")
	if code != exitOK || out != "http://localhost:9025/\n" {
		t.Errorf("admin-url with a password = exit %d, %q; want the address without a token", code, out)
	}
	code, _, errOut = runAdminURLCmd(t, "state_dir = \""+state+"\"\n[admin]\nlisten = \"\"\n")
	if code != exitFailure || !strings.Contains(errOut, "admin.listen") {
		t.Errorf("admin-url with the page off = exit %d, stderr %q; want 1 naming admin.listen", code, errOut)
	}
}

// status lists the login blocks the running serve saved.
func TestStatusShowsBlocks(t *testing.T) {
	state := t.TempDir()
	until := time.Now().Add(10 * time.Minute).UTC().Format(time.RFC3339)
	old := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	os.WriteFile(filepath.Join(state, "lockout.json"), []byte(`[{"user":"printer@contoso.com","addr":"192.168.1.50","until":"`+until+`"},{"addr":"2001:db8::/64","until":"`+until+`"},{"user":"old@contoso.com","addr":"10.0.0.1","until":"`+old+`"}]`), 0o600)
	path := filepath.Join(t.TempDir(), "mailproxy.toml")
	os.WriteFile(path, []byte("state_dir = \""+state+"\"\n"), 0o600)
	var out, errb bytes.Buffer
	env := &cmdEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	if code := run(t.Context(), env, []string{"status", "-config", path}); code != exitOK {
		t.Fatalf("status = exit %d, stderr %q", code, errb.String())
	}
	o := out.String()
	if !strings.Contains(o, "! printer@contoso.com from 192.168.1.50 until ") || !strings.Contains(o, "! every username from 2001:db8::/64 until ") || strings.Contains(o, "old@contoso.com") {
		t.Errorf("status output does not list the active blocks (and only those):\n%s", o)
	}
}
