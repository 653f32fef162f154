package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailproxy/config"
	"mailproxy/internal/cmdline"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
)

// cheapKDF keeps tests that only need a stored entry fast; login itself is
// tested with the real parameters.
var cheapKDF = store.Params{Time: 1, Memory: 64, Threads: 1}

// seedManager returns a Manager over the env's store, making cheap keys.
func (e *cliEnv) seedManager(t *testing.T) *oauth.Manager {
	t.Helper()
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	m, st, err := newManager(cfg, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	st.KDF = cheapKDF
	return m
}

// seedSignIn stores a sign-in of identity for user, as login would, with a
// refresh token from the fake IdP.
func (e *cliEnv) seedSignIn(t *testing.T, m *oauth.Manager, user, identity string) {
	t.Helper()
	scopes := []string{"https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send", "offline_access", "openid"}
	ts := oauth.TokenSet{
		RefreshToken: e.idp.GrantRefreshToken(cliClient, identity, scopes),
		Scopes:       scopes,
		Expiry:       time.Now().Add(time.Hour),
	}
	if err := m.Seal(user, cliPassword, ts, store.Meta{Identity: identity, Flow: config.FlowAuthCode}); err != nil {
		t.Fatalf("Seal(%q) = %v", user, err)
	}
}

// accountStatusLine returns the table row of status output about user.
func accountStatusLine(t *testing.T, out, user string) string {
	t.Helper()
	table := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "USER" {
			table = true
		}
		if table && len(f) >= 2 && (f[0] == user || (f[0] == "!" && f[1] == user)) {
			return line
		}
	}
	t.Fatalf("status output has no line for %s:\n%s", user, out)
	return ""
}

func (e *cliEnv) status(t *testing.T) string {
	t.Helper()
	code, out, errOut := e.runCmd(t, nil, "status", "-config", e.cfgPath)
	if code != exitOK {
		t.Fatalf("status = exit %d, stderr %q", code, errOut)
	}
	return out
}

func TestStatus(t *testing.T) {
	e := newCLIEnv(t)
	m := e.seedManager(t)
	e.seedSignIn(t, m, cliAlice, cliAlice)
	e.seedSignIn(t, m, "sales", cliBob)

	out := e.status(t)
	if !strings.Contains(out, "USER") || !strings.Contains(out, "REFRESH TOKEN AGE") {
		t.Errorf("status has no header:\n%s", out)
	}
	alice := accountStatusLine(t, out, cliAlice)
	for _, want := range []string{"authcode", "signed in", cliAlice, "0 days"} {
		if !strings.Contains(alice, want) {
			t.Errorf("status line %q lacks %q", alice, want)
		}
	}
	if strings.HasPrefix(alice, "!") || strings.Contains(alice, "delegate") {
		t.Errorf("status line %q: a healthy own-mailbox account is marked", alice)
	}
	if sales := accountStatusLine(t, out, "sales"); !strings.Contains(sales, cliBob+" (delegate)") {
		t.Errorf("status line %q, want %s marked (delegate)", sales, cliBob)
	}
	never := accountStatusLine(t, out, cliNever)
	if !strings.HasPrefix(never, "!") || !strings.Contains(never, "not signed in") {
		t.Errorf("status line %q, want ! and not signed in", never)
	}
	if !strings.HasPrefix(out, "! ") || !strings.Contains(out, "\n! "+cliNever+" is not signed in: run "+cmdline.Login(cliNever)+"\n") {
		t.Errorf("status does not start with alerts, among them one for %s:\n%s", cliNever, out)
	}
	if scanner := accountStatusLine(t, out, "scanner"); !strings.Contains(scanner, "app-only") {
		t.Errorf("status line %q, want app-only", scanner)
	}
	// Columns are aligned: the flow column starts at the same offset.
	if i, j := strings.Index(alice, "authcode"), strings.Index(never, "authcode"); i != j || i < 0 {
		t.Errorf("flow column at %d and %d, want aligned:\n%s", i, j, out)
	}
}

func TestStatusRevokedNeedsSignIn(t *testing.T) {
	e := newCLIEnv(t)
	m := e.seedManager(t)
	e.seedSignIn(t, m, cliAlice, cliAlice)

	// A refresh through the Manager (as serve does) fails once the IdP
	// revoked the user's sessions; the Manager records it in the meta.
	src, _, err := m.Open(t.Context(), cliAlice, cliPassword)
	if err != nil {
		t.Fatalf("Open(%s) = %v", cliAlice, err)
	}
	tok, err := src.Token(t.Context())
	if err != nil {
		t.Fatalf("Token() = %v", err)
	}
	e.idp.Revoke(cliAlice)
	if _, err := src.Refresh(t.Context(), tok); err == nil {
		t.Fatalf("Refresh() after Revoke = nil, want invalid_grant")
	}
	if meta := e.meta(t, cliAlice); !meta.NeedsSignIn {
		t.Fatalf("meta after failed refresh = %+v, want NeedsSignIn", meta)
	}

	out := e.status(t)
	alice := accountStatusLine(t, out, cliAlice)
	for _, want := range []string{"needs sign-in", "invalid_grant (AADSTS70008)", "expired or was revoked"} {
		if !strings.Contains(alice, want) {
			t.Errorf("status line %q lacks %q", alice, want)
		}
	}
	if !strings.HasPrefix(alice, "!") {
		t.Errorf("status line %q, want ! marker", alice)
	}
	if !strings.Contains(out, "! "+cliAlice+" needs a new sign-in: the sign-in expired or was revoked") {
		t.Errorf("status has no alert for %s:\n%s", cliAlice, out)
	}
}

func TestStatusOldRefreshToken(t *testing.T) {
	e := newCLIEnv(t)
	e.seedSignIn(t, e.seedManager(t), cliAlice, cliAlice)
	err := e.store(t).UpdateMeta(cliAlice, func(m *store.Meta) {
		m.RefreshObtained = time.Now().Add(-80 * 24 * time.Hour)
	})
	if err != nil {
		t.Fatal(err)
	}
	out := e.status(t)
	alice := accountStatusLine(t, out, cliAlice)
	if !strings.HasPrefix(alice, "!") || !strings.Contains(alice, "80 days") || !strings.Contains(alice, "signed in") {
		t.Errorf("status line %q, want ! and 80 days", alice)
	}
	if !strings.Contains(out, "! "+cliAlice+": the refresh token is 80 days old") {
		t.Errorf("status has no refresh token alert:\n%s", out)
	}

	// 70 days is fine.
	e.store(t).UpdateMeta(cliAlice, func(m *store.Meta) { m.RefreshObtained = time.Now().Add(-70 * 24 * time.Hour) })
	if alice := accountStatusLine(t, e.status(t), cliAlice); strings.HasPrefix(alice, "!") {
		t.Errorf("status line %q: a 70-day-old refresh token is marked", alice)
	}
}

func TestStatusOrphanEntry(t *testing.T) {
	e := newCLIEnv(t)
	e.seedSignIn(t, e.seedManager(t), cliAlice, cliAlice)
	// alice leaves the config; her entry stays.
	data, _ := readFileString(e.cfgPath)
	data = strings.Replace(data, "username = \""+cliAlice+"\"", "username = \"carol@contoso.com\"", 1)
	writeFileString(t, e.cfgPath, data)
	if out := e.status(t); !strings.Contains(out, "not in the config") || !strings.Contains(out, cliAlice) {
		t.Errorf("status does not list the orphaned entry:\n%s", out)
	}
}

// status, logout and check must not create the token store: run as root,
// they would leave a directory serve cannot use.
func TestNoStoreNotCreated(t *testing.T) {
	e := newCLIEnv(t)
	out := e.status(t)
	if line := accountStatusLine(t, out, cliAlice); !strings.Contains(line, "not signed in") {
		t.Errorf("status line without a store = %q, want not signed in", line)
	}
	if code, out, _ := e.runCmd(t, nil, "logout", "-config", e.cfgPath, cliAlice); code != exitOK || !strings.Contains(out, "was not signed in") {
		t.Errorf("logout without a store = exit %d, %q; want 0, was not signed in", code, out)
	}
	if code, out, _ := e.runCmd(t, nil, "check", "-config", e.cfgPath); code != exitOK || !hasCheckLine(out, "ok    ", "no token store yet") {
		t.Errorf("check without a store = exit %d, want 0 and a line saying there is no store yet:\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "state")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat(state_dir) = %v, want it not to exist", err)
	}
}
